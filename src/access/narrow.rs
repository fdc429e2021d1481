//! Which candidates a search decides: the entities of the searched type that some permit
//! could allow, found with Cedar's type-aware partial evaluation (TPE).
//!
//! ```text
//! known side (the principal of a resource search, the resource of a subject search),
//! action, searched type
//!   ─▶ the policy sets whose pin on the known side it satisfies (model::index), whatever
//!      they pin on the searched side
//!   ─▶ TPE of each: the known side concrete with what it reaches in the directory, the
//!      searched side and the context unknown
//!   ─▶ a permit true (or erroring) whatever the searched entity ─▶ every entity of the type
//!      each residual permit ─▶ where the searched entity must be: `== E`, `in E` (or a set
//!      of them), `.attr == value`, said by a conjunct or by every branch of a disjunction;
//!      a residual that says none of these ─▶ every entity of the type
//!   ─▶ the directory's entities of the type that are where one of them says, sorted
//! ```
//!
//! Sound: Cedar allows only when a permit is satisfied. A permit outside the looked-up sets
//! cannot be (`model::index`), and TPE's residual is what remains of one once the known
//! side is put in, so an entity outside every residual's place satisfies none. Narrowing
//! only saves time: `search` still decides every candidate through the evaluation path, so
//! its answer is what deciding every entity of the type gives (the differential test
//! compares them on random worlds). What TPE cannot do (an action that does not apply to
//! the types, a request it refuses) leaves every entity of the type a candidate.

#![cfg_attr(
    not(feature = "tpe"),
    allow(dead_code, reason = "without the `tpe` feature no residual is read")
)]

use cedar_policy::{EntityTypeName, EntityUid};
use serde_json::Value;

use crate::authz::snapshot::Snapshot;
use crate::model::directory::{Directory, NodeRef, Val};

/// The side of the request a search looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Searched {
    /// The principals (a subject search).
    Principal,
    /// The resources (a resource search).
    Resource,
}

/// Where a residual permit says the searched entity must be.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    /// `== uid`.
    Is(EntityUid),
    /// `in uid`: the entity or one of its descendants.
    In(EntityUid),
    /// `.attr == value`.
    Attr(String, Literal),
}

/// A literal a residual compares an attribute with.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Bool(bool),
    Long(i64),
    Str(String),
    Entity(EntityUid),
}

/// A place, in the directory's terms (slots, compact values).
enum Test {
    Slot(u32),
    Under(u32),
    Attr(String, Val),
}

impl Test {
    fn of(place: Place, directory: &Directory) -> Option<Test> {
        Some(match place {
            Place::Is(uid) => Test::Slot(directory.slot_of(&uid)?),
            Place::In(uid) => Test::Under(directory.slot_of(&uid)?),
            Place::Attr(name, literal) => Test::Attr(
                name,
                match literal {
                    Literal::Bool(b) => Val::Bool(b),
                    Literal::Long(n) => Val::Long(n),
                    Literal::Str(s) => Val::Str(s.into()),
                    Literal::Entity(uid) => Val::Entity(directory.slot_of(&uid)?),
                },
            ),
        })
    }

    fn holds(&self, node: NodeRef<'_>) -> bool {
        match self {
            Test::Slot(slot) => node.index() == *slot,
            Test::Under(slot) => {
                node.index() == *slot || node.ancestor_indices().any(|a| a == *slot)
            }
            Test::Attr(name, value) => node.attr(name) == Some(value),
        }
    }
}

/// The ids of the entities of type `ty` a search must decide, sorted.
pub fn candidates<'s>(
    snapshot: &'s Snapshot,
    searched: Searched,
    known: &EntityUid,
    action: &EntityUid,
    ty: &EntityTypeName,
) -> Vec<&'s str> {
    let directory = &snapshot.directory;
    match places(snapshot, searched, known, action, ty) {
        None => directory.ids_of(ty),
        Some(places) => {
            let tests: Vec<Test> = places
                .into_iter()
                .filter_map(|p| Test::of(p, directory))
                .collect();
            directory.ids_where(ty, |node| tests.iter().any(|t| t.holds(node)))
        }
    }
}

/// Where the permits that can apply say the searched entity must be; `None` when one of
/// them may hold anywhere (or TPE could not tell).
#[cfg(feature = "tpe")]
fn places(
    snapshot: &Snapshot,
    searched: Searched,
    known: &EntityUid,
    action: &EntityUid,
    ty: &EntityTypeName,
) -> Option<Vec<Place>> {
    use cedar_policy::{PartialEntities, PartialEntityUid, PartialRequest};

    use crate::model::index::Known;

    let schema = &snapshot.catalog.schema;
    let node = snapshot.directory.get(known);
    let ancestors = node.map(|n| n.ancestors()).unwrap_or_default();
    let entities = match node {
        Some(node) => {
            let reached = crate::authz::decision::reach(snapshot, node).ok()?;
            PartialEntities::from_concrete(reached, schema).ok()?
        }
        None => PartialEntities::empty(),
    };
    let concrete = PartialEntityUid::from_concrete(known.clone());
    let unknown = PartialEntityUid::new(ty.clone(), None);
    let (principal, resource, side) = match searched {
        Searched::Resource => (concrete, unknown, Known::Principal(known, &ancestors)),
        Searched::Principal => (unknown, concrete, Known::Resource(known, &ancestors)),
    };
    let request = PartialRequest::new(principal, action.clone(), resource, None, schema).ok()?;
    let var = match searched {
        Searched::Principal => "principal",
        Searched::Resource => "resource",
    };
    let mut places = Vec::new();
    for set in snapshot.policies.index.candidates_for(side, action) {
        let response = set.tpe(&request, &entities, schema).ok()?;
        if response.true_permits().next().is_some() || response.error_permits().next().is_some() {
            return None;
        }
        for id in response.residual_permits() {
            let residual = response.get_policy(id)?.to_json().ok()?;
            places.extend(where_policy(&residual, var)?);
        }
    }
    Some(places)
}

