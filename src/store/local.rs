//! What a replica keeps of the shared directory on its own disk (`[directory] state_dir`):
//! a cache of it to start from while the database is down, and the outbox of write-through
//! effects the database could not take.
//!
//! ```text
//! state_dir/directory.cache   a line {"seq","at","entities"}, then one line per entity
//!                             the change log changed: its net change, as applied up to
//!                             seq (exactly `entities` of them: a cut file is refused)
//!                             (streamed both ways, never held whole; rewritten
//!                             atomically, every CACHE_EVERY or more)
//! state_dir/outbox.journal    effects of forwarded requests, one fsync'd line per batch,
//!                             in order; delivered through the database, then cut
//! ```

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::problem::{Problem, Problems};
use crate::model::directory::change::Change;
use crate::model::directory::journal::{self, Entry, Journal};

/// The first line of the cache.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheHeader {
    /// The last sequence number of the change log applied.
    seq: u64,
    /// When it was written (seconds since the epoch).
    at: u64,
    /// How many lines follow.
    entities: u64,
}

/// A replica's own folder.
#[derive(Debug)]
pub(crate) struct Local {
    cache: PathBuf,
    outbox: Journal,
}

impl Local {
    /// Opens (or creates) the folder and its outbox.
    ///
    /// # Errors
    /// The folder or the outbox cannot be created or read.
    pub(crate) fn open(dir: &Path) -> Result<Local, Problems> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Problem::in_file(dir, format!("state_dir: {e}")))?;
        Ok(Local {
            cache: dir.join("directory.cache"),
            outbox: Journal::open(&dir.join("outbox.journal"))?,
        })
    }

    /// Reads the cached directory: each net change given to `each` in order, and the last
    /// sequence applied returned (`None`: no cache was written yet).
    ///
    /// # Errors
    /// The cache cannot be read, or a line of it is not what [`Local::write_cache`] writes
    /// (`each` may have been given some changes).
    pub(crate) fn read_cache(&self, mut each: impl FnMut(Change)) -> Result<Option<u64>, Problems> {
        let path = &self.cache;
        let at = |line, m: String| Problems::from(Problem::at_line(path, Some(line), m));
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Problem::in_file(path, format!("cannot read: {e}")).into()),
        };
        let mut lines = std::io::BufReader::new(file).lines();
        let mut next = |n: usize| match lines.next() {
            Some(Ok(line)) => Ok(Some(line)),
            Some(Err(e)) => Err(at(n, format!("cannot read: {e}"))),
            None => Ok(None),
        };
        let header = next(1)?.ok_or_else(|| at(1, "empty, not a cache".into()))?;
        let header: CacheHeader =
            serde_json::from_str(&header).map_err(|e| at(1, format!("not a cache header: {e}")))?;
        let mut n = 2;
        while let Some(line) = next(n)? {
            if n as u64 > header.entities + 1 {
                return Err(at(
                    n,
                    format!("more than the {} entities the header says", header.entities),
                ));
            }
            let change = serde_json::from_str(&line)
                .map_err(|e| at(n, format!("not a directory change: {e}")))?;
            each(change);
            n += 1;
        }
        if (n as u64) < header.entities + 2 {
            let m = format!(
                "cut short: {} of the {} entities the header says",
                n - 2,
                header.entities
            );
            return Err(at(n, m));
        }
        Ok(Some(header.seq))
    }

    /// Where the cache is.
    pub(crate) fn cache_path(&self) -> &Path {
        &self.cache
    }

    /// Replaces the cache with the `entities` `changes` at `seq` (atomically: the old
    /// cache or the new one), written as they come.
    ///
    /// # Errors
    /// It could not be written, or `changes` were not `entities` (the old cache stays).
    pub(crate) fn write_cache(
        &self,
        seq: u64,
        entities: u64,
        changes: impl Iterator<Item = Change>,
    ) -> std::io::Result<()> {
        journal::write_atomically_with(&self.cache, |out| {
            let at = crate::authn::now();
            write_line(out, &CacheHeader { seq, at, entities })?;
            let mut written = 0;
            for change in changes {
                write_line(out, &change)?;
                written += 1;
            }
            match written == entities {
                true => Ok(()),
                false => Err(std::io::Error::other(format!(
                    "{written} entities written, not {entities}"
                ))),
            }
        })
    }

    /// Queues a batch the database could not take; on disk when this returns.
    ///
    /// # Errors
    /// The write or the fsync failed (the batch is not queued).
    pub(crate) fn queue(&self, changes: &[Change]) -> std::io::Result<u64> {
        self.outbox.append(changes)
    }

    /// How many batches wait in the outbox (a new effect queues behind them).
    pub(crate) fn queued_count(&self) -> usize {
        self.outbox.held().0
    }

    /// The queued batches, oldest first, each change as the state it leaves its entity in
    /// (a `create` as a `put`: the upstream made the entity, which this replica may hold
    /// already, from the cache or as served since).
    ///
    /// # Errors
    /// The outbox cannot be read.
    pub(crate) fn queued(&self) -> Result<Vec<Entry>, Problems> {
        let mut entries = journal::read(self.outbox.path())?;
        for entry in &mut entries {
            let changes = std::mem::take(&mut entry.changes);
            entry.changes = changes.into_iter().map(Change::as_state).collect();
        }
        Ok(entries)
    }

    /// Drops the batches up to `seq` (delivered, or refused for good).
    ///
    /// # Errors
    /// The outbox could not be rewritten (they stay, and are delivered again: a batch
    /// the database already has leaves its entities as they are, or is refused).
    pub(crate) fn delivered(&self, seq: u64) -> std::io::Result<()> {
        self.outbox.keep_after(seq)
    }
}

