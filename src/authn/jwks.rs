//! Keys fetched from a JWKS URL (`jwks_url`): at start, every `jwks_refresh_seconds`, and
//! when a token names a `kid` the set does not have (at most once per [`MIN_REFETCH`]).
//!
//! ```text
//! Remote::run (one task per URL) ──GET url (10 s, ≤ 1 MiB)──▶ keys::jwks ──▶ KeySet::replace
//!      ▲ sleep(refresh) | unknown kid (Verifier::verify → Remote::wake)
//!      └─ a failed fetch keeps the last good keys; it is counted and shown by /status
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde::Serialize;

use super::keys::KeySet;

/// The least time between two fetches the unknown-`kid` trigger may cause.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Longest wait for a JWKS answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One JWKS URL and the key set it fills.
pub struct Remote {
    url: http::Uri,
    refresh: Duration,
    algorithms: Vec<Algorithm>,
    set: KeySet,
    wake: tokio::sync::Notify,
    state: Mutex<State>,
    fetched: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    attempted: Option<Instant>,
    status: RemoteStatus,
}

/// What `/status` shows of a JWKS URL.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RemoteStatus {
    /// The URL.
    pub url: String,
    /// Keys served now.
    pub keys: usize,
    /// When the keys served now were fetched (seconds since the epoch).
    pub fetched_at: Option<u64>,
    /// The last fetch's error, when it failed (the last good keys keep serving).
    pub last_error: Option<String>,
}

impl Remote {
    pub(crate) fn new(
        url: http::Uri,
        refresh: Duration,
        algorithms: Vec<Algorithm>,
        set: KeySet,
    ) -> Remote {
        let status = RemoteStatus {
            url: url.to_string(),
            ..RemoteStatus::default()
        };
        Remote {
            url,
            refresh,
            algorithms,
            set,
            wake: tokio::sync::Notify::new(),
            state: Mutex::new(State {
                attempted: None,
                status,
            }),
            fetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Asks for a fetch soon (a token named a `kid` the set does not have).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Its status.
    pub fn status(&self) -> RemoteStatus {
        self.lock().status.clone()
    }

    /// (successful, failed) fetches so far.
    pub fn fetches(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches once and serves the keys when they are a usable JWKS.
    pub async fn fetch(&self) -> Result<(), String> {
        self.lock().attempted = Some(Instant::now());
        let result = self.download().await.and_then(|text| {
            let origin = std::path::Path::new(self.url.path());
            super::keys::jwks(&text, origin, &self.algorithms)
                .map_err(|p| p.to_string().trim().to_string())
        });
        let mut state = self.lock();
        match result {
            Ok(keys) => {
                state.status.keys = keys.len();
                state.status.fetched_at = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
                state.status.last_error = None;
                self.set.replace(keys);
                self.fetched.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = e.as_str(), "JWKS fetch failed; the last good keys keep serving");
                state.status.last_error = Some(e.clone());
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<String, String> {
        let client = client()?;
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("body: {e}"))?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|_| "not UTF-8".to_string())
    }

    /// Keeps the set fresh: fetches `refresh` after the last attempt, and when woken, as
    /// soon as [`MIN_REFETCH`] (or `refresh`, if shorter) has passed since it.
    pub async fn run(self: Arc<Self>) {
        loop {
            let last = self.lock().attempted.unwrap_or_else(Instant::now);
            let regular = tokio::time::Instant::from_std(last + self.refresh);
            tokio::select! {
                () = tokio::time::sleep_until(regular) => {}
                () = self.wake.notified() => {
                    let earliest = last + MIN_REFETCH.min(self.refresh);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(earliest)).await;
                }
            }
            let _ = self.fetch().await;
        }
    }
}

fn client() -> Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>, String> {
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
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
