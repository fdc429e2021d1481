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

pub(crate) mod cors;
pub(crate) mod decide;
pub(crate) mod forward;
pub(crate) mod limit;
pub(crate) mod response;
mod shared;
pub(crate) mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use self::cors::Cors;
use self::forward::{Stamp, Upstream};
use self::limit::PublicLimiter;
pub(crate) use self::shared::shared_store;
use crate::authn::Verifier;
use crate::authz::cache::Caches;
use crate::authz::decision::{
    self, BadRequest, Credentials, Decision, Outcome, Rejection, RequestHead,
};
use crate::authz::snapshot::Loaded;
use crate::authz::snapshot::Snapshot;
use crate::config::problem::{Problem, Problems};
use crate::config::{BodyRoutes, CacheConfig, Config, ServerConfig};
use crate::model::directory::change::Change;
use crate::model::directory::journal::Journal;
use crate::model::routes::{Auth, Route};
use crate::proxy::response::{full, Body, BoxError, Failure, UpstreamError, REQUEST_ID};
use crate::request::subrequest::{self, OriginalBody, SubrequestError};
use crate::request::uri::Query;
use crate::request::{headers, TlsSession};
use crate::store::Replica;
use crate::telemetry;
use crate::telemetry::inputs::{Entry, Recorder};
use crate::telemetry::metrics::{Metrics, UpstreamFailure};

/// Longest client-sent `X-Request-Id` kept as is.
const MAX_REQUEST_ID: usize = 128;

/// Shared state of the gateway: keys, the current snapshot, caches, the upstream client.
#[derive(Debug)]
pub struct Gateway {
    verifier: Verifier,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Told the generation of every snapshot swapped in (open streams decide again).
    swapped: tokio::sync::watch::Sender<u64>,
    /// Woken by a 2xx answer to a `resync` route; `[directory.sync]` waits on it.
    resync: Arc<tokio::sync::Notify>,
    caches: Caches,
    metrics: Metrics,
    upstream: Upstream,
    /// Rate limits of public routes (`serve` only).
    limiter: Option<PublicLimiter>,
    /// `[server.cors]`.
    cors: Option<Cors>,
    server: ServerConfig,
    /// The gateway of `check`: requests may carry [`TrustedClaims`], and in decide mode
    /// each request is the original one (no sub-request to read).
    offline: bool,
    /// Milliseconds since the epoch of the upstream's last answer (0: never).
    upstream_answered: AtomicU64,
    /// Where directory changes are made durable (`[directory] journal`).
    journal: Option<Arc<Journal>>,
    /// The directory shared with other replicas (`[directory] store = "postgres"`).
    replica: Option<Arc<Replica>>,
    /// One writer at a time: directory changes and reloads.
    writes: tokio::sync::Mutex<()>,
    /// One change of the serving directory from the shared database at a time (commits,
    /// catch-ups, reloads of a replica); held briefly, never across a forward.
    applying: tokio::sync::Mutex<()>,
    /// Directory changes applied since start (names versions without a journal).
    changes: AtomicU64,
    /// `[directory] compact_after`.
    compact_after: usize,
    /// `[log] decision_inputs` (`serve` only).
    recorder: Option<Recorder>,
    /// Set on SIGTERM: `/readyz` fails while requests are still served.
    draining: std::sync::atomic::AtomicBool,
}

