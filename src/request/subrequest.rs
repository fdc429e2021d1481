//! Decide mode's reading of a front proxy's authorization sub-request: the original
//! request it stands for, or why there is none.
//!
//! ```text
//! sub-request from a peer in trusted_proxies (else Untrusted)
//!   nginx      X-Original-Method + X-Original-URI   ─┐
//!   forwarded  X-Forwarded-Method + X-Forwarded-Uri  ├─▶ original method, origin-form URI
//!   envoy      its own method, path minus path_prefix ┘   (one value each, no `#`)
//!   ─▶ headers the proxy passes on that iotgate would have removed? refused
//!   ─▶ the request the decision reads (the sub-request's TLS session and upgrade dropped:
//!      they are the proxy's connection, not the client's) and what it gets of the body:
//!      Envoy's with `body_routes = "decide"`, else none, announced by
//!      X-Original-Content-Length / X-Original-Transfer-Encoding when the proxy sends them
//! ```
//!
//! The proxy must set these headers itself (replacing any a client sent): iotgate cannot tell
//! a client's `X-Original-URI` from the proxy's, so it trusts them only from the proxy's
//! address.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri};

use crate::config::{BodyRoutes, DecideConfig, FrontProxy};
use crate::request::headers;

/// Why a sub-request does not say which request to decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubrequestError {
    /// The peer is not one of `[server] trusted_proxies`.
    #[error("sub-request from an address that is not a trusted proxy")]
    Untrusted,
    /// A header carrying the original request is missing.
    #[error("`{0}` missing: the front proxy must send the original request")]
    Missing(&'static str),
    /// A header carrying the original request is sent twice.
    #[error("`{0}` sent more than once")]
    Repeated(&'static str),
    /// The original method is not a method.
    #[error("original method `{0}` is not an HTTP method")]
    Method(String),
    /// The original target is not an origin-form path and query (or has a `#`, which
    /// would hide the rest from the decision but not from the upstream).
    #[error("original URI `{0}` is not a path and query")]
    Target(String),
    /// `X-Original-Content-Length` is not a length.
    #[error("original content length `{0}` is not a number")]
    Length(String),
    /// The path does not start with `[server.decide] path_prefix`.
    #[error("path outside the configured path_prefix")]
    Prefix,
    /// A header the front proxy would pass to the upstream that iotgate would have removed
    /// (it changes what the upstream does or who it acts for, but was not decided on).
    #[error("`{0}` would reach the upstream undecided")]
    Undecided(String),
}

/// What the decision gets of the original request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginalBody {
    /// It arrives with the request (the reverse proxy; Envoy's `with_request_body`).
    Here,
    /// The front proxy does not send it; `announced`: the original request has one.
    NotSent { announced: bool },
}

/// The original request a sub-request stands for: method, URI and headers made those of
/// the client's request, and what the decision gets of its body.
///
/// # Errors
/// [`SubrequestError`]: refused (401/403 to the client, never forwarded).
pub(crate) fn original(
    config: &DecideConfig,
    parts: &mut Parts,
    trusted: bool,
    forwards_cookies: bool,
) -> Result<OriginalBody, SubrequestError> {
    if !trusted {
        return Err(SubrequestError::Untrusted);
    }
    let h = &mut parts.headers;
    let (method, target, body) = match config.from {
        FrontProxy::Nginx => (
            one(h, "x-original-method")?,
            one(h, "x-original-uri")?,
            announced(h)?,
        ),
        FrontProxy::Forwarded => (
            one(h, "x-forwarded-method")?,
            one(h, "x-forwarded-uri")?,
            announced(h)?,
        ),
        FrontProxy::Envoy => {
            let method = HeaderValue::from_str(parts.method.as_str())
                .map_err(|_| SubrequestError::Method(parts.method.to_string()))?;
            let target = unprefixed(&parts.uri, &config.path_prefix)?;
            (method, target, envoy_body(config.body_routes, h))
        }
    };
    parts.method = Method::from_bytes(method.as_bytes())
        .map_err(|_| SubrequestError::Method(lossy(&method)))?;
    parts.uri = origin_form(&target)?;
    if let Some(name) = undecided(&parts.headers, forwards_cookies) {
        return Err(SubrequestError::Undecided(name));
    }
    parts
        .extensions
        .remove::<std::sync::Arc<crate::request::TlsSession>>();
    parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    Ok(body)
}

/// Envoy sends the body with `with_request_body`; past its `max_request_bytes` with
/// `allow_partial_message`, only a part, which is no body to decide on.
fn envoy_body(routes: BodyRoutes, headers: &HeaderMap) -> OriginalBody {
    let partial = headers
        .get("x-envoy-auth-partial-body")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    match (routes, partial) {
        (BodyRoutes::Decide, false) => OriginalBody::Here,
        (_, partial) => OriginalBody::NotSent { announced: partial },
    }
}

