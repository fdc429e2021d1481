//! What request headers mean to iotgate: the ones it refuses, the ones it never forwards,
//! and the media types a body it reads may have.
//!
//! ```text
//! request headers ──connection_names()──▶ `Connection` naming a header iotgate relies on? 400
//!                 ──json_body()──────────▶ body read for a decision: JSON, no encoding? 415
//! forward::rewrite ──forwarded()─────────▶ hop-by-hop, spoofable, underscore names dropped
//! ```
//!
//! Names are compared case-insensitively with `_` read as `-`, as CGI-style upstreams do:
//! `X_Iotgate_Principal` is `X-Iotgate-Principal` to them.

use http::header::{self, HeaderMap, HeaderName};

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
pub(crate) const OWN_PREFIX: &str = "x-iotgate-";

/// Why request headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `Connection` names a header the decision reads.
    #[error("`Connection` names `{0}`, which iotgate reads")]
    ConnectionNames(String),
    /// More than one `Host` (RFC 9112 §3.2: answered 400).
    #[error("more than one `Host` header")]
    Hosts,
    /// A token-shaped value besides the one iotgate verifies: the upstream could
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

/// Refuses a request that carries a JWT-shaped value anywhere but where iotgate reads its
/// token (`Authorization`, the `token_parameter` in any case): in another header
/// (`X-Api-Key`, `Sec-WebSocket-Protocol`, ...) or another query parameter's name or value.
/// `Cookie` is looked at only when it is forwarded (`cookies`).
///
/// # Errors
/// [`HeaderError::SecondCredential`] naming where it was.
pub(crate) fn second_credential(
    headers: &HeaderMap,
    query: Option<&str>,
    token_parameter: Option<&str>,
    cookies: bool,
) -> Result<(), HeaderError> {
    for (name, value) in headers {
        let skipped = name == header::AUTHORIZATION || (name == header::COOKIE && !cookies);
        if !skipped && has_jwt(value.as_bytes()) {
            return Err(HeaderError::SecondCredential(format!("header `{name}`")));
        }
    }
    for (name, value) in query
        .into_iter()
        .flat_map(crate::request::uri::decoded_pairs)
    {
        let is_token = token_parameter.is_some_and(|t| t.eq_ignore_ascii_case(&name));
        if has_jwt(name.as_bytes()) || (!is_token && has_jwt(value.as_bytes())) {
            let name: String = name.chars().take(32).collect();
            return Err(HeaderError::SecondCredential(format!(
                "query parameter `{name}`"
            )));
        }
    }
    Ok(())
}

/// Whether `text` holds a JWT or JWE: runs of base64url (padding allowed) joined by dots,
/// the first of which decodes to a JSON object — whatever whitespace precedes its `{`
/// (`eyJ…`, `eyAi…`, `ewog…` are all headers a lenient upstream accepts).
fn has_jwt(text: &[u8]) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    // a base64url run from `from`, with its `=` padding
    let part = |from: usize| {
        let run = text[from..].iter().take_while(|b| b64(**b)).count();
        run + text[from + run..]
            .iter()
            .take_while(|b| **b == b'=')
            .count()
    };
    // a header at `at`: long enough, then `.claims.`, decoding to a JSON object
    let jwt_at = |at: usize| {
        let header = part(at);
        let next = at + header;
        let claims = match text.get(next) {
            Some(b'.') => part(next + 1),
            _ => 0,
        };
        header >= 8
            && claims >= 2
            && text.get(next + 1 + claims) == Some(&b'.')
            && decodes_to_object(&LENIENT, &text[at..next])
    };
    let mut at = 0;
    while at < text.len() {
        let run = text[at..].iter().take_while(|b| b64(**b)).count();
        if run == 0 {
            at += 1;
            continue;
        }
        // the run itself, or a JSON header (`e…`) that a prefix hides (`id_eyJ…`)
        let starts = std::iter::once(at).chain((at + 1..at + run).filter(|i| text[*i] == b'e'));
        if starts.take(16).any(jwt_at) {
            return true;
        }
        at += run;
    }
    false
}

/// Whether base64url `part` decodes to text that, past whitespace, opens a JSON object.
fn decodes_to_object(engine: &impl base64::Engine, part: &[u8]) -> bool {
    engine
        .decode(part)
        .is_ok_and(|raw| raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

/// Checks that a body iotgate reads is what it parses: `application/json` or
/// `application/*+json` (UTF-8), not compressed.
///
/// # Errors
/// [`HeaderError::MediaType`] or [`HeaderError::Encoding`].
pub(crate) fn json_body(headers: &HeaderMap) -> Result<(), HeaderError> {
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
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && sub.len() > "+json".len());
    let utf8 = params.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    if !json || !utf8 {
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
    !(raw.contains('_')
        || HOP_BY_HOP.contains(&raw)
        || named_by_connection.iter().any(|n| n == raw)
        || raw.starts_with(OWN_PREFIX)
        || SPOOFABLE.contains(&raw)
        || (from_proxy && !trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn second_credentials_anywhere_else_are_refused() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c3IiOiJvbGl2aWEifQ.c2ln";
        assert!(has_jwt(jwt.as_bytes()));
        assert!(has_jwt(format!("Bearer {jwt}").as_bytes()));
        for not in [
            "eyJ",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.x",
            "thinger.v1",
            "eyJhbGciOiJIUzI1NiJ9..sig",
        ] {
            assert!(!has_jwt(not.as_bytes()), "{not}");
        }
        let token = Some("authorization");
        let ok = headers(&[("authorization", &format!("Bearer {jwt}")), ("cookie", jwt)]);
        assert_eq!(
            second_credential(&ok, Some(&format!("Authorization={jwt}&x=1")), token, false),
            Ok(())
        );
        for (name, value) in [
            ("x-api-key", jwt.to_string()),
            ("sec-websocket-protocol", format!("chat, {jwt}")),
            ("x-custom", format!("Bearer {jwt}")),
        ] {
            let h = headers(&[(name, value.as_str())]);
            assert!(second_credential(&h, None, token, false).is_err(), "{name}");
        }
        let none = HeaderMap::new();
        for q in [
            format!("access={jwt}"),
            "x=%65yJhbGciOiJIUzI1NiJ9.eyJ1c3IiOiJvbGl2aWEifQ.c2ln".to_string(),
            format!("{jwt}=1"),
        ] {
            assert!(
                second_credential(&none, Some(&q), token, false).is_err(),
                "{q}"
            );
        }
        assert!(
            second_credential(&none, Some(&format!("authorization={jwt}")), None, false).is_err()
        );
        assert!(
            second_credential(&ok, None, token, true).is_err(),
            "a forwarded cookie is looked at"
        );
        let two_hosts = headers(&[("host", "a"), ("host", "b")]);
        assert_eq!(check_head(&two_hosts, None), Err(HeaderError::Hosts));
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
