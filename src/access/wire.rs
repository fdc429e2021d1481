//! The AuthZEN Authorization API 1.0 request shapes, read from JSON: what is missing or of
//! the wrong type is told by its path (`subject.id`), unknown members are ignored.
//!
//! ```text
//! body ─▶ JSON object (else Malformed) ─▶ evaluation: subject + action + resource
//!         [+ context], each complete (else the whole request is a 400)
//!      ─▶ evaluations: top-level defaults (complete when present) + `evaluations[]`, each
//!         item completed from the defaults, whole entities replacing them; an item that
//!         stays incomplete is that item's error, not the request's
//! ```

use serde_json::{Map, Value};

/// An entity: a subject or a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entity {
    pub ty: String,
    pub id: String,
    pub properties: Map<String, Value>,
}

/// An action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Action {
    pub name: String,
    pub properties: Map<String, Value>,
}

/// One access question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    pub subject: Entity,
    pub action: Action,
    pub resource: Entity,
    pub context: Map<String, Value>,
}

/// Why a request (or one item of a batch) cannot be read: the member and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body is not a JSON object.
    #[error("the body is not a JSON object: {0}")]
    Malformed(String),
    /// A required member is absent.
    #[error("`{0}` is missing")]
    Missing(String),
    /// A member has the wrong type.
    #[error("`{0}` must be {1}")]
    Type(String, &'static str),
    /// A value outside what the member takes.
    #[error("`{0}`: {1}")]
    Value(String, String),
}

/// `options.evaluations_semantic`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Semantic {
    /// Every item, in order.
    #[default]
    ExecuteAll,
    /// Stop after the first item that is not a permit.
    DenyOnFirstDeny,
    /// Stop after the first permit.
    PermitOnFirstPermit,
}

impl Semantic {
    /// Whether evaluation stops after an item decided `allowed`.
    pub(crate) fn stops_after(self, allowed: bool) -> bool {
        match self {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !allowed,
            Semantic::PermitOnFirstPermit => allowed,
        }
    }

    /// The name an answer cut short by it carries as its reason.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Semantic::ExecuteAll => "execute_all",
            Semantic::DenyOnFirstDeny => "deny_on_first_deny",
            Semantic::PermitOnFirstPermit => "permit_on_first_permit",
        }
    }
}

/// An Access Evaluations request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Batch<'a> {
    /// No (or an empty) `evaluations` array: answered as one evaluation.
    Single(Question),
    /// The items, in request order.
    Items {
        items: Items<'a>,
        semantic: Semantic,
    },
}

/// The items of a batch and its defaults; each question is made when it is asked for, so
/// large defaults are not copied into every item at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Items<'a> {
    items: &'a [Value],
    subject: Option<Entity>,
    action: Option<Action>,
    resource: Option<Entity>,
    context: Option<Map<String, Value>>,
}

impl Items<'_> {
    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Item `i` completed from the defaults (whole entities replacing them), or why it is
    /// not a question.
    pub(crate) fn question(&self, i: usize) -> Result<Question, WireError> {
        let at = format!("evaluations[{i}].");
        let Some(Value::Object(item)) = self.items.get(i) else {
            return Err(WireError::Type(format!("evaluations[{i}]"), "an object"));
        };
        let prefixed = |e: WireError| prefix(e, &at);
        complete(
            entity_member(item, "subject")
                .map_err(prefixed)?
                .or_else(|| self.subject.clone()),
            action_member(item, "action")
                .map_err(prefixed)?
                .or_else(|| self.action.clone()),
            entity_member(item, "resource")
                .map_err(prefixed)?
                .or_else(|| self.resource.clone()),
            context_member(item, "context")
                .map_err(prefixed)?
                .or_else(|| self.context.clone()),
            &at,
        )
    }
}

/// The body as a JSON object.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, WireError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(WireError::Malformed("empty".into()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(WireError::Malformed("not an object".into())),
        Err(e) => Err(WireError::Malformed(e.to_string())),
    }
}

/// An Access Evaluation request.
pub(crate) fn evaluation(body: &Map<String, Value>) -> Result<Question, WireError> {
    complete(
        entity_member(body, "subject")?,
        action_member(body, "action")?,
        entity_member(body, "resource")?,
        context_member(body, "context")?,
        "",
    )
}