/// `value` as one JSON line.
fn write_line(out: &mut dyn Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::directory::change::Uid;

    fn delete(id: &str) -> Change {
        Change::Delete {
            uid: Uid {
                ty: "T::U".into(),
                id: id.into(),
            },
        }
    }

    #[test]
    fn the_outbox_keeps_its_order_across_a_reopen_and_drops_what_was_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        assert_eq!(local.queued_count(), 0);
        let first = local.queue(&[delete("a")]).unwrap();
        local.queue(&[delete("b")]).unwrap();
        local.queue(&[delete("c")]).unwrap();
        drop(local);
        let local = Local::open(dir.path()).unwrap();
        assert_eq!(local.queued_count(), 3);
        local.delivered(first).unwrap();
        let left: Vec<Vec<Change>> = local
            .queued()
            .unwrap()
            .into_iter()
            .map(|e| e.changes)
            .collect();
        assert_eq!(left, vec![vec![delete("b")], vec![delete("c")]]);
        // the next batch follows the last, not the first free number
        let next = local.queue(&[delete("d")]).unwrap();
        assert_eq!(next, first + 3);
        local.delivered(next).unwrap();
        assert_eq!(local.queued_count(), 0);
        assert!(local.queued().unwrap().is_empty());
    }

    #[test]
    fn the_cache_is_replaced_whole_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let read = |local: &Local| {
            let mut changes = Vec::new();
            local
                .read_cache(|c| changes.push(c))
                .map(|seq| (seq, changes))
        };
        assert_eq!(read(&local).unwrap(), (None, vec![]));
        for (seq, ids) in [(7, vec!["a", "b"]), (9, vec!["c"])] {
            let changes: Vec<Change> = ids.into_iter().map(delete).collect();
            let count = changes.len() as u64;
            local
                .write_cache(seq, count, changes.clone().into_iter())
                .unwrap();
            assert_eq!(read(&local).unwrap(), (Some(seq), changes));
        }
        let cache = dir.path().join("directory.cache");
        let written = std::fs::read_to_string(&cache).unwrap();
        let head = "{\"seq\":1,\"at\":1,\"entities\":2}\n";
        // a file cut at a line's end (a copy, a restored volume) is refused, not half read
        std::fs::write(&cache, format!("{head}{}", written.lines().nth(1).unwrap())).unwrap();
        let e = read(&local).unwrap_err().to_string();
        assert!(e.contains("cut short: 1 of the 2"), "{e}");
        std::fs::write(&cache, format!("{head}{{\"op\":\"nope\"}}\n")).unwrap();
        let e = read(&local).unwrap_err().to_string();
        assert!(
            e.contains("directory.cache:2") && e.contains("not a directory change"),
            "{e}"
        );
        std::fs::write(&cache, "{\"seq\":1,\"at\":1,\"changes\":[]}\n").unwrap();
        let e = read(&local).unwrap_err().to_string();
        assert!(e.contains("not a cache header"), "{e}");
    }
}
