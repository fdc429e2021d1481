//! Changes to the directory at runtime: write-through effects of forwarded requests, the
//! entity API, the journal's replay.
//!
//! ```text
//! Change { op: put | upsert | delete | set_parents, uid, attrs?, parents? }
//!   ──Directory::apply (a copy; all changes or none)──▶ each resulting entity checked as
//!   if it were in a file (schema, profile rules) ─▶ ancestors recomputed (cycles refused)
//! ```
//!
//! `create` makes an entity that must not exist yet (nor one its id is a look-alike of),
//! `put` replaces an entity (attributes and parents as given), `upsert` merges attributes
//! over the current ones (creating the entity when absent) and replaces parents only when
//! given, `set_parents` replaces only the parents, `delete` removes it (others that name it
//! then name an absent entity, as in a Cedar store).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An entity reference as Cedar entity JSON writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Uid {
    /// Qualified entity type (`Thinger::User`).
    #[serde(rename = "type")]
    pub ty: String,
    /// Entity id.
    pub id: String,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Create an entity that does not exist yet.
    Create {
        /// Which.
        uid: Uid,
        /// Its attributes.
        #[serde(default)]
        attrs: Map<String, Value>,
        /// Its direct parents.
        #[serde(default)]
        parents: Vec<Uid>,
    },
    /// Replace (or create) the entity.
    Put {
        /// Which.
        uid: Uid,
        /// Its attributes.
        #[serde(default)]
        attrs: Map<String, Value>,
        /// Its direct parents.
        #[serde(default)]
        parents: Vec<Uid>,
    },
    /// Merge attributes (create when absent); parents replaced only when given.
    Upsert {
        /// Which.
        uid: Uid,
        /// Attributes set (others kept).
        #[serde(default)]
        attrs: Map<String, Value>,
        /// New direct parents, if they change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parents: Option<Vec<Uid>>,
    },
    /// Replace the direct parents.
    SetParents {
        /// Which.
        uid: Uid,
        /// The new direct parents.
        parents: Vec<Uid>,
    },
    /// Remove the entity.
    Delete {
        /// Which.
        uid: Uid,
    },
}

impl Change {
    /// The change as the state it leaves its entity in: a `create` as a `put` (for a
    /// batch delivered late, whose entity this replica made already), others as they are.
    pub fn as_state(self) -> Change {
        match self {
            Change::Create {
                uid,
                attrs,
                parents,
            } => Change::Put {
                uid,
                attrs,
                parents,
            },
            other => other,
        }
    }

    /// The entity it changes.
    pub fn uid(&self) -> &Uid {
        match self {
            Change::Create { uid, .. }
            | Change::Put { uid, .. }
            | Change::Upsert { uid, .. }
            | Change::SetParents { uid, .. }
            | Change::Delete { uid } => uid,
        }
    }
}

/// The entity JSON a change leaves, given the current one (`None`: absent); `None` when the
/// change deletes it.
pub(crate) fn result(change: &Change, current: Option<Value>) -> Option<Value> {
    let entity = |uid: &Uid, attrs: Map<String, Value>, parents: Value| serde_json::json!({"uid": uid, "attrs": attrs, "parents": parents});
    let current_attrs = || {
        current
            .as_ref()
            .and_then(|c| c.get("attrs"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let current_parents = || {
        current
            .as_ref()
            .and_then(|c| c.get("parents"))
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new()))
    };
    match change {
        Change::Delete { .. } => None,
        Change::Create {
            uid,
            attrs,
            parents,
        }
        | Change::Put {
            uid,
            attrs,
            parents,
        } => Some(entity(uid, attrs.clone(), serde_json::json!(parents))),
        Change::Upsert {
            uid,
            attrs,
            parents,
        } => {
            let mut merged = current_attrs();
            merged.extend(attrs.clone());
            let parents = match parents {
                Some(p) => serde_json::json!(p),
                None => current_parents(),
            };
            Some(entity(uid, merged, parents))
        }
        Change::SetParents { uid, parents } => {
            Some(entity(uid, current_attrs(), serde_json::json!(parents)))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn uid(id: &str) -> Uid {
        Uid {
            ty: "T::User".into(),
            id: id.into(),
        }
    }

    #[test]
    fn changes_read_and_write_as_journal_lines() {
        let line =
            r#"{"op":"upsert","uid":{"type":"T::User","id":"hank"},"attrs":{"role":"user"}}"#;
        let change: Change = serde_json::from_str(line).unwrap();
        assert_eq!(change.uid(), &uid("hank"));
        assert_eq!(serde_json::to_string(&change).unwrap(), line);
        for bad in [
            r#"{"op":"rename","uid":{"type":"T::User","id":"x"}}"#,
            r#"{"op":"delete","uid":{"type":"T::User","id":"x"},"extra":1}"#,
            r#"{"op":"set_parents","uid":{"type":"T::User","id":"x"}}"#,
        ] {
            assert!(serde_json::from_str::<Change>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upsert_merges_put_replaces_set_parents_keeps_attributes() {
        let current = Some(
            json!({"uid": uid("bob"), "attrs": {"role": "user", "enabled": true},
                                  "parents": [{"type": "T::Org", "id": "a"}]}),
        );
        let upsert = Change::Upsert {
            uid: uid("bob"),
            attrs: json!({"role": "admin"}).as_object().unwrap().clone(),
            parents: None,
        };
        let after = result(&upsert, current.clone()).unwrap();
        assert_eq!(after["attrs"], json!({"role": "admin", "enabled": true}));
        assert_eq!(after["parents"], json!([{"type": "T::Org", "id": "a"}]));
        let put = Change::Put {
            uid: uid("bob"),
            attrs: json!({"role": "admin"}).as_object().unwrap().clone(),
            parents: vec![],
        };
        assert_eq!(
            result(&put, current.clone()).unwrap()["attrs"],
            json!({"role": "admin"})
        );
        let moved = Change::SetParents {
            uid: uid("bob"),
            parents: vec![Uid {
                ty: "T::Org".into(),
                id: "b".into(),
            }],
        };
        let after = result(&moved, current.clone()).unwrap();
        assert_eq!(after["attrs"]["enabled"], true);
        assert_eq!(after["parents"], json!([{"type": "T::Org", "id": "b"}]));
        assert_eq!(result(&Change::Delete { uid: uid("bob") }, current), None);
    }
}
