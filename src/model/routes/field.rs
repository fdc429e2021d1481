//! Fields: typed values a route computes from the request, for context and resource
//! attributes.
//!
//! ```text
//! value = "{owner}/{claim.dev}"  ──Template──▶ pieces: capture `owner`, text "/", claim `dev`
//! Inputs { captures, query, claims, body } ──Field::resolve──▶ FieldValue (string, long,
//!     bool, entity, set of strings) | absent | FieldError (→ 400)
//! ```
//!
//! Placeholders: `{name}` a path capture, `{query.x}` a query parameter, `{claim.x}` a token
//! claim, `{body.a.b}` a field of the JSON body (`{body}`: all of it, a `json-array` body), `{principal.parent.T}` the id of the
//! principal's one direct parent of type `T` in the directory, `{tls.subject}` / `{tls.cn}`
//! the verified TLS client certificate's subject / common name. A field may be conditional (`when`), have a
//! `default`, be `optional`, or `map` its value onto other strings.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use cedar_policy::{EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::Value;

use crate::authn::Claims;
use crate::request::uri::{Query, QueryError};
use crate::request::TlsClient;

/// Where a placeholder reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A path capture.
    Capture(String),
    /// A query parameter.
    Query(String),
    /// A token claim.
    Claim(String),
    /// A path into the JSON body.
    Body(Vec<String>),
    /// The id of the principal's one direct parent of this entity type (`{principal.parent.Org}`).
    PrincipalParent(String),
    /// The verified TLS client certificate's subject (`{tls.subject}`) or common name
    /// (`{tls.cn}`).
    Tls(TlsPart),
}

/// What a `{tls.…}` placeholder reads of the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsPart {
    /// The subject distinguished name.
    Subject,
    /// Its common name.
    Cn,
}

