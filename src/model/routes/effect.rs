//! Write-through effects: what a route's request changes in the directory when the
//! upstream answers it with a 2xx.
//!
//! ```text
//! effects = [{ op = "upsert", type = "User", id = "{body.user}",
//!              attrs = { role = "{field.new_role}", enabled = true },
//!              parents = [{ type = "Org", id = "{body.org}" }] }]
//!   ──compile (types and attributes checked against the schema)──▶ Effect
//! Effect + Inputs + the route's resolved fields ──resolve──▶ directory Change (at decision
//!   time; applied only after the upstream's 2xx)
//! ```
//!
//! `create` refuses (409, before anything is forwarded) a request whose entity, or a
//! look-alike of it, exists already: a "create" route decides on the container, not on the
//! entity it names, so it must never rewrite one. Placeholder values in ids may not carry
//! the separators ids are built with (`/`, `@`): `dave/x/y` is not a device of `dave`.
//!
//! Attribute values are TOML literals (`true`, `5`), text templates like any field value,
//! `"{field.x}"` (the typed value of the route field `x`, after its `map`), or an entity
//! `{ type = "User", id = "{owner}" }`. An attribute whose value is absent is left out (an
//! upsert then keeps the current one); an effect whose id or a parent id is absent makes no
//! change (the upstream decides whether such a request is valid; a sync catches up).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::field::{FieldError, FieldValue, Inputs, Template};
use crate::model::directory::change::{Change, Uid};
use crate::model::schema::{qualify, Catalog};

/// An effect as written in the route file.
#[derive(Debug, Deserialize)]
pub(super) struct FileEffect {
    op: String,
    #[serde(rename = "type")]
    ty: String,
    id: String,
    #[serde(default)]
    attrs: BTreeMap<String, toml::Value>,
    parents: Option<Vec<FileRef>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FileRef {
    #[serde(rename = "type")]
    ty: String,
    id: Option<String>,
    /// A list of whole ids (`"{body}"` of a `json-array` route) instead of one `id`.
    each: Option<String>,
    /// What every id of `each` must start with (`"{owner}@"`); the rest is one id part.
    prefix: Option<String>,
}

/// A compiled parent: one id, or every id of a list.
#[derive(Debug, Clone)]
enum Parent {
    One(String, Template),
    Each {
        ty: String,
        list: Template,
        prefix: Option<Template>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Upsert,
    Delete,
    SetParents,
}

#[derive(Debug, Clone)]
enum AttrValue {
    Literal(Value),
    Text(Template),
    Field(String),
    Entity(String, Template),
}

/// A compiled effect.
#[derive(Debug, Clone)]
pub(crate) struct Effect {
    op: Op,
    ty: String,
    id: Template,
    attrs: Vec<(String, AttrValue)>,
    parents: Option<Vec<Parent>>,
}

impl Effect {
    /// Compiles an effect; `Err` lists what is wrong.
    pub(super) fn compile(
        f: &FileEffect,
        catalog: &Catalog,
        namespace: &str,
    ) -> Result<Effect, Vec<String>> {
        let mut problems = Vec::new();
        let op = match f.op.as_str() {
            "create" => Op::Create,
            "upsert" => Op::Upsert,
            "delete" => Op::Delete,
            "set_parents" => Op::SetParents,
            other => {
                problems.push(format!(
                    "unknown effect op `{other}` (create, upsert, delete, set_parents)"
                ));
                Op::Delete
            }
        };
        let ty = qualify(namespace, &f.ty);
        let declared = catalog.entity_types.get(&ty);
        if declared.is_none() {
            problems.push(format!("entity type `{ty}` is not in the schema"));
        }
        let id = Template::parse(&f.id).map_err(|m| problems.push(m)).ok();
        let mut attrs = Vec::new();
        for (name, value) in &f.attrs {
            if declared.is_some_and(|d| !d.contains_key(name)) {
                problems.push(format!("`{name}` is not an attribute of `{ty}`"));
            }
            let value = match value {
                toml::Value::String(s) => {
                    match s.strip_prefix("{field.").and_then(|r| r.strip_suffix('}')) {
                        Some(field) => AttrValue::Field(field.to_string()),
                        None => match Template::parse(s) {
                            Ok(t) => AttrValue::Text(t),
                            Err(m) => {
                                problems.push(m);
                                continue;
                            }
                        },
                    }
                }
                toml::Value::Table(t) => match (t.get("type"), t.get("id")) {
                    (Some(toml::Value::String(ety)), Some(toml::Value::String(id)))
                        if t.len() == 2 =>
                    {
                        match Template::parse(id) {
                            Ok(id) => AttrValue::Entity(qualify(namespace, ety), id),
                            Err(m) => {
                                problems.push(m);
                                continue;
                            }
                        }
                    }
                    _ => {
                        problems.push(format!(
                            "`{name}`: an entity is {{ type = \"…\", id = \"…\" }}"
                        ));
                        continue;
                    }
                },
                toml::Value::Boolean(b) => AttrValue::Literal(Value::Bool(*b)),
                toml::Value::Integer(n) => AttrValue::Literal(Value::from(*n)),
                other => {
                    problems.push(format!(
                        "`{name}`: `{other}` is not a string, bool or integer"
                    ));
                    continue;
                }
            };
            attrs.push((name.clone(), value));
        }
        let parents = f.parents.as_ref().map(|list| {
            list.iter()
                .filter_map(|p| {
                    let pty = qualify(namespace, &p.ty);
                    if !catalog.member_of.get(&ty).is_some_and(|m| m.contains(&pty)) {
                        problems.push(format!("`{pty}` is not a parent type of `{ty}`"));
                    }
                    Parent::compile(p, pty).map_err(|m| problems.push(m)).ok()
                })
                .collect()
        });
        if op == Op::SetParents && parents.is_none() {
            problems.push("a `set_parents` effect needs `parents`".into());
        }
        match (id, problems.is_empty()) {
            (Some(id), true) => Ok(Effect {
                op,
                ty,
                id,
                attrs,
                parents,
            }),
            _ => Err(problems),
        }
    }

