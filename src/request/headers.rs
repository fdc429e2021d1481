//! What request headers mean to iotgate: the ones it refuses, the ones it never forwards,
//! and the media types a body it reads may have.
//!
//! ```text
//! request headers ──connection_names()──▶ `Connection` naming a header iotgate relies on? 400
//!                 ──body_media()─────────▶ body read for a decision: JSON or form, no encoding? 415
//! forward::rewrite ──forwarded()─────────▶ hop-by-hop, spoofable, underscore names dropped
//! ```
//!
//! Names are compared case-insensitively with `_` read as `-`, as CGI-style upstreams do:
//! `X_Iotgate_Principal` is `X-Iotgate-Principal` to them.

use http::header::{self, HeaderMap, HeaderName};

use crate::request::token::has_jwt;
use crate::request::BodyFormat;

/// Headers meaningful for one connection only (RFC 9110 §7.6.1), plus the h2c upgrade's
/// `HTTP2-Settings` (RFC 7540 §3.2.1) and the legacy `Proxy-Connection`: never forwarded.
pub(crate) const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers with which a client could make the upstream act on another method, path,
/// client address or credential than the one decided. Always removed; iotgate sets its own
/// `X-Forwarded-*` (keeping a trusted proxy's).
const SPOOFABLE: [&str; 19] = [
    // credentials of other schemes: the verified token is the one credential forwarded
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-authorization",
    "x-amz-security-token",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-real-ip",
    "true-client-ip",
];

/// Headers the decision relies on: a `Connection` header naming one is refused, since a
/// proxy would strip it after the decision read it.
const RELIED_ON: [&str; 7] = [
    "authorization",
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "cookie",
    "x-request-id",
];

/// Prefix of the headers iotgate sets; clients cannot send them.
const OWN_PREFIX: &str = "x-iotgate-";

/// Why request headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `Connection` names a header the decision reads.
    #[error("`Connection` names `{0}`, which iotgate reads")]
    ConnectionNames(String),
    /// More than one `Host` (RFC 9112 §3.2: answered 400).
    #[error("more than one `Host` header")]
    Hosts,
    /// A token-shaped value in another header than `Authorization`: the upstream could
    /// authenticate the request as someone else.
    #[error("a second credential in {0}")]
    SecondCredential(String),
    /// A body read for the decision is not JSON.
    #[error("body of type `{0}` cannot be read; send application/json")]
    MediaType(String),
    /// A body read for the decision is compressed.
    #[error("body with `Content-Encoding: {0}` cannot be read")]
    Encoding(String),
}

/// A header name as CGI-style servers read it: lowercase, `_` as `-`.
fn canonical(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// The tokens of every `Connection` header, lowercased.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Refuses several `Host` headers, and a `Connection` header that names a header the
/// decision relies on or the query parameter that carries tokens (`token_parameter`).
///
/// # Errors
/// [`HeaderError::Hosts`], [`HeaderError::ConnectionNames`].
pub(crate) fn check_head(
    headers: &HeaderMap,
    token_parameter: Option<&str>,
) -> Result<(), HeaderError> {
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(HeaderError::Hosts);
    }
    let parameter = token_parameter.map(canonical);
    for token in connection_tokens(headers) {
        let name = canonical(&token);
        if RELIED_ON.contains(&name.as_str())
            || name.starts_with(OWN_PREFIX)
            || parameter.as_deref() == Some(name.as_str())
        {
            return Err(HeaderError::ConnectionNames(token));
        }
    }
    Ok(())
}

/// Refuses a request that carries a JWT-shaped value in a header other than
/// `Authorization` (`X-Api-Key`, `Sec-WebSocket-Protocol`, ...); `Cookie` is looked at only
/// when it is forwarded (`cookies`). The query is `uri::check_query`'s.
///
/// # Errors
/// [`HeaderError::SecondCredential`] naming the header.
pub(crate) fn second_credential(headers: &HeaderMap, cookies: bool) -> Result<(), HeaderError> {
    for (name, value) in headers {
        let skipped = name == header::AUTHORIZATION || (name == header::COOKIE && !cookies);
        if !skipped && has_jwt(value.as_bytes()) {
            return Err(HeaderError::SecondCredential(format!("header `{name}`")));
        }
    }
    Ok(())
}

