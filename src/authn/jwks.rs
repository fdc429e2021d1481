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

use jsonwebtoken::Algorithm;
use serde::Serialize;

use super::fetch::Fetcher;
use super::keys::KeySet;

/// The least time between two fetches the unknown-`kid` trigger may cause.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(10);
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
        Fetcher::new()?.get(&self.url, None, MAX_JWKS_BYTES).await
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
