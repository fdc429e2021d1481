//! Where the directory's runtime changes are kept when replicas share them: a PostgreSQL
//! database every replica writes through and follows (`[directory] store = "postgres"`).
//! The single-node default, the file journal, is `model::directory::journal`.
//!
//! ```text
//! Gateway::commit ─▶ postgres::Postgres::write (catch up, check, append, notify, commit)
//! serve::replica  ─▶ postgres::Postgres::listen / since ─▶ Gateway::catch_up
//!                 ─▶ Gateway::deliver_queued (the outbox, once the database is back)
//!                 ─▶ Gateway::write_cache (every CACHE_EVERY or more, when changed)
//! database down at start ─▶ local::Local::cached, the outbox laid over it (degraded)
//! ```

pub(crate) mod local;
pub(crate) mod postgres;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::authz::snapshot::Snapshot;
use crate::config::problem::Problems;
use crate::model::directory::change::Change;
use crate::model::directory::journal::Entry;
use crate::model::directory::{Directory, Patch};

/// [`Replica`]'s `behind` when the log was never found behind it.
const NOT_BEHIND: u64 = u64::MAX;

/// A replica's view of the shared directory: how far it has applied the change log (which
/// entities the log has changed, its directory knows: `Directory::logged_changes`).
#[derive(Debug)]
pub(crate) struct Replica {
    /// The database.
    pub(crate) store: postgres::Postgres,
    /// Its own folder: the cache and the outbox.
    pub(crate) local: local::Local,
    applied: AtomicU64,
    /// Serving the cache since start: the database has not been read yet.
    from_cache: AtomicBool,
    /// The sequence number the cache was last written at.
    cached: AtomicU64,
    /// A delivery of the outbox is under way.
    delivering: AtomicBool,
    loaded: AtomicBool,
    head: AtomicU64,
    connected: AtomicBool,
    /// The head the log was found to end at, before what was applied (NOT_BEHIND: never).
    behind: AtomicU64,
}

impl Replica {
    /// A replica of `store` that has loaded nothing yet.
    pub(crate) fn new(store: postgres::Postgres, local: local::Local) -> Replica {
        Replica {
            store,
            local,
            applied: AtomicU64::new(0),
            from_cache: AtomicBool::new(false),
            cached: AtomicU64::new(0),
            delivering: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            head: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            behind: AtomicU64::new(NOT_BEHIND),
        }
    }

