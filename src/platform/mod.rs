//! The platforms iotgate follows: reading a server's REST API into a directory and project
//! policies (`iotgate import`, `[directory.sync]`), and the stand-in servers the demo and
//! the tests run.
//!
//! ```text
//! Source { url, token } ──thinger::import | central::import (GETs, in a fixed order)──▶ World
//!   World { entities by file, generated policy files, warnings }
//!     ├─ files(): DIR/directory/*.json, DIR/policies/projects/*.cedar (sorted, one entity a
//!     │    line, `cedar format` style: the same server state gives the same bytes)
//!     │    └─ write(DIR) | plan(DIR) (--check: what would change)
//!     └─ entities(): what sync reconciles the live directory with
//! ```
//!
//! What the import cannot express exactly (an asset-group restriction, a sub-resource
//! permission object, an unknown role) is never widened: the member or account gets less
//! (nothing, or the guest role), and a warning says so.

pub(crate) mod central;
pub(crate) mod mock;
pub(crate) mod permissions;
pub(crate) mod thinger;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde_json::{json, Map, Value};

use crate::authn::fetch::Fetcher;
use crate::model::directory::change::{Change, Uid};
use crate::model::directory::Directory;

/// Largest API answer read.
const MAX_ANSWER: usize = 64 << 20;

/// Where an import reads from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The server's base URL (`http://127.0.0.1:8081`), no trailing slash.
    pub(crate) base: String,
    /// A bearer token of an administrator account.
    pub(crate) token: String,
    fetcher: Fetcher,
}

impl Source {
    /// A source at `base` (a trailing `/` is dropped).
    ///
    /// # Errors
    /// TLS could not be set up.
    pub(crate) fn new(base: &str, token: &str) -> Result<Source, String> {
        Ok(Source {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            fetcher: Fetcher::new()?,
        })
    }

    /// GETs `path` (already percent-safe) and parses the JSON answer.
    ///
    /// # Errors
    /// The request failed or the answer is not JSON; the message names the path.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, String> {
        let url: http::Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("{path}: {e}"))?;
        let text = self
            .fetcher
            .get(&url, Some(&self.token), MAX_ANSWER)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        // a key given twice (`"deny": {…}, "deny": {}`) would be read one way here and
        // maybe another way by the server: refused
        crate::request::json::answer(text.as_bytes())
            .map_err(|e| format!("GET {path}: not one JSON value without repeated keys: {e}"))
    }

    /// GETs `path`, which must answer a JSON array.
    ///
    /// # Errors
    /// As [`Source::get`], or the answer is not an array.
    pub(crate) async fn list(&self, path: &str) -> Result<Vec<Value>, String> {
        match self.get(path).await? {
            Value::Array(items) => Ok(items),
            _ => Err(format!("GET {path}: the answer is not a JSON array")),
        }
    }
}

/// One imported entity.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entity {
    pub(crate) uid: Uid,
    pub(crate) attrs: Map<String, Value>,
    pub(crate) parents: Vec<Uid>,
}

impl Entity {
    pub(crate) fn new(ty: &str, id: &str) -> Entity {
        Entity {
            uid: uid(ty, id),
            attrs: Map::new(),
            parents: Vec::new(),
        }
    }

    pub(crate) fn attr(mut self, name: &str, value: Value) -> Entity {
        self.attrs.insert(name.to_string(), value);
        self
    }

    pub(crate) fn parent(mut self, ty: &str, id: &str) -> Entity {
        self.parents.push(uid(ty, id));
        self
    }

    /// Cedar entity JSON, parents sorted.
    /// The change that makes the entity as imported (parents in order, once each).
    pub(crate) fn put(&self) -> Change {
        let json = self.json();
        Change::Put {
            uid: self.uid.clone(),
            attrs: json["attrs"].as_object().cloned().unwrap_or_default(),
            parents: serde_json::from_value(json["parents"].clone()).unwrap_or_default(),
        }
    }

    fn json(&self) -> Value {
        let mut parents = self.parents.clone();
        parents.sort_by(|a, b| (&a.ty, &a.id).cmp(&(&b.ty, &b.id)));
        parents.dedup();
        json!({"uid": self.uid, "attrs": self.attrs, "parents": parents})
    }
}