/// Without the `tpe` feature every entity of the type is a candidate.
#[cfg(not(feature = "tpe"))]
fn places(
    _: &Snapshot,
    _: Searched,
    _: &EntityUid,
    _: &EntityUid,
    _: &EntityTypeName,
) -> Option<Vec<Place>> {
    None
}

/// Where a residual policy (Cedar's policy JSON) holds `var`: any of its `when` clauses
/// that says so (each is a conjunct of the policy).
fn where_policy(policy: &Value, var: &str) -> Option<Vec<Place>> {
    policy["conditions"]
        .as_array()?
        .iter()
        .filter(|c| c["kind"] == "when")
        .find_map(|c| where_expr(&c["body"], var))
}

/// Where an expression (Cedar's expression JSON) can be true, as places of `var`; `None`
/// when it does not say.
fn where_expr(expr: &Value, var: &str) -> Option<Vec<Place>> {
    let (op, args) = expr.as_object().filter(|o| o.len() == 1)?.iter().next()?;
    let (left, right) = (&args["left"], &args["right"]);
    match op.as_str() {
        "&&" => where_expr(left, var).or_else(|| where_expr(right, var)),
        "||" => {
            let mut places = where_expr(left, var)?;
            places.extend(where_expr(right, var)?);
            Some(places)
        }
        "==" => equality(left, right, var)
            .or_else(|| equality(right, left, var))
            .map(|p| vec![p]),
        "in" if is_var(left, var) => Some(entities(right)?.into_iter().map(Place::In).collect()),
        "Value" if *args == Value::Bool(false) => Some(Vec::new()),
        _ => None,
    }
}

/// `var == E` or `var.attr == literal`.
fn equality(side: &Value, value: &Value, var: &str) -> Option<Place> {
    let literal = literal(value.get("Value")?)?;
    if is_var(side, var) {
        return match literal {
            Literal::Entity(uid) => Some(Place::Is(uid)),
            _ => None,
        };
    }
    let get = side.get(".")?;
    is_var(&get["left"], var).then_some(())?;
    Some(Place::Attr(get["attr"].as_str()?.to_string(), literal))
}

fn is_var(expr: &Value, var: &str) -> bool {
    expr.get("Var").and_then(Value::as_str) == Some(var)
}

fn literal(value: &Value) -> Option<Literal> {
    Some(match value {
        Value::Bool(b) => Literal::Bool(*b),
        Value::Number(n) => Literal::Long(n.as_i64()?),
        Value::String(s) => Literal::Str(s.clone()),
        Value::Object(o) if o.contains_key("__entity") => {
            Literal::Entity(EntityUid::from_json(value.clone()).ok()?)
        }
        _ => None?,
    })
}