    /// The last sequence number applied to the serving snapshot.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Whether the database's directory has been loaded (before that, nothing is served
    /// from it and nothing is written to it).
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Records that everything up to `seq` is applied.
    pub(crate) fn advance(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::AcqRel);
        self.head.fetch_max(seq, Ordering::AcqRel);
        self.loaded.store(true, Ordering::Release);
    }

    /// The last sequence number the database was seen to have.
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Notes the database's last sequence number (from a notification or a poll).
    pub(crate) fn note_head(&self, seq: u64) {
        self.head.fetch_max(seq, Ordering::AcqRel);
    }

    /// Whether the replica's listening connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Notes the listening connection's state (up: a catch-up succeeded, so the cache is
    /// no longer what is served).
    pub(crate) fn set_connected(&self, up: bool) {
        if up {
            self.from_cache.store(false, Ordering::Release);
        }
        self.connected.store(up, Ordering::Release);
    }

    /// [`postgres::StoreError::Behind`] once the change log was found behind this replica:
    /// it neither follows nor writes that log again before a restart.
    ///
    /// # Errors
    /// The log was found behind.
    pub(crate) fn not_behind(&self) -> Result<(), postgres::StoreError> {
        match self.behind.load(Ordering::Acquire) {
            NOT_BEHIND => Ok(()),
            head => Err(postgres::StoreError::Behind {
                head,
                applied: self.applied(),
            }),
        }
    }

    /// Notes `e`: when it is [`postgres::StoreError::Behind`], the replica is behind for good.
    pub(crate) fn note_error(&self, e: &postgres::StoreError) {
        if let postgres::StoreError::Behind { head, .. } = e {
            let _ = self.behind.compare_exchange(
                NOT_BEHIND,
                *head,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire) != NOT_BEHIND
    }

    /// Whether this replica is degraded: serving the cache, or ahead of the database.
    fn is_degraded(&self) -> bool {
        self.is_from_cache() || self.is_behind()
    }

    /// Notes that the directory served was started from the cache (the database down).
    pub(crate) fn started_from_cache(&self) {
        self.from_cache.store(true, Ordering::Release);
    }

    /// Whether the served directory is the cache, the database not read since start.
    pub(crate) fn is_from_cache(&self) -> bool {
        self.from_cache.load(Ordering::Acquire)
    }

    /// Whether the cache is behind what is applied (and the database was read since start:
    /// a cache is only ever written from what the database said).
    pub(crate) fn cache_due(&self) -> bool {
        !self.is_from_cache() && self.applied() > self.cached.load(Ordering::Acquire)
    }

    /// Claims the delivery of the outbox: false when one is under way already.
    pub(crate) fn start_delivering(&self) -> bool {
        !self.delivering.swap(true, Ordering::AcqRel)
    }

    /// Ends a delivery claimed by [`Replica::start_delivering`].
    pub(crate) fn done_delivering(&self) {
        self.delivering.store(false, Ordering::Release);
    }

    /// Notes that the cache holds everything up to `seq`.
    pub(crate) fn cache_written(&self, seq: u64) {
        self.cached.fetch_max(seq, Ordering::AcqRel);
    }

    /// What keeps this replica from serving the shared directory as the database has it,
    /// for `/readyz` (`degraded`).
    pub(crate) fn degraded(&self) -> Vec<String> {
        let mut out = Vec::new();
        let seq = self.applied();
        if self.is_behind() {
            out.push(format!(
                "shared directory: the database's change log ends before seq {seq}, which this replica applied (restored from a backup?); restart this replica to load it"
            ));
        } else if self.is_from_cache() {
            out.push(format!(
                "shared directory: serving the local cache (seq {seq}); the database has not been reached since start"
            ));
        } else if !self.is_connected() {
            out.push(format!(
                "shared directory: the database is unreachable; serving seq {seq}"
            ));
        }
        let queued = self.local.queued_count();
        if queued > 0 {
            out.push(format!(
                "shared directory: {queued} write-through batches queued for the database"
            ));
        }
        out
    }

    /// What `/status` shows of it (`shared_directory`).
    pub(crate) fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "store": "postgres",
            "source": if self.is_from_cache() { "cache" } else { "database" },
            "connected": self.is_connected(),
            "loaded": self.is_loaded(),
            "applied_seq": self.applied(),
            "head_seq": self.head(),
            "lag": self.head().saturating_sub(self.applied()),
            "cached_seq": self.cached.load(Ordering::Acquire),
            "outbox": self.local.queued_count(),
            "behind_database": self.is_behind(),
        })
    }

    /// Its Prometheus samples.
    pub(crate) fn metrics(&self) -> String {
        let (connected, applied) = (u8::from(self.is_connected()), self.applied());
        let lag = self.head().saturating_sub(applied);
        let (degraded, queued) = (u8::from(self.is_degraded()), self.local.queued_count());
        format!(
            "# HELP iotgate_shared_directory_connected Whether the replica follows the shared database (1) or not (0).\n\
             # TYPE iotgate_shared_directory_connected gauge\n\
             iotgate_shared_directory_connected {connected}\n\
             # HELP iotgate_shared_directory_applied_seq The last change-log sequence number applied.\n\
             # TYPE iotgate_shared_directory_applied_seq gauge\n\
             iotgate_shared_directory_applied_seq {applied}\n\
             # HELP iotgate_shared_directory_lag Changes the database has that this replica has not applied.\n\
             # TYPE iotgate_shared_directory_lag gauge\n\
             iotgate_shared_directory_lag {lag}\n\
             # HELP iotgate_shared_directory_degraded Whether the directory served is the local cache (the database not reached since start) or ahead of the database's change log (1).\n\
             # TYPE iotgate_shared_directory_degraded gauge\n\
             iotgate_shared_directory_degraded {degraded}\n\
             # HELP iotgate_shared_directory_outbox Write-through batches queued on disk for the database.\n\
             # TYPE iotgate_shared_directory_outbox gauge\n\
             iotgate_shared_directory_outbox {queued}\n"
        )
    }
}

