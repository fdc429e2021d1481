//! The directory: iotgate's own compact, in-memory index of Cedar entities.
//!
//! ```text
//! directory/*.json (Cedar entity JSON arrays, several files merged)
//!   ──per entity: parse, check against the schema catalog and the profile's rules──▶ Slot
//!        (interned type, id, attributes as compact values, direct parents as u32 indices)
//!   ──after every file──▶ duplicates refused, ancestors beyond the direct parents
//!        precomputed (cycles refused)
//! decision ──Directory::get(uid)──▶ NodeRef ──entity()──▶ a Cedar Entity, built on demand
//! ```
//!
//! No global Cedar `Entities` store is ever built: a decision asks for the few nodes it
//! needs (principal, resource, context entities, what their attributes name, all their
//! ancestors) and builds a small slice from them. Every entity any other names (as a parent
//! or in an attribute) gets a slot, so references are plain indices; a slot no file defines
//! is *absent*, exactly as a missing entity is in a Cedar store.
//!
//! The schema check follows Cedar's entity JSON rules: declared types only, every required
//! attribute present, no undeclared attribute, values of the declared types (entity
//! references as `{"type", "id"}` or `{"__entity": …}`, extension values as
//! `{"__extn": {"fn", "arg"}}` or a plain string), parents of the declared parent types.
//! A test compares it with Cedar's own parser.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use hashbrown::HashTable;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use smol_str::SmolStr;

use crate::config::files::files_with_extension;
use crate::config::problem::{read_text, LineCounter, Problem, Problems};
use crate::model::cedar_core;
use crate::model::schema::{Attr, Catalog, Type};

/// A compact attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A boolean.
    Bool(bool),
    /// A long.
    Long(i64),
    /// A string.
    Str(Box<str>),
    /// A reference to the entity in this slot.
    Entity(u32),
    /// A set.
    Set(Box<[Val]>),
    /// A record.
    Record(Box<[(Box<str>, Val)]>),
    /// An extension value: constructor name (`ip`, `decimal`, `datetime`, `duration`) and
    /// its argument.
    Ext(&'static str, Box<str>),
}

/// One entity (or, when `present` is false, a uid only referenced by others).
#[derive(Debug, Clone)]
struct Slot {
    ty: u16,
    present: bool,
    /// Changed by the shared directory's change log (see [`Patch::logged`]).
    logged: bool,
    id: Box<str>,
    attrs: Box<[(u16, Val)]>,
    parents: Box<[u32]>,
    /// Ancestors beyond the direct parents (empty for most entities: no allocation).
    deeper: Box<[u32]>,
}

/// Where the entities of a directory load are written.
#[derive(Debug, Default)]
pub struct Locations {
    files: Vec<PathBuf>,
    defined_at: Vec<Option<(u32, usize)>>,
}

impl Locations {
    /// The file and 1-based line of the entity in a slot, when a file defines it.
    pub fn of(&self, index: u32) -> Option<(&Path, usize)> {
        let (file, line) = (*self.defined_at.get(index as usize)?)?;
        Some((self.files.get(file as usize)?.as_path(), line))
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

/// The indexed directory.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    types: Vec<EntityTypeName>,
    type_index: HashMap<EntityTypeName, u16>,
    attr_names: Vec<Box<str>>,
    attr_index: HashMap<Box<str>, u16>,
    slots: Vec<Slot>,
    table: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    present: usize,
    /// Hashes of every present entity's (type, folded id), counted: see
    /// [`Directory::shadows_present`].
    folded: hashbrown::HashMap<u64, u32>,
    /// (file, SHA-256 of its content) in load order, for the directory version.
    digests: Vec<(PathBuf, String)>,
}

/// An entity of the directory.
#[derive(Debug, Clone, Copy)]
pub struct NodeRef<'d> {
    dir: &'d Directory,
    index: u32,
}

impl PartialEq for NodeRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.dir, other.dir) && self.index == other.index
    }
}

