//! The route table: HTTP method + path → Cedar action, resource and context.
//!
//! ```text
//! <profile>.routes.toml ──tomlfile──▶ FileRoutes ──compile + check against the schema──▶ RouteTable
//! (method, decoded segments) ──RouteTable::find──▶ (Route, captures) | no route (404)
//! Route + Inputs (captures, query, claims, body) ──Route::resolve──▶ Resolved {
//!     resource uid, resource attributes (for resources absent from the directory), context }
//! ```
//!
//! File format (see the README for a full example):
//!
//! ```toml
//! namespace = "Thinger"            # qualifies every type and action below
//! principal = "User"               # entity type of token principals
//! [fields.owner]                   # reusable typed values
//! type = "entity"                  # string | long | bool | entity | set
//! entity = "User"
//! value = "{owner}"                # {capture} {query.x} {claim.x} {body.a.b}
//! [defaults]
//! context = ["token_kind"]         # fields every route puts in its context
//! [[route]]
//! method = "GET"                   # or ["GET", "POST"]
//! path = "/v1/users/{owner}/devices/{device}"
//! action = "ReadDeviceStatus"
//! resource = { type = "Device", id = "{owner}/{device}", attrs = ["owner"] }
//! context = ["device_resource"]
//! [entities.User]                  # directory rules, checked at load
//! parents = { Org = 1 }            # exactly one direct parent of type Org
//! values = { role = ["admin", "developer", "user"] }
//! ```
//!
//! Loading checks every route against the schema: the action exists and applies to the
//! principal and resource types, every context field is declared for the action with a
//! matching type, every required context attribute is filled, and resource attributes
//! cover what the resource type requires.

pub(crate) mod effect;
pub(crate) mod field;
pub(crate) mod trie;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde::Deserialize;

use self::field::{Field, FieldError, FieldType, FieldValue, Inputs, Source, Template};
use self::trie::{Found, PathTemplate, Segment, Trie};
use crate::config::problem::{Problem, Problems};
use crate::config::tomlfile::{self, TomlFile};
use crate::model::directory::EntityRule;
use crate::model::schema::{qualify, Attr, Catalog, Type};
use crate::request::BodyFormat;

// === file structs ===

#[derive(Debug, Deserialize)]
struct FileRoutes {
    #[serde(default)]
    namespace: String,
    principal: String,
    #[serde(default)]
    fields: BTreeMap<String, FileField>,
    #[serde(default)]
    defaults: FileDefaults,
    #[serde(default, rename = "route")]
    routes: Vec<FileRoute>,
    #[serde(default)]
    entities: BTreeMap<String, FileEntityRule>,
}