/// Why a directory change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The changes do not fit the schema or the rules (nothing applied).
    #[error("{0}")]
    Invalid(Problems),
    /// The journal could not be written (nothing applied).
    #[error("journal: {0}")]
    Journal(std::io::Error),
    /// The shared database could not be written, or its directory is not loaded yet
    /// (nothing applied).
    #[error("{0}")]
    Store(String),
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
        decide::problems(config, &snapshot).into_result(())?;
        let metrics = Metrics::default();
        let journal = open_journal(config, &snapshot)?;
        let replica = shared::open_replica(config)?;
        let recorder = match &config.log.decision_inputs {
            Some(path) => Some(
                Recorder::open(
                    path,
                    config.log.decision_inputs_max_bytes,
                    metrics.inputs_dropped(),
                )
                .map_err(|e| {
                    config.problem("log.decision_inputs", format!("{}: {e}", path.display()))
                })?,
            ),
            None => None,
        };
        Ok(Gateway {
            verifier,
            swapped: tokio::sync::watch::Sender::new(snapshot.generation),
            resync: Arc::default(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            caches: Caches::new(&config.cache),
            metrics,
            server: server.clone(),
            upstream: Upstream::new(server)?,
            limiter: server.public_rate.map(PublicLimiter::new),
            cors: server.cors.clone().map(Cors::new),
            journal,
            replica,
            writes: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
            changes: AtomicU64::new(0),
            compact_after: config.directory.compact_after,
            offline: false,
            upstream_answered: AtomicU64::new(0),
            recorder,
            draining: Default::default(),
        })
    }

    /// The gateway `check` decides with: the same handling, no cache, a stand-in upstream
    /// that answers allowed requests `200`, and [`TrustedClaims`] honoured for `--as`.
    pub fn offline(loaded: Loaded) -> Gateway {
        let Loaded {
            config,
            snapshot,
            verifier,
        } = loaded;
        let server = config.server.clone().unwrap_or_else(ServerConfig::offline);
        let no_cache = CacheConfig {
            max_entries: 0,
            ..config.cache
        };
        Gateway {
            verifier,
            swapped: tokio::sync::watch::Sender::new(snapshot.generation),
            resync: Arc::default(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            caches: Caches::new(&no_cache),
            metrics: Metrics::default(),
            upstream: Upstream::stand_in(&server),
            limiter: None,
            cors: server.cors.clone().map(Cors::new),
            journal: None,
            replica: None,
            writes: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
            changes: AtomicU64::new(0),
            compact_after: config.directory.compact_after,
            server,
            offline: true,
            upstream_answered: AtomicU64::new(0),
            recorder: None,
            draining: Default::default(),
        }
    }

    /// Marks the gateway as shutting down (`/readyz` fails from now on).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` the one every new request uses (requests in flight finish with the
    /// one they started with); cached decisions of older snapshots are dropped.
    pub fn swap(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.snapshot.store(Arc::new(snapshot));
        self.caches.decisions.clear();
        self.swapped.send_replace(generation);
    }

    /// Applies directory changes: checked on a copy, written to the journal (on disk before
    /// this returns), then served by every new request. One writer at a time.
    ///
    /// # Errors
    /// The changes do not fit (nothing applied), or the journal failed (nothing applied).
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), CommitError> {
        let _one = self.writes.lock().await;
        self.commit_locked(changes).await
    }

    /// [`Gateway::commit`], for a caller that holds the writer lock. Changes that leave
    /// every entity as it is write nothing.
    async fn commit_locked(&self, changes: Vec<Change>) -> Result<(), CommitError> {
        if let Some(replica) = &self.replica {
            return self.commit_shared(replica, changes).await;
        }
        let current = self.snapshot();
        if current.directory.unchanged_by(&changes) {
            return Ok(());
        }
        let seq = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
        let next = current
            .with_changes(&changes, seq)
            .map_err(CommitError::Invalid)?;
        if let Some(journal) = &self.journal {
            let (writer, batch) = (journal.clone(), changes.clone());
            let written = tokio::task::spawn_blocking(move || writer.append(&batch))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = written {
                tracing::error!(journal = %journal.path().display(), error = %e, "journal write failed; change refused");
                return Err(CommitError::Journal(e));
            }
        }
        self.swap(next);
        self.metrics.record_directory_change(true);
        if let Some(journal) = &self.journal {
            let (writer, snapshot, limit) = (journal.clone(), self.snapshot(), self.compact_after);
            let compacted =
                tokio::task::spawn_blocking(move || compact_if_due(&writer, &snapshot, limit))
                    .await;
            if let Ok(Err(e)) | Err(e) = compacted.map_err(std::io::Error::other) {
                // the entries stay as they were: nothing is lost, the next write tries again
                tracing::warn!(journal = %journal.path().display(), error = %e, "journal compaction failed");
            }
        }
        Ok(())
    }

    /// Notified when a `resync` route was answered 2xx (one wake-up is kept until taken).
    pub(crate) fn resync_wanted(&self) -> &tokio::sync::Notify {
        &self.resync
    }

    /// Holds off directory changes while a reload builds and swaps its snapshot.
    pub async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// The token verifier (its keys rotate in place).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The `[server]` section it serves.
    pub fn server(&self) -> &ServerConfig {
        &self.server
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

    /// Serves one request. The decision is logged once: when the answer is ready, or, if
    /// the client goes away first (the future is dropped), by the [`Record`] guard.
    pub async fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.exchange(request, peer, |_| ()).await.0
    }

    /// [`Gateway::handle`], showing `observe` the decision before it is logged (`check`
    /// explains it).
    pub async fn exchange<B, R>(
        &self,
        request: Request<B>,
        peer: SocketAddr,
        observe: impl FnOnce(&Decision) -> R,
    ) -> (Response<Body>, R)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        // an IPv4 client of a dual-stack listener is ::ffff:a.b.c.d: trusted proxies, rate
        // limits, logs and X-Forwarded-For see a.b.c.d
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let request_id = request_id(request.headers());
        let (mut parts, body) = request.into_parts();
        let asked = self.original_request(&mut parts, peer, !body.is_end_stream());
        // a request whose route changes the directory is decided, forwarded and applied
        // under the writer lock, on the newest snapshot: two of them decided on the same
        // snapshot could both pass a limit (the license) that only one may (decide mode
        // forwards nothing and applies no effects)
        let mutates = self.server.decide.is_none()
            && (self.snapshot.load().routes).mutates(&parts.method, parts.uri.path());
        let writer = match mutates {
            true => Some(self.writes.lock().await),
            false => None,
        };
        let snapshot = self.snapshot.load_full();
        let client =
            headers::client_address(peer.ip(), &parts.headers, &self.server.trusted_proxies);
        let preflight = self.cors.as_ref().filter(|_| Cors::is_preflight(&parts));
        let (decision, route, body) = match (asked, preflight) {
            (Err(e), _) => {
                let refused = Decision::refused(&snapshot, Rejection::Subrequest(e));
                (refused, None, None)
            }
            (Ok(_), Some(cors)) => {
                let allowed = cors.allows(&parts.headers);
                (Decision::preflight(&snapshot, allowed), None, None)
            }
            (Ok(arrives), None) => (self.decide(&snapshot, &parts, body, arrives, client)).await,
        };
        let origin = parts.headers.get(http::header::ORIGIN).cloned();
        let target = decision.read.as_ref().map(|_| {
            let query = Query::new(parts.uri.query());
            let query = match self.verifier.query_parameter() {
                Some(token) => query.without(token),
                None => parts.uri.query().map(String::from),
            };
            (parts.uri.path().to_string(), query)
        });
        let mut record = Record {
            gateway: self,
            target,
            client,
            trace_id: headers::trace_id(&parts.headers),
            shadow_version: snapshot.shadow_version.clone(),
            request_id,
            method: parts.method.clone(),
            decision,
            decided: started.elapsed(),
            started,
            upstream: None,
            status: None,
        };
        let expose = self.server.expose_messages;
        let mut response = match (&record.decision.outcome, body) {
            (Outcome::Allow, _) if self.server.decide.is_some() => {
                if route.is_some_and(|r| r.resync) {
                    self.resync_after_forwarding();
                }
                decide::allowed(&record.decision, &record.request_id)
            }
            (Outcome::Allow, Some(body)) => {
                let stream = route.is_some_and(|r| r.stream);
                let websocket = stream && forward::is_websocket(&parts.method, &parts.headers);
                let client_upgrade = parts
                    .extensions
                    .remove::<hyper::upgrade::OnUpgrade>()
                    .filter(|_| websocket);
                let stamp = Stamp {
                    peer,
                    trusted: self.trusted(peer),
                    secure: parts.extensions.get::<Arc<TlsSession>>().is_some(),
                    cookies: self.server.forward_cookies,
                    reads_no_token: route.is_some_and(|r| r.auth == Auth::None),
                    request_id: &record.request_id,
                    principal: record
                        .decision
                        .principal
                        .as_deref()
                        .filter(|_| !record.decision.anonymous),
                    policy_version: &record.decision.policy_version,
                    directory_version: &record.decision.directory_version,
                };
                let sent = Instant::now();
                let forwarded = self.forward(parts, body, stamp, client_upgrade).await;
                record.upstream = Some(sent.elapsed());
                match forwarded {
                    Ok(response) => {
                        let locked = writer.is_some();
                        self.write_through(&record, response.status(), locked).await;
                        let resync = route.is_some_and(|r| r.resync);
                        if resync && response.status().is_success() && !self.upstream.is_stand_in()
                        {
                            self.resync.notify_one();
                        }
                        response
                    }
                    Err(e) => self.upstream_failed(e, &record.request_id, &record.decision),
                }
            }
            (Outcome::Reject(r), _) => Failure::Rejected(r.clone()).to_response(
                &record.request_id,
                &record.decision.policy_version,
                expose,
            ),
            (Outcome::Allow, None) => {
                match preflight {
                    Some(cors) => cors.preflight(&parts, &snapshot.routes),
                    None => Failure::Rejected(Rejection::Forbidden(Default::default()))
                        .to_response(&record.request_id, &record.decision.policy_version, expose),
                }
            }
        };
        if let (Some(cors), None) = (&self.cors, preflight) {
            cors.decorate(origin.as_ref(), response.headers_mut());
        }
        if let Some(config) = &self.server.decide {
            decide::fit_status(config.from, &mut response);
        }
        record.status = Some(response.status().as_u16());
        let observed = observe(&record.decision);
        (response, observed)
    }

    /// Decide mode: makes a sub-request the original request it asks about, and says what
    /// the decision gets of its body. `check` passes the original request itself (its
    /// `--request`, whose body `follows`).
    fn original_request(
        &self,
        parts: &mut http::request::Parts,
        peer: SocketAddr,
        follows: bool,
    ) -> Result<OriginalBody, SubrequestError> {
        let Some(config) = &self.server.decide else {
            return Ok(OriginalBody::Here);
        };
        if self.offline {
            return Ok(match config.body_routes {
                BodyRoutes::Decide => OriginalBody::Here,
                BodyRoutes::Refuse => OriginalBody::NotSent { announced: follows },
            });
        }
        let cookies = self.server.forward_cookies;
        subrequest::original(config, parts, self.trusted(peer), cookies)
    }

    /// Decide mode's wake-up of `[directory.sync]` for an allowed `resync` route: the front
    /// proxy forwards it only after this answer, so the sync waits for the upstream to act.
    fn resync_after_forwarding(&self) {
        if self.offline {
            return;
        }
        let wake = self.resync.clone();
        tokio::spawn(async move {
            tokio::time::sleep(decide::RESYNC_AFTER).await;
            wake.notify_one();
        });
    }

    /// Whether a peer is one of `[server] trusted_proxies`.
    fn trusted(&self, peer: SocketAddr) -> bool {
        let proxies = &self.server.trusted_proxies;
        proxies.iter().any(|net| net.contains(&peer.ip()))
    }

    /// Applies the effects of a request the upstream answered 2xx (never for `check`'s
    /// stand-in); `locked`: the caller holds the writer lock (`exchange` takes it for every
    /// route with effects). A failure is logged and counted: the upstream has acted already.
    async fn write_through(&self, record: &Record<'_>, status: StatusCode, locked: bool) {
        let effects = &record.decision.effects;
        if effects.is_empty() || !status.is_success() || self.upstream.is_stand_in() {
            return;
        }
        // a reload may have given the route its effects after `exchange` looked: then the
        // lock is not held yet
        let committed = match (&self.replica, locked) {
            (Some(replica), true) => self.commit_effect(replica, effects.clone()).await,
            (Some(replica), false) => {
                let _one = self.writes.lock().await;
                self.commit_effect(replica, effects.clone()).await
            }
            (None, true) => self.commit_locked(effects.clone()).await,
            (None, false) => self.commit(effects.clone()).await,
        };
        if let Err(e) = committed {
            self.metrics.record_directory_change(false);
            tracing::error!(
                request_id = record.request_id.as_str(),
                route = record.decision.route.as_deref().unwrap_or("-"),
                error = %e,
                "write-through effect not applied"
            );
        }
    }

    fn upstream_failed(
        &self,
        e: UpstreamError,
        request_id: &str,
        decision: &Decision,
    ) -> Response<Body> {
        match &e {
            UpstreamError::ClientBody(_) => {
                tracing::info!(request_id, error = %e, "client body failed");
                self.metrics.record_client_abort();
            }
            UpstreamError::Unreachable(_) | UpstreamError::Upgrade => {
                tracing::warn!(request_id, error = %e, "upstream failed");
                self.metrics
                    .record_upstream_error(UpstreamFailure::Unreachable);
            }
            UpstreamError::Timeout => {
                tracing::warn!(request_id, error = %e, "upstream failed");
                self.metrics.record_upstream_error(UpstreamFailure::Timeout);
            }
        }
        Failure::Upstream(e).to_response(request_id, &decision.policy_version, false)
    }

    /// Decides, reading the body first when the route needs it. Returns the decision,
    /// the route matched, and the body to forward (the same bytes when it was
    /// read; a streamed body's errors are marked as the client's). In decide mode the
    /// front proxy may send no body (`arrives`): a route that reads body fields is then
    /// refused.
    async fn decide<'s, B>(
        &'s self,
        snapshot: &'s Snapshot,
        parts: &http::request::Parts,
        body: B,
        arrives: OriginalBody,
        client: IpAddr,
    ) -> (Decision, Option<&'s Route>, Option<Body>)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (has_body, body) = match arrives {
            OriginalBody::Here => {
                let (has_body, body) = self.announced(parts, body).await;
                (has_body, Some(body))
            }
            OriginalBody::NotSent { announced } => (announced, None),
        };
        let pending = match self.begin(snapshot, parts, has_body, client) {
            Ok(pending) => pending,
            Err(refused) => return refused,
        };
        let route = Some(pending.route());
        if !pending.needs_body() {
            return (pending.decide(None), route, body);
        }
        let Some(body) = body else {
            return (pending.reject(Rejection::BodyNotForwarded), route, None);
        };
        let (limit, deadline) = (self.server.max_body_bytes, self.server.header_read_timeout);
        match read_bounded(body, &parts.headers, limit, deadline).await {
            Ok(bytes) => {
                let decision = pending.decide(Some(&bytes));
                (decision, route, Some(full(bytes)))
            }
            Err(BodyError::TooLarge) => (pending.reject(Rejection::BodyTooLarge), route, None),
            Err(BodyError::Timeout) => (pending.reject(Rejection::BodyTimeout), route, None),
            Err(BodyError::Read(e)) => (
                pending.reject(Rejection::BadRequest(BadRequest::BodyRead(e))),
                route,
                None,
            ),
        }
    }

    /// Whether a body follows, and the body to go on with (its errors marked as the
    /// client's). A GET or HEAD may announce a body that turns out empty (an HTTP/2 DATA
    /// frame with nothing but END_STREAM, a lone last chunk): it is read, at most nothing.
    async fn announced<B>(&self, parts: &http::request::Parts, body: B) -> (bool, Body)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let follows = !body.is_end_stream();
        let body: Body = body
            .map_frame(without_trailers)
            .map_err(|e| -> BoxError { Box::new(ClientBodyError(Box::new(e))) })
            .boxed();
        match (&parts.method, follows) {
            (&http::Method::GET | &http::Method::HEAD, true) => {
                let deadline = self.server.header_read_timeout;
                let empty = read_bounded(body, &parts.headers, 0, deadline)
                    .await
                    .is_ok();
                (!empty, full(Bytes::new()))
            }
            (_, follows) => (follows, body),
        }
    }

    /// The decision up to the body: token, route, directory, rate limit of public routes.
    #[allow(
        clippy::result_large_err,
        reason = "the refusal is the answer, made once per request"
    )]
    fn begin<'s>(
        &'s self,
        snapshot: &'s Snapshot,
        parts: &http::request::Parts,
        has_body: bool,
        client: IpAddr,
    ) -> Result<decision::Pending<'s>, (Decision, Option<&'s Route>, Option<Body>)> {
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            has_body,
            forwards_cookies: self.server.forward_cookies,
            tls_client: parts
                .extensions
                .get::<Arc<TlsSession>>()
                .and_then(|t| t.client.as_ref()),
        };
        let credentials = match parts.extensions.get::<TrustedClaims>() {
            Some(TrustedClaims(claims)) if self.offline => Credentials::Trusted(claims.clone()),
            _ => Credentials::Token,
        };
        let pending = decision::begin(
            snapshot,
            &self.verifier,
            head,
            credentials,
            Some(&self.caches),
        )
        .map_err(|rejected| (*rejected, None, None))?;
        // `check` (offline) shows what each case asked, so it keeps what a decision read
        let pending = pending.recording(self.recorder.is_some() || self.offline);
        let route = pending.route();
        if let Some(refused) = self
            .server
            .decide
            .as_ref()
            .and_then(|_| decide::unforwardable(route, parts))
        {
            return Err((pending.reject(refused), Some(route), None));
        }
        if let (Some(limiter), Auth::Optional | Auth::None) = (&self.limiter, route.auth) {
            if let Err(seconds) = limiter.admit(client) {
                self.metrics.record_rate_limited();
                let refused = pending.reject(Rejection::RateLimited(seconds));
                return Err((refused, Some(route), None));
            }
        }
        Ok(pending)
    }

    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Body,
        stamp: Stamp<'_>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, UpstreamError> {
        let websocket = client_upgrade.is_some();
        let watch = client_upgrade.as_ref().map(|_| {
            stream::Watch::new(
                self.snapshot.clone(),
                self.swapped.subscribe(),
                self.verifier.clone(),
                &parts,
                self.server.forward_cookies,
                self.metrics.streams_redecided(),
            )
        });
        let request = forward::rewrite(&self.upstream, parts, body, stamp, websocket)?;
        if self.upstream.is_stand_in() {
            return Ok(forward::stand_in_answer(stamp.request_id));
        }
        let mut response = self.upstream.send(request).await?;
        self.upstream_answered.store(now_ms(), Ordering::Relaxed);
        forward::clean_response(&mut response, stamp.request_id, websocket)?;
        if let Some(client) = client_upgrade {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut response);
                let revoked = self.metrics.streams_revoked();
                forward::tunnel(
                    client,
                    upstream,
                    stamp.request_id.to_string(),
                    watch,
                    revoked,
                );
            }
        }
        Ok(response.map(|b| b.map_err(Into::into).boxed()))
    }
}