impl<'d> NodeRef<'d> {
    fn slot(&self) -> &'d Slot {
        // INVARIANT: a NodeRef is only made by `Directory::node`, which checked the index
        // against `slots`; slots are never removed.
        &self.dir.slots[self.index as usize]
    }

    /// Its slot number (stable within one directory).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Its uid.
    pub fn uid(&self) -> EntityUid {
        self.dir.uid(self.index)
    }

    /// An attribute.
    pub fn attr(&self, name: &str) -> Option<&'d Val> {
        let key = *self.dir.attr_index.get(name)?;
        self.slot()
            .attrs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Whether the entity has `enabled == false`.
    pub fn is_disabled(&self) -> bool {
        matches!(self.attr("enabled"), Some(Val::Bool(false)))
    }

    /// A string attribute, if present.
    pub fn string_attr(&self, name: &str) -> Option<&'d str> {
        match self.attr(name) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Direct parents' uids.
    pub fn parents(&self) -> Vec<EntityUid> {
        self.slot()
            .parents
            .iter()
            .map(|p| self.dir.uid(*p))
            .collect()
    }

    /// Every ancestor's slot (parents first).
    pub fn ancestor_indices(&self) -> impl Iterator<Item = u32> + 'd {
        let slot = self.slot();
        slot.parents.iter().chain(slot.deeper.iter()).copied()
    }

    /// The entity as Cedar entity JSON (direct parents only), as a file would hold it.
    pub fn json(&self) -> Value {
        let slot = self.slot();
        let attrs: Map<String, Value> = slot
            .attrs
            .iter()
            .map(|(k, v)| {
                (
                    self.dir.attr_names[*k as usize].to_string(),
                    self.dir.val_json(v),
                )
            })
            .collect();
        let parents: Vec<Value> = slot.parents.iter().map(|p| self.dir.uid_json(*p)).collect();
        serde_json::json!({"uid": self.dir.uid_json(self.index), "attrs": attrs, "parents": parents})
    }

    /// Every ancestor's uid (parents first).
    pub fn ancestors(&self) -> Vec<EntityUid> {
        self.ancestor_indices().map(|a| self.dir.uid(a)).collect()
    }

    /// Slots of the entities its attributes name.
    pub fn refs(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (_, v) in self.slot().attrs.iter() {
            collect_refs(v, &mut out);
        }
        out
    }

    /// The entity as a core Cedar entity for a request's slice: attribute values are built
    /// directly (no expression evaluation) and every ancestor is listed as a parent.
    ///
    /// # Errors
    /// An extension value that Cedar refuses.
    pub fn core_entity(&self) -> Result<cedar_core::CoreEntity, EntityError> {
        let slot = self.slot();
        if slot.attrs.iter().any(|(_, v)| has_extension(v)) {
            return self.entity().map(|e| cedar_core::from_public(&e));
        }
        let attrs = slot.attrs.iter().map(|(k, v)| {
            (
                SmolStr::new(&*self.dir.attr_names[*k as usize]),
                self.dir.value(v),
            )
        });
        let ancestors = self.ancestor_indices().map(|p| self.dir.uid(p));
        Ok(cedar_core::entity(self.uid(), attrs, ancestors))
    }

    /// The Cedar entity (built on demand, through Cedar's public constructor).
    ///
    /// # Errors
    /// An extension value that Cedar refuses.
    pub fn entity(&self) -> Result<Entity, EntityError> {
        let slot = self.slot();
        let attrs: HashMap<String, RestrictedExpression> = slot
            .attrs
            .iter()
            .map(|(k, v)| {
                (
                    self.dir.attr_names[*k as usize].to_string(),
                    self.dir.expr(v),
                )
            })
            .collect();
        let parents = self.ancestor_indices().map(|p| self.dir.uid(p));
        Entity::new(self.uid(), attrs, parents.collect()).map_err(|e| EntityError {
            uid: self.uid().to_string(),
            message: e.to_string(),
        })
    }
}

/// A directory entity that Cedar refuses to build (an extension value it does not accept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entity `{uid}` cannot be built: {message}")]
pub struct EntityError {
    uid: String,
    message: String,
}

fn has_extension(v: &Val) -> bool {
    match v {
        Val::Ext(..) => true,
        Val::Set(items) => items.iter().any(has_extension),
        Val::Record(fields) => fields.iter().any(|(_, v)| has_extension(v)),
        Val::Bool(_) | Val::Long(_) | Val::Str(_) | Val::Entity(_) => false,
    }
}

fn collect_refs(v: &Val, out: &mut Vec<u32>) {
    match v {
        Val::Entity(i) => out.push(*i),
        Val::Set(items) => items.iter().for_each(|i| collect_refs(i, out)),
        Val::Record(fields) => fields.iter().for_each(|(_, i)| collect_refs(i, out)),
        Val::Bool(_) | Val::Long(_) | Val::Str(_) | Val::Ext(..) => {}
    }
}

