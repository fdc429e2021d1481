//! The authorizing reverse proxy: one function per request.
//!
//! ```text
//! request ─▶ request id ─▶ snapshot (one per request, start to end) ─▶ decision::begin
//!   (token cache) ─▶ [route reads the body? read at most max_body_bytes (413 beyond), decide
//!   on those bytes, forward the same bytes : decide, stream the body untouched]
//!   (decision cache) ─▶ allow: forward::rewrite ─▶ Upstream::send ─▶ response streamed back
//!   (101: tunnel) │ reject / upstream failure: response::Failure (the only error→HTTP mapping)
//!   ─▶ one decision log event + metrics (+ shadow disagreement)
//! ```

pub mod forward;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use self::forward::{Stamp, Upstream};
use crate::auth::Verifier;
use crate::cache::Caches;
use crate::config::Config;
use crate::decision::{self, BadRequest, Credentials, Decision, Outcome, Rejection, RequestHead};
use crate::metrics::{Metrics, UpstreamFailure};
use crate::problem::{Problem, Problems};
use crate::response::{full, Body, Failure, UpstreamError, REQUEST_ID};
use crate::snapshot::Snapshot;
use crate::telemetry;

/// Longest client-sent `X-Request-Id` kept as is.
const MAX_REQUEST_ID: usize = 128;

/// Shared state of the gateway: keys, the current snapshot, caches, the upstream client.
#[derive(Debug)]
pub struct Gateway {
    verifier: Verifier,
    snapshot: ArcSwap<Snapshot>,
    caches: Caches,
    metrics: Metrics,
    upstream: Upstream,
    max_body: usize,
    /// Milliseconds since the epoch of the upstream's last answer (0: never).
    upstream_answered: AtomicU64,
}

impl Gateway {
    /// A gateway for a validated config and a loaded snapshot.
    ///
    /// # Errors
    /// The config has no `[server]` section, or the upstream TLS set-up failed.
    pub fn new(
        config: &Config,
        snapshot: Snapshot,
        verifier: Verifier,
    ) -> Result<Gateway, Problems> {
        let server = config.server.as_ref().ok_or_else(|| {
            Problem::in_file(config.source.path(), "`serve` needs a [server] section")
        })?;
        Ok(Gateway {
            verifier,
            snapshot: ArcSwap::from_pointee(snapshot),
            caches: Caches::new(&config.cache),
            metrics: Metrics::default(),
            upstream: Upstream::new(server)?,
            max_body: server.max_body_bytes,
            upstream_answered: AtomicU64::new(0),
        })
    }

    /// The snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` the one every new request uses (requests in flight finish with the
    /// one they started with); cached decisions of older snapshots are dropped.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.caches.decisions.clear();
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The caches.
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// Whether the upstream answered (any status) within `window`; probes it when not.
    pub async fn upstream_ready(&self, window: Duration) -> bool {
        let last = self.upstream_answered.load(Ordering::Relaxed);
        if last > 0 && now_ms().saturating_sub(last) <= window.as_millis() as u64 {
            return true;
        }
        let ok = self.upstream.probe().await;
        if ok {
            self.upstream_answered.store(now_ms(), Ordering::Relaxed);
        }
        ok
    }

    /// Serves one request.
    pub async fn handle(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        let method = request.method().clone();
        let snapshot = self.snapshot.load_full();
        let client_upgrade =
            forward::upgrade_protocol(request.headers()).map(|_| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let (decision, body) = self.decide(&snapshot, &parts, body).await;
        let decided = started.elapsed();
        let response = match (&decision.outcome, body) {
            (Outcome::Allow, Some(body)) => {
                let stamp = Stamp {
                    peer,
                    request_id: &request_id,
                    principal: decision.principal.as_deref().unwrap_or_default(),
                    policy_version: &decision.policy_version,
                    directory_version: &decision.directory_version,
                };
                match self.forward(parts, body, stamp, client_upgrade).await {
                    Ok(response) => response,
                    Err(e) => self.upstream_failed(e, &request_id, &decision),
                }
            }
            (Outcome::Reject(r), _) => {
                Failure::Rejected(r.clone()).to_response(&request_id, &decision.policy_version)
            }
            (Outcome::Allow, None) => Failure::Rejected(Rejection::Forbidden)
                .to_response(&request_id, &decision.policy_version),
        };
        let status = response.status().as_u16();
        self.metrics
            .record_request(decision.route.as_deref().unwrap_or("-"), status);
        self.metrics.record_decision(decision.is_allowed(), decided);
        if decision.shadow_disagrees() {
            self.metrics.record_shadow_disagreement();
            telemetry::shadow_disagreement(
                &request_id,
                &decision,
                snapshot.shadow_version.as_deref(),
            );
        }
        telemetry::decision(&request_id, &method, &decision, status, started.elapsed());
        response
    }

    fn upstream_failed(
        &self,
        e: UpstreamError,
        request_id: &str,
        decision: &Decision,
    ) -> Response<Body> {
        tracing::warn!(request_id, error = %e, "upstream failed");
        self.metrics.record_upstream_error(match e {
            UpstreamError::Unreachable(_) => UpstreamFailure::Unreachable,
            UpstreamError::Timeout => UpstreamFailure::Timeout,
        });
        Failure::Upstream(e).to_response(request_id, &decision.policy_version)
    }

    /// Decides, reading the body first when the route needs it. Returns the body to
    /// forward (the same bytes when it was read).
    async fn decide(
        &self,
        snapshot: &Snapshot,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> (Decision, Option<Body>) {
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let pending = match decision::begin(
            snapshot,
            &self.verifier,
            head,
            Credentials::Token,
            Some(&self.caches),
        ) {
            Err(rejected) => return (*rejected, None),
            Ok(p) => p,
        };
        if !pending.needs_body() {
            return (pending.decide(None), Some(body.map_err(Into::into).boxed()));
        }
        match read_bounded(body, &parts.headers, self.max_body).await {
            Ok(bytes) => {
                let decision = pending.decide(Some(&bytes));
                (decision, Some(full(bytes)))
            }
            Err(BodyError::TooLarge) => (pending.reject(Rejection::BodyTooLarge), None),
            Err(BodyError::Read(e)) => (
                pending.reject(Rejection::BadRequest(BadRequest::Body(e))),
                None,
            ),
        }
    }

    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Body,
        stamp: Stamp<'_>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, UpstreamError> {
        let request = forward::rewrite(&self.upstream, parts, body, stamp)?;
        let mut response = self.upstream.send(request).await?;
        self.upstream_answered.store(now_ms(), Ordering::Relaxed);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let upstream = hyper::upgrade::on(&mut response);
                forward::tunnel(client, upstream, stamp.request_id.to_string());
            }
        }
        forward::clean_response(&mut response, stamp.request_id);
        Ok(response.map(|b| b.map_err(Into::into).boxed()))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads a whole body of at most `limit` bytes.
async fn read_bounded(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// The client's `X-Request-Id` when it is short and plain, else a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    let given = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            id.to_string()
        }
        _ => new_request_id(),
    }
}

fn new_request_id() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    });
    format!(
        "{seed:016x}-{:08x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_plain_and_made_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123_x.y:z".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123_x.y:z");
        for bad in ["", "has space", "quote\"", &"x".repeat(129)] {
            h.insert(REQUEST_ID, bad.parse().unwrap());
            let id = request_id(&h);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 25, "{id}");
        }
        assert_ne!(new_request_id(), new_request_id());
    }
}
