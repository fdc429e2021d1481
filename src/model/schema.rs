//! The Cedar schema, and what iotgate needs to know of it beyond what Cedar exposes.
//!
//! ```text
//! *.cedarschema ──Schema::from_cedarschema_str──▶ Schema (for validation and requests)
//!               ──SchemaFragment → JSON ──▶ Catalog: actions (principal / resource types,
//!                                           context attributes), entity types (attributes),
//!                                           action entities with their groups
//! ```
//!
//! The catalog lets the route loader check, before anything serves, that every route
//! names a real action and resource type and fills context fields the action declares.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Entity, EntityUid, Schema, SchemaFragment};
use serde_json::{Map, Value};

use crate::config::diagnostic;
use crate::config::problem::{read_text, Problem, Problems};

/// A type as the schema declares it (enough to check route mappings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// `String`.
    String,
    /// `Long`.
    Long,
    /// `Bool`.
    Bool,
    /// An entity type, fully qualified (`Thinger::User`).
    Entity(String),
    /// `Set<T>`.
    Set(Box<Type>),
    /// A record.
    Record(HashMap<String, Attr>),
    /// An extension type (`ipaddr`, `decimal`, `datetime`, ...).
    Extension(String),
}

/// An attribute of a record or an entity type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Its type.
    pub ty: Type,
    /// Whether it must be present.
    pub required: bool,
}

/// What an action applies to.
#[derive(Debug, Clone)]
pub struct Action {
    /// `Ns::Action::"Name"`.
    pub uid: EntityUid,
    /// Allowed principal types (qualified).
    pub principals: Vec<String>,
    /// Allowed resource types (qualified).
    pub resources: Vec<String>,
    /// Context attributes.
    pub context: HashMap<String, Attr>,
    /// The action entity and all its groups, for per-request entity slices.
    pub entities: Vec<Entity>,
    /// The same, as core entities (cloned into every slice).
    pub core_entities: Vec<crate::model::cedar_core::CoreEntity>,
    /// The uids of the action and all its groups.
    pub entity_uids: Vec<EntityUid>,
}

/// The loaded schema and its catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The Cedar schema.
    pub schema: Schema,
    /// Actions by name (`ListDevices`); the same name in two namespaces keeps the last.
    pub actions: HashMap<String, Action>,
    /// Entity types by qualified name, with their attributes.
    pub entity_types: HashMap<String, HashMap<String, Attr>>,
    /// Entity types by qualified name, with the types their parents may have.
    pub member_of: HashMap<String, Vec<String>>,
}

impl Catalog {
    /// Loads a `.cedarschema` file.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid schema.
    pub fn load(path: &Path) -> Result<(Catalog, String), Problems> {
        let text = read_text(path)?;
        let catalog = Self::parse(path, &text)?;
        Ok((catalog, text))
    }

    /// Parses schema text (`path` is for messages).
    ///
    /// # Errors
    /// The text is not a valid schema.
    pub fn parse(path: &Path, text: &str) -> Result<Catalog, Problems> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(text).map_err(|e| diagnostic::problems(path, text, &e))?;
        let (fragment, _) = SchemaFragment::from_cedarschema_str(text)
            .map_err(|e| diagnostic::problems(path, text, &e))?;
        let json = fragment
            .to_json_value()
            .map_err(|e| Problem::in_file(path, format!("cannot read schema: {e}")))?;
        let action_entities = schema
            .action_entities()
            .map_err(|e| Problem::in_file(path, format!("bad action hierarchy: {e}")))?;
        let mut reader = Reader::new(&json);
        reader.read();
        let mut actions = HashMap::new();
        for (name, mut action) in reader.actions {
            action.entities = std::iter::once(action.uid.clone())
                .chain(
                    action_entities
                        .ancestors(&action.uid)
                        .into_iter()
                        .flatten()
                        .cloned(),
                )
                .filter_map(|uid| action_entities.get(&uid).cloned())
                .collect();
            action.core_entities = action
                .entities
                .iter()
                .map(crate::model::cedar_core::from_public)
                .collect();
            action.entity_uids = action.entities.iter().map(Entity::uid).collect();
            actions.insert(name, action);
        }
        Ok(Catalog {
            schema,
            actions,
            entity_types: reader.entity_types,
            member_of: reader.member_of,
        })
    }

    /// Whether an entity type is declared.
    pub fn has_entity_type(&self, name: &str) -> bool {
        self.entity_types.contains_key(name)
    }
}