/// Whether the proxy says the original request has a body (`X-Original-Content-Length`
/// above 0, or any `X-Original-Transfer-Encoding`); both headers are taken off.
fn announced(headers: &mut HeaderMap) -> Result<OriginalBody, SubrequestError> {
    let length = match optional(headers, "x-original-content-length")? {
        None => 0,
        Some(v) => match v.to_str().map(str::trim) {
            Ok("") => 0,
            Ok(n) => n
                .parse::<u64>()
                .map_err(|_| SubrequestError::Length(n.to_string()))?,
            Err(_) => return Err(SubrequestError::Length(lossy(&v))),
        },
    };
    let chunked = optional(headers, "x-original-transfer-encoding")?
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty());
    Ok(OriginalBody::NotSent {
        announced: length > 0 || chunked,
    })
}

/// The one value of `name`, removed from the headers.
fn one(headers: &mut HeaderMap, name: &'static str) -> Result<HeaderValue, SubrequestError> {
    optional(headers, name)?.ok_or(SubrequestError::Missing(name))
}

/// The value of `name` if it is sent at most once, removed from the headers.
fn optional(
    headers: &mut HeaderMap,
    name: &'static str,
) -> Result<Option<HeaderValue>, SubrequestError> {
    if headers.get_all(name).iter().nth(1).is_some() {
        return Err(SubrequestError::Repeated(name));
    }
    Ok(headers.remove(name))
}

/// An Envoy sub-request's path and query without `path_prefix`.
fn unprefixed(uri: &Uri, prefix: &str) -> Result<HeaderValue, SubrequestError> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let rest = target.strip_prefix(prefix).ok_or(SubrequestError::Prefix)?;
    if !rest.starts_with('/') {
        return Err(SubrequestError::Prefix);
    }
    HeaderValue::from_str(rest).map_err(|_| SubrequestError::Target(rest.to_string()))
}