/// Entity JSON in one form for comparing: entity references as `{"__entity": …}`,
/// parents sorted.
fn canonical(entity: &Value) -> Value {
    fn value(v: &Value) -> Value {
        match v {
            Value::Object(o) if o.len() == 2 && o.contains_key("type") && o.contains_key("id") => {
                json!({"__entity": v})
            }
            Value::Object(o) if o.len() == 1 && o.contains_key("__entity") => v.clone(),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), value(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(value).collect()),
            other => other.clone(),
        }
    }
    let mut parents: Vec<Value> = entity["parents"].as_array().cloned().unwrap_or_default();
    parents.sort_by_key(Value::to_string);
    json!({"attrs": value(&entity["attrs"]), "parents": parents})
}

/// An entity reference.
pub(crate) fn uid(ty: &str, id: &str) -> Uid {
    Uid {
        ty: ty.to_string(),
        id: id.to_string(),
    }
}

/// An entity reference as an attribute value.
pub(crate) fn reference(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

/// What an import read.
#[derive(Debug, Default)]
pub(crate) struct World {
    /// Entities by directory file name (`users.json`).
    pub(crate) entities: BTreeMap<&'static str, Vec<Entity>>,
    /// Generated policy files by path under `policies/` (`projects/dave@greenhouse.cedar`).
    pub(crate) policies: BTreeMap<String, String>,
    /// What was left out or narrowed, for the operator.
    pub(crate) warnings: Vec<String>,
    /// The entity types the import owns (sync removes entities of these types the server
    /// no longer has).
    pub(crate) types: Vec<String>,
}

impl World {
    /// Every entity, in file order.
    pub(crate) fn all_entities(&self) -> impl Iterator<Item = &Entity> {
        self.entities.values().flatten()
    }

    /// The changes that make the directory's entities of the imported types what the server
    /// holds: a `put` for each entity that is new or differs (attributes, parents), a
    /// `delete` for each the server no longer has. Nothing when they agree.
    pub(crate) fn reconcile(&self, directory: &Directory) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = HashSet::new();
        for entity in self.all_entities() {
            seen.insert((entity.uid.ty.as_str(), entity.uid.id.as_str()));
            let wanted = canonical(&entity.json());
            let current = EntityTypeName::from_str(&entity.uid.ty)
                .ok()
                .map(|ty| EntityUid::from_type_name_and_id(ty, EntityId::new(&entity.uid.id)))
                .and_then(|u| directory.get(&u))
                .map(|node| canonical(&node.json()));
            let (uid, parents) = (entity.uid.clone(), entity.parents.clone());
            let attrs = wanted["attrs"].as_object().cloned().unwrap_or_default();
            match current {
                Some(c) if c == wanted => {}
                Some(_) => changes.push(Change::Put {
                    uid,
                    attrs,
                    parents,
                }),
                // a new one is a create: a look-alike of an entity that exists is refused
                None => changes.push(Change::Create {
                    uid,
                    attrs,
                    parents,
                }),
            }
        }
        for node in directory.nodes() {
            let uid = node.uid();
            let (ty, id) = (
                uid.type_name().to_string(),
                uid.id().unescaped().to_string(),
            );
            if self.types.contains(&ty) && !seen.contains(&(ty.as_str(), id.as_str())) {
                changes.push(Change::Delete {
                    uid: Uid { ty, id },
                });
            }
        }
        changes
    }

    /// The files it makes, by path relative to the output folder.
    pub(crate) fn files(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for (name, entities) in &self.entities {
            let mut sorted: Vec<&Entity> = entities.iter().collect();
            sorted.sort_by(|a, b| (&a.uid.ty, &a.uid.id).cmp(&(&b.uid.ty, &b.uid.id)));
            let lines: Vec<String> = sorted.iter().map(|e| format!("  {}", e.json())).collect();
            let text = match lines.is_empty() {
                true => "[]\n".to_string(),
                false => format!("[\n{}\n]\n", lines.join(",\n")),
            };
            out.insert(Path::new("directory").join(name), text);
        }
        for (rel, text) in &self.policies {
            out.insert(Path::new("policies").join(rel), text.clone());
        }
        out
    }
}

