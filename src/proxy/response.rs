//! The one place where anything iotgate refuses becomes an HTTP answer.
//!
//! ```text
//! Rejection (decision) ──┐
//! UpstreamError (proxy) ──┤
//! AdminRefusal (admin) ───┼─▶ Failure ──class() / reason()──▶ JSON body
//! AccessRefusal (API) ────┘        {"error", "reason", ["field"], ["message"],
//!                                   "request_id", "policy_version"}
//!                                  + WWW-Authenticate (RFC 6750) on 401, Retry-After on
//!                                  429, X-Request-Id and X-Iotgate-Reason always
//! ```
//!
//! `error` is the class of failure, `reason` a stable code a client can act on: a forbid
//! policy's `@code`, or one of the built-ins below. The matches have no catch-all arm: a
//! new kind of failure must be given a status and a reason here before the crate compiles.
//! Details stay in the log; the body names only route-table field names and, with
//! `[server] expose_messages`, the determining policy's `@reason`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::authn::AuthError;
use crate::authz::decision::{BadRequest, Decision, Outcome, Rejection};
use crate::model::routes::field::FieldError;
use crate::request::headers::HeaderError;
use crate::request::subrequest::SubrequestError;
use crate::request::uri::QueryError;

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
/// Header carrying a refusal's `reason` (for proxies that pass on headers, not bodies).
pub(crate) const REASON: &str = "x-iotgate-reason";

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
    /// The decision API could not answer (a deny is an answer: 200).
    #[error(transparent)]
    Access(#[from] AccessRefusal),
}

