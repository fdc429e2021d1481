//! An AuthZEN question decided on the serving snapshot, through the proxy's own decision
//! path ([`Asking::decide`]: the decision cache, [`crate::authz::decision::authorize`]).
//!
//! ```text
//! subject {type,id}   ─▶ the profile's principal (or anonymous) type, the directory's
//!                        account: unknown ─▶ unknown_account, disabled ─▶ account_disabled
//! action {name}       ─▶ the schema's action (unknown ─▶ unknown_action)
//! resource {type,id}  ─▶ a schema entity type, short in the profile's namespace (else
//!                        unknown_resource_type); its `properties` are its attributes only
//!                        when the directory does not have it (the directory is the truth)
//! context + action.properties ─▶ the action's declared context attributes, typed by the
//!                        schema, over a user token's claim defaults; what the gateway computes
//!                        (literals, the principal's parents) fixed, mapped fields kept to
//!                        their map's values, what a route reads from the request required;
//!                        undeclared members ignored
//! anonymous subject   ─▶ only for actions with a public route (else token_missing)
//! ─▶ Resolved ─▶ Asking::decide ─▶ Decision (logged and counted like a proxy decision)
//! ```

use std::collections::{BTreeSet, HashMap};

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde_json::{json, Map, Value};

use super::wire::{Question, WireError};
use crate::authz::cache::Caches;
use crate::authz::decision::{Asking, Decision, Outcome, Rejection};
use crate::authz::snapshot::Snapshot;
use crate::model::routes::field::FieldValue;
use crate::model::routes::{QuestionContext, Resolved};
use crate::model::schema::{qualify, Attr, Type};
use crate::proxy::response::rejection_reason;

/// Why a question names nothing the profile can decide on (a `false` with `context.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ItemError {
    /// A subject type that is neither the principal type nor the anonymous one.
    #[error("subject type `{0}` is not a principal type of this profile")]
    SubjectType(String),
    /// A resource type the schema does not declare.
    #[error("resource type `{0}` is not an entity type of this profile")]
    ResourceType(String),
    /// An action the schema does not declare.
    #[error("action `{0}` is not an action of this profile")]
    Action(String),
    /// A property or context value that does not fit its declared type.
    #[error("`{member}` {message}")]
    Value { member: String, message: String },
    /// A batch item that is not a complete question.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl ItemError {
    fn reason(&self) -> &'static str {
        match self {
            ItemError::SubjectType(_) => "unknown_subject_type",
            ItemError::ResourceType(_) => "unknown_resource_type",
            ItemError::Action(_) => "unknown_action",
            ItemError::Value { .. } => "bad_value",
            ItemError::Wire(_) => "bad_request",
        }
    }
}

/// One decided question.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The decision, as the decision log and metrics take it.
    pub decision: Decision,
    /// Why the question could not be asked, when it could not.
    pub problem: Option<ItemError>,
}

impl Answer {
    /// A question that could not be asked: denied, with why.
    pub(crate) fn unaskable(snapshot: &Snapshot, route: &str, problem: ItemError) -> Answer {
        let mut decision = Decision::new(snapshot).reject(Rejection::BadRequest(
            crate::authz::decision::BadRequest::Schema(problem.to_string()),
        ));
        decision.route = Some(route.to_string());
        Answer {
            decision,
            problem: Some(problem),
        }
    }

    /// Whether the subject may.
    pub(crate) fn allowed(&self) -> bool {
        self.problem.is_none() && self.decision.is_allowed()
    }

    /// The reason code (`-` for a permit), as logged and told in `context.reason`.
    pub(crate) fn reason(&self) -> &str {
        match (&self.problem, &self.decision.outcome) {
            (Some(problem), _) => problem.reason(),
            (None, Outcome::Allow) => "-",
            (None, Outcome::Reject(r)) => rejection_reason(r),
        }
    }