    /// The templates it reads (they count as the route's inputs).
    pub(super) fn templates(&self) -> impl Iterator<Item = &Template> {
        let attrs = self.attrs.iter().filter_map(|(_, v)| match v {
            AttrValue::Text(t) | AttrValue::Entity(_, t) => Some(t),
            AttrValue::Literal(_) | AttrValue::Field(_) => None,
        });
        let parents = self.parents.iter().flatten().flat_map(|p| match p {
            Parent::One(_, t) => vec![t],
            Parent::Each { list, prefix, .. } => std::iter::once(list).chain(prefix).collect(),
        });
        std::iter::once(&self.id).chain(attrs).chain(parents)
    }

    /// The route fields it reads by `{field.x}`.
    pub(super) fn fields(&self) -> impl Iterator<Item = &str> {
        self.attrs.iter().filter_map(|(_, v)| match v {
            AttrValue::Field(f) => Some(f.as_str()),
            AttrValue::Literal(_) | AttrValue::Text(_) | AttrValue::Entity(..) => None,
        })
    }

    /// The change this request makes (none when its id or a parent id is absent).
    ///
    /// # Errors
    /// A value it reads has the wrong type.
    pub(crate) fn resolve(
        &self,
        inputs: &Inputs<'_>,
        fields: &[(String, FieldValue)],
    ) -> Result<Option<Change>, FieldError> {
        let Some(id) = id_text(&self.id, inputs)? else {
            return Ok(None);
        };
        let uid = Uid {
            ty: self.ty.clone(),
            id,
        };
        let mut attrs = Map::new();
        for (name, value) in &self.attrs {
            let v = match value {
                AttrValue::Literal(v) => Some(v.clone()),
                AttrValue::Text(t) => t.text(inputs, name)?.map(Value::String),
                AttrValue::Field(f) => fields
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, v)| v.to_json()),
                AttrValue::Entity(ty, t) => t
                    .text(inputs, name)?
                    .map(|id| serde_json::json!({"__entity": {"type": ty, "id": id}})),
            };
            if let Some(v) = v {
                attrs.insert(name.clone(), v);
            }
        }
        let parents = match &self.parents {
            None => None,
            Some(list) => {
                let mut parents = Vec::with_capacity(list.len());
                for parent in list {
                    match parent.resolve(inputs)? {
                        Some(uids) => parents.extend(uids),
                        None => return Ok(None),
                    }
                }
                parents.dedup();
                Some(parents)
            }
        };
        Ok(Some(match self.op {
            Op::Create => Change::Create {
                uid,
                attrs,
                parents: parents.unwrap_or_default(),
            },
            Op::Upsert => Change::Upsert {
                uid,
                attrs,
                parents,
            },
            Op::Delete => Change::Delete { uid },
            Op::SetParents => Change::SetParents {
                uid,
                parents: parents.unwrap_or_default(),
            },
        }))
    }
}

