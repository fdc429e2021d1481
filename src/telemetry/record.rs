//! The decision record, encoded straight into a reused per-thread buffer (no `tracing`
//! field visitors, no allocation per field) in the shape `tracing-subscriber` gives every
//! other line: JSON `{"timestamp","level","message",fields…,"target"}`, or text
//! `timestamp  LEVEL target: message key=value …` with logfmt quoting.
//!
//! ```text
//! fields (key, value) ─▶ Line (JSON escaping or logfmt quoting) ─▶ one Sink::append
//! ```

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::LogFormat;

thread_local! {
    /// The line being built and a scratch string for `Display` values, kept per thread.
    static BUFFERS: RefCell<(Vec<u8>, String)> = RefCell::new((Vec::with_capacity(1024), String::new()));
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second seen on this thread.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// One log line under construction.
pub(crate) struct Line<'a> {
    format: LogFormat,
    buf: &'a mut Vec<u8>,
    scratch: &'a mut String,
}

/// Builds one INFO line of `target` with `message`, lets `fields` add its fields, and
/// returns the finished bytes to `emit`.
pub(crate) fn build(
    format: LogFormat,
    target: &str,
    message: &str,
    fields: impl FnOnce(&mut Line<'_>),
    emit: impl FnOnce(&[u8]),
) {
    BUFFERS.with(|cell| {
        let Ok(mut buffers) = cell.try_borrow_mut() else {
            return;
        };
        let (buf, scratch) = &mut *buffers;
        buf.clear();
        let mut line = Line {
            format,
            buf,
            scratch,
        };
        line.open(message, target);
        fields(&mut line);
        line.close(target);
        emit(line.buf);
    });
}

impl Line<'_> {
    fn open(&mut self, message: &str, target: &str) {
        match self.format {
            LogFormat::Json => {
                self.buf.extend_from_slice(b"{\"timestamp\":\"");
                timestamp(self.buf);
                self.buf.extend_from_slice(b"\",\"level\":\"INFO\"");
                self.str("message", message);
            }
            LogFormat::Pretty => {
                timestamp(self.buf);
                self.buf.extend_from_slice(b"  INFO ");
                self.buf.extend_from_slice(target.as_bytes());
                self.buf.extend_from_slice(b": ");
                self.buf.extend_from_slice(message.as_bytes());
            }
        }
    }

    fn close(&mut self, target: &str) {
        if self.format == LogFormat::Json {
            self.str("target", target);
            self.buf.push(b'}');
        }
        self.buf.push(b'\n');
    }

    fn key(&mut self, key: &str) {
        match self.format {
            LogFormat::Json => {
                self.buf.extend_from_slice(b",\"");
                self.buf.extend_from_slice(key.as_bytes());
                self.buf.extend_from_slice(b"\":");
            }
            LogFormat::Pretty => {
                self.buf.push(b' ');
                self.buf.extend_from_slice(key.as_bytes());
                self.buf.push(b'=');
            }
        }
    }

    /// A string field.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        match self.format {
            LogFormat::Json => json_string(self.buf, value),
            LogFormat::Pretty => logfmt_value(self.buf, value),
        }
    }

    /// A field written with its `Display` form, as a string.
    pub(crate) fn display(&mut self, key: &str, value: &dyn std::fmt::Display) {
        let mut scratch = std::mem::take(self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{value}");
        self.str(key, &scratch);
        *self.scratch = scratch;
    }

    /// A list: a JSON array of strings, or in text one value joined by `sep`.
    pub(crate) fn list(&mut self, key: &str, values: &[String], sep: &str) {
        if self.format == LogFormat::Json {
            self.key(key);
            self.buf.push(b'[');
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                json_string(self.buf, v);
            }
            self.buf.push(b']');
            return;
        }
        let mut scratch = std::mem::take(self.scratch);
        scratch.clear();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                scratch.push_str(sep);
            }
            scratch.push_str(v);
        }
        self.str(key, &scratch);
        *self.scratch = scratch;
    }

    /// A number field.
    pub(crate) fn num(&mut self, key: &str, value: u64) {
        self.key(key);
        let mut digits = itoa::Buffer::new();
        self.buf.extend_from_slice(digits.format(value).as_bytes());
    }

    /// A boolean field.
    pub(crate) fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }
}