/// Why the decision API (`[decision_api]`) did not answer a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AccessRefusal {
    /// No such endpoint.
    #[error("no decision API endpoint")]
    NotFound,
    /// An endpoint asked with another method.
    #[error("method not allowed")]
    Method,
    /// No caller token, or a wrong one.
    #[error("caller token missing or wrong")]
    Token,
    /// A body that is not `application/json` (AuthZEN asks for a 400).
    #[error("the body must be application/json")]
    MediaType,
    /// A body over `[decision_api] max_body_bytes`.
    #[error("body too large")]
    TooLarge,
    /// A body that is not the endpoint's request: what is missing or wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The body did not arrive within `header_read_timeout_seconds`.
    #[error("body not sent in time")]
    Timeout,
    /// iotgate's own fault (500): a search that did not finish.
    #[error("internal fault: {0}")]
    Internal(String),
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
    /// A directory endpoint without the `[admin] token_file` bearer token.
    #[error("admin token missing or wrong")]
    Token,
    /// A directory endpoint (or a POST on a listener other hosts reach) while `[admin]
    /// token_file` is not configured.
    #[error("no admin token configured")]
    NoToken,
    /// A directory write whose journal could not be written (nothing applied).
    #[error("journal not writable")]
    Journal,
    /// A directory write the shared database did not take (down, or not loaded yet;
    /// nothing applied).
    #[error("shared directory unavailable")]
    Store,
    /// A directory request body that is not what the endpoint takes.
    #[error("bad directory request")]
    BadBody,
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
                Rejection::Disabled(_) | Rejection::Forbidden(_) | Rejection::OriginNotAllowed => {
                    (S::FORBIDDEN, "forbidden")
                }
                Rejection::NoRoute => (S::NOT_FOUND, "no_route"),
                Rejection::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
                Rejection::BodyTimeout => (S::REQUEST_TIMEOUT, "request_timeout"),
                Rejection::RateLimited(_) => (S::TOO_MANY_REQUESTS, "rate_limited"),
                Rejection::Conflict(_) => (S::CONFLICT, "conflict"),
                Rejection::UnsupportedMediaType(_) => {
                    (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                }
                Rejection::BodyNotForwarded | Rejection::Subrequest(SubrequestError::Untrusted) => {
                    (S::FORBIDDEN, "forbidden")
                }
                Rejection::Subrequest(_) => (S::BAD_REQUEST, "bad_request"),
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
                AdminRefusal::Token => (S::UNAUTHORIZED, "admin_token"),
                AdminRefusal::NoToken => (S::FORBIDDEN, "admin_token_not_configured"),
                AdminRefusal::Journal => (S::SERVICE_UNAVAILABLE, "journal_unavailable"),
                AdminRefusal::Store => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
                AdminRefusal::BadBody => (S::BAD_REQUEST, "bad_request"),
            },
            Failure::Access(a) => match a {
                AccessRefusal::NotFound => (S::NOT_FOUND, "not_found"),
                AccessRefusal::Method => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
                AccessRefusal::Token => (S::UNAUTHORIZED, "unauthorized"),
                AccessRefusal::MediaType | AccessRefusal::BadRequest(_) => {
                    (S::BAD_REQUEST, "bad_request")
                }
                AccessRefusal::TooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
                AccessRefusal::Timeout => (S::REQUEST_TIMEOUT, "request_timeout"),
                AccessRefusal::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error"),
            },
        }
    }

    /// The stable `reason` code of the JSON body.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Failure::Rejected(r) => rejection_reason(r),
            Failure::Upstream(u) => match u {
                UpstreamError::Unreachable(_) => "upstream_unreachable",
                UpstreamError::Timeout => "upstream_timeout",
                UpstreamError::Upgrade => "upstream_upgrade",
                UpstreamError::ClientBody(_) => "body_read_failed",
            },
            Failure::Admin(_) => self.code(),
            Failure::Access(a) => match a {
                AccessRefusal::NotFound => "not_found",
                AccessRefusal::Method => "method_not_allowed",
                AccessRefusal::Token => "access_token",
                AccessRefusal::MediaType => "unsupported_media_type",
                AccessRefusal::TooLarge => "body_too_large",
                AccessRefusal::BadRequest(_) => "bad_request",
                AccessRefusal::Timeout => "body_timeout",
                AccessRefusal::Internal(_) => "internal_error",
            },
        }
    }

    /// The route-table field a 400 is about, when there is one.
    fn field(&self) -> Option<&str> {
        let Failure::Rejected(Rejection::BadRequest(BadRequest::Field(e))) = self else {
            return None;
        };
        match e {
            FieldError::Missing(name)
            | FieldError::Type { field: name, .. }
            | FieldError::Unmapped { field: name, .. }
            | FieldError::KeyCase { expected: name, .. } => Some(name),
            FieldError::Query(_) | FieldError::Ambiguous(_) => None,
        }
    }

    /// The policy's `@reason` (for `[server] expose_messages`), or what of a decision API
    /// request is wrong (the caller's own input, always told).
    fn message(&self, expose_messages: bool) -> Option<&str> {
        match self {
            Failure::Rejected(Rejection::Forbidden(denial)) if expose_messages => {
                denial.message.as_deref()
            }
            Failure::Access(AccessRefusal::BadRequest(message)) => Some(message),
            _ => None,
        }
    }

    /// `WWW-Authenticate` of a 401 (RFC 6750 §3): no `error` when no token was sent.
    fn challenge(&self) -> Option<HeaderValue> {
        let description = match self {
            Failure::Rejected(Rejection::Unauthenticated(AuthError::Missing)) => {
                return Some(HeaderValue::from_static("Bearer realm=\"iotgate\""))
            }
            Failure::Admin(AdminRefusal::Token) => {
                return Some(HeaderValue::from_static("Bearer realm=\"iotgate-admin\""))
            }
            Failure::Access(AccessRefusal::Token) => {
                return Some(HeaderValue::from_static("Bearer realm=\"iotgate-access\""))
            }
            Failure::Rejected(Rejection::Unauthenticated(AuthError::Expired)) => "token expired",
            Failure::Rejected(Rejection::Unauthenticated(AuthError::NotYetValid)) => {
                "token not yet valid"
            }
            Failure::Rejected(Rejection::UnknownPrincipal(_)) => "unknown account",
            Failure::Rejected(Rejection::Unauthenticated(_)) => "token invalid",
            _ => return None,
        };
        HeaderValue::from_str(&format!(
            "Bearer realm=\"iotgate\", error=\"invalid_token\", error_description=\"{description}\""
        ))
        .ok()
    }

    /// The response: JSON body, `X-Request-Id`, `WWW-Authenticate` on 401, `Retry-After`
    /// on 429. `expose_messages`: add the determining policy's `@reason` as `message`.
    pub(crate) fn to_response(
        &self,
        request_id: &str,
        policy_version: &str,
        expose_messages: bool,
    ) -> Response<Body> {
        let mut body = serde_json::json!({
            "error": self.code(),
            "reason": self.reason(),
            "request_id": request_id,
            "policy_version": policy_version,
        });
        if let Some(field) = self.field() {
            body["field"] = field.into();
        }
        if let Some(message) = self.message(expose_messages) {
            body["message"] = message.into();
        }
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
        if let Ok(reason) = HeaderValue::from_str(self.reason()) {
            headers.insert(REASON, reason);
        }
        if let Failure::Rejected(Rejection::RateLimited(seconds)) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        if matches!(self, Failure::Upstream(UpstreamError::Upgrade)) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(challenge) = self.challenge() {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The `reason` code of a decision's refusal (also logged with it).
pub(crate) fn rejection_reason(r: &Rejection) -> &str {
    match r {
        Rejection::BadRequest(b) => bad_request_reason(b),
        Rejection::Unauthenticated(e) => token_reason(e),
        Rejection::UnknownPrincipal(_) => "unknown_account",
        Rejection::Disabled(_) => "account_disabled",
        Rejection::Forbidden(denial) => denial.reason(),
        Rejection::NoRoute => "no_route",
        Rejection::BodyTooLarge => "body_too_large",
        Rejection::BodyTimeout => "body_timeout",
        Rejection::RateLimited(_) => "rate_limited",
        Rejection::OriginNotAllowed => "origin_not_allowed",
        Rejection::Conflict(_) => "entity_exists",
        Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
        Rejection::BodyNotForwarded => "body_not_forwarded",
        Rejection::Subrequest(SubrequestError::Untrusted) => "untrusted_proxy",
        Rejection::Subrequest(SubrequestError::Undecided(_)) => "header_not_forwarded",
        Rejection::Subrequest(_) => "bad_subrequest",
        Rejection::Internal(_) => "internal_error",
    }
}

fn token_reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "token_missing",
        AuthError::Expired => "token_expired",
        AuthError::NotYetValid => "token_not_yet_valid",
        AuthError::Ambiguous
        | AuthError::NotBearer
        | AuthError::Malformed(_)
        | AuthError::Algorithm(_)
        | AuthError::NoKey
        | AuthError::Signature
        | AuthError::Issuer
        | AuthError::Audience
        | AuthError::Claim(_)
        | AuthError::Critical => "token_invalid",
    }
}