impl Directory {
    /// Loads every entity file below `paths` and checks it against the schema and rules.
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
        Directory::load_located(paths, catalog, rules).map(|(dir, _)| dir)
    }

    /// [`Directory::load`], also returning where each entity is written (for `lint`).
    ///
    /// # Errors
    /// As [`Directory::load`].
    pub fn load_located(
        paths: &[PathBuf],
        catalog: &Catalog,
        rules: &[EntityRule],
    ) -> Result<(Directory, Locations), Problems> {
        let mut problems = Problems::new();
        let mut dir = Directory::default();
        let mut defined_at: Vec<Option<(u32, usize)>> = Vec::new();
        let mut files: Vec<PathBuf> = Vec::new();
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
                let file_no = files.len() as u32;
                files.push(file.clone());
                let mut loader = Loader {
                    dir: &mut dir,
                    catalog,
                    rules,
                    file: &file,
                    problems: &mut problems,
                };
                for (index, line) in loader.read_file(&text) {
                    if defined_at.len() <= index as usize {
                        defined_at.resize(index as usize + 1, None);
                    }
                    if let Some((f, l)) = defined_at[index as usize] {
                        problems.push(Problem::at_line(
                            &file,
                            Some(line),
                            format!(
                                "duplicate entity `{}` (first in {}:{l})",
                                dir.uid(index),
                                files[f as usize].display()
                            ),
                        ));
                        continue;
                    }
                    defined_at[index as usize] = Some((file_no, line));
                }
                let name = match file.strip_prefix(path) {
                    Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
                    _ => file.file_name().map(PathBuf::from).unwrap_or_default(),
                };
                dir.digests.push((
                    name,
                    crate::config::files::hex(&Sha256::digest(text.as_bytes())),
                ));
            }
        }
        if let Err(index) = dir.compute_ancestors() {
            let (file, line) = defined_at
                .get(index as usize)
                .copied()
                .flatten()
                .map_or((PathBuf::new(), None), |(f, l)| {
                    (files[f as usize].clone(), Some(l))
                });
            problems.push(Problem::at_line(
                &file,
                line,
                format!(
                    "entity `{}` is its own ancestor (parent cycle)",
                    dir.uid(index)
                ),
            ));
        }
        problems.into_result((dir, Locations { files, defined_at }))
    }

    /// Adds (or replaces) an entity made by iotgate itself, e.g. the license `Server`, with
    /// no parents.
    ///
    /// # Errors
    /// The entity type name is not valid.
    pub fn insert_synthetic(
        &mut self,
        entity_type: &str,
        id: &str,
        attrs: Vec<(&str, Val)>,
    ) -> Result<(), String> {
        let ty = EntityTypeName::from_str(entity_type).map_err(|e| e.to_string())?;
        let ty = self.intern_type(&ty);
        let index = self.intern_uid(ty, id);
        let attrs = attrs
            .into_iter()
            .map(|(k, v)| (self.intern_attr(k), v))
            .collect();
        let folded = self.folded_hash(ty, id);
        let slot = &mut self.slots[index as usize];
        if !slot.present {
            self.present += 1;
            *self.folded.entry(folded).or_default() += 1;
        }
        slot.present = true;
        slot.attrs = attrs;
        Ok(())
    }

    /// The node of an entity, if the directory has it.
    pub fn get(&self, uid: &EntityUid) -> Option<NodeRef<'_>> {
        let ty = *self.type_index.get(uid.type_name())?;
        let index = self.find(ty, uid.id().unescaped())?;
        self.node(index)
    }

    /// The node in a slot, if the entity is present.
    pub fn node(&self, index: u32) -> Option<NodeRef<'_>> {
        let slot = self.slots.get(index as usize)?;
        slot.present.then_some(NodeRef { dir: self, index })
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.present
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Every entity.
    pub fn nodes(&self) -> impl Iterator<Item = NodeRef<'_>> {
        (0..self.slots.len() as u32).filter_map(|i| self.node(i))
    }

    /// The ids of every entity of type `ty`, sorted (what a search enumerates).
    pub fn ids_of(&self, ty: &EntityTypeName) -> Vec<&str> {
        self.ids_where(ty, |_| true)
    }

    /// The ids of the entities of type `ty` that `keep` admits, sorted.
    pub fn ids_where(&self, ty: &EntityTypeName, keep: impl Fn(NodeRef<'_>) -> bool) -> Vec<&str> {
        let Some(&wanted) = self.type_index.get(ty) else {
            return Vec::new();
        };
        let mut ids: Vec<&str> = (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].ty == wanted)
            .filter_map(|i| self.node(i))
            .filter(|n| keep(*n))
            .map(|n| &*n.slot().id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The slot of a uid, whether the directory has the entity or only a reference to it
    /// (what a [`Val::Entity`] holds).
    pub fn slot_of(&self, uid: &EntityUid) -> Option<u32> {
        let ty = *self.type_index.get(uid.type_name())?;
        self.find(ty, uid.id().unescaped())
    }

    /// (file, SHA-256 of its content) of every file read, for the directory version.
    pub fn digests(&self) -> &[(PathBuf, String)] {
        &self.digests
    }

    /// Applies changes to a copy of the directory, all or none: each entity a change leaves
    /// is checked as it would be in a file, then ancestors are recomputed.
    ///
    /// # Errors
    /// Every change that does not fit the schema or the rules, or a parent cycle.
    pub fn apply(
        &self,
        changes: &[change::Change],
        catalog: &Catalog,
        rules: &[EntityRule],
    ) -> Result<Directory, Problems> {
        let (dir, problems) = self.apply_fitting(changes, catalog, rules);
        problems.into_result(dir)
    }

    /// Applies changes to a copy of the directory, each as far as it fits: an entity a
    /// change leaves that does not fit (the schema, the rules, a parent cycle) is absent
    /// from the copy, so a decision on it is refused, never made on what it was before.
    /// What did not fit is returned beside the copy.
    pub fn apply_fitting(
        &self,
        changes: &[change::Change],
        catalog: &Catalog,
        rules: &[EntityRule],
    ) -> (Directory, Problems) {
        let mut patch = self.patch(catalog, rules);
        for c in changes {
            patch.apply(c);
        }
        patch.finish()
    }

    /// A copy of the directory to apply changes to one by one, as [`Directory::apply_fitting`]
    /// does (what a stream of changes too long to hold at once needs).
    pub fn patch<'a>(&self, catalog: &'a Catalog, rules: &'a [EntityRule]) -> Patch<'a> {
        Patch {
            dir: self.clone(),
            catalog,
            rules,
            problems: Problems::new(),
            applied: 0,
            logged: false,
        }
    }

    /// How many entities [`Directory::logged_changes`] lists.
    pub fn logged_count(&self) -> usize {
        self.slots.iter().filter(|slot| slot.logged).count()
    }

    /// The net change of every entity the shared directory's change log changed (see
    /// [`Patch::logged`]): what a directory rebuilt from the files needs laid over it to be
    /// the shared directory again.
    pub fn logged_changes(&self) -> impl Iterator<Item = change::Change> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.logged)
            .map(|(index, slot)| {
                let uid = change::Uid {
                    ty: self.types[slot.ty as usize].to_string(),
                    id: slot.id.to_string(),
                };
                net_change_of(uid, self.node(index as u32))
            })
    }

    /// The change that leaves `uid` as it is now (for a compacted journal): its whole
    /// entity, or its removal.
    pub fn net_change(&self, uid: &change::Uid) -> change::Change {
        let node = EntityTypeName::from_str(&uid.ty)
            .ok()
            .map(|ty| EntityUid::from_type_name_and_id(ty, EntityId::new(&uid.id)))
            .and_then(|u| self.get(&u));
        net_change_of(uid.clone(), node)
    }

    /// Whether an entity of type `ty` with this id, or one it is a look-alike of, exists.
    fn claims(&self, ty: u16, id: &str) -> bool {
        self.folded.contains_key(&self.folded_hash(ty, id))
    }

    /// Whether applying `changes` would leave every entity as it is.
    pub fn unchanged_by(&self, changes: &[change::Change]) -> bool {
        changes.iter().all(|c| {
            let uid = c.uid();
            let current = EntityTypeName::from_str(&uid.ty)
                .ok()
                .map(|ty| EntityUid::from_type_name_and_id(ty, EntityId::new(&uid.id)))
                .and_then(|u| self.get(&u))
                .map(|node| node.json());
            !matches!(c, change::Change::Create { .. })
                && change::result(c, current.clone()) == current
        })
    }

    /// Makes a slot absent (its uid stays, as one others may name).
    fn remove(&mut self, index: u32) {
        let Some(slot) = self.slots.get(index as usize).filter(|s| s.present) else {
            return;
        };
        let folded = self.folded_hash(slot.ty, &slot.id);
        if let Some(count) = self.folded.get_mut(&folded) {
            *count -= 1;
            if *count == 0 {
                self.folded.remove(&folded);
            }
        }
        let slot = &mut self.slots[index as usize];
        slot.present = false;
        slot.attrs = Box::new([]);
        slot.parents = Box::new([]);
        slot.deeper = Box::new([]);
        self.present -= 1;
    }

    /// A value as Cedar entity JSON writes it.
    fn val_json(&self, v: &Val) -> Value {
        match v {
            Val::Bool(b) => Value::Bool(*b),
            Val::Long(n) => Value::from(*n),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Entity(i) => serde_json::json!({"__entity": self.uid_json(*i)}),
            Val::Set(items) => items.iter().map(|i| self.val_json(i)).collect(),
            Val::Record(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), self.val_json(v)))
                    .collect(),
            ),
            Val::Ext(func, arg) => serde_json::json!({"__extn": {"fn": func, "arg": arg}}),
        }
    }

    fn uid_json(&self, index: u32) -> Value {
        let slot = &self.slots[index as usize];
        serde_json::json!({"type": self.types[slot.ty as usize].to_string(), "id": &*slot.id})
    }

    /// The uid of a slot.
    pub(crate) fn uid(&self, index: u32) -> EntityUid {
        let slot = &self.slots[index as usize];
        EntityUid::from_type_name_and_id(
            self.types[slot.ty as usize].clone(),
            EntityId::new(&slot.id),
        )
    }

    fn expr(&self, v: &Val) -> RestrictedExpression {
        match v {
            Val::Bool(b) => RestrictedExpression::new_bool(*b),
            Val::Long(n) => RestrictedExpression::new_long(*n),
            Val::Str(s) => RestrictedExpression::new_string(s.to_string()),
            Val::Entity(i) => RestrictedExpression::new_entity_uid(self.uid(*i)),
            Val::Set(items) => RestrictedExpression::new_set(items.iter().map(|i| self.expr(i))),
            Val::Record(fields) => RestrictedExpression::new_record(
                fields.iter().map(|(k, v)| (k.to_string(), self.expr(v))),
            )
            .unwrap_or_else(|_| {
                RestrictedExpression::new_record([])
                    .unwrap_or_else(|_| RestrictedExpression::new_bool(false))
            }),
            Val::Ext(func, arg) => extension(func, arg),
        }
    }

    /// A value without extension values, as a core Cedar value.
    fn value(&self, v: &Val) -> cedar_policy_core::ast::Value {
        match v {
            Val::Bool(b) => cedar_core::bool(*b),
            Val::Long(n) => cedar_core::long(*n),
            Val::Str(s) => cedar_core::string(s),
            Val::Entity(i) => cedar_core::entity_ref(self.uid(*i)),
            Val::Set(items) => cedar_core::set(items.iter().map(|i| self.value(i))),
            Val::Record(fields) => cedar_core::record(
                fields
                    .iter()
                    .map(|(k, v)| (SmolStr::new(&**k), self.value(v))),
            ),
            // callers route entities with extension values through `entity()`
            Val::Ext(_, arg) => cedar_core::string(arg),
        }
    }

    fn hash(&self, ty: u16, id: &str) -> u64 {
        self.hasher.hash_one((ty, id))
    }

    fn folded_hash(&self, ty: u16, id: &str) -> u64 {
        self.hash(ty, &crate::request::uri::fold(id))
    }

    /// Whether an entity the directory does not have is, to a server that matches ids
    /// ignoring ASCII case and trailing dots or spaces, one it has (`User::"ACME"` for
    /// `acme`): deciding on it would decide on another entity than the upstream acts on.
    pub fn shadows_present(&self, uid: &EntityUid) -> bool {
        let Some(ty) = self.type_index.get(uid.type_name()) else {
            return false;
        };
        self.folded
            .contains_key(&self.folded_hash(*ty, uid.id().unescaped()))
    }

    fn find(&self, ty: u16, id: &str) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(self.hash(ty, id), |i| {
                let s = &slots[*i as usize];
                s.ty == ty && &*s.id == id
            })
            .copied()
    }

    fn intern_uid(&mut self, ty: u16, id: &str) -> u32 {
        if let Some(i) = self.find(ty, id) {
            return i;
        }
        // INVARIANT: fewer than u32::MAX slots (entities and the uids they name); at the
        // documented scale (millions) the cast never truncates.
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            ty,
            present: false,
            logged: false,
            id: id.into(),
            attrs: Box::new([]),
            parents: Box::new([]),
            deeper: Box::new([]),
        });
        let hash = self.hash(ty, id);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(hash, index, |i| {
            let s = &slots[*i as usize];
            hasher.hash_one((s.ty, &*s.id))
        });
        index
    }

    fn intern_type(&mut self, ty: &EntityTypeName) -> u16 {
        if let Some(i) = self.type_index.get(ty) {
            return *i;
        }
        // INVARIANT: entity types come from the schema, far fewer than u16::MAX.
        let i = self.types.len() as u16;
        self.types.push(ty.clone());
        self.type_index.insert(ty.clone(), i);
        i
    }

    fn intern_attr(&mut self, name: &str) -> u16 {
        if let Some(i) = self.attr_index.get(name) {
            return *i;
        }
        // INVARIANT: attribute names come from the schema, far fewer than u16::MAX.
        let i = self.attr_names.len() as u16;
        self.attr_names.push(name.into());
        self.attr_index.insert(name.into(), i);
        i
    }

    /// Fills `deeper` for every slot; `Err(slot)` names an entity on a parent cycle.
    fn compute_ancestors(&mut self) -> Result<(), u32> {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            New,
            Open,
            Done,
        }
        let n = self.slots.len();
        let mut state = vec![State::New; n];
        let mut all: Vec<Box<[u32]>> = vec![Box::new([]); n];
        for start in 0..n as u32 {
            if state[start as usize] == State::Done {
                continue;
            }
            let mut stack = vec![(start, false)];
            while let Some((i, expanded)) = stack.pop() {
                let iu = i as usize;
                if expanded {
                    let mut seen: Vec<u32> = Vec::new();
                    for p in self.slots[iu].parents.iter() {
                        for a in std::iter::once(p).chain(all[*p as usize].iter()) {
                            if !seen.contains(a) {
                                seen.push(*a);
                            }
                        }
                    }
                    all[iu] = seen.into();
                    state[iu] = State::Done;
                    continue;
                }
                match state[iu] {
                    State::Done => continue,
                    State::Open => return Err(i),
                    State::New => {}
                }
                state[iu] = State::Open;
                stack.push((i, true));
                for p in self.slots[iu].parents.iter() {
                    match state[*p as usize] {
                        State::Open => return Err(*p),
                        State::New => stack.push((*p, false)),
                        State::Done => {}
                    }
                }
            }
        }
        for (slot, ancestors) in self.slots.iter_mut().zip(all) {
            if ancestors.len() > slot.parents.len() {
                slot.deeper = ancestors
                    .iter()
                    .filter(|a| !slot.parents.contains(a))
                    .copied()
                    .collect();
            }
        }
        Ok(())
    }
}

