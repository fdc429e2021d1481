//! The admin listener (`[server] admin_listen`): health, readiness, status, metrics, reload.
//!
//! ```text
//! GET  /healthz  200 while the process runs
//! GET  /readyz   200 when a snapshot serves and the upstream answered in the last 30 s
//!                (probed with GET / when it has not), else 503; `degraded` lists what
//!                serves on stale data (a failing `[directory.sync]`)
//! GET  /status   JSON: versions, loaded-at, counts, last reload attempt, cache stats, sync
//! GET  /metrics  Prometheus text format
//! POST /reload   build and swap a new snapshot now (409 when reload = "off")
//! POST /sync     run `[directory.sync]` now: 200 with its status, 502 when it failed
//! /directory/entities…  the entity API (`serve::entities`), with the [admin] token
//! ```
//!
//! Bind it to loopback or a private network: only the entity API is authenticated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::config::Reload;
use crate::proxy::response::{full, AdminRefusal, Body, Failure};
use crate::proxy::Gateway;
use crate::serve::reload::{rfc3339, Reloader};
use crate::serve::sync::Sync;
use crate::telemetry::metrics::KeyStats;

/// How recently the upstream must have answered for `/readyz`.
const READY_WINDOW: Duration = Duration::from_secs(30);

/// The admin endpoints.
#[derive(Debug)]
pub(crate) struct Admin {
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    mode: Reload,
    /// `Host` values answered: the listener's address, `localhost`, `[server] admin_hosts`.
    hosts: Vec<String>,
    /// The listener's port, which an address `Host` must name.
    port: u16,
    /// Whether the listener takes loopback connections only.
    loopback: bool,
    /// The `[admin] token_file` bearer token the entity API requires.
    token: Option<String>,
    /// `[directory.sync]`, when configured.
    sync: Option<Arc<Sync>>,
}