    /// The AuthZEN decision object; `admin` adds the determining policies and errors
    /// (`context.reason_admin`).
    pub(crate) fn to_json(&self, admin: bool) -> Value {
        let mut context = Map::new();
        if !self.allowed() {
            context.insert("reason".into(), self.reason().into());
        }
        if let Some(problem) = &self.problem {
            context.insert(
                "error".into(),
                json!({"status": 400, "message": problem.to_string()}),
            );
        }
        if admin {
            context.insert(
                "reason_admin".into(),
                json!({
                    "policies": self.decision.policies,
                    "errors": self.decision.errors,
                    "policy_version": &*self.decision.policy_version,
                    "directory_version": &*self.decision.directory_version,
                }),
            );
        }
        let mut answer = json!({ "decision": self.allowed() });
        if !context.is_empty() {
            answer["context"] = Value::Object(context);
        }
        answer
    }
}

/// Decides `question` on `snapshot` (`route` names the endpoint in the log and metrics).
pub(crate) fn decide<'s>(
    snapshot: &'s Snapshot,
    caches: Option<&'s Caches>,
    question: &Question,
    route: &str,
) -> Answer {
    match asked(snapshot, caches, question, route) {
        Ok(decision) => Answer {
            decision,
            problem: None,
        },
        Err(problem) => Answer::unaskable(snapshot, route, problem),
    }
}

fn asked<'s>(
    snapshot: &'s Snapshot,
    caches: Option<&'s Caches>,
    q: &Question,
    route: &str,
) -> Result<Decision, ItemError> {
    let principal_uid = subject(snapshot, &q.subject.ty, &q.subject.id)?;
    let action = snapshot
        .catalog
        .actions
        .get(&q.action.name)
        .ok_or_else(|| ItemError::Action(q.action.name.clone()))?;
    let resource_type = entity_type(snapshot, &q.resource.ty)
        .ok_or_else(|| ItemError::ResourceType(q.resource.ty.clone()))?;
    let resource = EntityUid::from_type_name_and_id(resource_type, EntityId::new(&q.resource.id));

    let mut decision = Decision::new(snapshot);
    decision.route = Some(route.to_string());
    decision.principal = Some(q.subject.id.clone());
    decision.anonymous = Some(principal_uid.type_name()) == snapshot.routes.anonymous_type.as_ref();
    decision.action = Some(action.uid.to_string());
    decision.resource = Some(resource.clone());
    let Some(principal) = snapshot.directory.get(&principal_uid) else {
        return Ok(decision.reject(Rejection::UnknownPrincipal(q.subject.id.clone())));
    };
    if principal.is_disabled() {
        return Ok(decision.reject(Rejection::Disabled(q.subject.id.clone())));
    }
    if decision.anonymous && !snapshot.routes.takes_anonymous(&q.action.name) {
        return Ok(decision.reject(Rejection::Unauthenticated(crate::authn::AuthError::Missing)));
    }
    let parents = || principal.parents();
    let context = context(
        snapshot.routes.question_context(&q.action.name, &parents),
        &action.context,
        q,
    )?;
    let resource_attrs = match snapshot.directory.get(&resource) {
        Some(_) => Vec::new(),
        None => properties(snapshot, &resource, &q.resource.properties)?,
    };
    let asking = Asking {
        snapshot,
        caches,
        principal,
        action: &action.uid,
        action_name: &q.action.name,
    };
    let resolved = Resolved {
        resource,
        resource_attrs,
        context,
    };
    Ok(asking.decide(decision, resolved))
}

/// The profile's namespace (that of its principal type).
fn namespace(snapshot: &Snapshot) -> String {
    snapshot.routes.principal_type.namespace()
}

/// A type as a question names it: without the profile's namespace.
pub(crate) fn short(snapshot: &Snapshot, ty: &EntityTypeName) -> String {
    let ty = ty.to_string();
    let prefix = format!("{}::", namespace(snapshot));
    ty.strip_prefix(&prefix).map_or(ty.clone(), String::from)
}

