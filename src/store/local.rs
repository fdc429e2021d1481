//! What a replica keeps of the shared directory on its own disk (`[directory] state_dir`):
//! a cache of it to start from while the database is down, and the outbox of write-through
//! effects the database could not take.
//!
//! ```text
//! state_dir/directory.cache   one entry {"seq","at","changes"}: the net change of every
//!                             entity the change log touched, as applied up to seq
//!                             (rewritten atomically, at most every CACHE_EVERY)
//! state_dir/outbox.journal    effects of forwarded requests, one fsync'd line per batch,
//!                             in order; delivered through the database, then cut
//! ```

use std::path::{Path, PathBuf};

use crate::config::problem::{Problem, Problems};
use crate::model::directory::change::Change;
use crate::model::directory::journal::{self, Entry, Journal};

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

    /// The cached directory: the last sequence applied and the net changes up to it
    /// (`None`: no cache was written yet).
    ///
    /// # Errors
    /// The cache cannot be read, or is not one entry.
    pub(crate) fn cached(&self) -> Result<Option<Entry>, Problems> {
        let mut entries = journal::read(&self.cache)?;
        match entries.len() {
            0 | 1 => Ok(entries.pop()),
            n => Err(Problem::in_file(&self.cache, format!("{n} entries, not one")).into()),
        }
    }

    /// Where the cache is.
    pub(crate) fn cache_path(&self) -> &Path {
        &self.cache
    }

    /// Replaces the cache with `entry` (atomically: the old cache or the new one).
    ///
    /// # Errors
    /// It could not be written (the old cache stays).
    pub(crate) fn write_cache(&self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        journal::write_atomically(&self.cache, &line)
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
    fn the_cache_is_one_entry_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        assert_eq!(local.cached().unwrap(), None);
        for seq in [7, 9] {
            let entry = Entry {
                seq,
                at: 1,
                changes: vec![delete("a")],
            };
            local.write_cache(&entry).unwrap();
            assert_eq!(local.cached().unwrap(), Some(entry));
        }
        std::fs::write(
            dir.path().join("directory.cache"),
            "{\"seq\":1,\"at\":1,\"changes\":[]}\n{\"seq\":2,\"at\":1,\"changes\":[]}\n",
        )
        .unwrap();
        let e = local.cached().unwrap_err().to_string();
        assert!(e.contains("2 entries, not one"), "{e}");
    }
}