#[derive(Debug, Deserialize)]
struct FileEntityRule {
    #[serde(default)]
    parents: BTreeMap<String, usize>,
    #[serde(default)]
    values: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct FileDefaults {
    #[serde(default)]
    context: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct FileField {
    #[serde(rename = "type")]
    ty: String,
    value: String,
    entity: Option<String>,
    name: Option<String>,
    when: Option<String>,
    default: Option<toml::Value>,
    #[serde(default)]
    optional: bool,
    map: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Methods {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct FileRoute {
    name: Option<String>,
    method: Methods,
    path: String,
    action: String,
    resource: FileResource,
    #[serde(default)]
    context: Vec<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    reserved: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    auth: Auth,
    #[serde(default)]
    body: BodyFormat,
    /// Whether `[defaults] context` applies (a public route may have no principal to read
    /// them from).
    #[serde(default = "yes")]
    defaults: bool,
    #[serde(default)]
    effects: Vec<effect::FileEffect>,
    /// Whether a 2xx answer asks `[directory.sync]` to run now: what it changes lives in the
    /// platform's own permission model (project members), not in directory entries.
    #[serde(default)]
    resync: bool,
}

fn yes() -> bool {
    true
}

/// Who may call a route: `auth = "required" | "optional" | "none"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// A valid token (401 without one): today's and the default.
    #[default]
    Required,
    /// The token's account when a token is sent (an invalid one is still 401), else the
    /// anonymous principal.
    Optional,
    /// No token is read: the principal is `<Namespace>::Anonymous::"anonymous"`.
    None,
}

/// The id of the anonymous principal.
pub(crate) const ANONYMOUS_ID: &str = "anonymous";

#[derive(Debug, Deserialize)]
struct FileResource {
    #[serde(rename = "type")]
    ty: String,
    id: String,
    #[serde(default)]
    attrs: Vec<String>,
}

// === compiled table ===

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Stable name for logs and metrics (`GET /v1/users/{owner}/devices` unless named).
    pub name: String,
    /// The path template.
    pub path: PathTemplate,
    /// The Cedar action.
    pub action: EntityUid,
    /// The action's name in the schema catalog.
    pub action_name: String,
    /// The action as Cedar prints it (for decisions and logs, formatted once).
    pub action_label: String,
    /// Resource entity type.
    pub resource_type: EntityTypeName,
    resource_id: Field,
    resource_attrs: Vec<Arc<Field>>,
    context: Vec<Arc<Field>>,
    /// The body paths its fields read (`[]`: the whole body), deduplicated.
    body_paths: Vec<Vec<String>>,
    /// Whether the route is a WebSocket stream (the only routes that may upgrade).
    pub stream: bool,
    /// Whether its fields read the client certificate (`{tls.…}`).
    pub reads_tls: bool,
    /// Who may call it.
    pub auth: Auth,
    /// How a body it reads is parsed.
    pub body: BodyFormat,
    /// What a 2xx answer to it changes in the directory.
    effects: Vec<effect::Effect>,
    /// Whether a 2xx answer wakes `[directory.sync]`.
    pub resync: bool,
    /// Capture name → values it never takes, folded (`trie::fold`): a path where a capture
    /// takes one, in any case or with trailing dots, is no route (404).
    reserved: Vec<(String, BTreeSet<String>)>,
}

/// Copies the value at `path` in `from` into `to`, nesting objects as in `from`.
fn copy_path(
    from: &serde_json::Value,
    path: &[String],
    to: &mut serde_json::Map<String, serde_json::Value>,
) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(key) else {
        return;
    };
    if rest.is_empty() {
        to.insert(key.clone(), value.clone());
        return;
    }
    let slot = to
        .entry(key.clone())
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let Some(inner) = slot.as_object_mut() {
        copy_path(value, rest, inner);
    }
}

/// What a route computed for one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resolved {
    /// The resource.
    pub resource: EntityUid,
    /// Attributes of the resource, used when the directory does not have it (empty when the
    /// route does not build resources).
    pub resource_attrs: Vec<(String, FieldValue)>,
    /// The context record.
    pub context: Vec<(String, FieldValue)>,
}

impl Route {
    /// Whether the route's fields read the JSON body (so the body must be read first).
    pub fn needs_body(&self) -> bool {
        !self.body_paths.is_empty()
    }

    /// What of `body` the route reads, and nothing else: the values at its body paths, in
    /// objects nested as in the body (the whole body for `{body}`). A recorded request keeps
    /// this instead of the body, and a replay sends it back as the body.
    pub fn read_of(&self, body: &serde_json::Value) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for path in &self.body_paths {
            if path.is_empty() {
                return body.clone();
            }
            copy_path(body, path, &mut out);
        }
        serde_json::Value::Object(out)
    }
    /// Whether a capture took a value the route reserves (such a path is no route).
    fn takes_reserved(&self, captures: &[(&str, String)]) -> bool {
        self.reserved.iter().any(|(name, values)| {
            captures
                .iter()
                .any(|(n, v)| n == name && values.contains(&crate::request::uri::fold(v)))
        })
    }

    /// Whether a 2xx answer to this route changes the directory.
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    /// The directory changes a request on this route makes when the upstream answers 2xx.
    ///
    /// # Errors
    /// A value an effect reads is absent.
    pub fn effects(
        &self,
        inputs: &Inputs<'_>,
        resolved: &Resolved,
    ) -> Result<Vec<crate::model::directory::change::Change>, FieldError> {
        let mut changes = Vec::new();
        for effect in &self.effects {
            changes.extend(effect.resolve(inputs, &resolved.context)?);
        }
        Ok(changes)
    }

    /// Computes resource and context for a request.
    ///
    /// # Errors
    /// A field is missing or has a bad value.
    pub fn resolve(&self, inputs: &Inputs<'_>) -> Result<Resolved, FieldError> {
        let id = match self.resource_id.resolve(inputs)? {
            Some(FieldValue::Str(id)) => id,
            _ => return Err(FieldError::Missing(self.resource_id.name.clone())),
        };
        Ok(Resolved {
            resource: EntityUid::from_type_name_and_id(
                self.resource_type.clone(),
                EntityId::new(&id),
            ),
            resource_attrs: resolve_all(&self.resource_attrs, inputs)?,
            context: resolve_all(&self.context, inputs)?,
        })
    }
}