/// Checks that a body iotgate reads is what it parses: for JSON `application/json` or
/// `application/*+json`, for forms `application/x-www-form-urlencoded`; UTF-8, not
/// compressed.
///
/// # Errors
/// [`HeaderError::MediaType`] or [`HeaderError::Encoding`].
pub(crate) fn body_media(headers: &HeaderMap, format: BodyFormat) -> Result<(), HeaderError> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (types.next(), types.next()) {
        (Some(v), None) => v.to_str().unwrap_or_default(),
        (None, _) => return Err(HeaderError::MediaType("none".into())),
        (Some(_), Some(_)) => return Err(HeaderError::MediaType("several".into())),
    };
    let mut params = value.split(';');
    let essence = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let fits = match format {
        BodyFormat::Json | BodyFormat::JsonArray => {
            essence == "application/json"
                || essence
                    .strip_prefix("application/")
                    .is_some_and(|sub| sub.ends_with("+json") && sub.len() > "+json".len())
        }
        BodyFormat::Form => essence == "application/x-www-form-urlencoded",
    };
    let utf8 = params.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    if !fits || !utf8 {
        return Err(HeaderError::MediaType(value.chars().take(64).collect()));
    }
    for encoding in headers.get_all(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?");
        if !encoding
            .split(',')
            .all(|e| e.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(HeaderError::Encoding(encoding.chars().take(32).collect()));
        }
    }
    Ok(())
}

/// Whether a client header may reach the upstream: not hop-by-hop, not named by
/// `Connection`, not one of iotgate's own or a spoofable one, and with no `_` in its name
/// (dropped as nginx does, so no spelling can alias another header). `trusted` (the peer
/// is a configured trusted proxy) keeps its `Forwarded` and `X-Forwarded-For/Proto/Host`.
pub(crate) fn forwarded(name: &HeaderName, named_by_connection: &[String], trusted: bool) -> bool {
    let raw = name.as_str();
    let from_proxy = raw == "forwarded" || raw.starts_with("x-forwarded-");
    !(acted_on_undecided(raw)
        || HOP_BY_HOP.contains(&raw)
        || named_by_connection.iter().any(|n| n == raw)
        || (from_proxy && !trusted))
}

/// Whether the one `Authorization` header is `Bearer <token>` (compared in constant time):
/// the admin listener's and the decision API's caller tokens.
pub(crate) fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let given = match (all.next(), all.next()) {
        (Some(value), None) => value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .unwrap_or_default(),
        _ => b"",
    };
    let token = token.as_bytes();
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether any `Authorization` header carries a Bearer token (verified or not).
pub(crate) fn has_bearer(headers: &HeaderMap) -> bool {
    headers.get_all(header::AUTHORIZATION).iter().any(|v| {
        v.as_bytes()
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
    })
}

/// Whether the upstream could act on a header (lowercase name) that no decision read: a
/// name with `_` (CGI servers read it as `-`), one of [`SPOOFABLE`], or a client's own
/// `X-Iotgate-*`. The reverse proxy always removes these; decide mode refuses them, since
/// the front proxy would pass them on.
pub(crate) fn acted_on_undecided(name: &str) -> bool {
    name.contains('_') || name.starts_with(OWN_PREFIX) || SPOOFABLE.contains(&name)
}

