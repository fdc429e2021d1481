//! The gateway's side of the shared directory (`[directory] store = "postgres"`): its
//! writes through the database, its catch-ups, and what it keeps on its own disk.
//!
//! ```text
//! commit ─▶ commit_shared: BEGIN, the rows it missed replayed, the batches checked on
//!           them, their entities' net state appended ─▶ COMMIT ─▶ served, advanced
//! an effect, the database down (or batches queued) ─▶ Local::queue (fsync) ─▶ laid over
//!           the serving snapshot ─▶ deliver_queued, once a catch-up succeeds: every queued
//!           batch in one write, in order ─▶ the outbox cut
//! catch_up ─▶ the whole directory (first: streamed, row by row, into one patch; then the
//!           outbox) or the rows after the last applied ─▶ replay
//! start, the database down ─▶ start_from_cache: the cache (streamed), then the outbox
//! reload ─▶ swap_reloaded: the entities the log changed (as served), then the outbox
//! write_cache ─▶ the entities the log changed, their net state at the applied seq,
//!           streamed ─▶ Local::write_cache
//! ```
//!
//! The entities the change log changed are marked in the directory itself
//! (`Patch::logged`): what is laid over a reload and cached is that set, whatever its size.

use std::sync::Arc;

use super::{CommitError, Gateway};
use crate::authz::snapshot::Snapshot;
use crate::config::problem::{Problem, Problems};
use crate::config::{Config, PostgresUrl};
use crate::model::directory::change::{Change, Uid};
use crate::store::local::Local;
use crate::store::postgres::{Postgres, StoreError, SINCE_PAGE};
use crate::store::{self, Replica};

/// How a batch is written through the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A new change (the entity API, a sync, an effect): refused whole when it does not
    /// fit; nothing written when it changes nothing.
    Fresh,
    /// Batches queued while the database was down: the serving snapshot holds them
    /// already, so each is written as the state it leaves ([`Local::queued`]), even when
    /// that changes nothing here; one that does not fit is dropped, the others go on.
    Queued,
}

impl Gateway {
    /// [`Gateway::commit`] through the shared database: in turn with every replica, this one
    /// first applies what it has not yet, checks the batch on that, writes the state it
    /// leaves its entities in (their net changes: what every replica applies, whatever its
    /// own files say), and serves it once the database has committed it.
    pub(super) async fn commit_shared(
        &self,
        replica: &Replica,
        changes: Vec<Change>,
    ) -> Result<(), CommitError> {
        self.write_shared(replica, vec![changes], Delivery::Fresh)
            .await
            .map(drop)
    }

    /// Writes `batches` as one change-log row; returns the problems of the queued batches
    /// that were dropped.
    async fn write_shared(
        &self,
        replica: &Replica,
        batches: Vec<Vec<Change>>,
        delivery: Delivery,
    ) -> Result<Vec<Problems>, CommitError> {
        let _applying = self.applying.lock().await;
        if !replica.is_loaded() {
            return Err(CommitError::Store(
                "the shared directory is not loaded yet".into(),
            ));
        }
        replica
            .not_behind()
            .map_err(|e| CommitError::Store(e.to_string()))?;
        let current = self.snapshot();
        let applied = replica.applied();
        let written = replica
            .store
            .write(applied, |missed, seq| {
                let caught = store::replay(&current, &missed, &[]);
                let base = caught.as_ref().unwrap_or(&current);
                let prepared = prepare(base, batches, delivery, seq)?;
                let Some(next) = prepared.next else {
                    let last = missed.last().map_or(applied, |e| e.seq);
                    return Ok(((caught, last, prepared.dropped), None));
                };
                Ok(((Some(next), seq, prepared.dropped), Some(prepared.net)))
            })
            .await;
        let (next, seq, dropped) = match written {
            Ok(Ok(done)) => done,
            Ok(Err(refused)) => return Err(refused),
            Err(e) => {
                replica.note_error(&e);
                tracing::error!(error = %e, "shared directory write failed; change refused");
                return Err(CommitError::Store(e.to_string()));
            }
        };
        if let Some(next) = next {
            self.swap(next);
        }
        replica.advance(seq);
        self.metrics.record_directory_change(true);
        Ok(dropped)
    }