fn resolve_all(
    fields: &[Arc<Field>],
    inputs: &Inputs<'_>,
) -> Result<Vec<(String, FieldValue)>, FieldError> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        if let Some(v) = f.resolve(inputs)? {
            out.push((f.name.clone(), v));
        }
    }
    Ok(out)
}

/// What a question asked without a request may say of its context
/// ([`RouteTable::question_context`]).
#[derive(Debug, Default)]
pub struct QuestionContext {
    /// Values the gateway computes itself (literals, the principal's parents): a caller may
    /// not say otherwise.
    pub fixed: Vec<(String, FieldValue)>,
    /// Values a user's token gives by default (claim defaults): a caller may say otherwise.
    pub defaults: Vec<(String, FieldValue)>,
    /// For each route, the fields it reads from the request and needs: a caller must
    /// supply those of one route at least.
    pub required: Vec<BTreeSet<String>>,
    /// The values a mapped field takes.
    pub domains: BTreeMap<String, BTreeSet<String>>,
}

impl RouteTable {
    /// Whether a route of `action_name` may be called without an account (`auth` `none` or
    /// `optional`): only then may the anonymous principal ask for it.
    pub fn takes_anonymous(&self, action_name: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.action_name == action_name && r.auth != Auth::Required)
    }
}

impl QuestionContext {
    fn has(&self, name: &str) -> bool {
        self.fixed
            .iter()
            .chain(&self.defaults)
            .any(|(n, _)| n == name)
    }

    /// What one context field of the last route tells.
    fn add(&mut self, field: &Field, inputs: &Inputs<'_>) {
        let name = &field.name;
        let mut from_request = false;
        let mut from_claims = false;
        for source in field.sources() {
            match source {
                Source::Claim(_) => from_claims = true,
                Source::PrincipalParent(_) => {}
                Source::Capture(_) | Source::Query(_) | Source::Body(_) | Source::Tls(_) => {
                    from_request = true;
                }
            }
        }
        if let Some(map) = &field.map {
            let domain = self.domains.entry(name.clone()).or_default();
            domain.extend(map.values().cloned());
        }
        if from_request {
            if let (false, None, Some(route)) =
                (field.optional, &field.default, self.required.last_mut())
            {
                route.insert(name.clone());
            }
            return;
        }
        let Some(value) = field.resolve(inputs).ok().flatten() else {
            return;
        };
        if self.has(name) {
            return;
        }
        match from_claims {
            true => self.defaults.push((name.clone(), value)),
            false => self.fixed.push((name.clone(), value)),
        }
    }

    /// The fields to ask for when no route has all it needs (`None`: one has, or the
    /// action has no route).
    pub fn missing(&self, given: &dyn Fn(&str) -> bool) -> Option<Vec<String>> {
        let unmet: Vec<Vec<String>> = self
            .required
            .iter()
            .map(|r| r.iter().filter(|f| !given(f)).cloned().collect())
            .collect();
        if unmet.is_empty() || unmet.iter().any(Vec::is_empty) {
            return None;
        }
        unmet.into_iter().min_by_key(Vec::len)
    }
}

/// The compiled route table of a profile.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Entity type of principals.
    pub principal_type: EntityTypeName,
    /// `<Namespace>::Anonymous`, when a route is public (`auth` `none` or `optional`).
    pub anonymous_type: Option<EntityTypeName>,
    /// Rules the directory's entities must follow (`[entities.<Type>]`).
    pub rules: Vec<EntityRule>,
    /// Findings that do not stop loading (`validate` prints them).
    pub warnings: Vec<Problem>,
    routes: Vec<Route>,
    trie: Trie,
    /// The methods of the routes with write-through effects (so most requests need no
    /// second look to know they change nothing).
    mutating: Vec<http::Method>,
}

