//! Policy files: every `*.cedar` below the configured directories, as one validated set.
//!
//! ```text
//! policies/**/*.cedar (sorted) ──parse per file──▶ rename by @id (as the Cedar CLI does)
//!   ──▶ one PolicySet ──strict validation, level 2──▶ Policies { set, origins, reasons }
//! ```
//!
//! A reload passes the policies it replaces: a file whose path and text did not change, under
//! the same schema, keeps its parsed and validated policies (strict validation is per policy),
//! so editing one file of 100,000 policies parses and validates that file only. Duplicate ids
//! are still checked across the whole set, and the index is built over all of it.
//!
//! A policy without `@id` is named `<file>#policyN` (N counts within its file), so ids never
//! collide across files. Level-2 validation guarantees that a policy reads attributes at most
//! two entity hops from the principal, action, resource and context — exactly the entities
//! the per-request slice holds (see `decision`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet, ValidationMode, Validator};

use crate::config::diagnostic;
use crate::config::files::files_with_extension;
use crate::config::problem::{read_text, LineCounter, Problem, Problems};
use crate::model::index::PolicyIndex;
use crate::model::schema::Catalog;

/// How many entity dereferences a policy may chain (see the module docs).
pub(crate) const MAX_DEREF_LEVEL: u32 = 2;

/// A policy file that was read: its path and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path, as used in messages.
    pub path: PathBuf,
    /// Path relative to its policy directory, hashed into the version.
    pub name: PathBuf,
    /// Its content.
    pub text: String,
}

/// Where a policy came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// File path.
    pub file: PathBuf,
    /// 1-based line of its `@id`, when it has one.
    pub line: Option<usize>,
}

/// The loaded and validated policies.
#[derive(Debug, Clone)]
pub struct Policies {
    /// All policies, renamed by `@id`.
    pub set: PolicySet,
    /// Where each policy is written.
    pub origins: HashMap<PolicyId, Origin>,
    /// Every file read, in load order (for the policy version).
    pub files: Vec<SourceFile>,
    /// `VERSION` labels found in the policy directories.
    pub labels: Vec<String>,
    /// The policies bucketed by scope pins (see `index`).
    pub index: PolicyIndex,
    /// The schema text they were validated against (`None`: not validated).
    schema: Option<Arc<str>>,
}

/// `text` as `cedar format` prints it (80 columns, 2-space indent; comments kept).
///
/// # Errors
/// The text does not parse as policies.
pub(crate) fn formatted(text: &str) -> Result<String, String> {
    let config = cedar_policy_formatter::Config {
        line_width: 80,
        indent_width: 2,
    };
    cedar_policy_formatter::policies_str_to_pretty(text, &config).map_err(|e| e.to_string())
}

impl Policies {
    /// Reads every `*.cedar` below `dirs` and validates them against the schema (when it
    /// loaded).
    ///
    /// # Errors
    /// Unreadable directories or files, parse errors, templates, duplicate ids and
    /// validation errors — all of them, each with file and line.
    pub fn load(dirs: &[PathBuf], catalog: Option<&Catalog>) -> Result<Policies, Problems> {
        Policies::load_reusing(dirs, catalog.map(|c| (c, "")), None)
    }