    /// Applies an effect of a forwarded request through the database; when the database
    /// cannot take it (or batches queued before it wait), it is queued on disk, in order,
    /// and served here at once.
    ///
    /// # Errors
    /// The effect does not fit (nothing applied), or it could not be queued.
    pub(super) async fn commit_effect(
        &self,
        replica: &Arc<Replica>,
        changes: Vec<Change>,
    ) -> Result<(), CommitError> {
        if replica.local.queued_count() == 0 {
            match self.commit_shared(replica, changes.clone()).await {
                Err(CommitError::Store(e)) => {
                    tracing::warn!(error = %e, "shared directory unavailable; effect queued on disk");
                }
                done => return done,
            }
        }
        let _applying = self.applying.lock().await;
        let queued = changes.clone();
        let local = Arc::clone(replica);
        tokio::task::spawn_blocking(move || local.local.queue(&queued))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(CommitError::Journal)?;
        let (next, problems) = self
            .snapshot()
            .with_changes_fitting(&changes, replica.applied());
        if !problems.is_empty() {
            tracing::error!(problems = %problems, "queued effect does not fit here; its entities are left out (refused)");
        }
        self.swap(next);
        Ok(())
    }

    /// Writes every queued batch through the database, in order, as one change-log row,
    /// then cuts them from the outbox. A batch that no longer fits is dropped (logged).
    ///
    /// # Errors
    /// The database failed: the batches stay queued for the next try.
    pub(crate) async fn deliver_queued(&self) -> Result<(), CommitError> {
        let Some(replica) = &self.replica else {
            return Ok(());
        };
        if replica.local.queued_count() == 0 {
            return Ok(());
        }
        // effects queue behind the outbox while it is delivered
        let _one = self.writes.lock().await;
        let queued = replica.local.queued().map_err(CommitError::Invalid)?;
        let Some(last) = queued.last().map(|e| e.seq) else {
            return Ok(());
        };
        let batches = queued.into_iter().map(|e| e.changes).collect();
        let dropped = self
            .write_shared(replica, batches, Delivery::Queued)
            .await?;
        for problems in dropped {
            self.metrics.record_directory_change(false);
            tracing::error!(problems = %problems, "queued effect refused by the shared directory; dropped");
        }
        let local = Arc::clone(replica);
        tokio::task::spawn_blocking(move || local.local.delivered(last))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(CommitError::Journal)?;
        tracing::info!(
            up_to = last,
            "queued effects delivered to the shared directory"
        );
        Ok(())
    }

    /// Applies what the shared database has that this replica has not: its whole directory
    /// the first time, then the change log after the last entry applied. It waits only for
    /// another replica-state change (not for a mutating request in flight, which holds the
    /// writer lock across its forward): a revocation lands while slow requests run.
    ///
    /// # Errors
    /// The database could not be read (nothing changed).
    pub(crate) async fn catch_up(&self) -> Result<(), StoreError> {
        let Some(replica) = &self.replica else {
            return Ok(());
        };
        let _applying = self.applying.lock().await;
        let current = self.snapshot();
        if !replica.is_loaded() {
            // what the outbox kept from an earlier run is served until delivered
            let queued = replica.local.queued();
            let queued = queued.map_err(|p| StoreError::Data(format!("the outbox: {p}")))?;
            let (mut patch, seq) = store::load(&current, &replica.store).await?;
            store::lay(&mut patch, &queued, false);
            self.swap(store::finish(&current, patch, seq));
            replica.advance(seq);
            return Ok(());
        }
        // page by page: each read is bounded in time, however far behind this replica is
        loop {
            replica.not_behind()?;
            let entries = replica.store.since(replica.applied()).await;
            let entries = entries.inspect_err(|e| replica.note_error(e))?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                return Ok(());
            };
            if let Some(next) = store::replay(&self.snapshot(), &entries, &[]) {
                self.swap(next);
            }
            replica.advance(last);
            if entries.len() < SINCE_PAGE {
                return Ok(());
            }
        }
    }

    /// Serves the cache of the shared directory, with the outbox laid over it: a start
    /// while the database is down. Reported degraded until a catch-up succeeds, which
    /// reads the change log after the cache's seq.
    ///
    /// # Errors
    /// There is no cache, or it cannot be read.
    pub(crate) async fn start_from_cache(&self) -> Result<u64, Problems> {
        let Some(replica) = &self.replica else {
            return Ok(0);
        };
        let _applying = self.applying.lock().await;
        let current = self.snapshot();
        let queued = replica.local.queued()?;
        let mut patch = current.patch();
        patch.logged(true);
        let Some(seq) = replica.local.read_cache(|c| patch.apply(&c))? else {
            return Err(Problems::from(Problem::in_file(
                replica.local.cache_path(),
                "no cache of the shared directory yet",
            )));
        };
        store::lay(&mut patch, &queued, false);
        self.swap(store::finish(&current, patch, seq));
        replica.advance(seq);
        replica.cache_written(seq);
        replica.started_from_cache();
        Ok(seq)
    }

    /// The shared directory this gateway follows, if any.
    pub(crate) fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }

    /// Swaps in a snapshot rebuilt from the files (a reload), with the shared database's
    /// entities laid over it again (each as the serving snapshot has it), then the outbox:
    /// one that does not fit the rebuilt snapshot is left out (refused) rather than the
    /// reload refused. Hold [`Gateway::write_lock`].
    pub async fn swap_reloaded(&self, snapshot: Snapshot) {
        let Some(replica) = &self.replica else {
            self.swap(snapshot);
            return;
        };
        let _applying = self.applying.lock().await;
        let queued = replica.local.queued().unwrap_or_else(|p| {
            tracing::error!(problems = %p, "the outbox cannot be read; its effects are not laid over the reload");
            Vec::new()
        });
        let served = self.snapshot();
        let mut patch =
            store::with_logged_of(&snapshot, &served.directory).unwrap_or_else(|| snapshot.patch());
        store::lay(&mut patch, &queued, false);
        self.swap(store::finish(&snapshot, patch, replica.applied()));
    }

    /// Writes the cache of the shared directory when it is behind what is applied: the
    /// net state of every entity the change log changed, at the applied seq.
    ///
    /// Returns how long writing it took (zero: not due).
    ///
    /// # Errors
    /// It could not be written (the old cache stays; the next call tries again).
    pub(crate) async fn write_cache(&self) -> std::io::Result<std::time::Duration> {
        let Some(replica) = self.replica.clone() else {
            return Ok(std::time::Duration::ZERO);
        };
        if !replica.cache_due() {
            return Ok(std::time::Duration::ZERO);
        }
        let (snapshot, seq) = {
            let _applying = self.applying.lock().await;
            (self.snapshot(), replica.applied())
        };
        let written = Arc::clone(&replica);
        let took = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let directory = &snapshot.directory;
            let count = directory.logged_count() as u64;
            let changes = directory.logged_changes();
            written.local.write_cache(seq, count, changes)?;
            Ok(started.elapsed())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        replica.cache_written(seq);
        Ok(took)
    }
}

