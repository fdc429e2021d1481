//! Reloading: build a complete new snapshot off the request path, then swap it in.
//!
//! ```text
//! watch (poll file metadata every 500 ms, debounced) ─┐
//! SIGHUP ─────────────────────────────────────────────┼─▶ Reloader::reload ─▶ Snapshot::load
//! POST /reload (admin listener) ──────────────────────┘     (blocking thread, one at a time)
//!     ok ─▶ Gateway::swap (atomic; in-flight requests keep their snapshot)
//!     problems ─▶ logged with file and line; the old snapshot keeps serving
//!  every attempt ─▶ last attempt (shown by /status) + reload metrics
//! ```
//!
//! A reload re-reads what `[policy]` names (schema, routes, policies, shadow policies,
//! directory), `[license]` as loaded at start, the key files `[auth]` names (a changed key
//! file is a rotation: tokens signed with the old key are refused from then on; JWKS URLs
//! refresh on their own), and the listener's TLS certificate, key and client CA (new
//! connections use them). Changes to the config file itself need a restart: a reload that
//! finds it changed since start says so (a warning, in the log and `/status`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::authz::snapshot::Snapshot;
use crate::config::files::files_below;
use crate::config::tomlfile;
use crate::config::Config;
use crate::proxy::Gateway;
use crate::serve::tls::Tls;

/// How often the watcher looks at the files.
const POLL: Duration = Duration::from_millis(500);
/// How long the files must stay unchanged before a reload starts.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// One reload attempt, as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attempt {
    /// When it finished (RFC 3339, UTC).
    pub at: String,
    /// What started it: `watch`, `signal` or `admin`.
    pub trigger: &'static str,
    /// Whether the new snapshot is serving.
    pub ok: bool,
    /// The policy version serving after the attempt.
    pub policy_version: String,
    /// Every problem found (empty when ok).
    pub problems: Vec<String>,
    /// Whether, with policy or schema problems, the directory files were still applied
    /// (against the serving schema and policies).
    pub directory_applied: bool,
    /// What did not stop the reload (a broken shadow policy set, dropped).
    pub warnings: Vec<String>,
}