/// The whole shared directory read from `store` into a patch of `base` (its entities
/// marked as the change log's), and the sequence number it is at: what a first catch-up
/// serves and `iotgate check` decides on.
///
/// # Errors
/// The database cannot be reached, or holds a row iotgate cannot read.
pub(crate) async fn load<'s>(
    base: &'s Snapshot,
    store: &postgres::Postgres,
) -> Result<(Patch<'s>, u64), postgres::StoreError> {
    let mut patch = base.patch();
    patch.logged(true);
    let seq = store
        .load(|net| match net {
            postgres::Net::Entity(json) => patch.put_entity(json),
            postgres::Net::Change(change) => {
                patch.apply(&change);
                Ok(())
            }
        })
        .await?;
    Ok((patch, seq))
}

/// `log` (entries of the change log), then `queued` (batches of the outbox), applied in
/// order over `base` (`None` when there are none): see [`lay`].
pub(crate) fn replay(base: &Snapshot, log: &[Entry], queued: &[Entry]) -> Option<Snapshot> {
    let seq = log.last().or(queued.last())?.seq;
    let mut patch = base.patch();
    lay(&mut patch, log, true);
    lay(&mut patch, queued, false);
    Some(finish(base, patch, seq))
}

/// `entries` applied in order, their entities marked as the change log's (`logged`) or not.
/// A change that does not fit here (this replica's schema, rules or files disagree with the
/// writer's) leaves its entity absent, so it is refused here, never decided on what this
/// replica's files say; it is logged, and applied again by the next change of that entity.
pub(crate) fn lay(patch: &mut Patch<'_>, entries: &[Entry], logged: bool) {
    patch.logged(logged);
    for entry in entries {
        for change in &entry.changes {
            patch.apply(change);
        }
        report(entry.seq, &patch.take_problems());
    }
}

/// The entities the change log changed, as `from` has them, laid over `onto` (marked as
/// the log's): the shared directory over a directory rebuilt from files. `None` when `from`
/// has none (not a replica's directory).
pub(crate) fn with_logged_of<'s>(onto: &'s Snapshot, from: &Directory) -> Option<Patch<'s>> {
    let mut changes = from.logged_changes().peekable();
    changes.peek()?;
    let mut patch = onto.patch();
    patch.logged(true);
    changes.for_each(|change| patch.apply(&change));
    Some(patch)
}

/// A candidate snapshot (`check --against`, `--replay`) with the live shared directory laid
/// over it, as a replica lays it over a reload of its files: the candidate differs from the
/// live side only in what the candidate files change (itself without `store = "postgres"`).
pub(crate) fn with_live_shared(live: &Snapshot, candidate: Snapshot) -> Snapshot {
    match with_logged_of(&candidate, &live.directory) {
        Some(patch) => finish(&candidate, patch, 0),
        None => candidate,
    }
}

/// `base` with the patched directory at `seq`, what did not fit logged.
pub(crate) fn finish(base: &Snapshot, patch: Patch<'_>, seq: u64) -> Snapshot {
    let (next, problems) = base.with_patch(patch, seq);
    report(seq, &problems);
    next
}

/// The batch applied whole over `base` at `seq`, its entities marked as the change log's.
///
/// # Errors
/// A change does not fit (nothing applied).
pub(crate) fn with_logged(
    base: &Snapshot,
    changes: &[Change],
    seq: u64,
) -> Result<Snapshot, Problems> {
    let mut patch = base.patch();
    patch.logged(true);
    for change in changes {
        patch.apply(change);
    }
    let (next, problems) = base.with_patch(patch, seq);
    problems.into_result(next)
}

fn report(seq: u64, problems: &Problems) {
    if !problems.is_empty() {
        tracing::error!(seq, problems = %problems, "shared change does not fit here; its entities are left out (refused)");
    }
}
