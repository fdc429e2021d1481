//! Counters of the serving path, rendered in the Prometheus text format on `/metrics`.
//!
//! ```text
//! proxy ──record_request(route template, status, duration, upstream duration)──┐
//!       ──record_decision(allow|deny, latency)────────────────────────────────┤
//!       ──record_upstream_error / shadow ─────────┼─▶ Metrics ──render()──▶ text/plain; version=0.0.4
//! reload ──record_reload(ok)───────────────────────┘      (+ cache stats passed in)
//! ```
//!
//! Requests are labelled by route template, never by raw path.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::authz::cache::Stats;

/// Upper bounds (seconds) of the decision latency histogram.
const DECISION_BUCKETS: [f64; 12] = [
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.05,
];

/// Upper bounds (seconds) of the request and upstream duration histograms.
const REQUEST_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A Prometheus histogram of durations: cumulative bucket counts, count and sum.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, counter) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                inc(counter);
            }
        }
        inc(&self.count);
        let micros = took.as_micros().try_into().unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// `_bucket`, `_sum` and `_count` lines of one series (`labels`: `route="…"` or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, c) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                get(c)
            );
        }
        let count = get(&self.count);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = |l: &str| match l.is_empty() {
            true => String::new(),
            false => format!("{{{l}}}"),
        };
        let sum = get(&self.micros) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// What is counted per route template.
#[derive(Debug)]
struct RouteSeries {
    /// status → count
    statuses: HashMap<u16, AtomicU64>,
    /// Arrival to the answer's head (or the refusal).
    duration: Histogram,
    /// Sending to the upstream to its response head.
    upstream: Histogram,
}

impl Default for RouteSeries {
    fn default() -> RouteSeries {
        RouteSeries {
            statuses: HashMap::new(),
            duration: Histogram::new(&REQUEST_BUCKETS),
            upstream: Histogram::new(&REQUEST_BUCKETS),
        }
    }
}

/// All counters.
#[derive(Debug)]
pub struct Metrics {
    /// route template → its series (looked up by `&str`: no allocation per request)
    routes: RwLock<HashMap<String, RouteSeries>>,
    allowed: AtomicU64,
    denied: AtomicU64,
    latency: Histogram,
    upstream_unreachable: AtomicU64,
    upstream_timeout: AtomicU64,
    reload_ok: AtomicU64,
    reload_failed: AtomicU64,
    shadow_disagreements: AtomicU64,
    client_aborts: AtomicU64,
    rate_limited: AtomicU64,
    directory_changes: AtomicU64,
    streams_revoked: Arc<AtomicU64>,
    streams_redecided: Arc<AtomicU64>,
    /// Decision-input entries dropped because the record file fell behind.
    inputs_dropped: Arc<AtomicU64>,
    /// Refusals by the reason code the client is told.
    denials: RwLock<HashMap<String, AtomicU64>>,
    directory_change_failures: AtomicU64,
    internal_errors: AtomicU64,
    connections: Arc<Connections>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            routes: RwLock::default(),
            allowed: AtomicU64::default(),
            denied: AtomicU64::default(),
            latency: Histogram::new(&DECISION_BUCKETS),
            upstream_unreachable: AtomicU64::default(),
            upstream_timeout: AtomicU64::default(),
            reload_ok: AtomicU64::default(),
            reload_failed: AtomicU64::default(),
            shadow_disagreements: AtomicU64::default(),
            client_aborts: AtomicU64::default(),
            rate_limited: AtomicU64::default(),
            directory_changes: AtomicU64::default(),
            streams_revoked: Arc::default(),
            streams_redecided: Arc::default(),
            inputs_dropped: Arc::default(),
            denials: RwLock::default(),
            directory_change_failures: AtomicU64::default(),
            internal_errors: AtomicU64::default(),
            connections: Arc::default(),
        }
    }
}