/// `value` as a JSON string, quoted and escaped.
fn json_string(buf: &mut Vec<u8>, value: &str) {
    buf.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = std::io::Write::write_fmt(buf, format_args!("\\u{b:04x}"));
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// `value` bare when it is a plain token, otherwise quoted and escaped as a JSON string
/// (logfmt readers accept both).
pub(crate) fn logfmt_value(buf: &mut Vec<u8>, value: &str) {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if plain {
        buf.extend_from_slice(value.as_bytes());
    } else {
        json_string(buf, value);
    }
}

/// The current UTC time as RFC 3339 with microseconds.
pub(crate) fn now() -> String {
    let mut buf = Vec::with_capacity(27);
    timestamp(&mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Appends the current UTC time as RFC 3339 with microseconds (`2026-12-02T04:29:49.531944Z`).
fn timestamp(buf: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut second = cell.borrow_mut();
        if second.0 != secs {
            second.1 = civil(secs);
            second.0 = secs;
        }
        buf.extend_from_slice(second.1.as_bytes());
    });
    let _ = std::io::Write::write_fmt(buf, format_args!(".{:06}Z", now.subsec_micros()));
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (Howard Hinnant's days-to-civil algorithm).
pub(crate) fn civil(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat, fields: impl FnOnce(&mut Line<'_>)) -> String {
        let mut out = String::new();
        build(format, "iotgate::decision", "decision", fields, |bytes| {
            out = String::from_utf8(bytes.to_vec()).unwrap();
        });
        out
    }

    #[test]
    fn json_lines_parse_back_to_the_fields_written() {
        let text = line(LogFormat::Json, |l| {
            l.str("principal", "dave \"the\" owner\\\n\u{1}");
            l.display("resource", &"Thinger::Device::\"dave/lab\"");
            l.list("policies", &["a".into(), "b\"c".into()], ",");
            l.num("status", 403);
            l.bool("cached", true);
        });
        assert!(text.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], "decision");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "iotgate::decision");
        assert_eq!(v["principal"], "dave \"the\" owner\\\n\u{1}");
        assert_eq!(v["resource"], "Thinger::Device::\"dave/lab\"");
        assert_eq!(v["policies"], serde_json::json!(["a", "b\"c"]));
        assert_eq!(v["status"], 403);
        assert_eq!(v["cached"], true);
        let stamp = v["timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), "2026-12-02T04:29:49.531944Z".len(), "{stamp}");
        assert!(stamp.ends_with('Z'));
    }

    #[test]
    fn text_lines_quote_only_what_would_break_a_logfmt_reader() {
        let text = line(LogFormat::Pretty, |l| {
            l.str("principal", "dave");
            l.str("detail", "allow by [a, b]");
            l.str("errors", "");
            l.str("resource", "Thinger::Device::\"dave/lab\"");
        });
        let (_, rest) = text
            .split_once("  INFO iotgate::decision: decision ")
            .unwrap();
        assert_eq!(
            rest,
            "principal=dave detail=\"allow by [a, b]\" errors=\"\" \
             resource=\"Thinger::Device::\\\"dave/lab\\\"\"\n"
        );
    }

    #[test]
    fn civil_time_matches_known_dates() {
        assert_eq!(civil(0), "1970-01-01T00:00:00");
        assert_eq!(civil(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(civil(1_796_185_789), "2026-12-02T04:29:49");
        assert_eq!(civil(4_107_542_399), "2100-02-28T23:59:59");
    }
}