/// Opens `[directory] journal` (compacted when it has grown past `compact_after`).
fn open_journal(config: &Config, snapshot: &Snapshot) -> Result<Option<Arc<Journal>>, Problems> {
    let Some(path) = &config.directory.journal else {
        return Ok(None);
    };
    let journal = Journal::open(path)?;
    compact_if_due(&journal, snapshot, config.directory.compact_after)
        .map_err(|e| Problem::in_file(path, format!("journal compaction: {e}")))?;
    Ok(Some(Arc::new(journal)))
}

/// Rewrites the journal as the net changes of `snapshot` once it holds more than `limit`
/// entries (at start, and after a write).
fn compact_if_due(journal: &Journal, snapshot: &Snapshot, limit: usize) -> std::io::Result<()> {
    let (entries, touched) = journal.held();
    if entries <= limit {
        return Ok(());
    }
    let net = touched
        .iter()
        .map(|uid| snapshot.directory.net_change(uid))
        .collect();
    journal.compact(net)
}

/// A streamed body's frames, minus trailer fields: no decision read them, and upstreams
/// that merge trailers into headers would read a second `Authorization` there.
fn without_trailers(frame: hyper::body::Frame<Bytes>) -> hyper::body::Frame<Bytes> {
    if frame.is_trailers() {
        hyper::body::Frame::data(Bytes::new())
    } else {
        frame
    }
}