/// The AuthZEN question a decision of the proxy answered, when it reached the policies
/// (`check --format json` shows it; the decision API decides it the same way).
pub(crate) fn question_of(snapshot: &Snapshot, decision: &Decision) -> Option<Value> {
    let read = decision.read.as_deref()?;
    let resource = decision.resource.as_ref()?;
    let action: EntityUid = decision.action.as_deref()?.parse().ok()?;
    let subject = match (&snapshot.routes.anonymous_type, decision.anonymous) {
        (Some(ty), true) => {
            json!({"type": short(snapshot, ty), "id": crate::model::routes::ANONYMOUS_ID})
        }
        _ => {
            json!({"type": short(snapshot, &snapshot.routes.principal_type), "id": decision.principal.as_deref()?})
        }
    };
    let values = |fields: &[(String, FieldValue)]| -> Map<String, Value> {
        fields
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    FieldValue::Entity(uid) => {
                        json!({"type": short(snapshot, uid.type_name()), "id": uid.id().unescaped()})
                    }
                    other => other.to_json(),
                };
                (name.clone(), value)
            })
            .collect()
    };
    let mut resource_json =
        json!({"type": short(snapshot, resource.type_name()), "id": resource.id().unescaped()});
    if !read.resource_attrs.is_empty() {
        resource_json["properties"] = Value::Object(values(&read.resource_attrs));
    }
    Some(json!({
        "subject": subject,
        "action": {"name": action.id().unescaped()},
        "resource": resource_json,
        "context": values(&read.context),
    }))
}

/// An entity type of the schema, by its name in the profile's namespace or qualified.
pub(crate) fn entity_type(snapshot: &Snapshot, ty: &str) -> Option<EntityTypeName> {
    let qualified = qualify(&namespace(snapshot), ty);
    snapshot
        .catalog
        .entity_types
        .contains_key(&qualified)
        .then(|| qualified.parse().ok())
        .flatten()
}