/// A Cedar extension value.
fn extension(func: &str, arg: &str) -> RestrictedExpression {
    match func {
        "ip" => RestrictedExpression::new_ip(arg),
        "decimal" => RestrictedExpression::new_decimal(arg),
        "datetime" => RestrictedExpression::new_datetime(arg),
        _ => RestrictedExpression::new_duration(arg),
    }
}

/// An entity as written in the JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    uid: Value,
    attrs: Map<String, Value>,
    parents: Vec<Value>,
    #[serde(default)]
    tags: Option<Map<String, Value>>,
}

/// The change that leaves `uid` as `node` is (its removal: absent).
fn net_change_of(uid: change::Uid, node: Option<NodeRef<'_>>) -> change::Change {
    let Some(node) = node else {
        return change::Change::Delete { uid };
    };
    let mut json = node.json();
    let attrs = match json["attrs"].take() {
        Value::Object(attrs) => attrs,
        _ => Map::new(),
    };
    let parents = serde_json::from_value(json["parents"].take()).unwrap_or_default();
    change::Change::Put {
        uid,
        attrs,
        parents,
    }
}

/// Changes being applied to a copy of a directory ([`Directory::patch`]).
#[derive(Debug)]
pub struct Patch<'a> {
    dir: Directory,
    catalog: &'a Catalog,
    rules: &'a [EntityRule],
    problems: Problems,
    /// Changes applied so far (numbers the problems).
    applied: usize,
    logged: bool,
}

