//! Forwarding to the upstream: the pooled client, header hygiene, and WebSocket tunnels.
//!
//! ```text
//! allowed request ──rewrite()──▶ upstream URI (base + original path?query), hop-by-hop
//!   headers and client X-Iotgate-* removed, X-Forwarded-For/Proto/Host, X-Request-Id,
//!   X-Iotgate-Principal, X-Iotgate-Policy-Version set
//!   ──Upstream::send (timeout on the response head)──▶ response, hop-by-hop removed
//!   101 Switching Protocols ──tunnel()──▶ bytes copied both ways until either side closes
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::problem::{Problem, Problems};
use crate::config::ServerConfig;
use crate::proxy::response::{Body, UpstreamError, REQUEST_ID};

/// The base URI of a stand-in without `[server] upstream` (never connected to).
const STAND_IN: &str = "http://127.0.0.1:9";

/// The pooled client to the existing IoT server.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// None: a stand-in that sends nothing (`check` answers with [`stand_in_answer`]).
    client: Option<Client<HttpsConnector<HttpConnector>, Body>>,
    base: Uri,
    timeout: Duration,
}

impl Upstream {
    /// A client for `[server] upstream` (http, or https with the system roots plus the
    /// optional `upstream_ca_file`).
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate.
    pub fn new(server: &ServerConfig) -> Result<Upstream, Problems> {
        let Some(base) = server.upstream.clone() else {
            // decide mode without an upstream: nothing is ever forwarded
            return Ok(Upstream::stand_in(server));
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &server.upstream_ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Problem::in_file(std::path::Path::new("[server]"), format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(server.upstream_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Upstream {
            client: Some(client),
            base,
            timeout: server.upstream_timeout,
        })
    }

    /// An upstream that is never reached: allowed requests are rewritten as for a real one,
    /// then answered by [`stand_in_answer`] (`check`).
    pub fn stand_in(server: &ServerConfig) -> Upstream {
        Upstream {
            client: None,
            base: server
                .upstream
                .clone()
                .unwrap_or_else(|| Uri::from_static(STAND_IN)),
            timeout: server.upstream_timeout,
        }
    }

    /// Whether this is [`Upstream::stand_in`].
    pub fn is_stand_in(&self) -> bool {
        self.client.is_none()
    }

    /// Sends a request, waiting at most the configured timeout for the response head.
    ///
    /// # Errors
    /// Unreachable (502) or timed out (504).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let Some(client) = &self.client else {
            return Err(UpstreamError::Unreachable(
                "a stand-in upstream sends nothing".into(),
            ));
        };
        match tokio::time::timeout(self.timeout, client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) if caused_by_client(&e) => Err(UpstreamError::ClientBody(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Whether the upstream answers at all (any HTTP status) to `GET /`; a stand-in (no
    /// upstream to wait for) always does.
    pub async fn probe(&self) -> bool {
        if self.is_stand_in() {
            return true;
        }
        let request =
            Request::get(self.base.clone()).body(crate::proxy::response::full(bytes::Bytes::new()));
        match request {
            Ok(r) => self.send(r).await.is_ok(),
            Err(_) => false,
        }
    }

    /// The upstream URI for a request path and query.
    fn uri(&self, original: &Uri) -> Result<Uri, UpstreamError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = original.path_and_query().cloned();
        Uri::from_parts(parts).map_err(|e| UpstreamError::Unreachable(e.to_string()))
    }
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &std::path::Path) -> Result<(), Problems> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Problem::in_file(path, format!("cannot read CA file: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| Problem::in_file(path, format!("bad certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Problem::in_file(path, "no certificate in CA file").into());
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| Problem::in_file(path, format!("bad certificate: {e}")))?;
    }
    Ok(())
}

/// Whether a failed exchange failed on the client's body (see `ClientBodyError`).
fn caused_by_client(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<super::ClientBodyError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What iotgate adds to a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the peer is a configured trusted proxy (its `X-Forwarded-*` are kept).
    pub trusted: bool,
    /// Whether the client spoke TLS to iotgate (`X-Forwarded-Proto: https`).
    pub secure: bool,
    /// Whether the client's `Cookie` headers are forwarded (`[server] forward_cookies`).
    pub cookies: bool,
    /// Whether the route reads no token (`auth = "none"`): a bearer token the client sent
    /// anyway was not verified, so it is not forwarded.
    pub reads_no_token: bool,
    /// The request id.
    pub request_id: &'a str,
    /// The authenticated account (none for the anonymous principal).
    pub principal: Option<&'a str>,
    /// The policy version that allowed it.
    pub policy_version: &'a str,
    /// The directory version that allowed it.
    pub directory_version: &'a str,
}

/// What the stand-in upstream answers an allowed request: `200`, an empty body, the request
/// id, as a real answer is cleaned.
pub(crate) fn stand_in_answer(request_id: &str) -> Response<Body> {
    let mut response = Response::new(crate::proxy::response::full(bytes::Bytes::new()));
    set(response.headers_mut(), REQUEST_ID, request_id);
    response
}

/// Whether a request is a WebSocket opening handshake (RFC 6455 §4.1): `GET`,
/// `Connection: upgrade`, `Upgrade: websocket` as the one protocol, version 13 and a key of
/// 16 base64 bytes. Anything else that asks to upgrade is forwarded as a plain request.
pub(crate) fn is_websocket(method: &http::Method, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let single = |name: HeaderName| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().map(str::trim),
            _ => None,
        }
    };
    let key_ok = single(HeaderName::from_static("sec-websocket-key")).is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|raw| raw.len() == 16)
    });
    method == http::Method::GET
        && crate::request::headers::connection_tokens(headers).any(|t| t == "upgrade")
        && single(header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && single(HeaderName::from_static("sec-websocket-version")) == Some("13")
        && key_ok
}

