//! CORS for browsers of other origins (`[server.cors]`): iotgate answers preflights itself
//! and owns the `Access-Control-*` headers of every answer.
//!
//! ```text
//! OPTIONS + Origin + Access-Control-Request-Method ──preflight()──▶ 204 (origin allowed:
//!     Allow-Origin, Allow-Methods = the method asked when a route takes it, Allow-Headers,
//!     Max-Age) | 403 (origin not allowed); no token read, nothing forwarded
//! any other answer ──decorate()──▶ upstream's Access-Control-* removed; Allow-Origin and
//!     Expose-Headers added for an allowed Origin only
//! ```

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::config::CorsConfig;
use crate::model::routes::RouteTable;
use crate::proxy::response::{full, Body};

/// Response headers a browser script may read besides the safelisted ones.
const EXPOSED: &str = "x-request-id, www-authenticate, retry-after";

/// The configured CORS policy.
#[derive(Debug)]
pub(crate) struct Cors {
    config: CorsConfig,
}

impl Cors {
    pub(crate) fn new(config: CorsConfig) -> Cors {
        Cors { config }
    }

    /// Whether a request is a CORS preflight (Fetch §3.2.2).
    pub(crate) fn is_preflight(request: &Parts) -> bool {
        request.method == Method::OPTIONS
            && request.headers.contains_key(header::ORIGIN)
            && request
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Whether the request's `Origin` is allowed.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        self.allow_origin(headers).is_some()
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (Some(one), None) => self.allow(one),
            _ => None,
        }
    }

    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?;
        let allowed = &self.config.allowed_origins;
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(text)) {
            return Some(origin.clone());
        }
        allowed
            .iter()
            .any(|a| a == "*")
            .then(|| HeaderValue::from_static("*"))
    }

    /// Answers the preflight of an allowed origin ([`Cors::allows`]): 204 with what the
    /// browser may send; the method asked for is listed only when a route takes it.
    pub(crate) fn preflight(&self, request: &Parts, routes: &RouteTable) -> Response<Body> {
        let headers = &request.headers;
        let mut response = Response::new(full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        if let Some(origin) = self.allow_origin(headers) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let segments = crate::request::uri::segments(request.uri.path()).ok();
        if let (Some(method), Some(segments)) = (asked, segments) {
            if routes.find(&method, &segments).is_some() {
                if let Ok(v) = HeaderValue::from_str(method.as_str()) {
                    out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&self.config.allowed_headers.join(", ")) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.config.max_age_seconds),
        );
        vary(out);
        response
    }

    /// Gives an answer the CORS headers of iotgate's policy (and none of the upstream's);
    /// `origin`: the request's (one) `Origin`.
    pub(crate) fn decorate(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap) {
        let theirs: Vec<header::HeaderName> = out
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            out.remove(name);
        }
        vary(out);
        if let Some(origin) = origin.and_then(|o| self.allow(o)) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
        }
    }
}

/// Caches must keep answers to different origins apart.
fn vary(headers: &mut HeaderMap) {
    let listed = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*");
    if !listed {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}
