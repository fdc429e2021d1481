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

/// Installs the global subscriber (stderr; `RUST_LOG` filters, default `info`).
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests, demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
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