    /// [`Policies::load`] against `catalog` and the schema text it came from, taking over
    /// what did not change from `previous` (see the module docs): the same policies,
    /// problems and decisions as a full load.
    ///
    /// # Errors
    /// As [`Policies::load`].
    pub fn load_reusing(
        dirs: &[PathBuf],
        schema: Option<(&Catalog, &str)>,
        previous: Option<&Policies>,
    ) -> Result<Policies, Problems> {
        let catalog = schema.map(|(c, _)| c);
        let schema_text = schema.map(|(_, t)| t).filter(|t| !t.is_empty());
        let mut problems = Problems::new();
        let mut policies = Policies {
            set: PolicySet::new(),
            origins: HashMap::new(),
            files: Vec::new(),
            labels: Vec::new(),
            index: PolicyIndex::default(),
            schema: None,
        };
        // reusable only when validated against the very schema this load validates with
        let reuse =
            previous.filter(|p| schema_text.is_some() && p.schema.as_deref() == schema_text);
        let unchanged = reuse.map(Policies::by_file).unwrap_or_default();
        let mut fresh = PolicySet::new();
        for dir in dirs {
            let files = problems.take(cedar_files(dir)).unwrap_or_default();
            for path in files {
                match read_text(&path) {
                    Ok(text) => {
                        let name = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                        let kept = unchanged.get(path.as_path()).filter(|(t, _)| *t == text);
                        let taken = match (kept, reuse) {
                            (Some((_, ids)), Some(previous)) => policies.take_over(
                                previous,
                                &path,
                                &name,
                                &text,
                                ids,
                                &mut problems,
                            ),
                            _ => false,
                        };
                        if !taken {
                            policies.add_file(&path, &name, text, &mut fresh, &mut problems);
                        }
                    }
                    Err(p) => problems.push(p),
                }
            }
            match std::fs::read_to_string(dir.join("VERSION")) {
                Ok(label) => policies.labels.push(label.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(Problem::in_file(
                    &dir.join("VERSION"),
                    format!("cannot read: {e}"),
                )),
            }
        }
        // the policies that parsed are validated even when others did not (all problems at once)
        if let Some(catalog) = catalog {
            policies.validate(catalog, &fresh, &mut problems);
            policies.schema = schema_text.map(Arc::from);
        }
        if let Some(catalog) = catalog {
            match PolicyIndex::build(&policies.set, catalog) {
                Ok(index) => policies.index = index,
                Err(e) => problems.push(Problem::in_file(
                    Path::new("policies"),
                    format!("cannot index: {e}"),
                )),
            }
        }
        problems.into_result(policies)
    }

    /// Each file's text and the ids of its policies.
    fn by_file(&self) -> HashMap<&Path, (&str, Vec<&PolicyId>)> {
        let mut out: HashMap<&Path, (&str, Vec<&PolicyId>)> = self
            .files
            .iter()
            .map(|f| (f.path.as_path(), (f.text.as_str(), Vec::new())))
            .collect();
        for (id, origin) in &self.origins {
            if let Some((_, ids)) = out.get_mut(origin.file.as_path()) {
                ids.push(id);
            }
        }
        out
    }

    /// Takes over an unchanged file's parsed and validated policies from `previous`; `false`
    /// (nothing taken) when `previous` does not hold every one of them, so the file is read
    /// again rather than a policy lost.
    fn take_over(
        &mut self,
        previous: &Policies,
        path: &Path,
        name: &Path,
        text: &str,
        ids: &[&PolicyId],
        problems: &mut Problems,
    ) -> bool {
        let found: Option<Vec<_>> = ids
            .iter()
            .map(|&id| Some((id, previous.set.policy(id)?, previous.origins.get(id)?)))
            .collect();
        let Some(found) = found else {
            return false;
        };
        for (id, policy, origin) in found {
            self.insert(path, origin.line, id.clone(), policy.clone(), problems);
        }
        self.files.push(SourceFile {
            path: path.to_path_buf(),
            name: name.to_path_buf(),
            text: text.to_string(),
        });
        true
    }

    /// Adds one policy, refusing an id the set has already (naming where it was first).
    /// Returns whether it was added.
    fn insert(
        &mut self,
        path: &Path,
        line: Option<usize>,
        id: PolicyId,
        policy: cedar_policy::Policy,
        problems: &mut Problems,
    ) -> bool {
        if let Some(first) = self.origins.get(&id) {
            problems.push(Problem::at_line(
                path,
                line,
                format!(
                    "duplicate policy id `{id}` (first in {}{})",
                    first.file.display(),
                    first.line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            ));
            return false;
        }
        if let Err(e) = self.set.add(policy) {
            problems.push(Problem::at_line(path, line, e.to_string()));
            return false;
        }
        self.origins.insert(
            id,
            Origin {
                file: path.to_path_buf(),
                line,
            },
        );
        true
    }

    /// Adds one file's policies; `name` (relative to its directory) names unnamed ones.
    /// They also go into `fresh`, the policies still to validate.
    fn add_file(
        &mut self,
        path: &Path,
        name: &Path,
        text: String,
        fresh: &mut PolicySet,
        problems: &mut Problems,
    ) {
        match PolicySet::from_str(&text) {
            Err(e) => problems.extend(diagnostic::problems(path, &text, &e)),
            Ok(parsed) => {
                let id_lines = id_lines(&text);
                let id_line = |id: &str| id_lines.get(id).copied();
                for t in parsed.templates() {
                    let line = t.annotation("id").and_then(id_line);
                    problems.push(Problem::at_line(
                        path,
                        line,
                        format!(
                            "template `{}` has slots; iotgate loads static policies only",
                            t.annotation("id").unwrap_or(t.id().as_ref())
                        ),
                    ));
                }
                for (n, p) in parsed.policies().enumerate() {
                    let (id, line) = match p.annotation("id") {
                        Some(id) => (id.to_string(), id_line(id)),
                        None => (format!("{}#policy{n}", name.display()), None),
                    };
                    let id = PolicyId::new(id);
                    let renamed = p.new_id(id.clone());
                    if self.insert(path, line, id, renamed.clone(), problems) {
                        let _ = fresh.add(renamed);
                    }
                }
            }
        }
        self.files.push(SourceFile {
            path: path.to_path_buf(),
            name: name.to_path_buf(),
            text,
        });
    }

    /// Validates `fresh` (the policies not taken over already validated).
    fn validate(&self, catalog: &Catalog, fresh: &PolicySet, problems: &mut Problems) {
        let result = Validator::new(catalog.schema.clone()).validate_with_level(
            fresh,
            ValidationMode::Strict,
            MAX_DEREF_LEVEL,
        );
        for error in result.validation_errors() {
            let origin = self.origins.get(error.policy_id());
            let file = origin.map(|o| o.file.clone()).unwrap_or_default();
            let text = self
                .files
                .iter()
                .find(|f| f.path == file)
                .map(|f| f.text.as_str())
                .unwrap_or("");
            let mut problem = diagnostic::problem(&file, text, error);
            problem.message = format!("policy `{}`: {}", error.policy_id(), problem.message);
            problems.push(problem);
        }
    }
}

/// The line of every `@id("…")` in a file's text (the first, for a repeated id), found in
/// one pass: a file may hold a hundred thousand policies.
fn id_lines(text: &str) -> HashMap<String, usize> {
    let mut lines = LineCounter::new(text);
    let mut out = HashMap::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("@id") {
        let start = from + at;
        from = start + 3;
        let rest = text[from..].trim_start();
        let Some(quoted) = rest
            .strip_prefix('(')
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('"'))
        else {
            continue;
        };
        let Some(end) = quoted.find('"') else {
            continue;
        };
        // ids with escapes are rare; they are looked up by their raw text and just lose the line
        out.entry(quoted[..end].to_string())
            .or_insert_with(|| lines.line_at(start));
    }
    out
}

/// Every `*.cedar` file below `dir`, sorted, recursively.
fn cedar_files(dir: &Path) -> Result<Vec<PathBuf>, Problems> {
    files_with_extension(dir, "cedar")
}

#[cfg(test)]
mod tests;