impl Patch<'_> {
    /// Marks the entities the next changes touch as the shared directory's (or not): those
    /// [`Directory::logged_changes`] lists.
    pub fn logged(&mut self, logged: bool) -> &mut Self {
        self.logged = logged;
        self
    }

    /// Applies one change as far as it fits: an entity it leaves that does not fit the
    /// schema or the rules is absent (a problem is noted), never left as it was.
    pub fn apply(&mut self, c: &change::Change) {
        let (n, origin) = (self.applied, Path::new("<change>"));
        self.applied += 1;
        let dir = &mut self.dir;
        let uid = c.uid();
        let Ok(ty) = EntityTypeName::from_str(&uid.ty).map(|t| dir.intern_type(&t)) else {
            let m = format!("change {n}: bad type `{}`", uid.ty);
            self.problems.push(Problem::in_file(origin, m));
            return;
        };
        if matches!(c, change::Change::Create { .. }) && dir.claims(ty, &uid.id) {
            let m = format!(
                "change {n}: `{}::{:?}` (or a look-alike) exists",
                uid.ty, uid.id
            );
            self.problems.push(Problem::in_file(origin, m));
            return;
        }
        let index = self.touch(ty, &uid.id);
        let current = self.dir.node(index).map(|node| node.json());
        // removed first: an entity whose new state does not load stays absent
        self.dir.remove(index);
        if let Some(entity) = change::result(c, current) {
            self.load(n, |loader| loader.entity(&entity.to_string()));
        }
    }

    /// Applies a put of the entity `json` is (Cedar entity JSON, as a row of the shared
    /// directory holds it), parsed once by the loader the files use (a load of a million
    /// rows); what the loader does not read as an entity is read as the put change and
    /// given to [`Patch::apply`], so the outcome is that put's either way.
    ///
    /// # Errors
    /// `json` is not a put of an entity at all (nothing says which entity): the caller must
    /// not go on as if the entity were as it was.
    pub fn put_entity(&mut self, json: &str) -> Result<(), String> {
        let raw = serde_json::from_str::<RawEntity>(json).ok();
        let uid = raw.as_ref().and_then(|raw| entity_ref(&raw.uid));
        let ty = uid
            .as_ref()
            .and_then(|(ty, _)| EntityTypeName::from_str(ty).ok());
        let (Some(raw), Some((_, id)), Some(ty)) = (raw, uid, ty) else {
            return self.put_value(json);
        };
        let n = self.applied;
        self.applied += 1;
        let ty = self.dir.intern_type(&ty);
        let index = self.touch(ty, &id);
        self.dir.remove(index);
        self.load(n, |loader| loader.raw_entity(&raw));
        Ok(())
    }

    /// [`Patch::put_entity`] of what is not plainly an entity: read as the put change.
    fn put_value(&mut self, json: &str) -> Result<(), String> {
        let mut value: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let Some(fields) = value.as_object_mut() else {
            return Err(format!("not a put of an entity: {json:.200}"));
        };
        fields.insert("op".into(), Value::from("put"));
        let change = serde_json::from_value::<change::Change>(value)
            .map_err(|e| format!("not a put of an entity: {e}: {json:.200}"))?;
        self.apply(&change);
        Ok(())
    }

    /// The slot of (`ty`, `id`), marked as the change log's when [`Patch::logged`] says so.
    fn touch(&mut self, ty: u16, id: &str) -> u32 {
        let index = self.dir.intern_uid(ty, id);
        self.dir.slots[index as usize].logged |= self.logged;
        index
    }

    /// Change `n`'s entity loaded as a file's would be, a problem noted if it does not fit.
    fn load(&mut self, n: usize, load: impl FnOnce(&mut Loader<'_>) -> Result<u32, String>) {
        let origin = Path::new("<change>");
        let mut loader = Loader {
            dir: &mut self.dir,
            catalog: self.catalog,
            rules: self.rules,
            file: origin,
            problems: &mut self.problems,
        };
        if let Err(m) = load(&mut loader) {
            let m = format!("change {n}: {m}");
            loader.problems.push(Problem::in_file(origin, m));
        }
    }

    /// What did not fit since the last call (to report change by change).
    pub fn take_problems(&mut self) -> Problems {
        std::mem::take(&mut self.problems)
    }

    /// The directory with every change applied, ancestors recomputed, and what did not fit.
    pub fn finish(self) -> (Directory, Problems) {
        let (mut dir, mut problems) = (self.dir, self.problems);
        // each entity found on a cycle is left out until none is (a cycle is made of
        // present entities: removing one, which drops its parents, breaks it)
        for _ in 0..=dir.slots.len() {
            let Err(index) = dir.compute_ancestors() else {
                break;
            };
            let message = format!("entity `{}` would be its own ancestor", dir.uid(index));
            problems.push(Problem::in_file(Path::new("<change>"), message));
            dir.remove(index);
        }
        (dir, problems)
    }
}