impl Parent {
    fn compile(p: &FileRef, ty: String) -> Result<Parent, String> {
        match (&p.id, &p.each) {
            (Some(id), None) if p.prefix.is_none() => Ok(Parent::One(ty, Template::parse(id)?)),
            (None, Some(each)) => {
                let list = Template::parse(each)?;
                if list.sources().count() != 1 || !(each.starts_with('{') && each.ends_with('}')) {
                    return Err(format!(
                        "`each = \"{each}\"` must be one placeholder (`{{body}}`)"
                    ));
                }
                let prefix = p.prefix.as_deref().map(Template::parse).transpose()?;
                Ok(Parent::Each { ty, list, prefix })
            }
            _ => Err("a parent has `id`, or `each` (with an optional `prefix`)".into()),
        }
    }

    /// Its uids; `Ok(None)` when a value is absent.
    fn resolve(&self, inputs: &Inputs<'_>) -> Result<Option<Vec<Uid>>, FieldError> {
        match self {
            Parent::One(ty, t) => {
                Ok(id_text(t, inputs)?.map(|id| vec![Uid { ty: ty.clone(), id }]))
            }
            Parent::Each { ty, list, prefix } => {
                let Some(items) = list.strings(inputs, "effect parents")? else {
                    return Ok(None);
                };
                let prefix = match prefix {
                    Some(p) => match p.text(inputs, "effect parents")? {
                        Some(text) => text,
                        None => return Ok(None),
                    },
                    None => String::new(),
                };
                let wrong = || FieldError::Type {
                    field: "effect parents".into(),
                    expected: "ids made of the prefix and one plain id part (A-Z a-z 0-9 _ - .)",
                };
                let mut uids = Vec::with_capacity(items.len());
                for item in items {
                    let part = item.strip_prefix(prefix.as_str()).ok_or_else(wrong)?;
                    // one plain id part, as platform ids are (`[A-Za-z0-9_.-]`, ≤ 64)
                    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
                    let dots = part == "." || part == "..";
                    if part.is_empty() || dots || part.len() > 64 || !part.chars().all(plain) {
                        return Err(wrong());
                    }
                    uids.push(Uid {
                        ty: ty.clone(),
                        id: item,
                    });
                }
                uids.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(Some(uids))
            }
        }
    }
}

/// An id rendered from a template, refused when a placeholder value brought in a separator.
fn id_text(t: &Template, inputs: &Inputs<'_>) -> Result<Option<String>, FieldError> {
    let Some(id) = t.text(inputs, "effect id")? else {
        return Ok(None);
    };
    let brought = |c: char| id.matches(c).count() != t.literal_count(c);
    if brought('/') || brought('@') || id.is_empty() || id.chars().any(char::is_control) {
        return Err(FieldError::Type {
            field: "effect id".into(),
            expected: "a non-empty id part without `/`, `@` or control characters",
        });
    }
    Ok(Some(id))
}