/// An Access Evaluations request of at most `max_batch` items.
pub(crate) fn evaluations(
    body: &Map<String, Value>,
    max_batch: usize,
) -> Result<Batch<'_>, WireError> {
    let items = match body.get("evaluations") {
        None => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => return Err(WireError::Type("evaluations".into(), "an array")),
    };
    let Some(items) = items else {
        return evaluation(body).map(Batch::Single);
    };
    if items.len() > max_batch {
        return Err(WireError::Value(
            "evaluations".into(),
            format!("{} items, more than max_batch ({max_batch})", items.len()),
        ));
    }
    let semantic = semantic(body)?;
    let items = Items {
        items,
        subject: entity_member(body, "subject")?,
        action: action_member(body, "action")?,
        resource: entity_member(body, "resource")?,
        context: context_member(body, "context")?,
    };
    Ok(Batch::Items { items, semantic })
}

fn semantic(body: &Map<String, Value>) -> Result<Semantic, WireError> {
    let Some(options) = body.get("options") else {
        return Ok(Semantic::default());
    };
    let Value::Object(options) = options else {
        return Err(WireError::Type("options".into(), "an object"));
    };
    match options.get("evaluations_semantic") {
        None => Ok(Semantic::default()),
        Some(Value::String(s)) => match s.as_str() {
            "execute_all" => Ok(Semantic::ExecuteAll),
            "deny_on_first_deny" => Ok(Semantic::DenyOnFirstDeny),
            "permit_on_first_permit" => Ok(Semantic::PermitOnFirstPermit),
            other => Err(WireError::Value(
                "options.evaluations_semantic".into(),
                format!(
                    "`{other}` is not execute_all, deny_on_first_deny or permit_on_first_permit"
                ),
            )),
        },
        Some(_) => Err(WireError::Type(
            "options.evaluations_semantic".into(),
            "a string",
        )),
    }
}

fn prefix(e: WireError, at: &str) -> WireError {
    match e {
        WireError::Missing(m) => WireError::Missing(format!("{at}{m}")),
        WireError::Type(m, t) => WireError::Type(format!("{at}{m}"), t),
        WireError::Value(m, v) => WireError::Value(format!("{at}{m}"), v),
        WireError::Malformed(m) => WireError::Malformed(m),
    }
}

fn complete(
    subject: Option<Entity>,
    action: Option<Action>,
    resource: Option<Entity>,
    context: Option<Map<String, Value>>,
    at: &str,
) -> Result<Question, WireError> {
    let missing = |m: &str| WireError::Missing(format!("{at}{m}"));
    Ok(Question {
        subject: subject.ok_or_else(|| missing("subject"))?,
        action: action.ok_or_else(|| missing("action"))?,
        resource: resource.ok_or_else(|| missing("resource"))?,
        context: context.unwrap_or_default(),
    })
}

/// A member that must be an object when present.
fn object_member<'a>(
    body: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, WireError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(WireError::Type(key.into(), "an object")),
    }
}