/// A path and query as a request line carries it (`/…`, no scheme or authority), parsed
/// whole: `http` ends a path at `#` without looking further, and the upstream may read on.
fn origin_form(target: &HeaderValue) -> Result<Uri, SubrequestError> {
    let text = target
        .to_str()
        .map_err(|_| SubrequestError::Target(lossy(target)))?;
    let refused = || SubrequestError::Target(text.to_string());
    if text.contains('#') || !text.starts_with('/') {
        return Err(refused());
    }
    let uri: Uri = text.parse().map_err(|_| refused())?;
    let whole = uri.path_and_query().is_some_and(|p| p.as_str() == text);
    match (uri.scheme(), uri.authority(), whole) {
        (None, None, true) => Ok(uri),
        _ => Err(refused()),
    }
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// The first header of the original request that would reach the upstream undecided: one
/// the reverse proxy always removes ([`headers::acted_on_undecided`]: other credentials,
/// method and URL overrides, client addresses, a client's own `X-Iotgate-*`, names with
/// `_`), and `Cookie` unless `forward_cookies`. The front proxy passes them on, so they are
/// refused. Its own `X-Forwarded-*` and hop-by-hop headers are its business.
fn undecided(headers: &HeaderMap, forwards_cookies: bool) -> Option<String> {
    headers.keys().find_map(|name: &HeaderName| {
        let refused = headers::acted_on_undecided(name.as_str())
            || (!forwards_cookies && *name == header::COOKIE);
        refused.then(|| name.as_str().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(from: FrontProxy, prefix: &str) -> DecideConfig {
        DecideConfig {
            from,
            path_prefix: prefix.into(),
            body_routes: BodyRoutes::Refuse,
        }
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn read(from: FrontProxy, prefix: &str, p: Parts) -> Result<Parts, SubrequestError> {
        read_body(from, prefix, p).map(|(p, _)| p)
    }

    fn read_body(
        from: FrontProxy,
        prefix: &str,
        mut p: Parts,
    ) -> Result<(Parts, OriginalBody), SubrequestError> {
        original(&config(from, prefix), &mut p, true, false).map(|body| (p, body))
    }

    #[test]
    fn each_proxy_tells_the_original_request_its_way() {
        let nginx = parts(
            "GET",
            "/auth",
            &[
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/v1/users/bob/devices/d?x=1"),
            ],
        );
        let (p, body) = read_body(FrontProxy::Nginx, "", nginx).unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string().as_str()),
            ("DELETE", "/v1/users/bob/devices/d?x=1")
        );
        assert!(p.headers.get("x-original-uri").is_none());
        assert_eq!(body, OriginalBody::NotSent { announced: false });

        let caddy = parts(
            "GET",
            "/auth",
            &[("x-forwarded-method", "POST"), ("x-forwarded-uri", "/v1/x")],
        );
        let p = read(FrontProxy::Forwarded, "", caddy).unwrap();
        assert_eq!((p.method.as_str(), p.uri.path()), ("POST", "/v1/x"));

        let envoy = parts("PUT", "/authz/v1/x?y=2", &[]);
        let p = read(FrontProxy::Envoy, "/authz", envoy).unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string().as_str()),
            ("PUT", "/v1/x?y=2")
        );
    }

    #[test]
    fn the_proxy_may_announce_a_body_it_does_not_send() {
        let base = [("x-original-method", "GET"), ("x-original-uri", "/a")];
        for (extra, announced) in [
            (("x-original-content-length", "17"), true),
            (("x-original-content-length", "0"), false),
            (("x-original-content-length", ""), false),
            (("x-original-transfer-encoding", "chunked"), true),
            (("x-original-transfer-encoding", ""), false),
        ] {
            let p = parts("GET", "/auth", &[base[0], base[1], extra]);
            let (p, body) = read_body(FrontProxy::Nginx, "", p).unwrap();
            assert_eq!(body, OriginalBody::NotSent { announced }, "{extra:?}");
            assert!(p.headers.get(extra.0).is_none());
        }
        let bad = parts(
            "GET",
            "/auth",
            &[base[0], base[1], ("x-original-content-length", "-1")],
        );
        assert_eq!(
            read(FrontProxy::Nginx, "", bad).unwrap_err(),
            SubrequestError::Length("-1".into())
        );
    }

    #[test]
    fn a_sub_request_that_does_not_say_one_request_is_refused() {
        let nginx = |h: &[(&str, &str)]| read(FrontProxy::Nginx, "", parts("GET", "/auth", h));
        assert_eq!(
            nginx(&[("x-original-uri", "/a")]).unwrap_err(),
            SubrequestError::Missing("x-original-method")
        );
        let twice = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/a"),
            ("x-original-uri", "/b"),
        ];
        assert_eq!(
            nginx(&twice).unwrap_err(),
            SubrequestError::Repeated("x-original-uri")
        );
        for target in [
            "http://evil/a",
            "a/b",
            "*",
            "/v1/status/p#/../../users/alice/devices/d2",
            "/a#",
        ] {
            let got = nginx(&[("x-original-method", "GET"), ("x-original-uri", target)]);
            assert!(
                matches!(got, Err(SubrequestError::Target(_))),
                "{target}: {got:?}"
            );
        }
        let got = nginx(&[("x-original-method", "G ET"), ("x-original-uri", "/a")]);
        assert!(matches!(got, Err(SubrequestError::Method(_))), "{got:?}");
        for path in ["/other/v1/x", "/authzv1/x", "/auth"] {
            let got = read(FrontProxy::Envoy, "/authz", parts("GET", path, &[]));
            assert_eq!(got.unwrap_err(), SubrequestError::Prefix, "{path}");
        }
        let mut p = parts(
            "GET",
            "/auth",
            &[("x-original-method", "GET"), ("x-original-uri", "/a")],
        );
        let untrusted = original(&config(FrontProxy::Nginx, ""), &mut p, false, false);
        assert_eq!(untrusted.unwrap_err(), SubrequestError::Untrusted);
    }

    #[test]
    fn headers_the_upstream_would_act_on_undecided_are_refused() {
        let base = [("x-original-method", "GET"), ("x-original-uri", "/a")];
        for extra in [
            ("x-http-method-override", "DELETE"),
            ("x_original_url", "/admin"),
            ("x-iotgate-principal", "admin"),
            ("cookie", "session=alice"),
            ("x-forwarded-uri", "/admin"),
            ("x-api-key", "another-tenants-key"),
            ("x-real-ip", "6.6.6.6"),
            ("x_custom", "cgi reads it as x-custom"),
        ] {
            let got = read(
                FrontProxy::Nginx,
                "",
                parts("GET", "/auth", &[base[0], base[1], extra]),
            );
            assert_eq!(
                got.unwrap_err(),
                SubrequestError::Undecided(extra.0.to_string()),
                "{extra:?}"
            );
        }
        let mut p = parts("GET", "/auth", &[base[0], base[1], ("cookie", "a=b")]);
        assert!(original(&config(FrontProxy::Nginx, ""), &mut p, true, true).is_ok());
        let with_proxy_headers = [
            base[0],
            base[1],
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "iot.example"),
        ];
        let p = parts("GET", "/auth", &with_proxy_headers);
        assert!(read(FrontProxy::Nginx, "", p).is_ok());
    }
}