impl RouteTable {
    /// Loads a route file and checks it against the schema catalog.
    ///
    /// # Errors
    /// Every problem of every route, with its line.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<(RouteTable, String), Problems> {
        let text = crate::config::problem::read_text(path)?;
        let parsed: tomlfile::Parsed<FileRoutes> = tomlfile::parse(path, &text)?;
        let mut compiler = Compiler::new(&parsed.file, catalog, &parsed.value.namespace);
        compiler.problems.extend(parsed.unknown);
        let table = compiler.compile(&parsed.value)?;
        Ok((table, text))
    }

    /// The route for a method and decoded path, with its captures.
    pub fn find<'t>(
        &'t self,
        method: &http::Method,
        segments: &[Cow<'_, str>],
    ) -> Option<(&'t Route, Vec<(&'t str, String)>)> {
        match self.trie.find(method, segments) {
            Found::Route(i) => {
                let route = &self.routes[i];
                let captures = trie::bind(&route.path, segments);
                (!route.takes_reserved(&captures)).then_some((route, captures))
            }
            Found::MethodNotRouted | Found::NoPath => None,
        }
    }

    /// Whether a request's route has write-through effects.
    pub fn mutates(&self, method: &http::Method, path: &str) -> bool {
        self.mutating.contains(method)
            && crate::request::uri::segments(path)
                .ok()
                .and_then(|s| self.find(method, &s))
                .is_some_and(|(route, _)| route.has_effects())
    }

    /// The anonymous principal, when a route is public.
    pub fn anonymous(&self) -> Option<EntityUid> {
        let ty = self.anonymous_type.clone()?;
        Some(EntityUid::from_type_name_and_id(
            ty,
            EntityId::new(ANONYMOUS_ID),
        ))
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// What the routes of `action_name` tell about its context, for a question asked without
    /// a request (the decision API): what the gateway computes itself, what a caller may
    /// only default, and what each route needs a caller to supply.
    pub fn question_context(
        &self,
        action_name: &str,
        principal_parents: &dyn Fn() -> Vec<EntityUid>,
    ) -> QuestionContext {
        let claims = crate::authn::Claims::new();
        let inputs = Inputs {
            captures: &[],
            query: crate::request::uri::Query::new(None),
            claims: &claims,
            body: None,
            principal_parents,
            tls: None,
        };
        let mut out = QuestionContext::default();
        let routes = self.routes.iter().filter(|r| r.action_name == action_name);
        for route in routes {
            out.required.push(BTreeSet::new());
            for field in &route.context {
                out.add(field, &inputs);
            }
        }
        out
    }
}

/// Captures that take a literal which a route under a sibling API version (`/v1`, `/v2`, …)
/// has at the same place
/// (`/v2/…/devices/{device}/{resource}` taking the `stats` of `/v1/…/devices/{device}/stats`):
/// the upstream likely runs another operation there than the one the capture authorizes.
/// A literal route of the capture's own version, or `reserved`, settles it.
fn shadowed_literals(routes: &[Route]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, route) in routes.iter().enumerate() {
        let segments = &route.path.segments;
        let Some(version) = version_of(route) else {
            continue;
        };
        for (pos, segment) in segments.iter().enumerate().skip(1) {
            let Segment::Capture(name) = segment else {
                continue;
            };
            for other in routes {
                let Some(literal) = literal_at(other, pos, &segments[1..pos]) else {
                    continue;
                };
                let sibling = version_of(other).is_some_and(|v| v != version);
                if !sibling
                    || route.takes_reserved(&[(name.as_str(), literal.to_string())])
                    || routes.iter().any(|r| {
                        version_of(r) == Some(version)
                            && literal_at(r, pos, &segments[1..pos]) == Some(literal)
                    })
                    || !seen.insert((index, literal.to_string()))
                {
                    continue;
                }
                out.push((
                    index,
                    format!(
                        "`{{{name}}}` of route `{}` takes `{literal}`, a literal of route `{}`; \
                         add a literal route or `reserved = {{ {name} = [\"{literal}\"] }}`",
                        route.name, other.name
                    ),
                ));
            }
        }
    }
    out
}

/// `reserved` values, folded as the matcher compares them.
fn folded_reserved(reserved: &BTreeMap<String, Vec<String>>) -> Vec<(String, BTreeSet<String>)> {
    reserved
        .iter()
        .map(|(name, values)| {
            let folded = values
                .iter()
                .map(|v| crate::request::uri::fold(v))
                .collect();
            (name.clone(), folded)
        })
        .collect()
}

/// The API version a route's path starts with (`/v2/…`: `v2`).
fn version_of(route: &Route) -> Option<&str> {
    match route.path.segments.first() {
        Some(Segment::Literal(v))
            if v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(v)
        }
        _ => None,
    }
}

/// The literal `route` has at segment `pos`, when the segments between the version and it
/// have the shape of `between`.
fn literal_at<'r>(route: &'r Route, pos: usize, between: &[Segment]) -> Option<&'r str> {
    let segments = &route.path.segments;
    let same_shape = segments.get(1..pos).is_some_and(|mine| {
        mine.iter().zip(between).all(|pair| match pair {
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Capture(_), Segment::Capture(_)) => true,
            _ => false,
        })
    });
    match segments.get(pos) {
        Some(Segment::Literal(l)) if same_shape => Some(l),
        _ => None,
    }
}

