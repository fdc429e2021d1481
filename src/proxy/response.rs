//! The one place where anything iotgate refuses becomes an HTTP answer.
//!
//! ```text
//! Rejection (decision) ──┐
//! UpstreamError (proxy) ──┼─▶ Failure ──status() / code()──▶ JSON body
//! AdminRefusal (admin) ───┘        {"error", "request_id", "policy_version"}
//!                                  + WWW-Authenticate on 401, X-Request-Id always
//! ```
//!
//! The matches below have no catch-all arm: a new kind of failure must be given a status
//! here before the crate compiles. Details stay in the log, never in the body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::authz::decision::{Decision, Outcome, Rejection};

impl Decision {
    /// HTTP status: 200 stands for "forwarded".
    pub fn status(&self) -> StatusCode {
        match &self.outcome {
            Outcome::Allow => StatusCode::OK,
            Outcome::Reject(r) => Failure::Rejected(r.clone()).status(),
        }
    }
}

/// `allow by [policies]` or `403 forbidden by [policies]`, as `check` and the log print it.
impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Outcome::Allow => write!(f, "allow")?,
            Outcome::Reject(r) => write!(f, "{} {r}", self.status().as_u16())?,
        }
        if !self.policies.is_empty() {
            write!(f, " by [{}]", self.policies.join(", "))?;
        }
        Ok(())
    }
}

/// A body that is either streamed from a peer or made here.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
/// Errors of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Header carrying the request id.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Why the upstream could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset, DNS or TLS failure, malformed response.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// No response head within the configured timeout.
    #[error("upstream timed out")]
    Timeout,
    /// A `101 Switching Protocols` that was not the answer to a forwarded WebSocket
    /// handshake, or that switches to another protocol (502; the connection is closed).
    #[error("upstream switched protocols without a decided websocket handshake")]
    Upgrade,
    /// The client's request body failed while it was being forwarded (the client went away
    /// or sent a malformed body): a client error, not the upstream's.
    #[error("client body failed: {0}")]
    ClientBody(String),
}

/// Everything that ends a request without forwarding it (or without an upstream answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// The decision refused the request.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Forwarding failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The admin listener refused the request.
    #[error(transparent)]
    Admin(#[from] AdminRefusal),
}

/// Why the admin listener did not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminRefusal {
    /// No such endpoint.
    #[error("no admin endpoint")]
    NotFound,
    /// `POST /reload` while `reload = "off"`.
    #[error("reload is off")]
    ReloadOff,
    /// A browser `Origin`, or a `Host` the listener is not known by.
    #[error("origin or host not accepted")]
    Host,
}

impl Failure {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.class().0
    }

    /// The `error` code of the JSON body.
    pub(crate) fn code(&self) -> &'static str {
        self.class().1
    }

    /// Status and code, decided together, for every failure there is.
    fn class(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Failure::Rejected(r) => match r {
                Rejection::BadRequest(_) => (S::BAD_REQUEST, "bad_request"),
                Rejection::Unauthenticated(_) | Rejection::UnknownPrincipal(_) => {
                    (S::UNAUTHORIZED, "unauthorized")
                }
                Rejection::Disabled(_) | Rejection::Forbidden => (S::FORBIDDEN, "forbidden"),
                Rejection::NoRoute => (S::NOT_FOUND, "no_route"),
                Rejection::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
                Rejection::BodyTimeout => (S::REQUEST_TIMEOUT, "request_timeout"),
                Rejection::RateLimited(_) => (S::TOO_MANY_REQUESTS, "rate_limited"),
                Rejection::UnsupportedMediaType(_) => {
                    (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                }
                Rejection::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error"),
            },
            Failure::Upstream(u) => match u {
                UpstreamError::Unreachable(_) | UpstreamError::Upgrade => {
                    (S::BAD_GATEWAY, "bad_gateway")
                }
                UpstreamError::Timeout => (S::GATEWAY_TIMEOUT, "gateway_timeout"),
                UpstreamError::ClientBody(_) => (S::BAD_REQUEST, "bad_request"),
            },
            Failure::Admin(a) => match a {
                AdminRefusal::NotFound => (S::NOT_FOUND, "not_found"),
                AdminRefusal::ReloadOff => (S::CONFLICT, "reload_off"),
                AdminRefusal::Host => (S::FORBIDDEN, "admin_host"),
            },
        }
    }

    /// The response: JSON body, `X-Request-Id`, and `WWW-Authenticate` on 401.
    pub(crate) fn to_response(&self, request_id: &str, policy_version: &str) -> Response<Body> {
        let body = serde_json::json!({
            "error": self.code(),
            "request_id": request_id,
            "policy_version": policy_version,
        });
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, id);
        }
        if let Failure::Rejected(Rejection::RateLimited(seconds)) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        if matches!(self, Failure::Upstream(UpstreamError::Upgrade)) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// A body made of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::AuthError;

    async fn body_json(r: Response<Body>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn every_failure_has_a_status_code_and_json_body() {
        use StatusCode as S;
        let cases = [
            (
                Failure::from(Rejection::BadRequest(
                    crate::authz::decision::BadRequest::Body("x".into()),
                )),
                S::BAD_REQUEST,
                "bad_request",
            ),
            (
                Rejection::Unauthenticated(AuthError::Missing).into(),
                S::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                Rejection::UnknownPrincipal("x".into()).into(),
                S::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                Rejection::Disabled("x".into()).into(),
                S::FORBIDDEN,
                "forbidden",
            ),
            (Rejection::Forbidden.into(), S::FORBIDDEN, "forbidden"),
            (Rejection::NoRoute.into(), S::NOT_FOUND, "no_route"),
            (
                Rejection::BodyTooLarge.into(),
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
            (
                Rejection::BodyTimeout.into(),
                S::REQUEST_TIMEOUT,
                "request_timeout",
            ),
            (
                UpstreamError::Unreachable("refused".into()).into(),
                S::BAD_GATEWAY,
                "bad_gateway",
            ),
            (
                UpstreamError::Timeout.into(),
                S::GATEWAY_TIMEOUT,
                "gateway_timeout",
            ),
            (
                Rejection::Internal(crate::authz::decision::InternalError::UnknownAction(
                    "x".into(),
                ))
                .into(),
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
            (AdminRefusal::NotFound.into(), S::NOT_FOUND, "not_found"),
            (AdminRefusal::ReloadOff.into(), S::CONFLICT, "reload_off"),
            (AdminRefusal::Host.into(), S::FORBIDDEN, "admin_host"),
        ];
        for (failure, status, code) in cases {
            let r = failure.to_response("req-1", "v1@abc");
            assert_eq!(r.status(), status, "{failure:?}");
            assert_eq!(r.headers()[REQUEST_ID], "req-1");
            assert_eq!(
                r.headers().contains_key(header::WWW_AUTHENTICATE),
                status == S::UNAUTHORIZED
            );
            let body = body_json(r).await;
            assert_eq!(
                body,
                serde_json::json!({"error": code, "request_id": "req-1", "policy_version": "v1@abc"})
            );
        }
    }

    #[tokio::test]
    async fn internals_stay_out_of_the_body() {
        let r = Failure::from(Rejection::UnknownPrincipal("mallory".into())).to_response("r", "v");
        let text = body_json(r).await.to_string();
        assert!(!text.contains("mallory"), "{text}");
    }
}
