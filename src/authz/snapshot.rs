//! A snapshot: everything one decision needs, loaded and validated as a whole.
//!
//! ```text
//! Config ──▶ schema ──▶ Catalog ─┬─▶ routes  ──▶ RouteTable
//!                                ├─▶ policies ──▶ Policies (strict, level 2)
//!                                └─▶ directory ──▶ Directory
//!        ──▶ versions: policy = hash(schema, routes, policy files [, VERSION label]),
//!                      directory = hash(entity files)
//! ```
//!
//! A snapshot is immutable. Loading reports every problem of every part; a snapshot with a
//! problem is never built, so whatever was serving keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::authn::Verifier;
use crate::config::problem::{Problem, Problems};
use crate::config::Config;
use crate::model::directory::change::Change;
use crate::model::directory::journal;
use crate::model::directory::{Directory, Patch};
use crate::model::policy::Policies;
use crate::model::routes::RouteTable;
use crate::model::schema::Catalog;

/// Characters of the hex digest shown as a version.
const VERSION_LEN: usize = 12;

/// Source of snapshot generations.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Everything a decision reads, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    /// Schema and its catalog.
    pub catalog: Arc<Catalog>,
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// The policies.
    pub policies: Arc<Policies>,
    /// The directory.
    pub directory: Directory,
    /// Policy version: `hash` or `label@hash`.
    pub policy_version: Arc<str>,
    /// Directory content version.
    pub directory_version: Arc<str>,
    /// When it was built.
    pub loaded_at: SystemTime,
    /// Unique per load in this process (part of every decision cache key).
    pub generation: u64,
    /// Candidate policies decided beside the live ones (`[policy] shadow`), never enforced.
    pub shadow: Option<Arc<Policies>>,
    /// The `[license]` it counts with, to count again after a change.
    license: Option<crate::config::LicenseConfig>,
    /// What did not stop the load (a broken shadow policy set, left out).
    pub warnings: Vec<String>,
    /// Version of the shadow policies.
    pub shadow_version: Option<Arc<str>>,
}

impl Snapshot {
    /// Loads everything the config names. A broken shadow policy set is reported in
    /// `warnings` and left out: it never blocks the live snapshot.
    ///
    /// # Errors
    /// Every problem found in schema, routes, policies and directory.
    pub fn load(config: &Config) -> Result<Snapshot, Problems> {
        Snapshot::load_after(config, None)
    }

