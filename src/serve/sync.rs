//! `[directory.sync]`: the platform imported every interval and reconciled into what serves,
//! catching what write-through missed (changes made on the server directly).
//!
//! ```text
//! every interval (the first at start, before serving), and 200 ms after a `resync` route
//! (a project member added, changed or removed through iotgate) was answered 2xx:
//!   platform::{thinger,central}::import (on the serving schema) ─▶ World
//!     ├─ World::reconcile(serving directory) ─▶ creates, puts and deletes (more than half
//!     │    of the imported types' entities removed, and more than 10: the removals are
//!     │    held back and the run fails; the rest still applies)
//!     ├─ project policy files ─▶ write into `policies`/projects/ (only what differs)
//!     │    └─ any changed ─▶ Reloader::reload("sync"); refused: the files are put back,
//!     │       the last good policies keep serving, the run fails
//!     └─ the changes ─▶ Gateway::commit (checked, journaled, served)
//!   one run at a time; a failed run changes nothing; /status `sync`, /readyz `degraded`,
//!   metrics show it
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::reload::{rfc3339, Reloader};
use crate::config::{SyncConfig, SyncFrom};
use crate::model::directory::change::Change;
use crate::platform::{self, Source, World};
use crate::proxy::Gateway;

/// How long a `resync` wake-up waits before importing.
const RESYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// The least time between the starts of two runs a `resync` wake-up causes: a client that
/// keeps changing members cannot make iotgate hammer the platform.
const MIN_GAP: std::time::Duration = std::time::Duration::from_secs(2);
/// Removals a run may always make (beyond, at most half of the imported types' entities).
const MAX_REMOVALS_ALWAYS: usize = 10;

/// What `/status` shows of the sync.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SyncStatus {
    pub(crate) from: &'static str,
    pub(crate) url: String,
    pub(crate) last_attempt: Option<String>,
    pub(crate) last_success: Option<String>,
    pub(crate) last_error: Option<String>,
    /// Entities the last successful run read.
    pub(crate) entities: usize,
    /// Directory changes and policy files the last successful run applied.
    pub(crate) changes: usize,
    pub(crate) policy_files: usize,
    /// What the last run narrowed or skipped.
    pub(crate) warnings: Vec<String>,
}

/// The sync of one gateway.
#[derive(Debug)]
pub(crate) struct Sync {
    config: SyncConfig,
    source: Source,
    status: Mutex<SyncStatus>,
    /// One run at a time (timer, `resync`, `POST /sync`); when the last one started.
    running: tokio::sync::Mutex<Option<std::time::Instant>>,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Sync {
    /// A sync reading the token file now.
    ///
    /// # Errors
    /// The token file cannot be read or is empty, or TLS cannot be set up.
    pub(crate) fn new(config: &SyncConfig) -> Result<Arc<Sync>, String> {
        let token =
            crate::config::problem::read_text(&config.token_file).map_err(|p| p.to_string())?;
        if token.trim().is_empty() {
            return Err(format!(
                "{}: the sync token is empty",
                config.token_file.display()
            ));
        }
        let from = match config.from {
            SyncFrom::Thinger { .. } => "thinger",
            SyncFrom::Central { .. } => "central",
        };
        Ok(Arc::new(Sync {
            source: Source::new(&config.url, &token)?,
            status: Mutex::new(SyncStatus {
                from,
                url: config.url.clone(),
                ..SyncStatus::default()
            }),
            config: config.clone(),
            running: tokio::sync::Mutex::new(None),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }))
    }

    /// Its status.
    pub(crate) fn status(&self) -> SyncStatus {
        self.lock().clone()
    }

    /// (successful, failed) runs so far.
    pub(crate) fn runs(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs every interval, and soon after a `resync` route was answered 2xx, forever (the
    /// caller ran the first).
    pub(crate) async fn run(self: Arc<Self>, gateway: Arc<Gateway>, reloader: Arc<Reloader>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = gateway.resync_wanted().notified() => {
                    // let a burst of member changes land first, and keep runs apart
                    let last = *self.running.lock().await;
                    let gap = last.map_or(Duration::ZERO, |t| MIN_GAP.saturating_sub(t.elapsed()));
                    tokio::time::sleep(RESYNC_DELAY.max(gap)).await;
                }
            }
            let _ = self.once(&gateway, &reloader).await;
        }
    }

    /// One import and reconciliation; the outcome is recorded in the status.
    ///
    /// # Errors
    /// The import, the policy files or the directory change failed (nothing else changed).
    pub(crate) async fn once(&self, gateway: &Gateway, reloader: &Reloader) -> Result<(), String> {
        let mut running = self.running.lock().await;
        *running = Some(std::time::Instant::now());
        let started = rfc3339(SystemTime::now());
        let result = self.apply(gateway, reloader).await;
        let mut status = self.lock();
        status.last_attempt = Some(started.clone());
        match &result {
            Ok((world, changes, files)) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                status.last_success = Some(started);
                status.last_error = None;
                status.entities = world.all_entities().count();
                status.changes = *changes;
                status.policy_files = *files;
                status.warnings.clone_from(&world.warnings);
                if *changes > 0 || *files > 0 {
                    tracing::info!(
                        changes,
                        policy_files = files,
                        "sync applied the platform's changes"
                    );
                }
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                status.last_error = Some(e.clone());
                tracing::warn!(
                    error = e.as_str(),
                    "sync failed; the last directory keeps serving"
                );
            }
        }
        result.map(|_| ())
    }