/// Compiles file structs, collecting problems.
struct Compiler<'a> {
    source: &'a TomlFile,
    catalog: &'a Catalog,
    namespace: &'a str,
    problems: Problems,
}

impl<'a> Compiler<'a> {
    fn new(source: &'a TomlFile, catalog: &'a Catalog, namespace: &'a str) -> Self {
        Self {
            source,
            catalog,
            namespace,
            problems: Problems::new(),
        }
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(self.source.problem(key, message));
    }

    fn entity_type(&mut self, key: &str, name: &str) -> Option<EntityTypeName> {
        let qualified = qualify(self.namespace, name);
        if !self.catalog.has_entity_type(&qualified) {
            self.problem(
                key,
                format!("entity type `{qualified}` is not in the schema"),
            );
            return None;
        }
        EntityTypeName::from_str(&qualified).ok()
    }

    fn compile(mut self, file: &FileRoutes) -> Result<RouteTable, Problems> {
        let principal_type = self.entity_type("principal", &file.principal);
        let anonymous_type = file
            .routes
            .iter()
            .position(|r| r.auth != Auth::Required)
            .and_then(|i| self.anonymous_type(&format!("route.{i}.auth")));
        let mut fields = BTreeMap::new();
        for (key, f) in &file.fields {
            if let Some(field) = self.field(key, f) {
                fields.insert(key.clone(), Arc::new(field));
            }
        }
        let mut routes = Vec::new();
        let mut keys = Vec::new();
        let mut trie = Trie::default();
        let mut mutating: Vec<http::Method> = Vec::new();
        for (i, r) in file.routes.iter().enumerate() {
            let key = format!("route.{i}");
            let Some((route, methods)) = self.route(
                &key,
                r,
                &fields,
                &file.defaults.context,
                [principal_type.as_ref(), anonymous_type.as_ref()],
            ) else {
                continue;
            };
            if let Err(first) = trie.insert(&route.path, &methods, routes.len()) {
                let first: &Route = &routes[first];
                self.problem(
                    &key,
                    format!(
                        "route `{}` has the same path and method as route `{}`",
                        route.name, first.name
                    ),
                );
                continue;
            }
            if route.has_effects() {
                for m in &methods {
                    if !mutating.contains(m) {
                        mutating.push(m.clone());
                    }
                }
            }
            routes.push(route);
            keys.push(i);
        }
        let rules = file
            .entities
            .iter()
            .filter_map(|(ty, r)| self.entity_rule(ty, r))
            .collect();
        let warnings = shadowed_literals(&routes)
            .into_iter()
            .map(|(i, message)| self.source.problem(&format!("route.{}", keys[i]), message))
            .collect();
        match principal_type {
            Some(principal_type) if self.problems.is_empty() => Ok(RouteTable {
                principal_type,
                anonymous_type,
                rules,
                warnings,
                routes,
                trie,
                mutating,
            }),
            _ => Err(self.problems),
        }
    }

    /// `<Namespace>::Anonymous`, which a public route's principal is.
    fn anonymous_type(&mut self, key: &str) -> Option<EntityTypeName> {
        let qualified = qualify(self.namespace, "Anonymous");
        if !self.catalog.has_entity_type(&qualified) {
            self.problem(
                key,
                format!(
                    "a public route (`auth` `none` or `optional`) needs entity type \
                     `{qualified}` in the schema (`entity Anonymous;`)"
                ),
            );
            return None;
        }
        EntityTypeName::from_str(&qualified).ok()
    }

    fn entity_rule(&mut self, ty: &str, rule: &FileEntityRule) -> Option<EntityRule> {
        let key = format!("entities.{ty}");
        let entity_type = self.entity_type(&key, ty)?.to_string();
        let mut parents = Vec::new();
        for (parent, n) in &rule.parents {
            let parent = self.entity_type(&format!("{key}.parents.{parent}"), parent)?;
            parents.push((parent.to_string(), *n));
        }
        let values = rule
            .values
            .iter()
            .map(|(a, v)| (a.clone(), v.clone()))
            .collect();
        Some(EntityRule {
            entity_type,
            parents,
            values,
        })
    }