impl Admin {
    /// Admin endpoints over a gateway and its reloader, listening on `addr`; `extra_hosts`
    /// are further `Host` values it answers (a name it is reached by).
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        reloader: Arc<Reloader>,
        mode: Reload,
        addr: SocketAddr,
        extra_hosts: &[String],
        token: Option<String>,
        sync: Option<Arc<Sync>>,
    ) -> Admin {
        let port = addr.port();
        let mut hosts = vec![
            addr.to_string(),
            "localhost".to_string(),
            format!("localhost:{port}"),
        ];
        hosts.extend(extra_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Admin {
            gateway,
            reloader,
            mode,
            hosts,
            port,
            loopback: addr.ip().is_loopback(),
            token,
            sync,
        }
    }

    /// What serves, and how the last reload went, the way Prometheus exporters say it.
    fn info_metrics(&self) -> String {
        let snapshot = self.gateway.snapshot();
        let ok = self.reloader.last().is_none_or(|a| a.ok);
        let loaded = snapshot
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        format!(
            "# HELP iotgate_build_info The iotgate version.\n# TYPE iotgate_build_info gauge\n\
             iotgate_build_info{{version=\"{}\"}} 1\n\
             # HELP iotgate_snapshot_info The policy and directory versions serving.\n# TYPE iotgate_snapshot_info gauge\n\
             iotgate_snapshot_info{{policy_version=\"{}\",directory_version=\"{}\"}} 1\n\
             # HELP iotgate_last_reload_successful Whether the last reload attempt (or the start) succeeded.\n# TYPE iotgate_last_reload_successful gauge\n\
             iotgate_last_reload_successful {}\n\
             # HELP iotgate_last_reload_success_timestamp_seconds When the serving snapshot was built (start, reload or directory change).\n# TYPE iotgate_last_reload_success_timestamp_seconds gauge\n\
             iotgate_last_reload_success_timestamp_seconds {loaded:.3}\n",
            label(env!("CARGO_PKG_VERSION")),
            label(&snapshot.policy_version),
            label(&snapshot.directory_version),
            u8::from(ok),
        )
    }

    /// Whether a request may be answered: no `Origin` (browsers send one on cross-site
    /// requests) and a `Host` the listener is known by (DNS rebinding sends the attacker's).
    fn may_answer(&self, request: &Request<Incoming>) -> bool {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .map(str::to_ascii_lowercase);
        !request.headers().contains_key(header::ORIGIN)
            && host.is_some_and(|h| self.hosts.contains(&h) || self.is_ip_literal(&h))
    }

    /// An `IP:port` `Host` on the listener's port: what a Kubernetes probe or a Prometheus
    /// scrape sends (the pod's address). DNS rebinding needs a name, so an address is safe.
    fn is_ip_literal(&self, host: &str) -> bool {
        host.parse::<SocketAddr>()
            .is_ok_and(|addr| addr.port() == self.port)
    }

    /// Whether a request may change something: the entity API always needs the `[admin]
    /// token_file` bearer token, other POSTs (`/reload`, `/sync`) need it when one is
    /// configured or the listener is reachable from other hosts (not loopback); reading
    /// endpoints never do (probes and scrapes carry no token).
    fn may_act(&self, request: &Request<Incoming>) -> Result<(), AdminRefusal> {
        let entities = request.uri().path().starts_with("/directory/");
        if !entities && request.method() != Method::POST {
            return Ok(());
        }
        match &self.token {
            Some(token) if crate::request::headers::bearer_is(request.headers(), token) => Ok(()),
            Some(_) => Err(AdminRefusal::Token),
            None if entities || !self.loopback => Err(AdminRefusal::NoToken),
            None => Ok(()),
        }
    }

    /// Answers one admin request.
    pub(crate) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        if !self.may_answer(&request) {
            return self.refuse(AdminRefusal::Host);
        }
        if let Err(refusal) = self.may_act(&request) {
            return self.refuse(refusal);
        }
        if request.uri().path().starts_with("/directory/") {
            return super::entities::handle(&self.gateway, request)
                .await
                .unwrap_or_else(|refusal| self.refuse(refusal));
        }
        // HEAD is GET without the body (hyper sends none for HEAD)
        let method = match request.method() {
            &Method::HEAD => &Method::GET,
            m => m,
        };
        match (method, request.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => self.ready().await,
            (&Method::GET, "/status") => text(
                StatusCode::OK,
                "application/json",
                self.status().to_string(),
            ),
            (&Method::GET, "/metrics") => {
                let caches = self.gateway.caches();
                let verifier = self.gateway.verifier();
                let mut keys = KeyStats {
                    generation: verifier.generation(),
                    ..KeyStats::default()
                };
                for remote in verifier.remotes() {
                    let (ok, failed) = remote.fetches();
                    keys.fetched += ok;
                    keys.failed += failed;
                }
                let mut body = self.gateway.metrics().render(
                    caches.decisions.stats(),
                    caches.tokens.stats(),
                    keys,
                );
                if let Some(sync) = &self.sync {
                    body.push_str(&sync.metrics());
                }
                if let Some(replica) = self.gateway.replica() {
                    body.push_str(&replica.metrics());
                }
                body.push_str(&self.info_metrics());
                body.push_str(&process_metrics());
                text(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            (&Method::POST, "/sync") => match &self.sync {
                None => self.refuse(AdminRefusal::NotFound),
                Some(sync) => {
                    let status = match sync.once(&self.gateway, &self.reloader).await {
                        Ok(()) => StatusCode::OK,
                        Err(_) => StatusCode::BAD_GATEWAY,
                    };
                    text(status, "application/json", json!(sync.status()).to_string())
                }
            },
            (&Method::POST, "/reload") if self.mode == Reload::Off => {
                self.refuse(AdminRefusal::ReloadOff)
            }
            (&Method::POST, "/reload") => {
                let attempt = self.reloader.reload("admin").await;
                let status = if attempt.ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                text(status, "application/json", json!(attempt).to_string())
            }
            _ => self.refuse(AdminRefusal::NotFound),
        }
    }

    /// A refusal, through the one failure → HTTP mapping.
    fn refuse(&self, refusal: AdminRefusal) -> Response<Body> {
        let version = self.gateway.snapshot().policy_version.clone();
        Failure::Admin(refusal).to_response("-", &version, false)
    }

    async fn ready(&self) -> Response<Body> {
        if self.gateway.is_draining() {
            let body = json!({"ready": false, "reason": "shutting down"});
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                body.to_string(),
            );
        }
        if self.gateway.upstream_ready(READY_WINDOW).await {
            // decisions go on with the last directory while the platform cannot be read
            let shared = self.gateway.replica().map(|r| r.degraded());
            let degraded: Vec<String> = self
                .sync
                .iter()
                .filter_map(|s| s.status().last_error)
                .map(|e| format!("sync: {e}"))
                .chain(shared.into_iter().flatten())
                .collect();
            let body = match degraded.is_empty() {
                true => json!({"ready": true}),
                false => json!({"ready": true, "degraded": degraded}),
            };
            text(StatusCode::OK, "application/json", body.to_string())
        } else {
            let body = json!({"ready": false, "reason": "upstream has not answered"});
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                body.to_string(),
            )
        }
    }

    fn status(&self) -> serde_json::Value {
        let s = self.gateway.snapshot();
        let caches = self.gateway.caches();
        json!({
            "policy_version": &*s.policy_version,
            "directory_version": &*s.directory_version,
            "shadow_version": s.shadow_version.as_deref(),
            "loaded_at": rfc3339(s.loaded_at),
            "generation": s.generation,
            "counts": {
                "policies": s.policies.set.policies().count(),
                "shadow_policies": s.shadow.as_ref().map(|p| p.set.policies().count()),
                "routes": s.routes.routes().len(),
                "entities": s.directory.len(),
            },
            "reload": format!("{:?}", self.mode).to_lowercase(),
            "last_reload": self.reloader.last(),
            "shadow_disagreements": self.gateway.metrics().shadow_disagreements(),
            "caches": {
                "decisions": caches.decisions.stats(),
                "tokens": caches.tokens.stats(),
            },
            "keys": {
                "generation": self.gateway.verifier().generation(),
                "jwks": self.gateway.verifier().remotes().iter().map(|r| r.status()).collect::<Vec<_>>(),
            },
            "sync": self.sync.as_ref().map(|s| s.status()),
            "shared_directory": self.gateway.replica().map(|r| r.status()),
        })
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `process_*` metrics every Prometheus client exports, from `/proc/self` (absent where
/// there is no `/proc`).
fn process_metrics() -> String {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return String::new();
    };
    // fields after the command name, which may hold spaces: see proc(5)
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks);
    let rss = field(24).map(|pages| pages * page);
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok();
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start = boot.zip(field(22)).map(|(b, t)| b + t / ticks);
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
    };
    put(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        cpu,
    );
    put(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss,
    );
    put(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        fds.map(|n| n as f64),
    );
    put(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        start,
    );
    out
}