    async fn apply(
        &self,
        gateway: &Gateway,
        reloader: &Reloader,
    ) -> Result<(World, usize, usize), String> {
        let catalog = gateway.snapshot().catalog.clone();
        let world = match &self.config.from {
            SyncFrom::Thinger { original } => {
                let options = platform::thinger::Options {
                    original: original.clone(),
                };
                platform::thinger::import(&self.source, &catalog, &options).await?
            }
            SyncFrom::Central { root } => platform::central::import(&self.source, root).await?,
        };
        if let SyncFrom::Thinger {
            original: Some(original),
        } = &self.config.from
        {
            // a typo here would strip `original` from the real account, and its protection
            let found = world
                .all_entities()
                .any(|e| e.uid.ty.ends_with("::User") && &e.uid.id == original);
            if !found {
                return Err(format!(
                    "the platform has no account `{original}` (`original`); nothing applied"
                ));
            }
        }
        let mut changes = world.reconcile(&gateway.snapshot().directory);
        // too many removals: everything else still applies (a revocation must not wait for
        // an operator), the removals wait, and the run reports the refusal
        let guard = self.check_removals(gateway, &world, &changes);
        if guard.is_err() {
            changes.retain(|c| !matches!(c, Change::Delete { .. }));
        }
        if !changes.is_empty() {
            // checked before the policy files change, so a directory the schema refuses
            // leaves those as they are too
            gateway
                .snapshot()
                .with_changes(&changes, 0)
                .map_err(|p| format!("the platform's entities do not fit: {p}"))?;
        }
        let files = match &self.config.policies {
            Some(dir) => self.policies(dir.clone(), &world, reloader).await?,
            None => 0,
        };
        let count = changes.len();
        if count > 0 {
            gateway.commit(changes).await.map_err(|e| e.to_string())?;
        }
        guard.map(|()| (world, count, files))
    }

    /// Refuses a run that would remove more than half of the entities of the imported types
    /// (and more than ten): an empty or cut-short answer (a token without the scope, a
    /// proxy's error page as 200, paging) must not empty the directory.
    fn check_removals(
        &self,
        gateway: &Gateway,
        world: &World,
        changes: &[Change],
    ) -> Result<(), String> {
        let removals = changes
            .iter()
            .filter(|c| matches!(c, Change::Delete { .. }))
            .count();
        let snapshot = gateway.snapshot();
        let owned = snapshot
            .directory
            .nodes()
            .filter(|n| world.types.contains(&n.uid().type_name().to_string()))
            .count();
        match removals > MAX_REMOVALS_ALWAYS && removals * 2 > owned {
            true => Err(format!(
                "the platform's answer would remove {removals} of {owned} entities; refused (remove them through the entity API, or import with `iotgate import` and review)"
            )),
            false => Ok(()),
        }
    }

    /// Writes the project files that differ and reloads; when the reload refuses them, the
    /// files are put back as they were (what is on disk is what serves). Returns how many
    /// files changed.
    async fn policies(
        &self,
        dir: PathBuf,
        world: &World,
        reloader: &Reloader,
    ) -> Result<usize, String> {
        let files: BTreeMap<PathBuf, String> = world
            .policies
            .iter()
            .map(|(rel, text)| (PathBuf::from(rel), text.clone()))
            .collect();
        let shown = dir.display().to_string();
        let at = dir.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let changes = platform::plan(&at, &files, &platform::SYNC_OWNED)?;
            let saved = platform::save(&at, &changes);
            platform::write(&at, &files, &platform::SYNC_OWNED).map(|_| saved)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{shown}: {e}"))?;
        if saved.is_empty() {
            return Ok(0);
        }
        let attempt = reloader.reload("sync").await;
        if attempt.ok {
            return Ok(saved.len());
        }
        let put_back = tokio::task::spawn_blocking(move || platform::restore(&dir, &saved))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = put_back {
            tracing::error!(folder = shown.as_str(), error = %e, "sync could not put the refused policy files back");
        }
        Err(format!(
            "the synced policies did not load (put back): {}",
            attempt.problems.join("; ")
        ))
    }

    /// Its counters in the Prometheus text format.
    pub(crate) fn metrics(&self) -> String {
        let (ok, failed) = self.runs();
        format!(
            "# HELP iotgate_sync_runs_total Directory syncs from the platform by result (a failed one changes nothing).\n\
             # TYPE iotgate_sync_runs_total counter\n\
             iotgate_sync_runs_total{{result=\"ok\"}} {ok}\n\
             iotgate_sync_runs_total{{result=\"failed\"}} {failed}\n"
        )
    }
}