/// Turns the client's request into the upstream's: only end-to-end headers the client may
/// send survive (see `headers::forwarded`), then iotgate's own are set. `websocket`: the
/// request is an allowed WebSocket handshake on a stream route, the one upgrade forwarded.
///
/// # Errors
/// The upstream URI cannot be built.
pub fn rewrite(
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: Body,
    stamp: Stamp<'_>,
    websocket: bool,
) -> Result<Request<Body>, UpstreamError> {
    // the target's authority (HTTP/2 `:authority`, an absolute-form target) wins over
    // `Host`, as RFC 9112 §3.2.2 says
    let original_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    let named: Vec<String> = crate::request::headers::connection_tokens(&parts.headers).collect();
    let unverified_bearer =
        stamp.reads_no_token && crate::request::headers::has_bearer(&parts.headers);
    let dropped: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|name| {
            *name == header::HOST
                || (!stamp.cookies && *name == header::COOKIE)
                || (unverified_bearer && *name == header::AUTHORIZATION)
                || !crate::request::headers::forwarded(name, &named, stamp.trusted)
        })
        .cloned()
        .collect();
    let headers = &mut parts.headers;
    for name in dropped {
        headers.remove(name);
    }
    stamp_forwarded(headers, stamp, original_host);
    set(headers, REQUEST_ID, stamp.request_id);
    if let Some(principal) = stamp.principal {
        set(headers, "x-iotgate-principal", principal);
    }
    set(headers, "x-iotgate-policy-version", stamp.policy_version);
    set(
        headers,
        "x-iotgate-directory-version",
        stamp.directory_version,
    );
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    parts.uri = upstream.uri(&parts.uri)?;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// `X-Forwarded-For/Proto/Host`: a trusted proxy's are kept (the peer appended to the
/// `For` chain); anyone else's were dropped and are set from the connection.
fn stamp_forwarded(headers: &mut HeaderMap, stamp: Stamp<'_>, host: Option<HeaderValue>) {
    let ip = stamp.peer.ip().to_string();
    // a trusted proxy may send the chain on several lines (HAProxy adds its own): all of
    // them, in order, as `headers::client_address` reads them
    let prior: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let chain = match stamp.trusted && !prior.is_empty() {
        true => format!("{}, {ip}", prior.join(", ")),
        false => ip,
    };
    set(headers, "x-forwarded-for", &chain);
    let proto = if stamp.secure { "https" } else { "http" };
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    // RFC 7239: a trusted proxy's `Forwarded` gets this hop appended; anyone else's was
    // dropped and is set from the connection
    let node = match stamp.peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prior) if stamp.trusted => format!("{prior}, for={node}"),
        _ => match host.as_ref().and_then(|h| h.to_str().ok()) {
            Some(h) => format!(
                "for={node};proto={proto};host=\"{}\"",
                h.replace(['"', '\\'], "")
            ),
            None => format!("for={node};proto={proto}"),
        },
    };
    set(headers, "forwarded", &forwarded);
    if let (false, Some(host)) = (headers.contains_key("x-forwarded-host"), host) {
        headers.insert("x-forwarded-host", host);
    }
}