impl Source {
    fn parse(inner: &str) -> Result<Source, String> {
        let bad = || format!("`{{{inner}}}` is not a placeholder");
        let (kind, rest) = match inner.split_once('.') {
            Some((k, r)) => (k, Some(r)),
            None => (inner, None),
        };
        let source = match (kind, rest) {
            ("body", None) => Source::Body(Vec::new()),
            (name, None) if super::trie::is_identifier(name) => Source::Capture(name.to_string()),
            ("query", Some(n)) if !n.is_empty() => Source::Query(n.to_string()),
            ("claim", Some(n)) if !n.is_empty() => Source::Claim(n.to_string()),
            ("body", Some(path)) if path.split('.').all(|p| !p.is_empty()) => {
                Source::Body(path.split('.').map(String::from).collect())
            }
            ("tls", Some("subject")) => Source::Tls(TlsPart::Subject),
            ("tls", Some("cn")) => Source::Tls(TlsPart::Cn),
            ("principal", Some(rest)) => match rest.strip_prefix("parent.") {
                Some(t) if !t.is_empty() => Source::PrincipalParent(t.to_string()),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        Ok(source)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Source(Source),
}

/// A value template: text with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text {placeholder} text`.
    ///
    /// # Errors
    /// Unbalanced braces or an unknown placeholder form.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{text}` has an unclosed `{{`"))?;
            pieces.push(Piece::Source(Source::parse(&rest[open + 1..open + close])?));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}` has a stray `}}`"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// How often `c` occurs in its literal text (not in placeholder values).
    pub(crate) fn literal_count(&self, c: char) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.matches(c).count(),
                Piece::Source(_) => 0,
            })
            .sum()
    }

    /// The placeholders it reads.
    pub(crate) fn sources(&self) -> impl Iterator<Item = &Source> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Source(s) => Some(s),
            Piece::Text(_) => None,
        })
    }

    /// The single placeholder, when the template is nothing else.
    fn single(&self) -> Option<&Source> {
        match self.pieces.as_slice() {
            [Piece::Source(s)] => Some(s),
            _ => None,
        }
    }

    /// The strings of the JSON array its single placeholder reads (`{body}` of a
    /// `json-array` route); `Ok(None)` when absent.
    ///
    /// # Errors
    /// The template is more than one placeholder, or the value is not an array of strings.
    pub(crate) fn strings(
        &self,
        inputs: &Inputs<'_>,
        field: &str,
    ) -> Result<Option<Vec<String>>, FieldError> {
        let wrong = || FieldError::Type {
            field: field.to_string(),
            expected: "an array of strings",
        };
        let source = self.single().ok_or_else(wrong)?;
        match inputs.lookup(source)? {
            None => Ok(None),
            Some(Raw::Json(Value::Array(items))) => items
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(wrong))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(wrong()),
        }
    }

    /// Renders to text; `Ok(None)` when a placeholder has no value.
    pub(crate) fn text(
        &self,
        inputs: &Inputs<'_>,
        field: &str,
    ) -> Result<Option<String>, FieldError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Source(s) => match inputs.lookup(s)? {
                    None => return Ok(None),
                    Some(raw) => out.push_str(&raw.text().ok_or_else(|| FieldError::Type {
                        field: field.to_string(),
                        expected: "a string",
                    })?),
                },
            }
        }
        Ok(Some(out))
    }
}

/// What a request offers to fields.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// Path captures of the matched route.
    pub captures: &'a [(&'a str, String)],
    /// The query string.
    pub query: Query<'a>,
    /// The token's claims.
    pub claims: &'a Claims,
    /// The parsed JSON body, when the route reads one and it was sent.
    pub body: Option<&'a Value>,
    /// The principal's direct parents in the directory (asked only by fields that read them).
    pub principal_parents: &'a dyn Fn() -> Vec<EntityUid>,
    /// The verified TLS client certificate, when the connection presented one.
    pub tls: Option<&'a TlsClient>,
}

/// A looked-up placeholder value.
enum Raw<'a> {
    Text(Cow<'a, str>),
    Json(&'a Value),
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("captures", &self.captures)
            .field("query", &self.query)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Raw<'_> {
    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Raw::Text(t) => Some(Cow::Borrowed(t.as_ref())),
            Raw::Json(Value::String(s)) => Some(Cow::Borrowed(s)),
            Raw::Json(_) => None,
        }
    }
}

impl<'a> Inputs<'a> {
    fn lookup(&self, source: &Source) -> Result<Option<Raw<'a>>, FieldError> {
        let json = |v: Option<&'a Value>| v.map(Raw::Json);
        Ok(match source {
            Source::Capture(name) => self
                .captures
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Raw::Text(Cow::Borrowed(v.as_str()))),
            Source::Query(name) => self.query.get(name)?.map(|v| Raw::Text(Cow::Owned(v))),
            Source::Claim(name) => json(self.claims.get(name)),
            Source::PrincipalParent(ty) => {
                let parents = (self.principal_parents)();
                let mut of_type = parents.iter().filter(|p| {
                    let t = p.type_name();
                    t.basename() == ty || &t.to_string() == ty
                });
                match (of_type.next(), of_type.next()) {
                    (Some(one), None) => {
                        Some(Raw::Text(Cow::Owned(one.id().unescaped().to_string())))
                    }
                    (None, _) => None,
                    (Some(_), Some(_)) => return Err(FieldError::Ambiguous(ty.clone())),
                }
            }
            Source::Tls(part) => self.tls.and_then(|client| match part {
                TlsPart::Subject => Some(Raw::Text(Cow::Borrowed(client.subject.as_str()))),
                TlsPart::Cn => client.cn.as_deref().map(|cn| Raw::Text(Cow::Borrowed(cn))),
            }),
            Source::Body(path) => match self.body {
                None => None,
                Some(body) => json(body_value(body, path)?),
            },
        })
    }
}

/// Why a field could not be computed (the request is answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A required value is absent.
    #[error("`{0}` is missing")]
    Missing(String),
    /// The value has the wrong type.
    #[error("`{field}` must be {expected}")]
    Type {
        /// Field name.
        field: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A mapped field got a value its map does not know.
    #[error("`{field}` has an unexpected value `{value}`")]
    Unmapped {
        /// Field name.
        field: String,
        /// The value.
        value: String,
    },
    /// The query string is unusable.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The principal has several parents of the type a field reads.
    #[error("the principal has several parents of type `{0}`")]
    Ambiguous(String),
    /// The body has a key that differs from one a field reads only in case: a
    /// case-insensitive upstream would read it as that key.
    #[error("body key `{found}` differs from `{expected}` only in case")]
    KeyCase {
        /// The key the field reads.
        expected: String,
        /// The key the body has.
        found: String,
    },
}

/// The value at `path` in a JSON body, if there is one. A key missing at some level but
/// present there in another case is an error, never an absent value.
///
/// # Errors
/// [`FieldError::KeyCase`].
fn body_value<'v>(body: &'v Value, path: &[String]) -> Result<Option<&'v Value>, FieldError> {
    let mut value = body;
    for key in path {
        let Some(object) = value.as_object() else {
            return Ok(None);
        };
        match object.get(key) {
            Some(v) => value = v,
            None => {
                return match object.keys().find(|k| k.eq_ignore_ascii_case(key)) {
                    Some(found) => Err(FieldError::KeyCase {
                        expected: key.clone(),
                        found: found.clone(),
                    }),
                    None => Ok(None),
                }
            }
        }
    }
    Ok(Some(value))
}

/// A computed value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldValue {
    /// A string.
    Str(String),
    /// A long.
    Long(i64),
    /// A boolean.
    Bool(bool),
    /// An entity reference.
    Entity(EntityUid),
    /// A set of strings.
    Set(BTreeSet<String>),
}

impl FieldValue {
    /// The value as Cedar entity JSON writes attribute values.
    pub fn to_json(&self) -> Value {
        match self {
            FieldValue::Str(s) => Value::String(s.clone()),
            FieldValue::Long(n) => Value::from(*n),
            FieldValue::Bool(b) => Value::Bool(*b),
            FieldValue::Entity(uid) => serde_json::json!({"__entity": {
                "type": uid.type_name().to_string(),
                "id": uid.id().unescaped(),
            }}),
            FieldValue::Set(items) => items.iter().map(|i| Value::String(i.clone())).collect(),
        }
    }

    /// The Cedar value.
    pub fn to_expr(&self) -> RestrictedExpression {
        match self {
            FieldValue::Str(s) => RestrictedExpression::new_string(s.clone()),
            FieldValue::Long(n) => RestrictedExpression::new_long(*n),
            FieldValue::Bool(b) => RestrictedExpression::new_bool(*b),
            FieldValue::Entity(uid) => RestrictedExpression::new_entity_uid(uid.clone()),
            FieldValue::Set(items) => RestrictedExpression::new_set(
                items
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        }
    }

    /// The core Cedar value (for entities iotgate builds).
    pub fn to_value(&self) -> cedar_policy_core::ast::Value {
        use crate::model::cedar_core as c;
        match self {
            FieldValue::Str(s) => c::string(s),
            FieldValue::Long(n) => c::long(*n),
            FieldValue::Bool(b) => c::bool(*b),
            FieldValue::Entity(uid) => c::entity_ref(uid.clone()),
            FieldValue::Set(items) => c::set(items.iter().map(|s| c::string(s))),
        }
    }

    /// The entity it names, if it is a reference.
    pub fn entity(&self) -> Option<&EntityUid> {
        match self {
            FieldValue::Entity(uid) => Some(uid),
            _ => None,
        }
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Str(s) => write!(f, "{s:?}"),
            FieldValue::Long(n) => write!(f, "{n}"),
            FieldValue::Bool(b) => write!(f, "{b}"),
            FieldValue::Entity(uid) => write!(f, "{uid}"),
            FieldValue::Set(items) => write!(f, "{items:?}"),
        }
    }
}

/// The type of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldType {
    /// `string`.
    String,
    /// `long`.
    Long,
    /// `bool`.
    Bool,
    /// `entity` of this type.
    Entity(EntityTypeName),
    /// `set` of strings.
    Set,
}

/// A compiled field definition.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// The attribute name it fills.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// How its value is made.
    pub value: Template,
    /// Only computed when this placeholder has a value.
    pub when: Option<Source>,
    /// Used when the value is absent.
    pub default: Option<FieldValue>,
    /// Whether it may be left out.
    pub optional: bool,
    /// String-to-string mapping applied to the value.
    pub map: Option<HashMap<String, String>>,
}

impl Field {
    /// Every placeholder it reads (value and condition).
    pub(crate) fn sources(&self) -> impl Iterator<Item = &Source> {
        self.value.sources().chain(self.when.iter())
    }

    /// Computes the field; `Ok(None)` when it is optional and absent.
    ///
    /// # Errors
    /// A required value is absent, or a value has the wrong type or an unmapped value.
    pub(crate) fn resolve(&self, inputs: &Inputs<'_>) -> Result<Option<FieldValue>, FieldError> {
        let applies = match &self.when {
            Some(cond) => inputs.lookup(cond)?.is_some(),
            None => true,
        };
        let value = if applies { self.compute(inputs)? } else { None };
        match (value, &self.default) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(d)) => Ok(Some(d.clone())),
            (None, None) if self.optional => Ok(None),
            (None, None) => Err(FieldError::Missing(self.name.clone())),
        }
    }

    fn compute(&self, inputs: &Inputs<'_>) -> Result<Option<FieldValue>, FieldError> {
        let type_error = |expected| FieldError::Type {
            field: self.name.clone(),
            expected,
        };
        if let Some(source) = self.value.single() {
            let Some(raw) = inputs.lookup(source)? else {
                return Ok(None);
            };
            match (&self.ty, &raw) {
                // JSON values keep their JSON type: `"true"` is a string, not a bool, and
                // `null` is no value at all (an upstream may read either another way)
                (FieldType::Long, Raw::Json(v)) => {
                    return v
                        .as_i64()
                        .map(|n| Some(FieldValue::Long(n)))
                        .ok_or_else(|| type_error("a whole number"));
                }
                (FieldType::Bool, Raw::Json(v)) => {
                    return v
                        .as_bool()
                        .map(|b| Some(FieldValue::Bool(b)))
                        .ok_or_else(|| type_error("true or false"));
                }
                (FieldType::Set, Raw::Json(Value::Array(items))) => {
                    return items
                        .iter()
                        .map(|i| i.as_str().map(String::from))
                        .collect::<Option<BTreeSet<_>>>()
                        .map(|s| Some(FieldValue::Set(s)))
                        .ok_or_else(|| type_error("a list of strings"));
                }
                _ => {}
            }
        }
        let Some(text) = self.value.text(inputs, &self.name)? else {
            return Ok(None);
        };
        let text = match &self.map {
            Some(map) => map
                .get(&text)
                .cloned()
                .ok_or_else(|| FieldError::Unmapped {
                    field: self.name.clone(),
                    value: text,
                })?,
            None => text,
        };
        Ok(Some(match &self.ty {
            FieldType::String => FieldValue::Str(text),
            FieldType::Entity(t) => FieldValue::Entity(EntityUid::from_type_name_and_id(
                t.clone(),
                EntityId::new(&text),
            )),
            FieldType::Set => FieldValue::Set([text].into_iter().collect()),
            FieldType::Long => {
                FieldValue::Long(text.parse().map_err(|_| type_error("a whole number"))?)
            }
            FieldType::Bool => match text.as_str() {
                "true" => FieldValue::Bool(true),
                "false" => FieldValue::Bool(false),
                _ => return Err(type_error("true or false")),
            },
        }))
    }
}

#[cfg(test)]
mod tests;
