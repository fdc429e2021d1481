//! The directory: iotgate's own in-memory index of Cedar entities.
//!
//! ```text
//! directory/*.json (Cedar entity JSON arrays, several files merged)
//!   ──per entity: Entity::from_json_value(schema)──▶ checked against the schema, line kept
//!   ──index──▶ uid → Node { entity, ancestors (transitive, precomputed), refs (entities its
//!              attributes name) }
//! ```
//!
//! No global Cedar `Entities` store is ever built: a decision asks the directory for the few
//! nodes it needs (principal, resource, context entities, what their attributes name, and
//! all their ancestors) and builds a small slice from them. Duplicates and parent cycles are
//! load errors.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use cedar_policy::{Entity, EntityUid, EvalResult};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::policy::files_with_extension;
use crate::problem::{line_of_offset, read_text, Problem, Problems};
use crate::schema::Catalog;

/// One entity and what a decision needs to know about it without re-walking the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// The schema-checked Cedar entity (with its direct parents).
    pub entity: Entity,
    /// Its direct parents.
    pub parents: Box<[EntityUid]>,
    /// Every ancestor, transitively (parents first).
    pub ancestors: Box<[EntityUid]>,
    /// Entities named in its attributes (in records and sets too).
    pub refs: Box<[EntityUid]>,
}

impl Node {
    /// Whether the entity has `enabled == false`.
    pub fn is_disabled(&self) -> bool {
        matches!(
            self.entity.attr("enabled"),
            Some(Ok(EvalResult::Bool(false)))
        )
    }

    /// A string attribute, if present.
    pub fn string_attr(&self, name: &str) -> Option<String> {
        match self.entity.attr(name) {
            Some(Ok(EvalResult::String(s))) => Some(s),
            _ => None,
        }
    }
}

/// A profile's rule for entities of one type, checked at load (e.g. "each user has exactly
/// one org and one of four roles").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRule {
    /// Qualified entity type the rule applies to.
    pub entity_type: String,
    /// (qualified parent type, exact number of direct parents of that type).
    pub parents: Vec<(String, usize)>,
    /// (string attribute, allowed values); an absent attribute is left to the schema.
    pub values: Vec<(String, Vec<String>)>,
}

impl EntityRule {
    /// What is wrong with an entity under this rule.
    fn violations(&self, entity: &Entity, parents: &[EntityUid]) -> Vec<String> {
        let uid = entity.uid();
        let mut out = Vec::new();
        for (ty, want) in &self.parents {
            let n = parents
                .iter()
                .filter(|p| &p.type_name().to_string() == ty)
                .count();
            if n != *want {
                out.push(format!(
                    "entity `{uid}` has {n} parents of type `{ty}`; it needs exactly {want}"
                ));
            }
        }
        for (attr, allowed) in &self.values {
            match entity.attr(attr) {
                None => {}
                Some(Ok(EvalResult::String(v))) if allowed.contains(&v) => {}
                Some(v) => out.push(format!(
                    "entity `{uid}` has {attr} `{}`; expected one of: {}",
                    v.map(|v| v.to_string()).unwrap_or_default(),
                    allowed.join(", ")
                )),
            }
        }
        out
    }
}

/// Where an entity was defined, for duplicate reports.
#[derive(Debug, Clone)]
struct Place {
    file: PathBuf,
    line: usize,
}

/// The indexed directory.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    nodes: HashMap<EntityUid, Node>,
    /// Every file read (path, text), in load order, for the directory version.
    files: Vec<(PathBuf, String)>,
}