/// Checks the upstream's answer and cleans it for the client. A `101` is accepted only as
/// the answer to the WebSocket handshake iotgate forwarded, switching to `websocket`;
/// any other is refused (502, connection closed), so no tunnel opens that was not decided.
///
/// # Errors
/// [`UpstreamError::Upgrade`].
pub(crate) fn clean_response(
    response: &mut Response<Incoming>,
    request_id: &str,
    websocket: bool,
) -> Result<(), UpstreamError> {
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let to_websocket = response
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        if !websocket || !to_websocket {
            return Err(UpstreamError::Upgrade);
        }
    }
    let named: Vec<String> =
        crate::request::headers::connection_tokens(response.headers()).collect();
    for name in named
        .iter()
        .map(String::as_str)
        .chain(crate::request::headers::HOP_BY_HOP)
    {
        response.headers_mut().remove(name);
    }
    if switching {
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    set(response.headers_mut(), REQUEST_ID, request_id);
    Ok(())
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections,
/// until either side closes or `watch` says the stream is no longer allowed (then the client
/// gets a close frame 1008 and the upstream connection is dropped).
pub(crate) fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    request_id: String,
    watch: Option<super::stream::Watch>,
    revoked: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let result = async {
            let (client, upstream) = tokio::try_join!(client, upstream)?;
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let refused = async {
                match watch {
                    Some(watch) => watch.revoked().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    copied?;
                }
                reason = refused => {
                    revoked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(request_id, reason = reason.as_str(), "stream closed: no longer allowed");
                    let frame = super::stream::close_frame(super::stream::POLICY_VIOLATION, &reason);
                    client.write_all(&frame).await?;
                    client.shutdown().await?;
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(request_id, error = %e, "tunnel closed with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        h.insert("sec-websocket-version", "13".parse().unwrap());
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        h
    }

    #[test]
    fn only_a_complete_websocket_handshake_is_an_upgrade() {
        let get = http::Method::GET;
        assert!(is_websocket(&get, &handshake()));
        assert!(!is_websocket(&http::Method::POST, &handshake()));
        let spoiled: [(&str, &str); 6] = [
            ("upgrade", "h2c"),
            ("upgrade", "websocket, h2c"),
            ("connection", "keep-alive"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "short"),
            ("sec-websocket-key", "bm90IHNpeHRlZW4gYnl0ZXMgYXQgYWxs"),
        ];
        for (name, value) in spoiled {
            let mut h = handshake();
            h.insert(HeaderName::from_static(name), value.parse().unwrap());
            assert!(!is_websocket(&get, &h), "{name}: {value}");
        }
        let mut two = handshake();
        two.append(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_websocket(&get, &two));
    }
}
