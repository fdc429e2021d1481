//! Decide mode: what only a deciding (not forwarding) gateway checks, and its answers to
//! a front proxy's sub-request.
//!
//! ```text
//! start    ─▶ problems(): write-through effects need [directory.sync]; {tls.*} routes warned
//! route    ─▶ unforwardable(): a Bearer token on an `auth = "none"` route, an Upgrade that
//!             is not a WebSocket handshake on a stream route (the reverse proxy would have
//!             removed both; the front proxy passes them on)
//! allow    ─▶ 200, no body, X-Iotgate-Principal (empty for anonymous, so the proxy
//!             overwrites a client's), X-Iotgate-Policy-Version, X-Iotgate-Directory-Version,
//!             X-Request-Id: for the proxy to pass to the upstream
//! refuse   ─▶ the JSON refusal (with X-Iotgate-Reason); for nginx, whose auth_request takes
//!             only 2xx, 401 and 403, every other status becomes 403
//! ```

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::authz::decision::{BadRequest, Decision, Rejection};
use crate::authz::snapshot::Snapshot;
use crate::config::problem::Problems;
use crate::config::{Config, FrontProxy};
use crate::model::routes::{Auth, Route};
use crate::proxy::forward;
use crate::proxy::response::{full, Body, REQUEST_ID};
use crate::request::headers;

/// How long after allowing a `resync` route `[directory.sync]` is woken: the front proxy
/// forwards the request only after the answer, so the upstream acts later.
pub(crate) const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// What a decide-mode config cannot serve, checked before any port is bound (and by
/// `validate`): routes with write-through effects, since iotgate never sees the upstream's
/// answer and only `[directory.sync]` can bring the change in (without it a removed
/// member would keep access).
pub(crate) fn problems(config: &Config, snapshot: &Snapshot) -> Problems {
    let mut problems = Problems::new();
    let decides = config.server.as_ref().is_some_and(|s| s.decide.is_some());
    if !decides {
        return problems;
    }
    let routes = snapshot.routes.routes();
    let effects: Vec<&str> = routes
        .iter()
        .filter(|r| r.has_effects())
        .map(|r| r.name.as_str())
        .collect();
    if !effects.is_empty() && config.directory.sync.is_none() {
        problems.push(config.problem(
            "server.mode",
            format!(
                "decide mode applies no write-through effects ({} …): add [directory.sync] to keep the directory current",
                effects.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    problems
}

/// Logs the routes decide mode refuses whatever is sent: those that read the client
/// certificate (`{tls.*}`), since the TLS session iotgate sees is the front proxy's.
pub(crate) fn warn_unservable(snapshot: &Snapshot) {
    for route in snapshot.routes.routes().iter().filter(|r| r.reads_tls) {
        tracing::warn!(
            route = route.name.as_str(),
            "decide mode: the route reads {{tls.*}}, but the TLS session is the front proxy's; it is refused"
        );
    }
}

/// What decide mode refuses on a matched route because the reverse proxy would have
/// removed it and the front proxy passes it on: a Bearer token on a route that reads no
/// token (the upstream could act on a token nobody verified), and an `Upgrade` other than
/// a WebSocket handshake on a `stream` route (h2c and other tunnels are never decided).
pub(crate) fn unforwardable(route: &Route, parts: &http::request::Parts) -> Option<Rejection> {
    if route.auth == Auth::None && headers::has_bearer(&parts.headers) {
        return Some(Rejection::BadRequest(BadRequest::TokenNotRead));
    }
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let websocket = route.stream && forward::is_websocket(&parts.method, &parts.headers);
    (upgrade && !websocket).then_some(Rejection::BadRequest(BadRequest::Upgrade))
}

/// The answer to an allowed sub-request.
pub(crate) fn allowed(decision: &Decision, request_id: &str) -> Response<Body> {
    let mut response = Response::new(full(bytes::Bytes::new()));
    let headers = response.headers_mut();
    let principal = match decision.anonymous {
        true => "",
        false => decision.principal.as_deref().unwrap_or(""),
    };
    let stamps = [
        ("x-iotgate-principal", principal),
        ("x-iotgate-policy-version", &*decision.policy_version),
        ("x-iotgate-directory-version", &*decision.directory_version),
        (REQUEST_ID, request_id),
    ];
    for (name, value) in stamps {
        if let Ok(value) = HeaderValue::from_str(value) {
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
