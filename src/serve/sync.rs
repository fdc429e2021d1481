//! `[directory.sync]`: the platform imported every interval and reconciled into what serves,
//! catching what write-through missed (changes made on the server directly).
//!
//! ```text
//! every interval (the first at start, before serving), and 200 ms after a `resync` route
//! (a project member added, changed or removed through iotgate) was answered 2xx:
//!   platform::{thinger,central}::import (on the serving schema) ─▶ World
//!     ├─ project policy files ─▶ write into `policies`/projects/ (only what differs)
//!     │    └─ any changed ─▶ Reloader::reload("sync") (a file that does not load: the
//!     │       last good policies keep serving, the run fails)
//!     └─ World::reconcile(serving directory) ─▶ puts and deletes ─▶ Gateway::commit
//!        (checked, journaled, served; nothing when they agree)
//!   a failed run changes nothing; /status `sync`, /readyz `degraded`, metrics show it
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use super::reload::{rfc3339, Reloader};
use crate::config::{SyncConfig, SyncFrom};
use crate::platform::{self, Source, World};
use crate::proxy::Gateway;

/// How long a `resync` wake-up waits before importing.
const RESYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

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
                    // let a burst of member changes land first
                    tokio::time::sleep(RESYNC_DELAY).await;
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
        let files = match &self.config.policies {
            Some(dir) => self.write_policies(dir.clone(), &world).await?,
            None => 0,
        };
        if files > 0 {
            let attempt = reloader.reload("sync").await;
            if !attempt.ok {
                return Err(format!(
                    "the synced policies did not load: {}",
                    attempt.problems.join("; ")
                ));
            }
        }
        let changes = world.reconcile(&gateway.snapshot().directory);
        let count = changes.len();
        if count > 0 {
            gateway.commit(changes).await.map_err(|e| e.to_string())?;
        }
        Ok((world, count, files))
    }

    /// Writes the project files that differ; returns how many changed.
    async fn write_policies(&self, dir: PathBuf, world: &World) -> Result<usize, String> {
        let files: BTreeMap<PathBuf, String> = world
            .policies
            .iter()
            .map(|(rel, text)| (PathBuf::from(rel), text.clone()))
            .collect();
        let shown = dir.display().to_string();
        tokio::task::spawn_blocking(move || platform::write(&dir, &files, &platform::SYNC_OWNED))
            .await
            .map_err(|e| e.to_string())?
            .map(|changes| changes.len())
            .map_err(|e| format!("{shown}: {e}"))
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