/// The folders (and file extension) an import owns under its output folder: files in them
/// it does not make are removed.
pub(crate) const IMPORT_OWNED: [(&str, &str); 2] =
    [("directory", "json"), ("policies/projects", "cedar")];
/// What a sync owns in its policy folder.
pub(crate) const SYNC_OWNED: [(&str, &str); 1] = [("projects", "cedar")];

/// What writing would do to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FileChange {
    Added,
    Changed,
    Removed,
}

/// The files under `out` that writing `files` would add, change or remove (in the `owned`
/// folders).
///
/// # Errors
/// A file could not be read.
pub(crate) fn plan(
    out: &Path,
    files: &BTreeMap<PathBuf, String>,
    owned: &[(&str, &str)],
) -> std::io::Result<Vec<(PathBuf, FileChange)>> {
    let mut changes = Vec::new();
    for (rel, text) in files {
        match std::fs::read_to_string(out.join(rel)) {
            Ok(current) if &current == text => {}
            Ok(_) => changes.push((rel.clone(), FileChange::Changed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                changes.push((rel.clone(), FileChange::Added));
            }
            Err(e) => return Err(e),
        }
    }
    for (dir, ext) in owned {
        let Ok(entries) = std::fs::read_dir(out.join(dir)) else {
            continue;
        };
        for entry in entries {
            let rel = Path::new(dir).join(entry?.file_name());
            if rel.extension().is_some_and(|e| e == *ext) && !files.contains_key(&rel) {
                changes.push((rel, FileChange::Removed));
            }
        }
    }
    changes.sort();
    Ok(changes)
}

/// Makes the files under `out` what `files` says (each written to a temporary file and
/// renamed, so a reader never sees half a file); returns what changed.
///
/// # Errors
/// A file could not be written or removed.
pub(crate) fn write(
    out: &Path,
    files: &BTreeMap<PathBuf, String>,
    owned: &[(&str, &str)],
) -> std::io::Result<Vec<(PathBuf, FileChange)>> {
    let changes = plan(out, files, owned)?;
    for (rel, change) in &changes {
        let path = out.join(rel);
        match (change, files.get(rel)) {
            (FileChange::Removed, _) | (_, None) => std::fs::remove_file(&path)?,
            (_, Some(text)) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::config::files::write_atomic(&path, text)?;
            }
        }
    }
    Ok(changes)
}

/// What the files `changes` names hold now (`None`: absent), to put back with [`restore`].
pub(crate) fn save(
    out: &Path,
    changes: &[(PathBuf, FileChange)],
) -> Vec<(PathBuf, Option<String>)> {
    changes
        .iter()
        .map(|(rel, _)| (rel.clone(), std::fs::read_to_string(out.join(rel)).ok()))
        .collect()
}

/// Puts back what [`save`] read.
///
/// # Errors
/// A file could not be written or removed.
pub(crate) fn restore(out: &Path, saved: &[(PathBuf, Option<String>)]) -> std::io::Result<()> {
    for (rel, text) in saved {
        let path = out.join(rel);
        match text {
            Some(text) => crate::config::files::write_atomic(&path, text)?,
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
    }
    Ok(())
}

/// A platform id usable in entity ids and file names: 1–64 of `A-Z a-z 0-9 _ - .`, not
/// `.`/`..` (Thinger's own pattern is `^[a-zA-Z0-9_-]{1,32}$`).
pub(crate) fn plain_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The string member `key` of an API object, when it is a [`plain_id`]; else a warning.
pub(crate) fn id_of(
    item: &Value,
    key: &str,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<String> {
    match item.get(key).and_then(Value::as_str) {
        Some(id) if plain_id(id) => Some(id.to_string()),
        Some(id) => {
            warnings.push(format!("{what} {id:?} skipped: not a plain id"));
            None
        }
        None => {
            warnings.push(format!("{what} without a `{key}` skipped"));
            None
        }
    }
}
