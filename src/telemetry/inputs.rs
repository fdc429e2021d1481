//! The decision-input record (`[log] decision_inputs`): one JSON line per request the
//! policies decided, with what they were asked — never the token, never the raw body — so
//! `check --replay` can decide the same requests again with other policies.
//!
//! ```text
//! Record (proxy, on drop) ─▶ Entry {method, path, query without the token parameter,
//!   claims, body fields read, verdict} ─▶ Sink (batched, own thread) ─▶ Rotating file
//!   (past max_bytes: renamed to <file>.1, a new file started)
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sink::{Guard, Sink};
use crate::authn::Claims;

/// Unwritten record bytes held before entries are dropped.
const BUFFER_BYTES: usize = 64 << 20;

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// When it was decided (RFC 3339).
    pub at: String,
    /// The request id.
    pub request_id: String,
    /// Method.
    pub method: String,
    /// Path, as sent.
    pub path: String,
    /// Query, as sent, without the token parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The principal decided for.
    pub principal: String,
    /// The verified token's claims (empty: the anonymous principal).
    pub claims: Claims,
    /// Whether the principal was the anonymous one.
    #[serde(default)]
    pub anonymous: bool,
    /// What of the body the route read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The route decided on.
    pub route: String,
    /// The status answered.
    pub status: u16,
    /// `allow` or `deny`.
    pub decision: String,
    /// Determining policies.
    pub policies: Vec<String>,
    /// Versions that decided.
    pub policy_version: String,
    /// Directory version that decided.
    pub directory_version: String,
}

/// Writes entries to the record file through a batching sink.
#[derive(Debug)]
pub(crate) struct Recorder {
    sink: Arc<Sink>,
    _guard: Guard,
}

impl Recorder {
    /// Opens (appends to) `path`, rotated past `max_bytes`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub(crate) fn open(
        path: &Path,
        max_bytes: u64,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Recorder> {
        let file = Rotating::open(path, max_bytes)?;
        let (sink, guard) = Sink::start(BUFFER_BYTES, file, dropped)?;
        Ok(Recorder {
            sink,
            _guard: guard,
        })
    }

    /// Appends one entry.
    pub(crate) fn record(&self, entry: &Entry) {
        if let Ok(mut line) = serde_json::to_vec(entry) {
            line.push(b'\n');
            self.sink.append(&line);
        }
    }
}

/// A file renamed to `<file>.1` (replacing an older one) once it would pass `max_bytes`.
/// The sink writes whole batches of whole lines, so every file holds whole lines.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    written: u64,
    file: File,
}

impl Rotating {
    fn open(path: &Path, max_bytes: u64) -> std::io::Result<Rotating> {
        let file = open_private(path)?;
        let written = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_path_buf(),
            max_bytes,
            written,
            file,
        })
    }

    /// Moves the file to `<file>.1` and starts a new one. A rename that fails (the file was
    /// moved away by another tool) still starts a new file, so recording never stops.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = std::fs::rename(&self.path, &old);
        self.file = open_private(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Opens `path` for appending, created readable by its owner only (it holds claims).
fn open_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Reads a record file: every entry, and the lines that are not one — a torn last line
/// after a crash, say, skips only itself.
///
/// # Errors
/// The file cannot be read.
pub(crate) fn read(path: &Path) -> Result<Recorded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut read = Recorded::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(entry) => read.entries.push(entry),
            Err(e) => {
                read.unreadable += 1;
                read.first_unreadable
                    .get_or_insert_with(|| format!("{}:{}: {e}", path.display(), i + 1));
            }
        }
    }
    Ok(read)
}

/// A record file as read.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    /// Its entries.
    pub entries: Vec<Entry>,
    /// Lines that are not entries.
    pub unreadable: usize,
    /// The first of them, `file:line: why`.
    pub first_unreadable: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_its_size_is_rotated_and_every_file_holds_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs.jsonl");
        let mut file = Rotating::open(&path, 100).unwrap();
        for i in 0..10 {
            file.write_all(
                format!("line {i:02} 0123456789012345678901234567890123456789\n").as_bytes(),
            )
            .unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("inputs.jsonl.1")).unwrap();
        assert!(current.len() <= 100 && rotated.len() <= 100);
        assert!(current.ends_with('\n') && rotated.ends_with('\n'));
        assert!(
            current.starts_with("line 08") || current.starts_with("line 09"),
            "{current}"
        );
    }
}