/// Reads entities into the directory: a file's, or one change's.
struct Loader<'a> {
    dir: &'a mut Directory,
    catalog: &'a Catalog,
    rules: &'a [EntityRule],
    file: &'a Path,
    problems: &'a mut Problems,
}

impl Loader<'_> {
    /// Adds the file's entities; returns (slot, line) of each entity added.
    fn read_file(&mut self, text: &str) -> Vec<(u32, usize)> {
        let raws: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(raws) => raws,
            Err(e) => {
                self.problems.push(Problem::at_line(
                    self.file,
                    Some(e.line()),
                    format!("not a JSON array of entities: {e}"),
                ));
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(raws.len());
        let mut lines = LineCounter::new(text);
        for raw in raws {
            let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            let line = lines.line_at(offset);
            match self.entity(raw.get()) {
                Ok(index) => out.push((index, line)),
                Err(message) => {
                    self.problems
                        .push(Problem::at_line(self.file, Some(line), message))
                }
            }
        }
        out
    }

    fn entity(&mut self, json: &str) -> Result<u32, String> {
        let raw: RawEntity =
            serde_json::from_str(json).map_err(|e| format!("not an entity: {e}"))?;
        self.raw_entity(&raw)
    }

    /// Adds one parsed entity (see [`Loader::entity`]).
    fn raw_entity(&mut self, raw: &RawEntity) -> Result<u32, String> {
        let (ty_name, id) = entity_ref(&raw.uid).ok_or("`uid` must be {\"type\": …, \"id\": …}")?;
        let name = format!("entity `{ty_name}::{id:?}`");
        let declared = self
            .catalog
            .entity_types
            .get(&ty_name)
            .ok_or_else(|| format!("{name}: entity type `{ty_name}` is not in the schema"))?;
        // every problem of the entity, in one message
        let mut errors: Vec<String> = Vec::new();
        if raw.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            errors.push("entity tags are not supported".into());
        }
        let ty = self
            .dir
            .intern_type(&EntityTypeName::from_str(&ty_name).map_err(|e| format!("{name}: {e}"))?);
        let attrs = match self.attributes(&raw.attrs, declared) {
            Ok(attrs) => Some(attrs),
            Err(m) => {
                errors.push(m);
                None
            }
        };
        let allowed = self
            .catalog
            .member_of
            .get(&ty_name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut parents = Vec::with_capacity(raw.parents.len());
        let mut parent_types = Vec::with_capacity(raw.parents.len());
        for p in &raw.parents {
            let Some((pt, pid)) = entity_ref(p) else {
                errors.push("a parent is not {\"type\": …, \"id\": …}".into());
                continue;
            };
            if !allowed.contains(&pt) {
                errors.push(format!("`{pt}` is not a parent type of `{ty_name}`"));
                continue;
            }
            let pty = match EntityTypeName::from_str(&pt) {
                Ok(t) => self.dir.intern_type(&t),
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let index = self.dir.intern_uid(pty, &pid);
            if !parents.contains(&index) {
                parents.push(index);
                parent_types.push(pt);
            }
        }
        if !errors.is_empty() {
            return Err(format!("{name}: {}", errors.join("; ")));
        }
        let attrs = attrs.unwrap_or_default();
        for rule in self.rules.iter().filter(|r| r.entity_type == ty_name) {
            let messages = rule_violations(rule, &name, &attrs, &parent_types);
            if let Some(first) = messages.into_iter().reduce(|a, b| format!("{a}; {b}")) {
                return Err(first);
            }
        }
        let index = self.dir.intern_uid(ty, &id);
        let attrs: Box<[(u16, Val)]> = attrs
            .into_iter()
            .map(|(k, v)| (self.dir.intern_attr(&k), v))
            .collect();
        let slot = &mut self.dir.slots[index as usize];
        if slot.present {
            // a duplicate: reported by the caller with both places; keep the first
            return Ok(index);
        }
        slot.present = true;
        slot.attrs = attrs;
        slot.parents = parents.into();
        self.dir.present += 1;
        let folded = self.dir.folded_hash(ty, &id);
        *self.dir.folded.entry(folded).or_default() += 1;
        Ok(index)
    }

    /// Checks attributes against the declared record and converts them.
    fn attributes(
        &mut self,
        attrs: &Map<String, Value>,
        declared: &HashMap<String, Attr>,
    ) -> Result<Vec<(String, Val)>, String> {
        let mut errors: Vec<String> = declared
            .iter()
            .filter(|(name, attr)| attr.required && !attrs.contains_key(*name))
            .map(|(name, _)| format!("attribute `{name}` is required"))
            .collect();
        errors.sort();
        let mut out = Vec::with_capacity(attrs.len());
        for (name, value) in attrs {
            let Some(attr) = declared.get(name) else {
                errors.push(format!("attribute `{name}` is not declared in the schema"));
                continue;
            };
            match self.value(value, &attr.ty) {
                Ok(v) => out.push((name.clone(), v)),
                Err(m) => errors.push(format!("attribute `{name}`: {m}")),
            }
        }
        match errors.is_empty() {
            true => Ok(out),
            false => Err(errors.join("; ")),
        }
    }

    fn value(&mut self, v: &Value, ty: &Type) -> Result<Val, String> {
        match (ty, v) {
            (Type::String, Value::String(s)) => Ok(Val::Str(s.as_str().into())),
            (Type::Long, Value::Number(n)) => n
                .as_i64()
                .map(Val::Long)
                .ok_or_else(|| format!("`{n}` is not a Long")),
            (Type::Bool, Value::Bool(b)) => Ok(Val::Bool(*b)),
            (Type::Entity(want), v) => {
                let (t, id) = entity_ref(v).ok_or("expected an entity reference")?;
                if &t != want {
                    return Err(format!("expected an entity of type `{want}`, got `{t}`"));
                }
                let ty = self
                    .dir
                    .intern_type(&EntityTypeName::from_str(&t).map_err(|e| e.to_string())?);
                Ok(Val::Entity(self.dir.intern_uid(ty, &id)))
            }
            (Type::Set(inner), Value::Array(items)) => Ok(Val::Set(
                items
                    .iter()
                    .map(|i| self.value(i, inner))
                    .collect::<Result<_, _>>()?,
            )),
            (Type::Record(fields), Value::Object(map)) => {
                let values = self.attributes(map, fields)?;
                Ok(Val::Record(
                    values
                        .into_iter()
                        .map(|(k, v)| (k.into_boxed_str(), v))
                        .collect(),
                ))
            }
            (Type::Extension(name), v) => extension_value(name, v),
            (ty, v) => Err(format!("expected {}, got `{v}`", describe(ty))),
        }
    }
}

fn describe(ty: &Type) -> &'static str {
    match ty {
        Type::String => "a String",
        Type::Long => "a Long",
        Type::Bool => "a Bool",
        Type::Entity(_) => "an entity reference",
        Type::Set(_) => "a Set",
        Type::Record(_) => "a record",
        Type::Extension(_) => "an extension value",
    }
}