/// Claims `check --as` decides with, trusted without a signature. Only the offline gateway
/// of `check` reads them; `serve` decides every request on its verified token.
#[derive(Debug, Clone)]
pub(crate) struct TrustedClaims(pub crate::authn::Claims);

/// An error of the client's request body while it streams to the upstream (told apart
/// from the upstream's own failures by `Upstream::send`).
#[derive(Debug, thiserror::Error)]
#[error("client body: {0}")]
pub(crate) struct ClientBodyError(BoxError);

/// The decision record of one request: logged and counted exactly once, when dropped.
/// `status` is set when the answer is ready; a record dropped without one is a request
/// whose client went away first (logged with status 499, counted as a client abort) — the
/// upstream may have executed it, so it must not go unrecorded.
struct Record<'g> {
    gateway: &'g Gateway,
    /// Path and query (without the token parameter) when decision inputs are recorded.
    target: Option<(String, Option<String>)>,
    client: IpAddr,
    /// The W3C `traceparent` trace id, when the client sent a valid one.
    trace_id: Option<String>,
    shadow_version: Option<Arc<str>>,
    request_id: String,
    method: http::Method,
    decision: Decision,
    decided: Duration,
    started: Instant,
    /// How long the upstream took to answer, when the request was forwarded.
    upstream: Option<Duration>,
    status: Option<u16>,
}