/// The client's address as rate limits and logs see it: the peer, unless it is a trusted
/// proxy; then the first address of `X-Forwarded-For`, read from the right, that is not a
/// trusted proxy (a client cannot choose it by prepending entries). An entry that is not an
/// address ends the walk at the last trusted hop.
pub(crate) fn client_address(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => break,
        }
    }
    client
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when there is
/// exactly one well-formed header whose ids are not all zeros.
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let mut all = headers.get_all("traceparent").iter();
    let value = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && !zero(trace)
        && !zero(parent)
        && (version != "00" || parts.next().is_none());
    valid.then(|| trace.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_read_from_well_formed_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("traceparent", v.parse().unwrap());
            }
            trace_id(&h)
        };
        assert_eq!(
            with(&[&format!("00-{id}-00f067aa0ba902b7-01")]).as_deref(),
            Some(id)
        );
        for bad in [
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("00-{id}-00f067aa0ba902b7"),
            "garbage".to_string(),
        ] {
            assert_eq!(with(&[&bad]), None, "{bad}");
        }
        let one = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(
            with(&[&one, &one]),
            None,
            "two traceparents name no one trace"
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_may_not_name_what_the_decision_reads() {
        for bad in [
            "Authorization",
            "keep-alive, authorization",
            "Content_Type",
            "HOST",
            "cookie",
            "x-iotgate-principal",
            "Authorization",
        ] {
            let h = headers(&[("connection", bad)]);
            assert!(check_head(&h, Some("authorization")).is_err(), "{bad}");
        }
        let h = headers(&[("connection", "token")]);
        assert!(check_head(&h, Some("token")).is_err());
        assert!(check_head(&h, None).is_ok());
        let h = headers(&[("connection", "keep-alive, Upgrade, x-trace")]);
        assert!(check_head(&h, Some("authorization")).is_ok());
    }

    #[test]
    fn second_credentials_in_other_headers_are_refused() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c3IiOiJvbGl2aWEifQ.c2ln";
        let ok = headers(&[("authorization", &format!("Bearer {jwt}")), ("cookie", jwt)]);
        assert_eq!(second_credential(&ok, false), Ok(()));
        assert!(
            second_credential(&ok, true).is_err(),
            "a forwarded cookie is looked at"
        );
        for (name, value) in [
            ("x-api-key", jwt.to_string()),
            ("sec-websocket-protocol", format!("chat, {jwt}")),
            ("x-custom", format!("Bearer {jwt}")),
        ] {
            let h = headers(&[(name, value.as_str())]);
            assert!(second_credential(&h, false).is_err(), "{name}");
        }
        let two_hosts = headers(&[("host", "a"), ("host", "b")]);
        assert_eq!(check_head(&two_hosts, None), Err(HeaderError::Hosts));
    }

    fn json_body(h: &HeaderMap) -> Result<(), HeaderError> {
        body_media(h, BodyFormat::Json)
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let xff = |v: &str| headers(&[("x-forwarded-for", v)]);
        let cases = [
            ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
            ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
            (
                "10.0.0.1",
                "6.6.6.6, 198.51.100.1, 10.0.0.2",
                "198.51.100.1",
            ),
            ("10.0.0.1", "10.0.0.3", "10.0.0.3"),
            ("10.0.0.1", "198.51.100.1, junk", "10.0.0.1"),
        ];
        for (peer, chain, client) in cases {
            assert_eq!(
                client_address(ip(peer), &xff(chain), &trusted),
                ip(client),
                "{peer} {chain}"
            );
        }
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn form_bodies_are_read_only_as_forms() {
        let form = |v: &str| body_media(&headers(&[("content-type", v)]), BodyFormat::Form);
        assert_eq!(form("application/x-www-form-urlencoded"), Ok(()));
        assert_eq!(
            form("application/x-www-form-urlencoded; charset=utf-8"),
            Ok(())
        );
        for bad in [
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
        ] {
            assert!(form(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_read_for_decisions_are_plain_json() {
        for good in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/merge-patch+json",
            "application/json;charset=\"utf-8\"",
        ] {
            assert_eq!(
                json_body(&headers(&[("content-type", good)])),
                Ok(()),
                "{good}"
            );
        }
        for bad in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/json; charset=utf-16",
            "application/+json",
            "application/jsonp",
        ] {
            assert!(
                matches!(
                    json_body(&headers(&[("content-type", bad)])),
                    Err(HeaderError::MediaType(_))
                ),
                "{bad}"
            );
        }
        assert!(json_body(&HeaderMap::new()).is_err());
        let two = headers(&[
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ]);
        assert!(json_body(&two).is_err());
        let gz = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        assert_eq!(json_body(&gz), Err(HeaderError::Encoding("gzip".into())));
        let id = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
        ]);
        assert_eq!(json_body(&id), Ok(()));
    }

    #[test]
    fn spoofable_and_aliasing_headers_are_not_forwarded() {
        let named = vec!["x-secret".to_string()];
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        for dropped in [
            "x_iotgate_principal",
            "x-iotgate-principal",
            "forwarded",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-method-override",
            "http2-settings",
            "upgrade",
            "x-secret",
            "x-forwarded-for",
            "x_forwarded_for",
            "content_length",
            "authorization_",
        ] {
            assert!(!forwarded(&name(dropped), &named, false), "{dropped}");
        }
        for kept in ["accept", "authorization", "content-type", "x-trace-id"] {
            assert!(forwarded(&name(kept), &named, false), "{kept}");
        }
        assert!(forwarded(&name("x-forwarded-for"), &named, true));
        assert!(forwarded(&name("forwarded"), &named, true));
        assert!(!forwarded(&name("x-original-url"), &named, true));
    }
}
