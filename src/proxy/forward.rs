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

use crate::config::ServerConfig;
use crate::problem::{Problem, Problems};
use crate::response::{Body, UpstreamError, REQUEST_ID};

/// Headers meaningful only for one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Prefix of the headers iotgate sets; clients cannot send them.
const OWN_PREFIX: &str = "x-iotgate-";

/// The pooled client to the existing IoT server.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
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
            client,
            base: server.upstream.clone(),
            timeout: server.upstream_timeout,
        })
    }

    /// Sends a request, waiting at most the configured timeout for the response head.
    ///
    /// # Errors
    /// Unreachable (502) or timed out (504).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Whether the upstream answers at all (any HTTP status) to `GET /`.
    pub async fn probe(&self) -> bool {
        let request =
            Request::get(self.base.clone()).body(crate::response::full(bytes::Bytes::new()));
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
    /// The request id.
    pub request_id: &'a str,
    /// The authenticated principal.
    pub principal: &'a str,
    /// The policy version that allowed it.
    pub policy_version: &'a str,
    /// The directory version that allowed it.
    pub directory_version: &'a str,
}

/// The WebSocket (or other) protocol a request asks to upgrade to, if it does.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Turns the client's request into the upstream's.
///
/// # Errors
/// The upstream URI cannot be built.
pub fn rewrite(
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: Body,
    stamp: Stamp<'_>,
) -> Result<Request<Body>, UpstreamError> {
    let upgrade = upgrade_protocol(&parts.headers);
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(OWN_PREFIX))
        .cloned()
        .collect();
    for name in own {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    append_forwarded_for(headers, stamp.peer);
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    set(headers, REQUEST_ID, stamp.request_id);
    set(headers, "x-iotgate-principal", stamp.principal);
    set(headers, "x-iotgate-policy-version", stamp.policy_version);
    set(
        headers,
        "x-iotgate-directory-version",
        stamp.directory_version,
    );
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    parts.uri = upstream.uri(&parts.uri)?;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Cleans the upstream's response for the client (a 101 keeps its upgrade headers).
pub fn clean_response(response: &mut Response<Incoming>, request_id: &str) {
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let upgrade = response.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(response.headers_mut());
    if let (true, Some(protocol)) = (switching, upgrade) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(header::UPGRADE, protocol);
    }
    set(response.headers_mut(), REQUEST_ID, request_id);
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    set(headers, "x-forwarded-for", &value);
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections.
pub fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    request_id: String,
) {
    tokio::spawn(async move {
        let result = async {
            let (client, upstream) = tokio::try_join!(client, upstream)?;
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
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

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(upgrade_protocol(&h), None);
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        append_forwarded_for(&mut h, "127.0.0.1:1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    }
}