fn bad_request_reason(b: &BadRequest) -> &'static str {
    match b {
        BadRequest::Path(_) => "bad_path",
        BadRequest::Query(QueryError::SecondCredential(_)) => "second_credential",
        BadRequest::Query(_) => "bad_query",
        BadRequest::Field(_) | BadRequest::Schema(_) => "bad_field",
        BadRequest::Body(_) => "bad_body",
        BadRequest::BodyRead(_) => "body_read_failed",
        BadRequest::LookalikeId(_) => "lookalike_id",
        BadRequest::BodyNotAllowed(_) => "body_not_allowed",
        BadRequest::TokenNotRead => "token_not_read",
        BadRequest::Upgrade => "upgrade_not_allowed",
        BadRequest::Header(HeaderError::SecondCredential(_)) => "second_credential",
        BadRequest::Header(
            HeaderError::ConnectionNames(_)
            | HeaderError::Hosts
            | HeaderError::MediaType(_)
            | HeaderError::Encoding(_),
        ) => "bad_header",
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
    use crate::authz::decision::{Denial, InternalError};

    async fn body_json(r: Response<Body>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn denied(code: Option<&str>, by_forbid: bool, errored: bool) -> Failure {
        Rejection::Forbidden(Denial {
            code: code.map(String::from),
            message: Some("the license is exhausted".into()),
            by_forbid,
            errored,
        })
        .into()
    }

    #[tokio::test]
    async fn every_failure_has_a_status_an_error_and_a_reason() {
        use StatusCode as S;
        let bad = |b: BadRequest| Failure::from(Rejection::BadRequest(b));
        let unauthenticated = |e: AuthError| Failure::from(Rejection::Unauthenticated(e));
        let cases = [
            (
                bad(BadRequest::Body("x".into())),
                S::BAD_REQUEST,
                "bad_request",
                "bad_body",
            ),
            (
                bad(BadRequest::TokenNotRead),
                S::BAD_REQUEST,
                "bad_request",
                "token_not_read",
            ),
            (
                bad(BadRequest::Query(QueryError::SecondCredential("x".into()))),
                S::BAD_REQUEST,
                "bad_request",
                "second_credential",
            ),
            (
                unauthenticated(AuthError::Missing),
                S::UNAUTHORIZED,
                "unauthorized",
                "token_missing",
            ),
            (
                unauthenticated(AuthError::Expired),
                S::UNAUTHORIZED,
                "unauthorized",
                "token_expired",
            ),
            (
                unauthenticated(AuthError::Signature),
                S::UNAUTHORIZED,
                "unauthorized",
                "token_invalid",
            ),
            (
                Rejection::UnknownPrincipal("x".into()).into(),
                S::UNAUTHORIZED,
                "unauthorized",
                "unknown_account",
            ),
            (
                Rejection::Disabled("x".into()).into(),
                S::FORBIDDEN,
                "forbidden",
                "account_disabled",
            ),
            (
                denied(Some("license_exhausted"), true, false),
                S::FORBIDDEN,
                "forbidden",
                "license_exhausted",
            ),
            (
                denied(None, true, false),
                S::FORBIDDEN,
                "forbidden",
                "denied_by_policy",
            ),
            (
                denied(None, false, false),
                S::FORBIDDEN,
                "forbidden",
                "no_permit",
            ),
            (
                denied(None, false, true),
                S::FORBIDDEN,
                "forbidden",
                "evaluation_error",
            ),
            (
                Rejection::OriginNotAllowed.into(),
                S::FORBIDDEN,
                "forbidden",
                "origin_not_allowed",
            ),
            (
                Rejection::NoRoute.into(),
                S::NOT_FOUND,
                "no_route",
                "no_route",
            ),
            (
                Rejection::BodyTooLarge.into(),
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "body_too_large",
            ),
            (
                Rejection::BodyTimeout.into(),
                S::REQUEST_TIMEOUT,
                "request_timeout",
                "body_timeout",
            ),
            (
                Rejection::RateLimited(3).into(),
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                "rate_limited",
            ),
            (
                Rejection::Conflict("x".into()).into(),
                S::CONFLICT,
                "conflict",
                "entity_exists",
            ),
            (
                UpstreamError::Unreachable("refused".into()).into(),
                S::BAD_GATEWAY,
                "bad_gateway",
                "upstream_unreachable",
            ),
            (
                UpstreamError::Timeout.into(),
                S::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "upstream_timeout",
            ),
            (
                Rejection::Internal(InternalError::UnknownAction("x".into())).into(),
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal_error",
            ),
            (
                AdminRefusal::NotFound.into(),
                S::NOT_FOUND,
                "not_found",
                "not_found",
            ),
            (
                AdminRefusal::ReloadOff.into(),
                S::CONFLICT,
                "reload_off",
                "reload_off",
            ),
            (
                AdminRefusal::Host.into(),
                S::FORBIDDEN,
                "admin_host",
                "admin_host",
            ),
            (
                AdminRefusal::Token.into(),
                S::UNAUTHORIZED,
                "admin_token",
                "admin_token",
            ),
            (
                AdminRefusal::Journal.into(),
                S::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                "journal_unavailable",
            ),
            (
                AdminRefusal::Store.into(),
                S::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "store_unavailable",
            ),
        ];
        for (failure, status, code, reason) in cases {
            let r = failure.to_response("req-1", "v1@abc", false);
            assert_eq!(r.status(), status, "{failure:?}");
            assert_eq!(r.headers()[REQUEST_ID], "req-1");
            assert_eq!(
                r.headers().contains_key(header::WWW_AUTHENTICATE),
                status == S::UNAUTHORIZED
            );
            let body = body_json(r).await;
            assert_eq!(
                body,
                serde_json::json!({"error": code, "reason": reason, "request_id": "req-1", "policy_version": "v1@abc"}),
                "{failure:?}"
            );
        }
    }

    #[tokio::test]
    async fn bodies_name_the_field_and_on_request_the_policys_reason() {
        let field = Failure::from(Rejection::BadRequest(BadRequest::Field(
            FieldError::Missing("new_role".into()),
        )));
        let body = body_json(field.to_response("r", "v", false)).await;
        assert_eq!(
            (body["reason"].as_str(), body["field"].as_str()),
            (Some("bad_field"), Some("new_role"))
        );
        let license = denied(Some("license_exhausted"), true, false);
        assert!(body_json(license.to_response("r", "v", false))
            .await
            .get("message")
            .is_none());
        let body = body_json(license.to_response("r", "v", true)).await;
        assert_eq!(body["message"], "the license is exhausted");
    }

    #[test]
    fn a_401_challenges_as_rfc_6750_says() {
        let challenge = |e: AuthError| {
            let r = Failure::from(Rejection::Unauthenticated(e)).to_response("r", "v", false);
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(challenge(AuthError::Missing), "Bearer realm=\"iotgate\"");
        assert_eq!(
            challenge(AuthError::Expired),
            "Bearer realm=\"iotgate\", error=\"invalid_token\", error_description=\"token expired\""
        );
        assert!(challenge(AuthError::Malformed("\"quoted\"".into())).ends_with("\"token invalid\""));
        let r = Failure::from(Rejection::RateLimited(7)).to_response("r", "v", false);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }

    #[tokio::test]
    async fn internals_stay_out_of_the_body() {
        let r = Failure::from(Rejection::UnknownPrincipal("mallory".into()))
            .to_response("r", "v", true);
        let text = body_json(r).await.to_string();
        assert!(!text.contains("mallory"), "{text}");
    }
}
