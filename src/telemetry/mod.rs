//! Logging: the subscriber set-up and the one decision record every request produces.
//!
//! ```text
//! tracing events ─▶ fmt subscriber (RUST_LOG filter) ─┐
//! decision record ─▶ record::build (same shape) ──────┴▶ sink: one buffer, one writer thread
//! ```
//!
//! Fields are stable names; the raw path and query are never logged (Thinger tokens travel
//! in `?authorization=`), only the route template, and no header value is ever logged. The
//! opt-in decision-input record (`inputs`) is the exception: it keeps the path and the query
//! without the token parameter, to be replayed.

pub(crate) mod inputs;
pub(crate) mod metrics;
pub(crate) mod record;
pub(crate) mod sink;

use std::sync::{Arc, OnceLock};
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

/// Unwritten log bytes held before lines are dropped (never a blocking write on a request
/// task): about 110,000 decision records.
const LOG_BUFFER_BYTES: usize = 64 << 20;

/// The installed log: its sink and the format of the lines iotgate encodes itself.
static LOG: OnceLock<(Arc<sink::Sink>, LogFormat)> = OnceLock::new();

/// Lines the log writer dropped because it fell behind.
pub(crate) fn log_lines_dropped() -> u64 {
    LOG.get().map_or(0, |(sink, _)| sink.dropped())
}

/// Installs the global subscriber (stderr; `RUST_LOG` filters, default `info`). Lines are
/// formatted on the thread that logs and written in batches by the sink's own thread; if it
/// falls behind by [`LOG_BUFFER_BYTES`], new lines are dropped and counted, never waited
/// for. Keep the guard until exit: dropping it writes what is left.
pub(crate) fn init(format: LogFormat) -> Option<sink::Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (sink, guard) =
        sink::Sink::start(LOG_BUFFER_BYTES, std::io::stderr(), Arc::default()).ok()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(sink::MakeSink(sink.clone()));
    // A second init (tests, demo) keeps the first subscriber.
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().fmt_fields(logfmt_fields()).try_init(),
    };
    installed.ok()?;
    let _ = LOG.set((sink, format));
    Some(guard)
}

/// Text-format fields as logfmt pairs: `key=value`, the value quoted unless it is plain
/// (so `error=%e` with spaces or quotes stays one value); the message stays as written.
fn logfmt_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            return write!(w, "{text}");
        }
        // a string field arrives as its Debug form: quoted and escaped already
        if is_quoted(&text) {
            return write!(w, "{}={text}", field.name());
        }
        let mut quoted = Vec::with_capacity(text.len() + 2);
        record::logfmt_value(&mut quoted, &text);
        write!(w, "{}={}", field.name(), String::from_utf8_lossy(&quoted))
    })
    .delimited(" ")
}

/// Whether `text` is one double-quoted string with every inner quote escaped.
fn is_quoted(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for c in inner.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return false,
            _ => {}
        }
    }
    !escaped
}

/// Who asked what, as the decision record names it.
pub(crate) struct Asked<'a> {
    pub request_id: &'a str,
    /// The W3C `traceparent` trace id, when valid.
    pub trace_id: Option<&'a str>,
    /// The first untrusted hop.
    pub client: std::net::IpAddr,
    pub method: &'a http::Method,
}

/// Emits the decision event of one request.
pub(crate) fn decision(
    asked: Asked<'_>,
    d: &Decision,
    reason: &str,
    status: u16,
    latency: Duration,
) {
    let Some((sink, format)) = LOG.get() else {
        return;
    };
    if !tracing::enabled!(target: "iotgate::decision", tracing::Level::INFO) {
        return;
    }
    let fields = |l: &mut record::Line<'_>| {
        l.str("request_id", asked.request_id);
        if let Some(trace_id) = asked.trace_id {
            l.str("trace_id", trace_id);
        }
        l.display("client", &asked.client);
        l.str("principal", d.principal.as_deref().unwrap_or("-"));
        l.str("method", asked.method.as_str());
        l.str("route", d.route.as_deref().unwrap_or("-"));
        l.str("action", d.action.as_deref().unwrap_or("-"));
        match &d.resource {
            Some(resource) => l.display("resource", resource),
            None => l.str("resource", "-"),
        }
        l.str("decision", if d.is_allowed() { "allow" } else { "deny" });
        l.num("status", u64::from(status));
        l.str("reason", reason);
        l.display("detail", d);
        l.list("policies", &d.policies, ",");
        l.list("reasons", &d.reasons, "; ");
        l.list("errors", &d.errors, "; ");
        l.str("policy_version", &d.policy_version);
        l.str("directory_version", &d.directory_version);
        l.bool("cached", d.cached);
        l.num("latency_us", latency.as_micros() as u64);
    };
    record::build(*format, "iotgate::decision", "decision", fields, |line| {
        sink.append(line);
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the text format writes for one event, through the sink `init` installs.
    fn text_line(event: impl FnOnce()) -> String {
        let out = sink::Shared::default();
        let (sink, guard) = sink::Sink::start(1 << 20, out.clone(), Arc::default()).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .compact()
            .fmt_fields(logfmt_fields())
            .with_writer(sink::MakeSink(sink))
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        drop(guard);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn text_fields_are_logfmt_values() {
        let error = std::io::Error::other("connection refused = \"no\"");
        let line = text_line(|| {
            tracing::warn!(upstream = "http://10.0.0.5:8081", error = %error, routes = 3, path = "a b", "upstream failed");
        });
        assert!(line.contains("upstream failed"), "{line}");
        for pair in [
            r#"error="connection refused = \"no\"""#,
            r#"upstream="http://10.0.0.5:8081""#,
            "routes=3",
            r#"path="a b""#,
        ] {
            assert!(line.contains(pair), "no `{pair}` in {line}");
        }
        assert!(is_quoted(r#""a \" b""#));
        assert!(!is_quoted(r#""a" b "c""#));
        assert!(!is_quoted(r#""a\""#));
    }
}
