//! Outbound GETs of small documents: JWKS key sets, a platform's REST API for `import` and
//! `[directory.sync]`.
//!
//! ```text
//! get(url, bearer?) ──HTTP/1.1 over rustls (native roots) or plain HTTP, 10 s, ≤ limit──▶
//!   the body as text | a one-line error ("answered 404", "timed out", "unreachable: …")
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest wait for connecting, for the answer's head, and for its body.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A client for [`Fetcher::get`], reusing its connections.
#[derive(Clone, Debug)]
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    /// A client trusting the system's root certificates.
    ///
    /// # Errors
    /// rustls could not be set up.
    pub(crate) fn new() -> Result<Fetcher, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Fetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// GETs `url` (with `Authorization: Bearer <bearer>` when given) and returns its 2xx body.
    ///
    /// # Errors
    /// Unreachable, timed out, not 2xx, larger than `limit` bytes, or not UTF-8.
    pub(crate) async fn get(
        &self,
        url: &http::Uri,
        bearer: Option<&str>,
        limit: usize,
    ) -> Result<String, String> {
        let mut request =
            http::Request::get(url.clone()).header(http::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body =
            tokio::time::timeout(TIMEOUT, Limited::new(response.into_body(), limit).collect())
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| format!("body: {e}"))?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|_| "not UTF-8".to_string())
    }
}
