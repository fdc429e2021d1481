//! Logging: the subscriber set-up and the one decision event every request produces.
//!
//! Fields are stable names; the raw path and query are never logged (Thinger tokens travel
//! in `?authorization=`), only the route template, and no header value is ever logged.

pub(crate) mod metrics;

use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::authz::decision::Decision;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Lines the log writer could hold before one is dropped (never a blocking write on a
/// request task): about 64 MiB of decision records at their usual size.
const LOG_BUFFER_LINES: usize = 128_000;

/// The log writer's drop counter, for `iotgate_log_lines_dropped_total`.
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Lines the log writer dropped because it fell behind.
pub(crate) fn log_lines_dropped() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Installs the global subscriber (stderr; `RUST_LOG` filters, default `info`). Lines are
/// formatted on the thread that logs and written by a dedicated writer thread, buffered and
/// flushed whenever it has caught up; if it falls behind by [`LOG_BUFFER_LINES`], new lines
/// are dropped and counted, never waited for. Keep the guard until exit: dropping it
/// flushes what is left.
pub(crate) fn init(format: LogFormat) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("iotgate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests, demo) keeps the first subscriber.
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    match installed {
        Ok(()) => {
            let _ = DROPPED.set(counter);
            Some(guard)
        }
        Err(_) => None,
    }
}

/// Emits the decision event of one request.
pub(crate) fn decision(
    request_id: &str,
    client: std::net::IpAddr,
    method: &http::Method,
    d: &Decision,
    reason: &str,
    status: u16,
    latency: Duration,
) {
    let allowed = if d.is_allowed() { "allow" } else { "deny" };
    tracing::info!(
        target: "iotgate::decision",
        request_id,
        client = %client,
        principal = d.principal.as_deref().unwrap_or("-"),
        method = method.as_str(),
        route = d.route.as_deref().unwrap_or("-"),
        action = d.action.as_deref().unwrap_or("-"),
        resource = %d.resource.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
        decision = allowed,
        status,
        reason,
        detail = %d,
        policies = d.policies.join(",").as_str(),
        reasons = d.reasons.join("; ").as_str(),
        errors = d.errors.join("; ").as_str(),
        policy_version = &*d.policy_version,
        directory_version = &*d.directory_version,
        cached = d.cached,
        latency_us = latency.as_micros() as u64,
        "decision"
    );
}

/// Emits a shadow disagreement: the candidate policies would have decided otherwise.
pub(crate) fn shadow_disagreement(request_id: &str, d: &Decision, shadow_version: Option<&str>) {
    let Some(shadow) = &d.shadow else { return };
    tracing::warn!(
        target: "iotgate::shadow",
        request_id,
        principal = d.principal.as_deref().unwrap_or("-"),
        route = d.route.as_deref().unwrap_or("-"),
        action = d.action.as_deref().unwrap_or("-"),
        resource = %d.resource.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
        live = if d.is_allowed() { "allow" } else { "deny" },
        live_policies = d.policies.join(",").as_str(),
        shadow = if shadow.allowed { "allow" } else { "deny" },
        shadow_policies = shadow.policies.join(",").as_str(),
        shadow_errors = shadow.errors.join("; ").as_str(),
        policy_version = &*d.policy_version,
        shadow_version = shadow_version.unwrap_or("-"),
        "shadow disagreement"
    );
}