/// `{"type": T, "id": I}` or `{"__entity": {"type": T, "id": I}}`.
fn entity_ref(v: &Value) -> Option<(String, String)> {
    let v = v.get("__entity").unwrap_or(v);
    let obj = v.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    Some((
        obj.get("type")?.as_str()?.to_string(),
        obj.get("id")?.as_str()?.to_string(),
    ))
}

/// An extension value of the declared type, checked by building it with Cedar.
fn extension_value(declared: &str, v: &Value) -> Result<Val, String> {
    let func: &'static str = match declared {
        "ipaddr" => "ip",
        "decimal" => "decimal",
        "datetime" => "datetime",
        "duration" => "duration",
        other => return Err(format!("unsupported extension type `{other}`")),
    };
    let arg = match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let ext = o.get("__extn").ok_or("expected an extension value")?;
            if ext.get("fn").and_then(Value::as_str) != Some(func) {
                return Err(format!("expected `{func}(…)`"));
            }
            ext.get("arg")
                .and_then(Value::as_str)
                .ok_or("extension `arg` must be a string")?
                .to_string()
        }
        other => return Err(format!("expected an extension value, got `{other}`")),
    };
    let probe = Entity::new(
        EntityUid::from_type_name_and_id(
            EntityTypeName::from_str("Probe").map_err(|e| e.to_string())?,
            EntityId::new("x"),
        ),
        [("v".to_string(), extension(func, &arg))]
            .into_iter()
            .collect(),
        Default::default(),
    );
    probe.map_err(|e| e.to_string())?;
    Ok(Val::Ext(func, arg.into()))
}

fn rule_violations(
    rule: &EntityRule,
    name: &str,
    attrs: &[(String, Val)],
    parent_types: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for (ty, want) in &rule.parents {
        let n = parent_types.iter().filter(|p| *p == ty).count();
        if n != *want {
            out.push(format!(
                "{name} has {n} parents of type `{ty}`; it needs exactly {want}"
            ));
        }
    }
    for (attr, allowed) in &rule.values {
        match attrs.iter().find(|(k, _)| k == attr).map(|(_, v)| v) {
            None => {}
            Some(Val::Str(v)) if allowed.iter().any(|a| a.as_str() == &**v) => {}
            Some(v) => out.push(format!(
                "{name} has {attr} `{}`; expected one of: {}",
                show(v),
                allowed.join(", ")
            )),
        }
    }
    out
}

fn show(v: &Val) -> String {
    match v {
        Val::Str(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}

pub(crate) mod change;
pub(crate) mod journal;

#[cfg(test)]
mod tests;