impl Directory {
    /// Loads every entity file below `paths` and checks it against the schema.
    ///
    /// # Errors
    /// Unreadable files, invalid JSON, entities that do not fit the schema or break a
    /// profile rule, duplicate entities across files, parent cycles — all of them, with file
    /// and line.
    pub fn load(
        paths: &[PathBuf],
        catalog: &Catalog,
        rules: &[EntityRule],
    ) -> Result<Directory, Problems> {
        let mut problems = Problems::new();
        let mut parents: HashMap<EntityUid, Vec<EntityUid>> = HashMap::new();
        let mut entities: HashMap<EntityUid, (Entity, Place)> = HashMap::new();
        let mut files = Vec::new();
        for path in paths {
            for file in problems
                .take(files_with_extension(path, "json"))
                .unwrap_or_default()
            {
                let text = match read_text(&file) {
                    Ok(text) => text,
                    Err(p) => {
                        problems.push(p);
                        continue;
                    }
                };
                for (entity, place) in read_file(&file, &text, catalog, &mut problems) {
                    let uid = entity.uid();
                    if let Some((_, first)) = entities.get(&uid) {
                        problems.push(Problem::at_line(
                            &place.file,
                            Some(place.line),
                            format!(
                                "duplicate entity `{uid}` (first in {}:{})",
                                first.file.display(),
                                first.line
                            ),
                        ));
                        continue;
                    }
                    let (_, _, direct) = entity.clone().into_inner();
                    let mut direct: Vec<EntityUid> = direct.into_iter().collect();
                    direct.sort_by_key(ToString::to_string);
                    let type_name = uid.type_name().to_string();
                    for rule in rules.iter().filter(|r| r.entity_type == type_name) {
                        for message in rule.violations(&entity, &direct) {
                            problems.push(Problem::at_line(&place.file, Some(place.line), message));
                        }
                    }
                    parents.insert(uid.clone(), direct);
                    entities.insert(uid, (entity, place));
                }
                files.push((file, text));
            }
        }
        let ancestors = match ancestors(&parents) {
            Ok(a) => a,
            Err(uid) => {
                let place = &entities[&uid].1;
                problems.push(Problem::at_line(
                    &place.file,
                    Some(place.line),
                    format!("entity `{uid}` is its own ancestor (parent cycle)"),
                ));
                HashMap::new()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut directory = Directory {
            nodes: HashMap::with_capacity(entities.len()),
            files,
        };
        for (uid, (entity, _)) in entities {
            let anc = ancestors.get(&uid).cloned().unwrap_or_default();
            let direct = parents.remove(&uid).unwrap_or_default();
            directory.insert_with_ancestors(entity, direct, anc);
        }
        Ok(directory)
    }

    fn insert_with_ancestors(
        &mut self,
        entity: Entity,
        parents: Vec<EntityUid>,
        ancestors: Vec<EntityUid>,
    ) {
        let mut refs = Vec::new();
        for (_, value) in entity.attrs() {
            if let Ok(value) = value {
                collect_refs(&value, &mut refs);
            }
        }
        let node = Node {
            entity,
            parents: parents.into(),
            ancestors: ancestors.into(),
            refs: refs.into(),
        };
        self.nodes.insert(node.entity.uid(), node);
    }

    /// Adds an entity made by iotgate itself (e.g. the license `Server`), replacing any
    /// entity of that uid. Its parents must already be in the directory.
    pub fn insert_synthetic(&mut self, entity: Entity) {
        let (_, _, direct) = entity.clone().into_inner();
        let direct: Vec<EntityUid> = direct.into_iter().collect();
        let mut ancestors: Vec<EntityUid> = Vec::new();
        for parent in &direct {
            ancestors.push(parent.clone());
            if let Some(node) = self.nodes.get(parent) {
                ancestors.extend(node.ancestors.iter().cloned());
            }
        }
        self.insert_with_ancestors(entity, direct, ancestors);
    }

    /// The node of an entity, if the directory has it.
    pub fn get(&self, uid: &EntityUid) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node (no particular order).
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The files read, for the directory version.
    pub fn files(&self) -> &[(PathBuf, String)] {
        &self.files
    }
}

/// Reads one JSON array of entities; bad entities become problems at their line.
fn read_file(
    file: &Path,
    text: &str,
    catalog: &Catalog,
    problems: &mut Problems,
) -> Vec<(Entity, Place)> {
    let raws: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(raws) => raws,
        Err(e) => {
            problems.push(Problem::at_line(
                file,
                Some(e.line()),
                format!("not a JSON array of entities: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        let line = line_of_offset(text, offset);
        let result = serde_json::from_str::<Value>(raw.get())
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let name = describe(&v);
                Entity::from_json_value(v, Some(&catalog.schema)).map_err(|e| format!("{name}{e}"))
            });
        match result {
            Ok(entity) => out.push((
                entity,
                Place {
                    file: file.to_path_buf(),
                    line,
                },
            )),
            Err(message) => problems.push(Problem::at_line(file, Some(line), message)),
        }
    }
    out
}

/// "entity `T::"id"`: " when the JSON names its uid, for error messages.
fn describe(v: &Value) -> String {
    let uid = v.get("uid");
    match (
        uid.and_then(|u| u.get("type")),
        uid.and_then(|u| u.get("id")),
    ) {
        (Some(Value::String(t)), Some(Value::String(id))) => format!("entity `{t}::{id:?}`: "),
        _ => String::new(),
    }
}

fn collect_refs(value: &EvalResult, out: &mut Vec<EntityUid>) {
    match value {
        EvalResult::EntityUid(uid) => out.push(uid.clone()),
        EvalResult::Set(set) => set.iter().for_each(|v| collect_refs(v, out)),
        EvalResult::Record(record) => record.iter().for_each(|(_, v)| collect_refs(v, out)),
        _ => {}
    }
}

/// Transitive ancestors of every entity; `Err(uid)` names an entity on a parent cycle.
fn ancestors(
    parents: &HashMap<EntityUid, Vec<EntityUid>>,
) -> Result<HashMap<EntityUid, Vec<EntityUid>>, EntityUid> {
    let mut done: HashMap<EntityUid, Vec<EntityUid>> = HashMap::with_capacity(parents.len());
    let mut on_path: HashSet<EntityUid> = HashSet::new();
    for start in parents.keys() {
        // iterative post-order DFS: (uid, children expanded?)
        let mut stack = vec![(start.clone(), false)];
        while let Some((uid, expanded)) = stack.pop() {
            if done.contains_key(&uid) {
                continue;
            }
            let direct = parents.get(&uid).map(Vec::as_slice).unwrap_or(&[]);
            if expanded {
                on_path.remove(&uid);
                let mut all: Vec<EntityUid> = Vec::new();
                let mut seen = HashSet::new();
                for p in direct {
                    if seen.insert(p.clone()) {
                        all.push(p.clone());
                    }
                }
                for p in direct {
                    for a in done.get(p).map(Vec::as_slice).unwrap_or(&[]) {
                        if seen.insert(a.clone()) {
                            all.push(a.clone());
                        }
                    }
                }
                done.insert(uid, all);
                continue;
            }
            if !on_path.insert(uid.clone()) {
                return Err(uid);
            }
            stack.push((uid.clone(), true));
            for p in direct {
                if on_path.contains(p) {
                    return Err(p.clone());
                }
                if !done.contains_key(p) {
                    stack.push((p.clone(), false));
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
