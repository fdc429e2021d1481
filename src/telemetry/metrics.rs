//! Counters of the serving path, rendered in the Prometheus text format on `/metrics`.
//!
//! ```text
//! proxy ──record_request(route template, status)──┐
//!       ──record_decision(allow|deny, latency)────┤
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
const BUCKETS: [f64; 12] = [
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.05,
];

/// All counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// route template → status → count (looked up by `&str`: no allocation per request)
    requests: RwLock<HashMap<String, HashMap<u16, AtomicU64>>>,
    allowed: AtomicU64,
    denied: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_micros: AtomicU64,
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
    /// Counts a finished request by route template (`-` when none matched) and status.
    pub fn record_request(&self, route: &str, status: u16) {
        if let Ok(map) = self.requests.read() {
            if let Some(counter) = map.get(route).and_then(|by_status| by_status.get(&status)) {
                inc(counter);
                return;
            }
        }
        if let Ok(mut map) = self.requests.write() {
            inc(map
                .entry(route.to_string())
                .or_default()
                .entry(status)
                .or_default());
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
        let secs = latency.as_secs_f64();
        for (bound, counter) in BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                inc(counter);
            }
        }
        inc(&self.latency_count);
        self.latency_micros.fetch_add(
            latency.as_micros().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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
            (
                "iotgate_decision_duration_seconds".into(),
                "histogram",
                "Time to decide (authentication to verdict).",
                self.latency_samples(),
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
            if kind == "histogram" {
                let sum = get(&self.latency_micros) as f64 / 1e6;
                let _ = writeln!(out, "{name}_sum {sum}");
            }
        }
        out
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
            .requests
            .read()
            .map(|m| {
                m.iter()
                    .flat_map(|(route, by_status)| {
                        by_status.iter().map(move |(status, c)| (route, status, c))
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

    /// The decision latency histogram's buckets and count.
    fn latency_samples(&self) -> Vec<(String, u64)> {
        let count = self.latency_count.load(Ordering::Relaxed);
        let mut samples: Vec<(String, u64)> = BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(b, c)| (format!("_bucket{{le=\"{b}\"}}"), c.load(Ordering::Relaxed)))
            .collect();
        samples.push(("_bucket{le=\"+Inf\"}".into(), count));
        samples.push(("_count".into(), count));
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
        m.record_request("GET /v1/users/{owner}/devices", 200);
        m.record_request("GET /v1/users/{owner}/devices", 200);
        m.record_request("-", 404);
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
