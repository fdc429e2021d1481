//! The directory journal: every runtime change (write-through effects, the entity API),
//! one JSON line per batch, on disk before the change is acknowledged.
//!
//! ```text
//! Journal::append(changes) ──one line {"seq","at","changes"}, fsync──▶ file
//! start / reload: directory files ──then──▶ Journal::read (every line, in order) applied
//! a torn last line (a crash mid-write, never acknowledged) is ignored and cut on open
//! Journal::compact ──net changes as one line, written beside, fsync, rename──▶ file
//! ```
//!
//! The directory files stay the declarative base: the journal never rewrites them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::change::{Change, Uid};
use crate::config::problem::{Problem, Problems};

/// One acknowledged batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    /// Its position (1, 2, …).
    pub(crate) seq: u64,
    /// When it was written (seconds since the epoch).
    pub(crate) at: u64,
    /// The changes, applied together.
    pub(crate) changes: Vec<Change>,
}

/// The journal file, open for appending.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// The last sequence number written.
    last: Mutex<u64>,
    /// Entries in the file, and every entity they touch (for compaction).
    held: Mutex<(usize, Vec<Uid>)>,
}

/// Reads every whole entry of a journal (none when the file does not exist).
///
/// # Errors
/// An unreadable file, or a line (other than a torn last one) that is not an entry.
pub(crate) fn read(path: &Path) -> Result<Vec<Entry>, Problems> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Problem::in_file(path, format!("cannot read: {e}")).into()),
    };
    let mut entries = Vec::new();
    let mut problems = Problems::new();
    let whole = whole_lines(&text);
    for (n, line) in text[..whole].lines().enumerate() {
        match serde_json::from_str::<Entry>(line) {
            Ok(entry) => entries.push(entry),
            Err(e) => problems.push(Problem::at_line(
                path,
                Some(n + 1),
                format!("not a journal entry: {e}"),
            )),
        }
    }
    problems.into_result(entries)
}

/// The length of the text up to its last newline: what was written whole.
fn whole_lines(text: &str) -> usize {
    text.rfind('\n').map_or(0, |i| i + 1)
}

impl Journal {
    /// Opens (or creates, with its folder) the journal for appending; a torn last line is cut.
    ///
    /// # Errors
    /// The file cannot be created, read or written, or holds a bad entry.
    pub(crate) fn open(path: &Path) -> Result<Journal, Problems> {
        let fail = |e: std::io::Error| Problem::in_file(path, format!("journal: {e}"));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let entries = read(path)?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
        let whole = whole_lines(&text) as u64;
        if whole < text.len() as u64 {
            file.set_len(whole).map_err(fail)?;
        }
        let mut touched = Vec::new();
        note_touched(&mut touched, entries.iter().flat_map(|e| &e.changes));
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            last: Mutex::new(entries.last().map_or(0, |e| e.seq)),
            held: Mutex::new((entries.len(), touched)),
        })
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a batch and waits until it is on disk; returns its sequence number.
    ///
    /// # Errors
    /// The write or the fsync failed (the batch must not be acknowledged).
    pub(crate) fn append(&self, changes: &[Change]) -> std::io::Result<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = Entry {
            seq: *last + 1,
            at: crate::authn::now(),
            changes: changes.to_vec(),
        };
        let mut line = serde_json::to_string(&entry).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = file.metadata()?.len();
        let written = file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // a batch not acknowledged leaves nothing behind (a partial line would be read
            // as a bad entry before the next one): cut back to where it started
            let _ = file.set_len(before).and_then(|()| file.sync_data());
            return Err(e);
        }
        *last = entry.seq;
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.0 += 1;
        note_touched(&mut held.1, changes.iter());
        Ok(entry.seq)
    }

    /// How many entries the file holds, and the entities they touch.
    pub(crate) fn held(&self) -> (usize, Vec<Uid>) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rewrites the journal as one entry holding `net` (the changes that reproduce the
    /// same directory), atomically: written beside, fsync'd, renamed over.
    ///
    /// # Errors
    /// Writing or renaming failed (the old journal stays as it was).
    pub(crate) fn compact(&self, net: Vec<Change>) -> std::io::Result<()> {
        self.rewrite(|last| {
            vec![Entry {
                seq: last + 1,
                at: crate::authn::now(),
                changes: net,
            }]
        })
    }

    /// Keeps only the entries after `seq` (an outbox whose first entries were delivered),
    /// atomically as [`Journal::compact`].
    ///
    /// # Errors
    /// Reading, writing or renaming failed (the old journal stays as it was).
    pub(crate) fn keep_after(&self, seq: u64) -> std::io::Result<()> {
        let entries = read(&self.path).map_err(|p| std::io::Error::other(p.to_string()))?;
        self.rewrite(|_| entries.into_iter().filter(|e| e.seq > seq).collect())
    }

    /// Replaces the file with `entries(last seq)`: written beside, fsync'd, renamed over;
    /// the next append follows the last of them (or the last seq, when there are none).
    fn rewrite(&self, entries: impl FnOnce(u64) -> Vec<Entry>) -> std::io::Result<()> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = entries(*last);
        let mut text = String::new();
        for entry in &entries {
            text.push_str(&serde_json::to_string(entry).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        write_atomically(&self.path, text.as_bytes())?;
        *file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        *last = entries.last().map_or(*last, |e| e.seq);
        let mut touched = Vec::new();
        note_touched(&mut touched, entries.iter().flat_map(|e| &e.changes));
        *self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (entries.len(), touched);
        Ok(())
    }
}

/// Writes `bytes` as `path`: to a file beside it, fsync'd, renamed over it, the folder
/// fsync'd (a crash leaves the old file or the new one, never a part).
///
/// # Errors
/// Writing or renaming failed (the old file stays as it was).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// Writes what `fill` writes as `path`, as [`write_atomically`] does (buffered: `fill`
/// may write piece by piece).
///
/// # Errors
/// `fill`, writing or renaming failed (the old file stays as it was).
pub(crate) fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut next = path.as_os_str().to_owned();
    next.push(".writing");
    let next = PathBuf::from(next);
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&next)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&next, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Adds the entities `changes` touch to `touched`, each once.
fn note_touched<'c>(touched: &mut Vec<Uid>, changes: impl Iterator<Item = &'c Change>) {
    for change in changes {
        if !touched.contains(change.uid()) {
            touched.push(change.uid().clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(id: &str) -> Change {
        Change::Delete {
            uid: Uid {
                ty: "T::User".into(),
                id: id.into(),
            },
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/directory.journal");
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.append(&[delete("a")]).unwrap(), 1);
        assert_eq!(journal.append(&[delete("b"), delete("c")]).unwrap(), 2);
        drop(journal);
        // a crash in the middle of the third write
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"seq":3,"at":1,"chan"#).unwrap();
        drop(f);
        let entries = read(&path).unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.append(&[delete("d")]).unwrap(), 3);
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].changes, [delete("d")]);
        journal.compact(vec![delete("a")]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        assert_eq!(journal.append(&[delete("e")]).unwrap(), 5);
        assert_eq!(read(&path).unwrap().len(), 2);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_a_problem_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, "{\"seq\":1,\"at\":1,\"changes\":[]}\nnot json\n").unwrap();
        let problems = read(&path).unwrap_err().to_string();
        assert!(problems.contains(":2: not a journal entry"), "{problems}");
    }
}