/// The principal a subject names: of the principal type or the anonymous one.
pub(crate) fn subject(snapshot: &Snapshot, ty: &str, id: &str) -> Result<EntityUid, ItemError> {
    let routes = &snapshot.routes;
    let principal_types = std::iter::once(&routes.principal_type).chain(&routes.anonymous_type);
    let ty = entity_type(snapshot, ty)
        .filter(|t| principal_types.into_iter().any(|p| p == t))
        .ok_or_else(|| ItemError::SubjectType(ty.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// The context: the question's `context` and action `properties` (which must agree) for
/// the declared attributes, over the claim defaults of a user's token; what the gateway
/// computes itself (literals, the principal's parents) cannot be said otherwise, a mapped
/// field takes only the values of its map, and what a route reads from the request must
/// be given.
fn context(
    known: QuestionContext,
    declared: &HashMap<String, Attr>,
    q: &Question,
) -> Result<Vec<(String, FieldValue)>, ItemError> {
    let mut given = q.context.clone();
    for (key, value) in &q.action.properties {
        match given.get(key) {
            Some(other) if other != value => {
                return Err(invalid(
                    &format!("action.properties.{key}"),
                    format!("disagrees with `context.{key}`"),
                ))
            }
            _ => {
                given.insert(key.clone(), value.clone());
            }
        }
    }
    let mut out = known.defaults.clone();
    for (name, value) in typed(&given, declared, "context")? {
        let member = format!("context.{name}");
        if let Some((_, fixed)) = known.fixed.iter().find(|(n, _)| *n == name) {
            if *fixed != value {
                return Err(invalid(&member, "is computed by the gateway".into()));
            }
            continue;
        }
        if let (Some(domain), FieldValue::Str(s)) = (known.domains.get(&name), &value) {
            if !domain.contains(s) {
                let list: Vec<&str> = domain.iter().map(String::as_str).collect();
                return Err(invalid(
                    &member,
                    format!("must be one of {}", list.join(", ")),
                ));
            }
        }
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    }
    out.extend(known.fixed.iter().cloned());
    if let Some(missing) = known.missing(&|f| out.iter().any(|(n, _)| n == f)) {
        return Err(invalid(
            &format!("context.{}", missing.join(", context.")),
            "is required: the proxy reads it from the request".into(),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn invalid(member: &str, message: String) -> ItemError {
    ItemError::Value {
        member: member.to_string(),
        message,
    }
}

/// The members of `given` that `declared` names, typed by it (`at` names them in errors).
fn typed(
    given: &Map<String, Value>,
    declared: &HashMap<String, Attr>,
    at: &str,
) -> Result<Vec<(String, FieldValue)>, ItemError> {
    let mut out = Vec::new();
    for (name, value) in given {
        if let Some(attr) = declared.get(name) {
            let value = field_value(&attr.ty, value)
                .map_err(|message| invalid(&format!("{at}.{name}"), message))?;
            out.push((name.clone(), value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A resource the directory does not have: its declared attributes from `properties`.
fn properties(
    snapshot: &Snapshot,
    resource: &EntityUid,
    given: &Map<String, Value>,
) -> Result<Vec<(String, FieldValue)>, ItemError> {
    match snapshot
        .catalog
        .entity_types
        .get(&resource.type_name().to_string())
    {
        Some(declared) => typed(given, declared, "resource.properties"),
        None => Ok(Vec::new()),
    }
}

/// A JSON value as the schema type takes it; entities as an id or `{"type", "id"}`.
fn field_value(ty: &Type, value: &Value) -> Result<FieldValue, String> {
    let wrong = |what: &str| format!("must be {what}");
    match ty {
        Type::String => value
            .as_str()
            .map(|s| FieldValue::Str(s.to_string()))
            .ok_or_else(|| wrong("a string")),
        Type::Long => value
            .as_i64()
            .map(FieldValue::Long)
            .ok_or_else(|| wrong("an integer")),
        Type::Bool => value
            .as_bool()
            .map(FieldValue::Bool)
            .ok_or_else(|| wrong("a boolean")),
        Type::Entity(qualified) => {
            let (given_type, id) = match value {
                Value::String(id) => (None, id.as_str()),
                Value::Object(e) => match (e.get("type"), e.get("id")) {
                    (Some(Value::String(t)), Some(Value::String(id))) => {
                        (Some(t.as_str()), id.as_str())
                    }
                    _ => return Err(wrong("an id or {\"type\", \"id\"}")),
                },
                _ => return Err(wrong("an id or {\"type\", \"id\"}")),
            };
            let short = qualified.rsplit("::").next().unwrap_or(qualified);
            if given_type.is_some_and(|t| t != qualified && t != short) {
                return Err(wrong(&format!("a {qualified}")));
            }
            let ty: EntityTypeName = qualified.parse().map_err(|_| wrong("an entity"))?;
            Ok(FieldValue::Entity(EntityUid::from_type_name_and_id(
                ty,
                EntityId::new(id),
            )))
        }
        Type::Set(inner) if **inner == Type::String => value
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().map(String::from))
                    .collect::<Option<BTreeSet<_>>>()
            })
            .map(FieldValue::Set)
            .ok_or_else(|| wrong("an array of strings")),
        Type::Set(_) | Type::Record(_) | Type::Extension(_) => {
            Err("has a type the decision API does not take".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_the_schema_type_or_say_what_was_expected() {
        assert_eq!(field_value(&Type::Long, &json!(3)), Ok(FieldValue::Long(3)));
        assert_eq!(
            field_value(&Type::Long, &json!("3")),
            Err("must be an integer".into())
        );
        let device = Type::Entity("Thinger::Device".into());
        let uid: EntityUid = r#"Thinger::Device::"dave/s1""#.parse().unwrap();
        assert_eq!(
            field_value(&device, &json!("dave/s1")),
            Ok(FieldValue::Entity(uid.clone()))
        );
        assert_eq!(
            field_value(&device, &json!({"type": "Device", "id": "dave/s1"})),
            Ok(FieldValue::Entity(uid))
        );
        assert!(field_value(&device, &json!({"type": "User", "id": "dave"})).is_err());
        let tags = Type::Set(Box::new(Type::String));
        assert!(matches!(
            field_value(&tags, &json!(["a", "b"])),
            Ok(FieldValue::Set(s)) if s.len() == 2
        ));
        assert!(field_value(&tags, &json!(["a", 1])).is_err());
    }
}