/// Batches applied over the directory a write starts from.
struct Prepared {
    /// The snapshot to serve once written (`None`: nothing to write).
    next: Option<Snapshot>,
    /// The net change of every entity the batches kept touch, as `next` has it.
    net: Vec<Change>,
    /// The problems of the queued batches dropped.
    dropped: Vec<Problems>,
}

/// The batches applied over `base` as `delivery` says.
fn prepare(
    base: &Snapshot,
    batches: Vec<Vec<Change>>,
    delivery: Delivery,
    seq: u64,
) -> Result<Prepared, CommitError> {
    let (mut next, mut dropped, mut kept): (Option<Snapshot>, _, Vec<Change>) =
        (None, Vec::new(), Vec::new());
    for batch in batches {
        let from = next.as_ref().unwrap_or(base);
        if delivery == Delivery::Fresh && from.directory.unchanged_by(&batch) {
            continue;
        }
        match store::with_logged(from, &batch, seq) {
            Ok(applied) => {
                next = Some(applied);
                kept.extend(batch);
            }
            Err(problems) if delivery == Delivery::Queued => dropped.push(problems),
            Err(problems) => return Err(CommitError::Invalid(problems)),
        }
    }
    let net = next.as_ref().map_or_else(Vec::new, |next| {
        touched(&kept)
            .into_iter()
            .map(|uid| next.directory.net_change(uid))
            .collect()
    });
    Ok(Prepared { next, net, dropped })
}

/// The shared database `[directory] store = "postgres"` names (not connected yet), and
/// the replica's own folder.
pub(super) fn open_replica(config: &Config) -> Result<Option<Arc<Replica>>, Problems> {
    let (Some(store), Some(state_dir)) = (shared_store(config)?, &config.directory.state_dir)
    else {
        return Ok(None);
    };
    let local = Local::open(state_dir)?;
    Ok(Some(Arc::new(Replica::new(store, local))))
}

/// The shared database `[directory] store = "postgres"` names, if any (not connected yet).
///
/// # Errors
/// Its `url_file` cannot be read, or the URL is not a PostgreSQL URL.
pub(crate) fn shared_store(config: &Config) -> Result<Option<Postgres>, Problems> {
    let Some(url) = &config.directory.postgres else {
        return Ok(None);
    };
    let (key, url) = match url {
        PostgresUrl::Inline(url) => ("directory.url", url.clone()),
        PostgresUrl::File(path) => (
            "directory.url_file",
            std::fs::read_to_string(path).map_err(|e| {
                config.problem("directory.url_file", format!("{}: {e}", path.display()))
            })?,
        ),
    };
    let store = Postgres::new(&url).map_err(|e| config.problem(key, e.to_string()))?;
    Ok(Some(store))
}

/// The entities a batch touches, each once, in order.
fn touched(changes: &[Change]) -> Vec<&Uid> {
    let mut out: Vec<&Uid> = Vec::new();
    for c in changes {
        if !out.contains(&c.uid()) {
            out.push(c.uid());
        }
    }
    out
}
