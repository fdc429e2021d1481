//! Decide mode's reading of a front proxy's authorization sub-request: the original
//! request it stands for, or why there is none.
//!
//! ```text
//! sub-request from a peer in trusted_proxies (else Untrusted)
//!   nginx      X-Original-Method + X-Original-URI  ─┐
//!   forwarded  X-Forwarded-Method + X-Forwarded-Uri ├─▶ original method, origin-form URI
//!              (+ X-Forwarded-Host as Host)         │   (one value each, else refused)
//!   envoy      its own method, path minus path_prefix ┘
//!   ─▶ headers the proxy passes on that iotgate would have removed? refused
//!   ─▶ the request the decision reads (the sub-request's TLS session and upgrade dropped:
//!      they are the proxy's connection, not the client's)
//! ```
//!
//! The proxy must set these headers itself (replacing any a client sent): iotgate cannot tell
//! a client's `X-Original-URI` from the proxy's, so it trusts them only from the proxy's
//! address.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri};

use crate::config::{DecideConfig, FrontProxy};

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
    /// The original target is not an origin-form path and query.
    #[error("original URI `{0}` is not a path and query")]
    Target(String),
    /// The path does not start with `[server.decide] path_prefix`.
    #[error("path outside the configured path_prefix")]
    Prefix,
    /// A header the front proxy would pass to the upstream that iotgate would have removed
    /// (it changes what the upstream does or who it acts for, but was not decided on).
    #[error("`{0}` would reach the upstream undecided")]
    Undecided(String),
}

/// The original request a sub-request stands for: method, URI, `Host` and headers made
/// those of the client's request.
///
/// # Errors
/// [`SubrequestError`]: refused (401/403 to the client, never forwarded).
pub(crate) fn original(
    config: &DecideConfig,
    parts: &mut Parts,
    trusted: bool,
    forwards_cookies: bool,
) -> Result<(), SubrequestError> {
    if !trusted {
        return Err(SubrequestError::Untrusted);
    }
    let (method, target) = match config.from {
        FrontProxy::Nginx => (
            one(&mut parts.headers, "x-original-method")?,
            one(&mut parts.headers, "x-original-uri")?,
        ),
        FrontProxy::Forwarded => {
            let method = one(&mut parts.headers, "x-forwarded-method")?;
            let target = one(&mut parts.headers, "x-forwarded-uri")?;
            if let Some(host) = parts.headers.get("x-forwarded-host").cloned() {
                parts.headers.insert(header::HOST, host);
            }
            (method, target)
        }
        FrontProxy::Envoy => (
            HeaderValue::from_str(parts.method.as_str())
                .map_err(|_| SubrequestError::Method(parts.method.to_string()))?,
            unprefixed(&parts.uri, &config.path_prefix)?,
        ),
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
    Ok(())
}

/// The one value of `name`, removed from the headers.
fn one(headers: &mut HeaderMap, name: &'static str) -> Result<HeaderValue, SubrequestError> {
    if headers.get_all(name).iter().nth(1).is_some() {
        return Err(SubrequestError::Repeated(name));
    }
    headers.remove(name).ok_or(SubrequestError::Missing(name))
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

/// A path and query as a request line carries it (`/…`, no scheme or authority).
fn origin_form(target: &HeaderValue) -> Result<Uri, SubrequestError> {
    let text = target
        .to_str()
        .map_err(|_| SubrequestError::Target(lossy(target)))?;
    let uri: Uri = text
        .parse()
        .map_err(|_| SubrequestError::Target(text.to_string()))?;
    match (uri.scheme(), uri.authority(), text.starts_with('/')) {
        (None, None, true) => Ok(uri),
        _ => Err(SubrequestError::Target(text.to_string())),
    }
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Headers the reverse proxy would have removed because the upstream could act on them
/// (another method or URL, a client's own `X-Iotgate-*`, a cookie session), which the front
/// proxy passes on. A proxy's own `X-Forwarded-*`, `X-Real-IP` and hop-by-hop headers are
/// its business.
const UNDECIDED: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-path",
];

/// The first header of the original request that would reach the upstream undecided.
fn undecided(headers: &HeaderMap, forwards_cookies: bool) -> Option<String> {
    headers.keys().find_map(|name: &HeaderName| {
        let canonical = name.as_str().replace('_', "-");
        let refused = UNDECIDED.contains(&canonical.as_str())
            || canonical.starts_with(super::headers::OWN_PREFIX)
            || [
                "x-original-uri",
                "x-original-method",
                "x-forwarded-uri",
                "x-forwarded-method",
            ]
            .contains(&canonical.as_str())
            || (!forwards_cookies && *name == header::COOKIE);
        refused.then(|| name.as_str().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BodyRoutes;

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

    fn read(from: FrontProxy, prefix: &str, mut p: Parts) -> Result<Parts, SubrequestError> {
        original(&config(from, prefix), &mut p, true, false).map(|()| p)
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
        let p = read(FrontProxy::Nginx, "", nginx).unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string().as_str()),
            ("DELETE", "/v1/users/bob/devices/d?x=1")
        );
        assert!(p.headers.get("x-original-uri").is_none());

        let caddy = parts(
            "GET",
            "/auth",
            &[
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/v1/x"),
                ("x-forwarded-host", "iot.example"),
            ],
        );
        let p = read(FrontProxy::Forwarded, "", caddy).unwrap();
        assert_eq!((p.method.as_str(), p.uri.path()), ("POST", "/v1/x"));
        assert_eq!(p.headers[header::HOST], "iot.example");

        let envoy = parts("PUT", "/authz/v1/x?y=2", &[]);
        let p = read(FrontProxy::Envoy, "/authz", envoy).unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string().as_str()),
            ("PUT", "/v1/x?y=2")
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
        for target in ["http://evil/a", "a/b", "*"] {
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
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.1"),
        ];
        assert!(read(
            FrontProxy::Nginx,
            "",
            parts("GET", "/auth", &with_proxy_headers)
        )
        .is_ok());
    }
}
