//! Decide mode's answers to a front proxy's sub-request.
//!
//! ```text
//! allow  ─▶ 200, no body, X-Iotgate-Principal (not for anonymous), X-Iotgate-Policy-Version,
//!           X-Iotgate-Directory-Version, X-Request-Id: for the proxy to pass to the upstream
//! refuse ─▶ the JSON refusal (with X-Iotgate-Reason); for nginx, whose auth_request takes
//!           only 2xx, 401 and 403, every other status becomes 403
//! ```

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::authz::decision::Decision;
use crate::config::FrontProxy;
use crate::proxy::response::{full, Body, REQUEST_ID};

/// The answer to an allowed sub-request.
pub(crate) fn allowed(decision: &Decision, request_id: &str) -> Response<Body> {
    let mut response = Response::new(full(bytes::Bytes::new()));
    let headers = response.headers_mut();
    let principal = decision
        .principal
        .as_deref()
        .filter(|_| !decision.anonymous);
    let stamps = [
        ("x-iotgate-principal", principal),
        ("x-iotgate-policy-version", Some(&*decision.policy_version)),
        (
            "x-iotgate-directory-version",
            Some(&*decision.directory_version),
        ),
        (REQUEST_ID, Some(request_id)),
    ];
    for (name, value) in stamps {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Makes a refusal one the front proxy passes on: nginx `auth_request` turns any status but
/// 2xx, 401 and 403 into a 500, so a 400, 404, 413 or 429 is a 403 there (its reason stays
/// in the body and `X-Iotgate-Reason`).
pub(crate) fn fit_status(from: FrontProxy, response: &mut Response<Body>) {
    let status = response.status();
    let accepted = status.is_success()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN;
    if from == FrontProxy::Nginx && !accepted {
        *response.status_mut() = StatusCode::FORBIDDEN;
    }
}