/// Connection counters, shared with the accept loop.
#[derive(Debug, Default)]
pub struct Connections {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections that had to wait because `max_connections` were open.
    pub limited: AtomicU64,
    /// Failed `accept` calls.
    pub accept_errors: AtomicU64,
    /// Connections closed for idling.
    pub idle_closed: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
}

/// Kinds of upstream failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Refused, reset, TLS...
    Unreachable,
    /// No answer in time.
    Timeout,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts a finished request by route template (`-` when none matched) and status,
    /// with how long it took and, when it was forwarded, how long the upstream took to
    /// answer. A route and status seen before take only the read lock.
    pub fn record_request(
        &self,
        route: &str,
        status: u16,
        took: Duration,
        upstream: Option<Duration>,
    ) {
        let count = |series: &RouteSeries| {
            let Some(counter) = series.statuses.get(&status) else {
                return false;
            };
            inc(counter);
            series.duration.observe(took);
            if let Some(upstream) = upstream {
                series.upstream.observe(upstream);
            }
            true
        };
        let seen = self
            .routes
            .read()
            .is_ok_and(|m| m.get(route).is_some_and(count));
        if !seen {
            if let Ok(mut map) = self.routes.write() {
                let series = map.entry(route.to_string()).or_default();
                series.statuses.entry(status).or_default();
                count(series);
            }
        }
    }

    /// Counts a refusal under the reason code its client is told.
    pub(crate) fn record_denial(&self, reason: &str) {
        if let Ok(map) = self.denials.read() {
            if let Some(counter) = map.get(reason) {
                inc(counter);
                return;
            }
        }
        if let Ok(mut map) = self.denials.write() {
            inc(map.entry(reason.to_string()).or_default());
        }
    }

    /// Counts a decision and its latency.
    pub fn record_decision(&self, allowed: bool, latency: Duration) {
        inc(if allowed { &self.allowed } else { &self.denied });
        self.latency.observe(latency);
    }

    /// Counts an upstream failure.
    pub fn record_upstream_error(&self, kind: UpstreamFailure) {
        inc(match kind {
            UpstreamFailure::Unreachable => &self.upstream_unreachable,
            UpstreamFailure::Timeout => &self.upstream_timeout,
        });
    }

    /// Counts a reload attempt.
    pub fn record_reload(&self, ok: bool) {
        inc(if ok {
            &self.reload_ok
        } else {
            &self.reload_failed
        });
    }

    /// Counts a decision the shadow policies would have made differently.
    pub fn record_shadow_disagreement(&self) {
        inc(&self.shadow_disagreements);
    }

    /// Counts a request whose client went away before its answer, or whose body failed.
    pub fn record_client_abort(&self) {
        inc(&self.client_aborts);
    }

    /// The counter of streams closed because they were no longer allowed (tunnels count
    /// into it from their own tasks).
    pub fn streams_revoked(&self) -> Arc<AtomicU64> {
        self.streams_revoked.clone()
    }

    /// The counter of open streams decided again after a snapshot change (each stream's
    /// task counts into it).
    pub fn streams_redecided(&self) -> Arc<AtomicU64> {
        self.streams_redecided.clone()
    }

    /// The counter of dropped decision-input entries, for the recorder to count into.
    pub(crate) fn inputs_dropped(&self) -> Arc<AtomicU64> {
        self.inputs_dropped.clone()
    }

    /// Counts a directory change (effect or API), applied or refused.
    pub fn record_directory_change(&self, applied: bool) {
        inc(match applied {
            true => &self.directory_changes,
            false => &self.directory_change_failures,
        });
    }

    /// Counts a public request refused by its client's rate limit (429).
    pub fn record_rate_limited(&self) {
        inc(&self.rate_limited);
    }

    /// Counts a request refused for a fault of iotgate's own (500).
    pub fn record_internal_error(&self) {
        inc(&self.internal_errors);
    }

    /// The connection counters, for the accept loop.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// Shadow disagreements so far.
    pub fn shadow_disagreements(&self) -> u64 {
        self.shadow_disagreements.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, decisions: Stats, tokens: Stats, keys: KeyStats) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let one = |v: u64| vec![(String::new(), v)];
        let labelled = |label: &str, pairs: &[(&str, &AtomicU64)]| {
            pairs
                .iter()
                .map(|(value, c)| (format!("{{{label}=\"{value}\"}}"), get(c)))
                .collect::<Vec<_>>()
        };
        let c = &self.connections;
        let mut families: Vec<Family<'_>> = vec![
            (
                "iotgate_requests_total".into(),
                "counter",
                "Requests by route template and status.",
                self.request_samples(),
            ),
            (
                "iotgate_denials_total".into(),
                "counter",
                "Refused requests by the reason code the client is told.",
                self.denial_samples(),
            ),
            (
                "iotgate_decisions_total".into(),
                "counter",
                "Decisions by result.",
                labelled(
                    "decision",
                    &[("allow", &self.allowed), ("deny", &self.denied)],
                ),
            ),
        ];
        for (cache, s) in [("decision", decisions), ("token", tokens)] {
            families.push((
                format!("iotgate_{cache}_cache_hits_total"),
                "counter",
                "Cache hits.",
                one(s.hits),
            ));
            families.push((
                format!("iotgate_{cache}_cache_misses_total"),
                "counter",
                "Cache misses.",
                one(s.misses),
            ));
            families.push((
                format!("iotgate_{cache}_cache_evictions_total"),
                "counter",
                "Entries evicted for size or age.",
                one(s.evictions),
            ));
        }
        families.extend([
            (
                "iotgate_reloads_total".into(),
                "counter",
                "Snapshot reload attempts by result.",
                labelled(
                    "result",
                    &[
                        ("success", &self.reload_ok),
                        ("failure", &self.reload_failed),
                    ],
                ),
            ),
            (
                "iotgate_upstream_errors_total".into(),
                "counter",
                "Upstream failures by kind.",
                labelled(
                    "kind",
                    &[
                        ("unreachable", &self.upstream_unreachable),
                        ("timeout", &self.upstream_timeout),
                    ],
                ),
            ),
            (
                "iotgate_shadow_disagreements_total".into(),
                "counter",
                "Decisions the shadow policies would have made differently.",
                one(get(&self.shadow_disagreements)),
            ),
            (
                "iotgate_client_aborts_total".into(),
                "counter",
                "Requests whose client went away or whose body failed before the answer.",
                one(get(&self.client_aborts)),
            ),
            (
                "iotgate_directory_changes_total".into(),
                "counter",
                "Directory changes (write-through effects, entity API) by result.",
                labelled(
                    "result",
                    &[
                        ("applied", &self.directory_changes),
                        ("failed", &self.directory_change_failures),
                    ],
                ),
            ),
            (
                "iotgate_streams_revoked_total".into(),
                "counter",
                "WebSocket streams closed (1008) because a new snapshot or the token's exp refused them.",
                one(get(&self.streams_revoked)),
            ),
            (
                "iotgate_streams_redecided_total".into(),
                "counter",
                "Open WebSocket streams decided again because a new snapshot serves.",
                one(get(&self.streams_redecided)),
            ),
            (
                "iotgate_log_lines_dropped_total".into(),
                "counter",
                "Log lines (decision records included) dropped because the log writer fell behind.",
                one(super::log_lines_dropped()),
            ),
            (
                "iotgate_decision_inputs_dropped_total".into(),
                "counter",
                "Decision-input entries ([log] decision_inputs) dropped because the file fell behind.",
                one(get(&self.inputs_dropped)),
            ),
            (
                "iotgate_rate_limited_total".into(),
                "counter",
                "Public requests refused by their client's rate limit (429).",
                one(get(&self.rate_limited)),
            ),
            (
                "iotgate_internal_errors_total".into(),
                "counter",
                "Requests refused for a fault of iotgate's own (500).",
                one(get(&self.internal_errors)),
            ),
            (
                "iotgate_jwks_fetches_total".into(),
                "counter",
                "Fetches of JWKS URLs by result (a failed one keeps the last good keys).",
                vec![
                    ("{result=\"ok\"}".into(), keys.fetched),
                    ("{result=\"failed\"}".into(), keys.failed),
                ],
            ),
            (
                "iotgate_key_generation".into(),
                "gauge",
                "Key changes since start (rotated key files, new JWKS contents).",
                one(keys.generation),
            ),
            (
                "iotgate_decision_cache_bytes".into(),
                "gauge",
                "Estimated bytes held by the decision cache.",
                one(decisions.bytes),
            ),
            (
                "iotgate_connections_open".into(),
                "gauge",
                "Client connections open now.",
                one(get(&c.open)),
            ),
            (
                "iotgate_connections_limited_total".into(),
                "counter",
                "Connections that waited because max_connections were open.",
                one(get(&c.limited)),
            ),
            (
                "iotgate_connections_idle_closed_total".into(),
                "counter",
                "Connections closed after idle_timeout_seconds.",
                one(get(&c.idle_closed)),
            ),
            (
                "iotgate_tls_handshake_failures_total".into(),
                "counter",
                "TLS handshakes that failed or timed out.",
                one(get(&c.tls_failures)),
            ),
            (
                "iotgate_accept_errors_total".into(),
                "counter",
                "Failed accepts.",
                one(get(&c.accept_errors)),
            ),
        ]);
        let mut out = String::new();
        for (name, kind, help, samples) in families {
            family(&mut out, &name, kind, help, samples);
        }
        self.render_histograms(&mut out);
        out
    }

    /// The decision latency, and request and upstream durations by route template.
    fn render_histograms(&self, out: &mut String) {
        let head = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        };
        let name = "iotgate_decision_duration_seconds";
        head(out, name, "Time to decide (authentication to verdict).");
        self.latency.render(out, name, "");
        let Ok(routes) = self.routes.read() else {
            return;
        };
        let mut routes: Vec<_> = routes.iter().collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        let label = |route: &str| format!("route=\"{}\"", escape(route));
        let name = "iotgate_request_duration_seconds";
        head(
            out,
            name,
            "Arrival to the answer's head (or the refusal), by route template.",
        );
        for (route, series) in &routes {
            series.duration.render(out, name, &label(route));
        }
        let name = "iotgate_upstream_duration_seconds";
        head(
            out,
            name,
            "Forwarding to the upstream's response head, by route template.",
        );
        for (route, series) in routes
            .iter()
            .filter(|(_, s)| s.upstream.count.load(Ordering::Relaxed) > 0)
        {
            series.upstream.render(out, name, &label(route));
        }
    }

    /// `{route, status}` request counts, sorted.
    fn denial_samples(&self) -> Vec<(String, u64)> {
        let mut samples: Vec<(String, u64)> = self
            .denials
            .read()
            .map(|m| {
                m.iter()
                    .map(|(reason, c)| {
                        let labels = format!("{{reason=\"{}\"}}", escape(reason));
                        (labels, c.load(Ordering::Relaxed))
                    })
                    .collect()
            })
            .unwrap_or_default();
        samples.sort();
        samples
    }

    fn request_samples(&self) -> Vec<(String, u64)> {
        let mut samples: Vec<(String, u64)> = self
            .routes
            .read()
            .map(|m| {
                m.iter()
                    .flat_map(|(route, series)| {
                        series
                            .statuses
                            .iter()
                            .map(move |(status, c)| (route, status, c))
                    })
                    .map(|(route, status, c)| {
                        let labels = format!("{{route=\"{}\",status=\"{status}\"}}", escape(route));
                        (labels, c.load(Ordering::Relaxed))
                    })
                    .collect()
            })
            .unwrap_or_default();
        samples.sort();
        samples
    }
}