/// Reloads the gateway's snapshot.
#[derive(Debug)]
pub struct Reloader {
    config: Config,
    gateway: Arc<Gateway>,
    /// The client listener's TLS, whose certificate files reload too.
    tls: Option<Arc<Tls>>,
    last: Mutex<Option<Attempt>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for the gateway (and its listener's TLS), reading what `config` names.
    pub fn new(config: Config, gateway: Arc<Gateway>, tls: Option<Arc<Tls>>) -> Arc<Reloader> {
        Arc::new(Reloader {
            config,
            gateway,
            tls,
            last: Mutex::new(None),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// The last attempt, if any.
    pub fn last(&self) -> Option<Attempt> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Builds and validates a new snapshot; swaps it in only when it has no problem.
    pub async fn reload(&self, trigger: &'static str) -> Attempt {
        let _one = self.one_at_a_time.lock().await;
        // no directory change may land between reading the journal and swapping
        let _writes = self.gateway.write_lock().await;
        let config = self.config.clone();
        let previous = self.gateway.snapshot();
        let loaded =
            tokio::task::spawn_blocking(move || Snapshot::load_after(&config, Some(&previous)))
                .await;
        let (mut directory_applied, mut warnings) = (false, self.config_changed());
        let mut problems: Vec<String> = match loaded {
            Ok(Ok(snapshot)) => {
                warnings.extend(snapshot.warnings.iter().cloned());
                self.gateway.swap_reloaded(snapshot).await;
                Vec::new()
            }
            Ok(Err(problems)) => {
                // the directory follows its files even while a policy file is broken
                let current = self.gateway.snapshot();
                if let Ok(next) = current.with_directory_reloaded(&self.config) {
                    if next.directory_version != current.directory_version {
                        self.gateway.swap_reloaded(next).await;
                        directory_applied = true;
                    }
                }
                problems.iter().map(ToString::to_string).collect()
            }
            Err(e) => vec![format!("reload task failed: {e}")],
        };
        match self.gateway.verifier().reload_keys(&self.config) {
            Ok(0) => {}
            Ok(rotated) => tracing::info!(trigger, rotated, "key files rotated"),
            Err(p) => problems.extend(p.iter().map(ToString::to_string)),
        }
        if let Some(Err(p)) = self.tls.as_ref().map(|tls| tls.reload()) {
            problems.extend(p.iter().map(ToString::to_string));
        }
        let serving = self.gateway.snapshot();
        let attempt = Attempt {
            at: rfc3339(SystemTime::now()),
            trigger,
            ok: problems.is_empty(),
            policy_version: serving.policy_version.to_string(),
            problems,
            directory_applied,
            warnings,
        };
        for w in &attempt.warnings {
            tracing::warn!(trigger, warning = w.as_str(), "reload");
        }
        self.gateway.metrics().record_reload(attempt.ok);
        if attempt.ok {
            tracing::info!(
                trigger,
                policy_version = &*serving.policy_version,
                directory_version = &*serving.directory_version,
                "reloaded"
            );
        } else {
            for p in &attempt.problems {
                tracing::error!(
                    trigger,
                    problem = p.as_str(),
                    "reload refused; the previous snapshot keeps serving"
                );
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(attempt.clone());
        }
        attempt
    }

    /// A warning when the config file is no longer what `serve` started with.
    fn config_changed(&self) -> Vec<String> {
        let source = &self.config.source;
        let now = std::fs::read_to_string(source.path()).map(|t| tomlfile::digest(&t));
        match now {
            Ok(digest) if digest == source.digest() => Vec::new(),
            Ok(_) => vec![format!(
                "{} changed since start: restart to apply it (a reload re-reads only the files it names)",
                source.path().display()
            )],
            Err(e) => vec![format!("{}: {e}", source.path().display())],
        }
    }

    /// Watches the files `[policy]` names and reloads when they change.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut paths = watched_paths(&this.config);
            paths.extend(this.tls.iter().flat_map(|tls| tls.paths()));
            let mut seen = fingerprint_off_thread(paths.clone()).await;
            loop {
                tokio::time::sleep(POLL).await;
                let mut now = fingerprint_off_thread(paths.clone()).await;
                if now == seen {
                    continue;
                }
                loop {
                    tokio::time::sleep(DEBOUNCE).await;
                    let again = fingerprint_off_thread(paths.clone()).await;
                    if again == now {
                        break;
                    }
                    now = again;
                }
                seen = now;
                this.reload("watch").await;
            }
        })
    }

    /// Reloads on every SIGHUP.
    pub fn spawn_sighup(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                    tracing::warn!("cannot listen for SIGHUP");
                    return;
                };
                while hangups.recv().await.is_some() {
                    this.reload("signal").await;
                }
            }
        })
    }
}

/// Every path a snapshot is built from, and the key files.
fn watched_paths(config: &Config) -> Vec<PathBuf> {
    use crate::config::{KeySource, PemSource};
    let p = &config.policy;
    let keys = config.auth.issuers.iter().filter_map(|i| match &i.key {
        KeySource::Secret(f) | KeySource::Jwks(f) | KeySource::PublicPem(PemSource::File(f)) => {
            Some(f.clone())
        }
        KeySource::PublicPem(PemSource::Inline(_)) | KeySource::JwksUrl { .. } => None,
    });
    [p.schema.clone(), p.routes.clone()]
        .into_iter()
        .chain(p.policies.iter().cloned())
        .chain(p.shadow.iter().cloned())
        .chain(p.directory.iter().cloned())
        .chain(keys)
        .collect()
}

async fn fingerprint_off_thread(paths: Vec<PathBuf>) -> u64 {
    tokio::task::spawn_blocking(move || fingerprint(&paths))
        .await
        .unwrap_or(0)
}

/// A hash of the names, sizes and modification times of every file below `paths`.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut files = Vec::new();
    for p in paths {
        // a path that cannot be walked (not there yet) counts by its name
        files.extend(files_below(p, |_| true).unwrap_or_else(|_| vec![p.clone()]));
    }
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        if let Ok(meta) = std::fs::metadata(&f) {
            meta.len().hash(&mut h);
            meta.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// `2026-11-22T14:57:43Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}Z", crate::telemetry::record::civil(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_359_463), "2026-11-22T14:57:43Z");
    }

    #[test]
    fn fingerprint_follows_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.cedar");
        std::fs::write(&f, "one").unwrap();
        let paths = vec![dir.path().to_path_buf()];
        let first = fingerprint(&paths);
        assert_eq!(fingerprint(&paths), first);
        std::fs::write(&f, "one, two").unwrap();
        assert_ne!(fingerprint(&paths), first);
        let second = fingerprint(&paths);
        std::fs::write(dir.path().join("b.cedar"), "").unwrap();
        assert_ne!(fingerprint(&paths), second);
    }
}