    fn field(&mut self, key: &str, f: &FileField) -> Option<Field> {
        let at = format!("fields.{key}");
        let name = f.name.clone().unwrap_or_else(|| key.to_string());
        let ty = match (f.ty.as_str(), &f.entity) {
            ("string", None) => FieldType::String,
            ("long", None) => FieldType::Long,
            ("bool", None) => FieldType::Bool,
            ("set", None) => FieldType::Set,
            ("entity", Some(t)) => FieldType::Entity(self.entity_type(&format!("{at}.entity"), t)?),
            ("entity", None) => {
                self.problem(&at, "an `entity` field needs `entity = \"<type>\"`");
                return None;
            }
            (_, Some(_)) if ["string", "long", "bool", "set"].contains(&f.ty.as_str()) => {
                self.problem(
                    &format!("{at}.entity"),
                    "only `entity` fields take an entity type",
                );
                return None;
            }
            (other, _) => {
                self.problem(
                    &format!("{at}.type"),
                    format!("unknown field type `{other}` (string, long, bool, entity, set)"),
                );
                return None;
            }
        };
        let value = match Template::parse(&f.value) {
            Ok(t) => t,
            Err(m) => {
                self.problem(&format!("{at}.value"), m);
                return None;
            }
        };
        let when = match f.when.as_deref().map(Template::parse) {
            None => None,
            Some(Ok(t)) if t.sources().count() == 1 && t.sources().next().is_some() => {
                t.sources().next().cloned()
            }
            Some(_) => {
                self.problem(
                    &format!("{at}.when"),
                    "`when` must be a single placeholder like `{claim.dev}`",
                );
                return None;
            }
        };
        if f.map.is_some() && ty != FieldType::String {
            self.problem(&format!("{at}.map"), "only `string` fields can be mapped");
        }
        let default = match &f.default {
            Some(v) => match default_value(&ty, v) {
                Some(d) => Some(d),
                None => {
                    self.problem(
                        &format!("{at}.default"),
                        format!("default does not fit type `{}`", f.ty),
                    );
                    return None;
                }
            },
            None => None,
        };
        Some(Field {
            name,
            ty,
            value,
            when,
            default,
            optional: f.optional,
            map: f
                .map
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        })
    }