/// A metric family to render: name, type, help, and (labels, value) samples.
type Family<'a> = (String, &'a str, &'a str, Vec<(String, u64)>);

/// One metric family: HELP and TYPE lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the key fetchers report to `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyStats {
    /// Successful JWKS fetches.
    pub fetched: u64,
    /// Failed JWKS fetches.
    pub failed: u64,
    /// The verifier's key generation.
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_has_every_family_and_counts() {
        let m = Metrics::default();
        let devices = "GET /v1/users/{owner}/devices";
        m.record_request(devices, 200, Duration::from_millis(2), None);
        let upstream = Some(Duration::from_millis(15));
        m.record_request(devices, 200, Duration::from_millis(20), upstream);
        m.record_request("-", 404, Duration::from_micros(300), None);
        m.record_decision(true, Duration::from_micros(30));
        m.record_decision(false, Duration::from_micros(3));
        m.record_upstream_error(UpstreamFailure::Timeout);
        m.record_reload(true);
        m.record_reload(false);
        m.record_shadow_disagreement();
        m.record_client_abort();
        m.record_rate_limited();
        let s = Stats {
            hits: 4,
            misses: 2,
            evictions: 1,
            entries: 3,
            bytes: 700,
        };
        let text = m.render(
            s,
            Stats {
                hits: 0,
                misses: 0,
                evictions: 0,
                entries: 0,
                bytes: 0,
            },
            KeyStats {
                fetched: 2,
                failed: 1,
                generation: 3,
            },
        );
        for line in [
            "iotgate_requests_total{route=\"GET /v1/users/{owner}/devices\",status=\"200\"} 2",
            "iotgate_requests_total{route=\"-\",status=\"404\"} 1",
            "iotgate_decisions_total{decision=\"allow\"} 1",
            "iotgate_decisions_total{decision=\"deny\"} 1",
            "iotgate_decision_duration_seconds_bucket{le=\"0.000005\"} 1",
            "iotgate_decision_duration_seconds_bucket{le=\"0.00005\"} 2",
            "iotgate_decision_duration_seconds_bucket{le=\"+Inf\"} 2",
            "iotgate_decision_duration_seconds_count 2",
            "iotgate_decision_duration_seconds_sum 0.000033",
            "iotgate_request_duration_seconds_bucket{route=\"GET /v1/users/{owner}/devices\",le=\"0.0025\"} 1",
            "iotgate_request_duration_seconds_bucket{route=\"GET /v1/users/{owner}/devices\",le=\"0.025\"} 2",
            "iotgate_request_duration_seconds_count{route=\"GET /v1/users/{owner}/devices\"} 2",
            "iotgate_request_duration_seconds_sum{route=\"GET /v1/users/{owner}/devices\"} 0.022",
            "iotgate_request_duration_seconds_bucket{route=\"-\",le=\"0.0005\"} 1",
            "iotgate_upstream_duration_seconds_bucket{route=\"GET /v1/users/{owner}/devices\",le=\"0.01\"} 0",
            "iotgate_upstream_duration_seconds_bucket{route=\"GET /v1/users/{owner}/devices\",le=\"0.025\"} 1",
            "# TYPE iotgate_request_duration_seconds histogram",
            "# TYPE iotgate_upstream_duration_seconds histogram",
            "iotgate_decision_cache_hits_total 4",
            "iotgate_decision_cache_misses_total 2",
            "iotgate_decision_cache_evictions_total 1",
            "iotgate_reloads_total{result=\"success\"} 1",
            "iotgate_reloads_total{result=\"failure\"} 1",
            "iotgate_upstream_errors_total{kind=\"timeout\"} 1",
            "iotgate_shadow_disagreements_total 1",
            "iotgate_client_aborts_total 1",
            "iotgate_rate_limited_total 1",
            "iotgate_decision_cache_bytes 700",
            "iotgate_jwks_fetches_total{result=\"failed\"} 1",
            "iotgate_key_generation 3",
            "iotgate_log_lines_dropped_total 0",
            "iotgate_decision_inputs_dropped_total 0",
            "iotgate_connections_open 0",
            "# TYPE iotgate_decision_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