/// Walks the JSON form of the schema.
struct Reader<'a> {
    json: &'a Value,
    actions: HashMap<String, Action>,
    entity_types: HashMap<String, HashMap<String, Attr>>,
    member_of: HashMap<String, Vec<String>>,
}

impl<'a> Reader<'a> {
    fn new(json: &'a Value) -> Self {
        Self {
            json,
            actions: HashMap::new(),
            entity_types: HashMap::new(),
            member_of: HashMap::new(),
        }
    }

    fn read(&mut self) {
        let Some(namespaces) = self.json.as_object() else {
            return;
        };
        for (ns, body) in namespaces {
            for (name, def) in object(body, "entityTypes") {
                let attrs = match def.get("shape") {
                    Some(shape) => self.record_attrs(ns, shape),
                    None => HashMap::new(),
                };
                let parents = type_names(ns, def.get("memberOfTypes"));
                self.member_of.insert(qualify(ns, name), parents);
                self.entity_types.insert(qualify(ns, name), attrs);
            }
        }
        for (ns, body) in namespaces {
            for (name, def) in object(body, "actions") {
                if let Some(action) = self.action(ns, name, def) {
                    self.actions.insert(name.clone(), action);
                }
            }
        }
    }

    fn action(&self, ns: &str, name: &str, def: &Value) -> Option<Action> {
        let uid = EntityUid::from_str(&format!(
            "{}Action::{}",
            if ns.is_empty() {
                String::new()
            } else {
                format!("{ns}::")
            },
            Value::String(name.to_string())
        ))
        .ok()?;
        let applies = def.get("appliesTo");
        let types = |key: &str| -> Vec<String> { type_names(ns, applies.and_then(|a| a.get(key))) };
        let context = match applies.and_then(|a| a.get("context")) {
            Some(ctx) => self.record_attrs(ns, ctx),
            None => HashMap::new(),
        };
        Some(Action {
            uid,
            principals: types("principalTypes"),
            resources: types("resourceTypes"),
            context,
            entities: Vec::new(),
            core_entities: Vec::new(),
            entity_uids: Vec::new(),
        })
    }

    fn record_attrs(&self, ns: &str, ty: &Value) -> HashMap<String, Attr> {
        match self.ty(ns, ty, 0) {
            Some(Type::Record(attrs)) => attrs,
            _ => HashMap::new(),
        }
    }

    fn ty(&self, ns: &str, ty: &Value, depth: usize) -> Option<Type> {
        if depth > 32 {
            return None;
        }
        let kind = ty.get("type")?.as_str()?;
        let name = ty.get("name").and_then(Value::as_str);
        Some(match kind {
            "String" => Type::String,
            "Long" => Type::Long,
            "Boolean" | "Bool" => Type::Bool,
            "Set" => Type::Set(Box::new(self.ty(ns, ty.get("element")?, depth + 1)?)),
            "Record" => Type::Record(
                object(ty, "attributes")
                    .map(|(k, v)| {
                        let required = v.get("required").and_then(Value::as_bool).unwrap_or(true);
                        self.ty(ns, v, depth + 1)
                            .map(|ty| (k.clone(), Attr { ty, required }))
                    })
                    .collect::<Option<_>>()?,
            ),
            "Entity" => Type::Entity(qualify(ns, name?)),
            "Extension" => Type::Extension(name?.to_string()),
            "EntityOrCommon" => self.named(ns, name?, depth)?,
            other => self.named(ns, other, depth)?,
        })
    }