    fn route(
        &mut self,
        key: &str,
        r: &FileRoute,
        fields: &BTreeMap<String, Arc<Field>>,
        defaults: &[String],
        [user, anonymous]: [Option<&EntityTypeName>; 2],
    ) -> Option<(Route, Vec<http::Method>)> {
        let before = self.problems.iter().count();
        let methods = self.methods(key, &r.method);
        let path = PathTemplate::parse(&r.path)
            .map_err(|m| self.problem(&format!("{key}.path"), m))
            .ok();
        let Some(action) = self.catalog.actions.get(&r.action) else {
            self.problem(
                &format!("{key}.action"),
                format!("action `{}` is not in the schema", r.action),
            );
            return None;
        };
        let resource_type = self.entity_type(&format!("{key}.resource.type"), &r.resource.ty);
        let principals = match r.auth {
            Auth::Required => vec![user],
            Auth::Optional => vec![user, anonymous],
            Auth::None => vec![anonymous],
        };
        for principal in principals {
            self.check_applies(key, r, action, principal, resource_type.as_ref());
        }
        let resource_id = Template::parse(&r.resource.id)
            .map_err(|m| self.problem(&format!("{key}.resource.id"), m))
            .ok();
        let attrs = self.pick(&format!("{key}.resource.attrs"), &r.resource.attrs, fields);
        let defaults = if r.defaults { defaults } else { &[] };
        let names: BTreeSet<&String> = defaults.iter().chain(&r.context).collect();
        let names: Vec<String> = names.into_iter().cloned().collect();
        let context = self.pick(&format!("{key}.context"), &names, fields);
        let (path, resource_type, resource_id) = (path?, resource_type?, resource_id?);
        let effects = self.effects(key, r, &context);
        let mut sources: Vec<&Source> = resource_id.sources().collect();
        sources.extend(attrs.iter().chain(&context).flat_map(|f| f.sources()));
        sources.extend(
            effects
                .iter()
                .flat_map(|e| e.templates())
                .flat_map(|t| t.sources()),
        );
        self.check_captures(key, r, &path, &sources, &methods);
        let mut body_paths: Vec<Vec<String>> = sources
            .iter()
            .filter_map(|s| match s {
                Source::Body(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        body_paths.sort();
        body_paths.dedup();
        let needs_body = !body_paths.is_empty();
        let reads_tls = sources.iter().any(|s| matches!(s, Source::Tls(_)));
        let whole = sources
            .iter()
            .any(|s| matches!(s, Source::Body(p) if p.is_empty()));
        let parts = sources
            .iter()
            .any(|s| matches!(s, Source::Body(p) if !p.is_empty()));
        match (r.body, whole, parts) {
            (BodyFormat::JsonArray, _, true) => self.problem(
                &format!("{key}.body"),
                "a `json-array` route reads its body whole, as `{body}`, never `{body.x}`",
            ),
            (BodyFormat::Json | BodyFormat::Form, true, _) => self.problem(
                &format!("{key}.body"),
                "`{body}` (the whole body) is for a `body = \"json-array\"` route",
            ),
            _ => {}
        }
        if r.body != BodyFormat::Json && !needs_body {
            self.problem(
                &format!("{key}.body"),
                "`body` is only for a route whose fields read the body (`{body.x}`)",
            );
        }
        self.check_records(key, r, action, &resource_type, &attrs, &context);
        if self.problems.iter().count() != before {
            return None;
        }
        let name = r.name.clone().unwrap_or_else(|| {
            let m: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
            format!("{} {}", m.join(","), r.path)
        });
        let route = Route {
            name,
            path,
            action: action.uid.clone(),
            action_name: r.action.clone(),
            action_label: action.uid.to_string(),
            resource_type,
            resource_id: Field {
                name: "resource id".into(),
                ty: FieldType::String,
                value: resource_id,
                when: None,
                default: None,
                optional: false,
                map: None,
            },
            resource_attrs: attrs,
            context,
            body_paths,
            stream: r.stream,
            reads_tls,
            resync: r.resync,
            auth: r.auth,
            body: r.body,
            effects,
            reserved: folded_reserved(&r.reserved),
        };
        Some((route, methods))
    }

    /// Compiles a route's effects; a `{field.x}` must name a field of its context.
    fn effects(&mut self, key: &str, r: &FileRoute, context: &[Arc<Field>]) -> Vec<effect::Effect> {
        let mut out = Vec::new();
        for (i, f) in r.effects.iter().enumerate() {
            let at = format!("{key}.effects.{i}");
            match effect::Effect::compile(f, self.catalog, self.namespace) {
                Ok(e) => {
                    for field in e.fields() {
                        if !context.iter().any(|c| c.name == field) {
                            self.problem(
                                &at,
                                format!("`{{field.{field}}}` is not in the route's context"),
                            );
                        }
                    }
                    out.push(e);
                }
                Err(problems) => {
                    for m in problems {
                        self.problem(&at, m);
                    }
                }
            }
        }
        out
    }

    /// The action applies to the table's principal type and the route's resource type.
    fn check_applies(
        &mut self,
        key: &str,
        r: &FileRoute,
        action: &crate::model::schema::Action,
        principal: Option<&EntityTypeName>,
        resource_type: Option<&EntityTypeName>,
    ) {
        if let Some(p) = principal.filter(|p| !action.principals.contains(&p.to_string())) {
            self.problem(
                &format!("{key}.action"),
                format!(
                    "action `{}` does not apply to principal type `{p}`",
                    r.action
                ),
            );
        }
        if let Some(t) = resource_type.filter(|t| !action.resources.contains(&t.to_string())) {
            self.problem(
                &format!("{key}.resource.type"),
                format!(
                    "action `{}` does not apply to resource type `{t}`",
                    r.action
                ),
            );
        }
    }

    /// Every capture the route's values read is in its path, `reserved` names captures of
    /// the path, and a stream route is `GET` only.
    fn check_captures(
        &mut self,
        key: &str,
        r: &FileRoute,
        path: &PathTemplate,
        sources: &[&Source],
        methods: &[http::Method],
    ) {
        let captures: BTreeSet<&str> = path.captures().collect();
        for s in sources {
            if let Source::Capture(c) = s {
                if !captures.contains(c.as_str()) {
                    self.problem(
                        &format!("{key}.path"),
                        format!("`{{{c}}}` is used by the route but not captured by its path"),
                    );
                }
            }
        }
        if r.stream && methods != [http::Method::GET] {
            self.problem(
                &format!("{key}.stream"),
                "a stream route takes only `GET` (WebSocket upgrades are GET requests)",
            );
        }
        for name in r.reserved.keys().filter(|n| !captures.contains(n.as_str())) {
            self.problem(
                &format!("{key}.reserved"),
                format!("`{name}` is not a capture of the route's path"),
            );
        }
    }

    /// The resource attributes fit the resource type (when the route builds resources) and
    /// the context fields fill the action's context.
    fn check_records(
        &mut self,
        key: &str,
        r: &FileRoute,
        action: &crate::model::schema::Action,
        resource_type: &EntityTypeName,
        attrs: &[Arc<Field>],
        context: &[Arc<Field>],
    ) {
        let type_attrs = self
            .catalog
            .entity_types
            .get(&resource_type.to_string())
            .cloned()
            .unwrap_or_default();
        // A route that names no attributes never builds its resource: one absent from the
        // directory stays absent, as it would be in a full entity store.
        if !attrs.is_empty() {
            self.check_record(
                &format!("{key}.resource.attrs"),
                &format!("resource type `{resource_type}`"),
                &type_attrs,
                attrs,
            );
        }
        self.check_record(
            &format!("{key}.context"),
            &format!("the context of `{}`", r.action),
            &action.context,
            context,
        );
    }

    fn methods(&mut self, key: &str, m: &Methods) -> Vec<http::Method> {
        let names: Vec<&String> = match m {
            Methods::One(one) => vec![one],
            Methods::Many(many) => many.iter().collect(),
        };
        let mut out = Vec::new();
        for name in names {
            match http::Method::from_bytes(name.as_bytes()) {
                Ok(m) if name.chars().all(|c| c.is_ascii_uppercase()) => out.push(m),
                _ => self.problem(
                    &format!("{key}.method"),
                    format!("`{name}` is not an HTTP method"),
                ),
            }
        }
        if out.is_empty() {
            self.problem(
                &format!("{key}.method"),
                "a route needs at least one method",
            );
        }
        out
    }

    fn pick(
        &mut self,
        key: &str,
        names: &[String],
        fields: &BTreeMap<String, Arc<Field>>,
    ) -> Vec<Arc<Field>> {
        let mut out = Vec::new();
        for n in names {
            match fields.get(n) {
                Some(f) => out.push(f.clone()),
                None => self.problem(key, format!("field `{n}` is not defined under [fields]")),
            }
        }
        out
    }

    /// Checks that `fields` fill the record `declared` (context or entity attributes).
    fn check_record(
        &mut self,
        key: &str,
        what: &str,
        declared: &std::collections::HashMap<String, Attr>,
        fields: &[Arc<Field>],
    ) {
        for f in fields {
            match declared.get(&f.name) {
                None => self.problem(key, format!("`{}` is not declared in {what}", f.name)),
                Some(attr) if !fits(&f.ty, &attr.ty) => self.problem(
                    key,
                    format!(
                        "`{}` is a {} here but {what} declares it {:?}",
                        f.name,
                        describe(&f.ty),
                        attr.ty
                    ),
                ),
                Some(attr) if attr.required && f.optional && f.default.is_none() => self.problem(
                    key,
                    format!("`{}` is optional here but required in {what}", f.name),
                ),
                Some(_) => {}
            }
        }
        for (name, attr) in declared {
            if attr.required && !fields.iter().any(|f| &f.name == name) {
                self.problem(
                    key,
                    format!("{what} requires `{name}`, which the route does not fill"),
                );
            }
        }
    }
}

fn fits(field: &FieldType, declared: &Type) -> bool {
    match (field, declared) {
        (FieldType::String, Type::String)
        | (FieldType::Long, Type::Long)
        | (FieldType::Bool, Type::Bool) => true,
        (FieldType::Entity(t), Type::Entity(d)) => &t.to_string() == d,
        (FieldType::Set, Type::Set(inner)) => **inner == Type::String,
        _ => false,
    }
}

fn describe(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::String => "string",
        FieldType::Long => "long",
        FieldType::Bool => "bool",
        FieldType::Entity(_) => "entity",
        FieldType::Set => "set",
    }
}

fn default_value(ty: &FieldType, v: &toml::Value) -> Option<FieldValue> {
    Some(match (ty, v) {
        (FieldType::String, toml::Value::String(s)) => FieldValue::Str(s.clone()),
        (FieldType::Long, toml::Value::Integer(n)) => FieldValue::Long(*n),
        (FieldType::Bool, toml::Value::Boolean(b)) => FieldValue::Bool(*b),
        (FieldType::Entity(t), toml::Value::String(id)) => FieldValue::Entity(
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id)),
        ),
        (FieldType::Set, toml::Value::Array(items)) => FieldValue::Set(
            items
                .iter()
                .map(|i| i.as_str().map(String::from))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
