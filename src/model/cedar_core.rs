//! The few places iotgate builds Cedar values through `cedar-policy-core` (pinned to the same
//! version as `cedar-policy`), to make per-request entity slices cheap:
//!
//! ```text
//! directory slot / route attributes ──▶ core Entity with attribute *values* (no expression
//!   evaluation), parents = every ancestor
//! slice of core entities ──Entities::from_entities(AssumeAlreadyComputed)──▶ cedar Entities
//! ```
//!
//! `AssumeAlreadyComputed` skips Cedar's transitive-closure computation, which dominated the
//! cost of a decision. It is sound because every entity iotgate puts in a slice lists all its
//! ancestors as parents (computed over the whole directory, where cycles are refused), and
//! the schema's action entities come from a store Cedar closed itself. The differential tests
//! compare the result with plain Cedar.

use std::collections::HashSet;

use cedar_policy::{Entities, EntityUid};
use cedar_policy_core::ast::{self, PartialValue, Value};
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

pub(crate) use cedar_policy_core::ast::Entity as CoreEntity;

/// A core entity with these attribute values and these ancestors (all of them).
pub(crate) fn entity(
    uid: EntityUid,
    attrs: impl IntoIterator<Item = (SmolStr, Value)>,
    ancestors: impl IntoIterator<Item = EntityUid>,
) -> CoreEntity {
    let parents: HashSet<ast::EntityUID> = ancestors.into_iter().map(Into::into).collect();
    ast::Entity::new_with_attr_partial_value(
        uid.into(),
        attrs.into_iter().map(|(k, v)| (k, PartialValue::Value(v))),
        HashSet::new(),
        parents,
        [],
    )
}

/// The core form of a public entity (action entities, extension-valued entities).
pub(crate) fn from_public(entity: &cedar_policy::Entity) -> CoreEntity {
    entity.as_ref().clone()
}

/// Value constructors.
pub(crate) fn bool(b: bool) -> Value {
    Value::from(b)
}

/// A long.
pub(crate) fn long(n: i64) -> Value {
    Value::from(n)
}

/// A string.
pub(crate) fn string(s: &str) -> Value {
    Value::from(s)
}

/// An entity reference.
pub(crate) fn entity_ref(uid: EntityUid) -> Value {
    Value::from(ast::EntityUID::from(uid))
}

/// A set.
pub(crate) fn set(items: impl IntoIterator<Item = Value>) -> Value {
    Value::set(items, None)
}

/// A record.
pub(crate) fn record(fields: impl IntoIterator<Item = (SmolStr, Value)>) -> Value {
    Value::record(fields, None)
}

/// Entities that do not form a store (two share a uid): a fault of the slice builder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entities do not form a store: {0}")]
pub struct SliceError(String);

/// The slice as a Cedar `Entities`, trusting that ancestors are already complete.
///
/// # Errors
/// Two entities share a uid.
pub(crate) fn slice(entities: Vec<CoreEntity>) -> Result<Entities, SliceError> {
    CoreEntities::from_entities(
        entities,
        None::<&NoEntitiesSchema>,
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .map(Entities::from)
    .map_err(|e| SliceError(e.to_string()))
}