/// The entities an `in`'s right side names: one, or a set of them.
fn entities(expr: &Value) -> Option<Vec<EntityUid>> {
    let one = |v: &Value| match literal(v)? {
        Literal::Entity(uid) => Some(uid),
        _ => None,
    };
    match (expr.get("Value"), expr.get("Set")) {
        (Some(Value::Array(items)), _) => items.iter().map(one).collect(),
        (Some(value), _) => Some(vec![one(value)?]),
        (None, Some(Value::Array(items))) => {
            items.iter().map(|item| one(item.get("Value")?)).collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(ty: &str, id: &str) -> Value {
        json!({"Value": {"__entity": {"type": ty, "id": id}}})
    }

    fn uid(ty: &str, id: &str) -> EntityUid {
        EntityUid::from_json(json!({"type": ty, "id": id})).unwrap()
    }

    fn thinger() -> Snapshot {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = crate::Config::load(&root.join("examples/thinger/iotgate.toml")).unwrap();
        Snapshot::load(&config).unwrap()
    }

    /// Whether `user` may `action` on `device`, asked as the decision API asks.
    fn allowed(snapshot: &Snapshot, user: &str, action: &str, device: &str) -> bool {
        let entity = |ty: &str, id: &str| super::super::wire::Entity {
            ty: ty.into(),
            id: id.into(),
            properties: Default::default(),
        };
        let question = super::super::wire::Question {
            subject: entity("User", user),
            action: super::super::wire::Action {
                name: action.into(),
                properties: Default::default(),
            },
            resource: entity("Device", device),
            context: json!({"token_kind": "user"}).as_object().unwrap().clone(),
        };
        super::super::decide::decide(snapshot, None, &question, "test").allowed()
    }

    #[cfg(feature = "tpe")]
    #[test]
    fn residuals_of_the_thinger_policies_narrow_to_owned_and_shared_entities() {
        let snapshot = thinger();
        let device: EntityTypeName = "Thinger::Device".parse().unwrap();
        let user: EntityTypeName = "Thinger::User".parse().unwrap();
        let action = |name: &str| uid("Thinger::Action", name);
        let of = |searched, known: EntityUid, action: &EntityUid, ty: &EntityTypeName| {
            candidates(&snapshot, searched, &known, action, ty)
        };
        let read = action("ReadDeviceStatus");
        // bob owns nothing; dave@greenhouse shares its devices with him
        assert_eq!(
            of(
                Searched::Resource,
                uid("Thinger::User", "bob"),
                &read,
                &device
            ),
            ["dave/sensor1", "dave/valve1"]
        );
        // dave's own devices, wherever they are
        assert_eq!(
            of(
                Searched::Resource,
                uid("Thinger::User", "dave"),
                &read,
                &device
            ),
            ["dave/lab", "dave/sensor1", "dave/valve1"]
        );
        // an admin administers accounts, not others' devices
        assert!(of(
            Searched::Resource,
            uid("Thinger::User", "olivia"),
            &read,
            &device
        )
        .is_empty());
        // an unknown user's permits hold nowhere
        assert!(of(
            Searched::Resource,
            uid("Thinger::User", "ghost"),
            &read,
            &device
        )
        .is_empty());
        // who may delete dave/sensor1: its owner, and erin, to whom the project grants
        // ResourceActions (and then denies deleting: a candidate, refused when decided)
        let sensor = uid("Thinger::Device", "dave/sensor1");
        assert_eq!(
            of(Searched::Principal, sensor, &action("DeleteDevice"), &user),
            ["dave", "erin"]
        );
        // never fewer than the evaluation allows, for every user and device action
        let users = snapshot.directory.ids_of(&user);
        let devices = snapshot.directory.ids_of(&device);
        let mut allowed_pairs = 0;
        for (name, a) in &snapshot.catalog.actions {
            if !a.resources.contains(&device.to_string()) {
                continue;
            }
            for u in &users {
                let found = of(Searched::Resource, uid("Thinger::User", u), &a.uid, &device);
                for d in &devices {
                    if allowed(&snapshot, u, name, d) {
                        allowed_pairs += 1;
                        assert!(found.contains(d), "{u} may {name} {d}: {found:?}");
                        let who = of(
                            Searched::Principal,
                            uid("Thinger::Device", d),
                            &a.uid,
                            &user,
                        );
                        assert!(who.contains(u), "{u} may {name} {d}: {who:?}");
                    }
                }
            }
        }
        assert!(allowed_pairs > 20, "{allowed_pairs}");
    }

    #[test]
    fn conjuncts_disjunctions_and_equalities_say_where() {
        let owner = json!({"==": {"left": {".": {"left": {"Var": "resource"}, "attr": "owner"}},
                                    "right": entity("T::User", "bob")}});
        let within =
            json!({"in": {"left": {"Var": "resource"}, "right": entity("T::Project", "p")}});
        let unsaid = json!({"has": {"left": {"Var": "resource"}, "attr": "owner"}});
        let both = json!({"&&": {"left": unsaid, "right": owner}});
        assert_eq!(
            where_expr(&both, "resource"),
            Some(vec![Place::Attr(
                "owner".into(),
                Literal::Entity(uid("T::User", "bob"))
            )])
        );
        let either = json!({"||": {"left": within, "right": both}});
        assert_eq!(where_expr(&either, "resource").map(|p| p.len()), Some(2));
        // a disjunction with a branch that does not say is unrestricted
        let open = json!({"||": {"left": within, "right": unsaid}});
        assert_eq!(where_expr(&open, "resource"), None);
        // about the other variable: says nothing of this one
        assert_eq!(where_expr(&owner, "principal"), None);
        let is = json!({"==": {"left": entity("T::User", "bob"), "right": {"Var": "principal"}}});
        assert_eq!(
            where_expr(&is, "principal"),
            Some(vec![Place::Is(uid("T::User", "bob"))])
        );
        let set = json!({"in": {"left": {"Var": "resource"},
                                 "right": {"Set": [entity("T::Project", "a"), entity("T::Project", "b")]}}});
        assert_eq!(
            where_expr(&set, "resource"),
            Some(vec![
                Place::In(uid("T::Project", "a")),
                Place::In(uid("T::Project", "b"))
            ])
        );
        assert_eq!(
            where_expr(&json!({"Value": false}), "resource"),
            Some(vec![])
        );
        // a comparison with a non-literal says nothing
        let dynamic = json!({"==": {"left": {".": {"left": {"Var": "resource"}, "attr": "owner"}},
                                      "right": {"Var": "context"}}});
        assert_eq!(where_expr(&dynamic, "resource"), None);
    }
}