/// A non-empty string member.
fn text(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, WireError> {
    match map.get(key) {
        None => Err(WireError::Missing(format!("{path}.{key}"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(WireError::Type(
            format!("{path}.{key}"),
            "a non-empty string",
        )),
    }
}

fn properties(map: &Map<String, Value>, path: &str) -> Result<Map<String, Value>, WireError> {
    object_member(map, "properties")
        .map(|p| p.cloned().unwrap_or_default())
        .map_err(|_| WireError::Type(format!("{path}.properties"), "an object"))
}

/// `subject` or `resource`, complete (`type` and `id`), when present.
pub(crate) fn entity_member(
    body: &Map<String, Value>,
    key: &str,
) -> Result<Option<Entity>, WireError> {
    object_member(body, key)?
        .map(|e| entity(e, key))
        .transpose()
}

/// An entity with `type` and `id`.
fn entity(e: &Map<String, Value>, path: &str) -> Result<Entity, WireError> {
    Ok(Entity {
        ty: text(e, "type", path)?,
        id: text(e, "id", path)?,
        properties: properties(e, path)?,
    })
}

/// `action`, with its `name`, when present.
pub(crate) fn action_member(
    body: &Map<String, Value>,
    key: &str,
) -> Result<Option<Action>, WireError> {
    object_member(body, key)?
        .map(|a| {
            Ok(Action {
                name: text(a, "name", key)?,
                properties: properties(a, key)?,
            })
        })
        .transpose()
}

/// `context`, when present.
pub(crate) fn context_member(
    body: &Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, WireError> {
    object_member(body, key).map(|c| c.cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn an_evaluation_names_what_is_missing_or_mistyped() {
        let ok = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                        "resource": {"type": "record", "id": "r"}, "extra": 1});
        assert_eq!(evaluation(&body(ok)).unwrap().subject.id, "alice");
        let cases = [
            (
                json!({"action": {"name": "read"}, "resource": {"type": "r", "id": "1"}}),
                "`subject` is missing",
            ),
            (
                json!({"subject": {"id": "a"}, "action": {"name": "read"}, "resource": {"type": "r", "id": "1"}}),
                "`subject.type` is missing",
            ),
            (
                json!({"subject": "alice", "action": {"name": "read"}, "resource": {"type": "r", "id": "1"}}),
                "`subject` must be an object",
            ),
            (
                json!({"subject": {"type": "u", "id": "a"}, "action": {"name": 123}, "resource": {"type": "r", "id": "1"}}),
                "`action.name` must be a non-empty string",
            ),
            (
                json!({"subject": {"type": "u", "id": "a"}, "action": {}, "resource": {"type": "r", "id": "1"}}),
                "`action.name` is missing",
            ),
            (
                json!({"subject": {"type": "u", "id": "a"}, "action": {"name": "read"}, "resource": {"type": "r"}}),
                "`resource.id` is missing",
            ),
            (
                json!({"subject": {"type": "u", "id": "a"}, "action": {"name": "read"}, "resource": {"type": "r", "id": "1"}, "context": []}),
                "`context` must be an object",
            ),
        ];
        for (request, told) in cases {
            let e = evaluation(&body(request.clone())).unwrap_err();
            assert_eq!(e.to_string(), told, "{request}");
        }
        assert!(matches!(object(b" "), Err(WireError::Malformed(_))));
        assert!(matches!(object(b"[1]"), Err(WireError::Malformed(_))));
        assert!(matches!(object(b"{\"a\""), Err(WireError::Malformed(_))));
    }

    #[test]
    fn batch_items_take_whole_defaults_and_fail_alone() {
        let request = json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "read"},
            "context": {"a": 1},
            "options": {"evaluations_semantic": "deny_on_first_deny"},
            "evaluations": [
                {"resource": {"type": "record", "id": "1"}},
                {"resource": {"type": "record", "id": "2"}, "context": {"b": 2},
                 "subject": {"type": "user", "id": "bob"}},
                {},
                {"resource": {"type": "record"}}
            ]
        });
        let request = body(request);
        let Batch::Items { items, semantic } = evaluations(&request, 10).unwrap() else {
            panic!("a batch");
        };
        assert_eq!(semantic, Semantic::DenyOnFirstDeny);
        let items: Vec<_> = (0..items.len()).map(|i| items.question(i)).collect();
        let first = items[0].as_ref().unwrap();
        assert_eq!(
            (first.subject.id.as_str(), first.context["a"].clone()),
            ("alice", json!(1))
        );
        let second = items[1].as_ref().unwrap();
        assert_eq!(second.subject.id, "bob");
        assert!(
            !second.context.contains_key("a"),
            "a context replaces the default whole"
        );
        assert_eq!(
            items[2],
            Err(WireError::Missing("evaluations[2].resource".into()))
        );
        assert_eq!(
            items[3],
            Err(WireError::Missing("evaluations[3].resource.id".into()))
        );
    }

    #[test]
    fn a_batch_is_bounded_and_an_empty_one_is_an_evaluation() {
        let item = json!({"resource": {"type": "r", "id": "1"}});
        let request = json!({"subject": {"type": "u", "id": "a"}, "action": {"name": "x"},
                             "evaluations": [item.clone(), item.clone(), item]});
        assert!(matches!(
            evaluations(&body(request), 2),
            Err(WireError::Value(..))
        ));
        let single = json!({"subject": {"type": "u", "id": "a"}, "action": {"name": "x"},
                            "resource": {"type": "r", "id": "1"}, "evaluations": []});
        assert!(matches!(
            evaluations(&body(single), 2),
            Ok(Batch::Single(_))
        ));
        let bad = json!({"evaluations": [{}], "options": {"evaluations_semantic": "any"}});
        assert!(matches!(
            evaluations(&body(bad), 2),
            Err(WireError::Value(..))
        ));
    }
}