    /// [`Snapshot::load`] for a reload: policy files that did not change (under the same
    /// schema) are taken over from `previous` already parsed and validated, live and shadow.
    ///
    /// # Errors
    /// As [`Snapshot::load`].
    pub fn load_after(config: &Config, previous: Option<&Snapshot>) -> Result<Snapshot, Problems> {
        let p = &config.policy;
        let mut problems = Problems::new();
        let schema = problems.take(Catalog::load(&p.schema));
        let catalog = schema.as_ref().map(|(c, _)| c);
        let routes = catalog.and_then(|c| problems.take(RouteTable::load(&p.routes, c)));
        let with_text = schema.as_ref().map(|(c, t)| (c, t.as_str()));
        let previous_policies = previous.map(|s| &*s.policies);
        let policies = problems.take(Policies::load_reusing(
            &p.policies,
            with_text,
            previous_policies,
        ));
        let mut warnings = Vec::new();
        let previous_shadow = previous.and_then(|s| s.shadow.as_deref());
        let shadow = match (p.shadow.is_empty(), with_text) {
            (false, Some(c)) => match Policies::load_reusing(&p.shadow, Some(c), previous_shadow) {
                Ok(shadow) => Some(shadow),
                Err(broken) => {
                    let dropped = broken
                        .iter()
                        .map(|b| format!("shadow policies dropped: {b}"));
                    warnings.extend(dropped);
                    None
                }
            },
            _ => None,
        };
        let directory = match (&schema, &routes) {
            (Some((catalog, _)), Some((routes, _))) => {
                problems.take(Built::directory(config, catalog, routes))
            }
            (Some((catalog, _)), None) => {
                // without the route table's rules; only so its problems are reported too
                problems.take(Directory::load(&p.directory, catalog, &[]));
                None
            }
            _ => None,
        };
        let (
            Some((catalog, schema_text)),
            Some((routes, routes_text)),
            Some(policies),
            Some(Built {
                directory,
                version: directory_version,
            }),
        ) = (schema, routes, policies, directory)
        else {
            return Err(problems);
        };
        let shadow_version = shadow
            .as_ref()
            .map(|s| Arc::from(policy_version(&schema_text, &routes_text, s)));
        let policy_version = policy_version(&schema_text, &routes_text, &policies);
        problems.into_result(Snapshot {
            catalog: Arc::new(catalog),
            routes: Arc::new(routes),
            policies: Arc::new(policies),
            license: config.license.clone(),
            directory,
            policy_version: policy_version.into(),
            directory_version: directory_version.into(),
            loaded_at: SystemTime::now(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            shadow: shadow.map(Arc::new),
            shadow_version,
            warnings,
        })
    }

    /// This snapshot with its directory loaded again from the files and the journal,
    /// against its own schema and routes: a directory change applies while an unrelated
    /// policy or schema file is broken.
    ///
    /// # Errors
    /// The directory files (or the journal) have problems.
    pub fn with_directory_reloaded(&self, config: &Config) -> Result<Snapshot, Problems> {
        let Built { directory, version } = Built::directory(config, &self.catalog, &self.routes)?;
        Ok(Snapshot {
            directory,
            directory_version: version.into(),
            loaded_at: SystemTime::now(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..self.share()
        })
    }

    /// A copy sharing everything but the directory (which the caller replaces).
    fn share(&self) -> Snapshot {
        Snapshot {
            catalog: self.catalog.clone(),
            routes: self.routes.clone(),
            policies: self.policies.clone(),
            directory: Directory::default(),
            policy_version: self.policy_version.clone(),
            directory_version: self.directory_version.clone(),
            loaded_at: self.loaded_at,
            generation: self.generation,
            shadow: self.shadow.clone(),
            shadow_version: self.shadow_version.clone(),
            license: self.license.clone(),
            warnings: self.warnings.clone(),
        }
    }

    /// The same snapshot with `changes` applied to its directory (a new generation and
    /// directory version; the license counted again).
    ///
    /// # Errors
    /// A change does not fit the schema or the rules (nothing applied).
    pub fn with_changes(&self, changes: &[Change], seq: u64) -> Result<Snapshot, Problems> {
        let (snapshot, problems) = self.with_changes_fitting(changes, seq);
        problems.into_result(snapshot)
    }

    /// The same snapshot with each change applied as far as it fits
    /// ([`Directory::apply_fitting`]: an entity whose change does not fit is absent), and
    /// what did not fit.
    pub fn with_changes_fitting(&self, changes: &[Change], seq: u64) -> (Snapshot, Problems) {
        let mut patch = self.patch();
        for c in changes {
            patch.apply(c);
        }
        self.with_patch(patch, seq)
    }

    /// A copy of the directory to apply changes to one by one, then to serve with
    /// [`Snapshot::with_patch`].
    pub fn patch(&self) -> Patch<'_> {
        self.directory.patch(&self.catalog, &self.routes.rules)
    }

    /// The same snapshot with the patched directory (a new generation and directory
    /// version at `seq`; the license counted again), and what did not fit.
    pub fn with_patch(&self, patch: Patch<'_>, seq: u64) -> (Snapshot, Problems) {
        let (mut directory, mut problems) = patch.finish();
        if let Some(license) = &self.license {
            if let Err(m) = install_license(license, &self.routes, &self.catalog, &mut directory) {
                problems.push(Problem::in_file(Path::new("[license]"), m));
            }
        }
        let seq = seq.to_string();
        let directory_version = hash(
            [
                (Path::new("base"), &*self.directory_version),
                (Path::new("[journal]"), seq.as_str()),
            ]
            .into_iter(),
        );
        let snapshot = Snapshot {
            directory,
            directory_version: directory_version.into(),
            loaded_at: SystemTime::now(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..self.share()
        };
        (snapshot, problems)
    }
}

/// A directory built from the files, the journal and the config's `[license]`, with its
/// version.
struct Built {
    directory: Directory,
    version: String,
}

impl Built {
    fn directory(
        config: &Config,
        catalog: &Catalog,
        routes: &RouteTable,
    ) -> Result<Built, Problems> {
        let mut problems = Problems::new();
        let mut directory = Directory::load(&config.policy.directory, catalog, &routes.rules)?;
        let journal = match &config.directory.journal {
            Some(path) => journal::read(path)?,
            None => Vec::new(),
        };
        for entry in &journal {
            match directory.apply(&entry.changes, catalog, &routes.rules) {
                Ok(changed) => directory = changed,
                // the base files changed under an acknowledged change: the files win, and
                // the skipped entry is reported (it stays in the journal)
                Err(p) => {
                    tracing::warn!(seq = entry.seq, problems = %p, "journal entry no longer applies; skipped")
                }
            }
        }
        let mut license_text = String::new();
        if let Some(license) = &config.license {
            if let Err(m) = install_license(license, routes, catalog, &mut directory) {
                problems.push(config.problem("license", m));
            }
            license_text = format!("{} {:?}", license.max_accounts, license.licensed_roles);
        }
        if let Some(anonymous) = &routes.anonymous_type {
            let installed = directory.insert_synthetic(
                &anonymous.to_string(),
                crate::model::routes::ANONYMOUS_ID,
                Vec::new(),
            );
            if let Err(m) = installed {
                problems.push(Problem::in_file(&config.policy.routes, m));
            }
        }
        let journal_text = journal
            .last()
            .map(|e| e.seq.to_string())
            .unwrap_or_default();
        let parts = [
            (Path::new("[license]"), license_text.as_str()),
            (Path::new("[journal]"), journal_text.as_str()),
        ];
        let version = hash(
            directory
                .digests()
                .iter()
                .map(|(path, digest)| (path.as_path(), digest.as_str()))
                .chain(parts),
        );
        problems.into_result(Built { directory, version })
    }
}

/// Counts the licensed accounts into the `Server` entity.
fn install_license(
    license: &crate::config::LicenseConfig,
    routes: &RouteTable,
    catalog: &Catalog,
    directory: &mut Directory,
) -> Result<(), String> {
    crate::model::license::install(license, &routes.principal_type, catalog, directory)
}

/// `hash` of schema, routes and policy files, as `label@hash` when policy directories carry
/// `VERSION` labels.
fn policy_version(schema_text: &str, routes_text: &str, policies: &Policies) -> String {
    let parts = [
        (Path::new("schema"), schema_text),
        (Path::new("routes"), routes_text),
    ]
    .into_iter()
    .chain(
        policies
            .files
            .iter()
            .map(|f| (f.name.as_path(), f.text.as_str())),
    )
    .chain(
        policies
            .labels
            .iter()
            .map(|l| (Path::new("VERSION"), l.as_str())),
    );
    let digest = hash(parts);
    if policies.labels.is_empty() {
        digest
    } else {
        format!("{}@{digest}", policies.labels.join("+"))
    }
}

/// Short hex SHA-256 over (name, content) pairs, each length-prefixed so that no two
/// different inputs hash alike.
fn hash<'a>(parts: impl Iterator<Item = (&'a Path, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, text) in parts {
        let name = name.to_string_lossy();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    let digest = h.finalize();
    crate::config::files::hex(&digest[..VERSION_LEN / 2])
}

/// Everything needed to decide: the config, its keys and its first snapshot (`serve`,
/// `check`, `validate` and `demo` start from it).
#[derive(Debug)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The verifier.
    pub verifier: Verifier,
}