/// The status logged for a request whose client closed the connection before the answer
/// (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

impl Drop for Record<'_> {
    fn drop(&mut self) {
        let metrics = &self.gateway.metrics;
        let status = self.status.unwrap_or_else(|| {
            metrics.record_client_abort();
            CLIENT_CLOSED
        });
        let decision = &self.decision;
        if let Outcome::Reject(Rejection::Internal(e)) = &decision.outcome {
            metrics.record_internal_error();
            tracing::error!(request_id = self.request_id.as_str(), error = %e, "internal fault on the decision path");
        }
        let route = decision.route.as_deref().unwrap_or("-");
        metrics.record_request(route, status, self.started.elapsed(), self.upstream);
        metrics.record_decision(decision.is_allowed(), self.decided);
        if let Outcome::Reject(r) = &decision.outcome {
            metrics.record_denial(response::rejection_reason(r));
        }
        if decision.shadow_disagrees() {
            metrics.record_shadow_disagreement();
            telemetry::shadow_disagreement(
                &self.request_id,
                decision,
                self.shadow_version.as_deref(),
            );
        }
        if let (Some(recorder), Some(read), Some((path, query))) = (
            &self.gateway.recorder,
            decision.read.as_deref(),
            self.target.take(),
        ) {
            recorder.record(&Entry {
                at: telemetry::record::now(),
                request_id: self.request_id.clone(),
                method: self.method.to_string(),
                path,
                query,
                principal: decision.principal.clone().unwrap_or_default(),
                claims: read.claims.clone(),
                anonymous: decision.anonymous,
                body: read.body.clone(),
                route: decision.route.clone().unwrap_or_default(),
                status,
                decision: if decision.is_allowed() {
                    "allow"
                } else {
                    "deny"
                }
                .into(),
                policies: decision.policies.clone(),
                policy_version: decision.policy_version.to_string(),
                directory_version: decision.directory_version.to_string(),
            });
        }
        let asked = telemetry::Asked {
            request_id: &self.request_id,
            trace_id: self.trace_id.as_deref(),
            client: self.client,
            method: &self.method,
        };
        telemetry::decision(
            asked,
            decision,
            match &decision.outcome {
                Outcome::Allow => "-",
                Outcome::Reject(r) => response::rejection_reason(r),
            },
            status,
            self.started.elapsed(),
        );
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
    Timeout,
}

/// Reads a whole body of at most `limit` bytes within `deadline` (a client cannot hold a
/// request iotgate reads by sending its body slowly).
async fn read_bounded(
    body: Body,
    headers: &http::HeaderMap,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    tokio::time::timeout(deadline, read_all(body, headers, limit))
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

async fn read_all(
    mut body: Body,
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
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read.freeze())
}

/// The client's `X-Request-Id` when it is short and plain, else a new one.
pub(crate) fn request_id(headers: &http::HeaderMap) -> String {
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