    /// A name that may be a common type, an entity type, or a primitive.
    fn named(&self, ns: &str, name: &str, depth: usize) -> Option<Type> {
        let (common_ns, local) = match name.rsplit_once("::") {
            Some((n, l)) => (n, l),
            None => (ns, name),
        };
        if let Some(common) = self
            .json
            .get(common_ns)
            .and_then(|b| b.get("commonTypes"))
            .and_then(|c| c.get(local))
        {
            return self.ty(common_ns, common, depth + 1);
        }
        if self.entity_types.contains_key(&qualify(ns, name))
            || self
                .json
                .get(common_ns)
                .and_then(|b| b.get("entityTypes"))
                .and_then(|e| e.get(local))
                .is_some()
        {
            return Some(Type::Entity(qualify(common_ns, local)));
        }
        match local {
            "String" => Some(Type::String),
            "Long" => Some(Type::Long),
            "Bool" | "Boolean" => Some(Type::Bool),
            "ipaddr" | "decimal" | "datetime" | "duration" => {
                Some(Type::Extension(local.to_string()))
            }
            _ => None,
        }
    }
}

fn object<'v>(value: &'v Value, key: &str) -> impl Iterator<Item = (&'v String, &'v Value)> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    value
        .get(key)
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
        .iter()
}

/// The qualified names of a JSON array of type names (empty when absent).
fn type_names(ns: &str, list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .map(|t| qualify(ns, t))
                .collect()
        })
        .unwrap_or_default()
}

/// `Ns::Name` unless `name` is already qualified or the namespace is empty.
pub(crate) fn qualify(ns: &str, name: &str) -> String {
    if ns.is_empty() || name.contains("::") {
        name.to_string()
    } else {
        format!("{ns}::{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
namespace Shop {
  type Req = { kind: String, device?: Device, tags?: Set<String> };
  entity Org in [Org];
  entity User in [Org] = { role: String, enabled: Bool, manager?: User };
  entity Device in [Org] = { owner: User, level: Long };
  action view, modify;
  action read in [view] appliesTo { principal: User, resource: [Device, Org], context: Req };
  action write in [modify] appliesTo { principal: [User], resource: Device };
}
"#;

    #[test]
    fn catalog_reads_actions_types_and_common_types() {
        let c = Catalog::parse(Path::new("s.cedarschema"), SCHEMA).unwrap();
        let read = &c.actions["read"];
        assert_eq!(read.uid.to_string(), r#"Shop::Action::"read""#);
        assert_eq!(read.principals, vec!["Shop::User"]);
        assert_eq!(read.resources, vec!["Shop::Device", "Shop::Org"]);
        assert_eq!(
            read.context["kind"],
            Attr {
                ty: Type::String,
                required: true
            }
        );
        assert_eq!(
            read.context["device"].ty,
            Type::Entity("Shop::Device".into())
        );
        assert!(!read.context["device"].required);
        assert_eq!(read.context["tags"].ty, Type::Set(Box::new(Type::String)));
        let ids: Vec<String> = read.entities.iter().map(|e| e.uid().to_string()).collect();
        assert_eq!(
            ids,
            vec![r#"Shop::Action::"read""#, r#"Shop::Action::"view""#]
        );
        assert!(c.actions["write"].context.is_empty());
        let user = &c.entity_types["Shop::User"];
        assert_eq!(user["manager"].ty, Type::Entity("Shop::User".into()));
        assert_eq!(c.entity_types["Shop::Device"]["level"].ty, Type::Long);
        assert!(c.has_entity_type("Shop::Org"));
    }

    #[test]
    fn schema_errors_have_lines() {
        let bad = "namespace X {\n  entity A;\n  action a appliesTo { principal: Nope, resource: A };\n}\n";
        let errs = Catalog::parse(Path::new("s.cedarschema"), bad).unwrap_err();
        let first = errs.iter().next().unwrap().to_string();
        assert!(first.contains("Nope"), "{first}");
        let syntax = Catalog::parse(
            Path::new("s.cedarschema"),
            "namespace X {\n entity A\n oops }",
        )
        .unwrap_err();
        let first = syntax.iter().next().unwrap().to_string();
        assert!(first.starts_with("s.cedarschema:3:"), "{first}");
    }
}