impl Loaded {
    /// Loads config, keys and snapshot, reporting every problem.
    ///
    /// # Errors
    /// All problems found.
    pub fn load(path: &Path) -> Result<Loaded, Problems> {
        // a config with problems still names the files to check: report theirs too
        let (config, mut problems) = Config::load_all(path);
        let Some(config) = config else {
            return Err(problems);
        };
        let verifier = problems.take(Verifier::from_config(&config));
        let snapshot = problems.take(Snapshot::load(&config));
        match (verifier, snapshot) {
            (Some(verifier), Some(snapshot)) if problems.is_empty() => Ok(Loaded {
                config,
                snapshot,
                verifier,
            }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::copy_dir;

    fn copy_mini() -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&src.join("mini"), &dir.path().join("mini"));
        copy_dir(&src.join("keys"), &dir.path().join("keys"));
        dir
    }

    fn load(dir: &tempfile::TempDir) -> Snapshot {
        let config = Config::load(&dir.path().join("mini/iotgate.toml")).unwrap();
        Snapshot::load(&config).unwrap()
    }

    #[test]
    fn version_changes_with_policy_content_only() {
        let dir = copy_mini();
        let first = load(&dir);
        assert!(
            first.policy_version.starts_with("mini-1@"),
            "{}",
            first.policy_version
        );
        assert_eq!(first.policy_version.len(), "mini-1@".len() + VERSION_LEN);
        // same content, same version
        assert_eq!(load(&dir).policy_version, first.policy_version);
        // a directory change does not touch the policy version
        let users = dir.path().join("mini/directory/users.json");
        let text = std::fs::read_to_string(&users)
            .unwrap()
            .replace("\"guest\"", "\"developer\"");
        std::fs::write(&users, text).unwrap();
        let second = load(&dir);
        assert_eq!(second.policy_version, first.policy_version);
        assert_ne!(second.directory_version, first.directory_version);
        // a policy edit does
        let file = dir.path().join("mini/policies/projects/shared.cedar");
        let text = std::fs::read_to_string(&file).unwrap() + "\n// note\n";
        std::fs::write(&file, text).unwrap();
        assert_ne!(load(&dir).policy_version, first.policy_version);
    }

    #[test]
    fn every_broken_part_is_reported_together() {
        let dir = copy_mini();
        let m = dir.path().join("mini");
        std::fs::write(
            m.join("policies/broken.cedar"),
            "permit(principal, action resource);",
        )
        .unwrap();
        std::fs::write(m.join("directory/bad.json"), "[{\"uid\": {\"type\": \"Mini::User\", \"id\": \"x\"}, \"attrs\": {}, \"parents\": []}]").unwrap();
        let routes = std::fs::read_to_string(m.join("schema/mini.routes.toml"))
            .unwrap()
            .replace("\"ListDevices\"", "\"ListGadgets\"");
        std::fs::write(m.join("schema/mini.routes.toml"), routes).unwrap();
        let config = Config::load(&m.join("iotgate.toml")).unwrap();
        let errs = Snapshot::load(&config).unwrap_err().to_string();
        assert!(errs.contains("broken.cedar:1:"), "{errs}");
        assert!(errs.contains("bad.json:1:"), "{errs}");
        assert!(errs.contains("mini.routes.toml:"), "{errs}");
        assert!(errs.contains("ListGadgets"), "{errs}");
    }
}
