//! `iotgate import thinger`: a Thinger server's accounts, projects, members and shared
//! resources, read through its REST API.
//!
//! ```text
//! GET /v1/users                                  accounts {user, role, enabled}
//! GET /v1/users/{u}/projects                     projects {project}
//! GET /v1/users/{u}/projects/{p}/members         members {member, enabled, allow, deny,
//!                                                  roles, global_roles, groups}
//! GET /v1/users/{u}/projects/{p}/roles           project roles {role, allow, deny} (when named)
//! GET /v1/users/{u}/roles                        global roles {role, enabled, allow, deny} (when named)
//! GET /v1/users/{u}/{devices|buckets|…}          the account's resources {device|bucket|…}
//! GET /v1/users/{u}/{devices|buckets|…}?project={p}   those shared through project p
//!   ──▶ users.json (User: role, enabled[, original]), resources.json (Project, Device, …
//!       with parents = their projects), policies/projects/{u}@{p}.cedar
//! ```
//!
//! Roles: API `admin` → `admin`, `user` → `developer`, `member` → `user` (guest); any
//! other (`domain_admin`: its domain scoping has no counterpart here) → `user`, warned.

use std::collections::BTreeMap;

use serde_json::Value;

use super::permissions::{self, Grant, Member, Vocabulary};
use super::{id_of, reference, Entity, Source, World};
use crate::model::schema::Catalog;

const NS: &str = "Thinger";

/// The collections an account owns: (path segment, id key, entity type).
const COLLECTIONS: [(&str, &str, &str); 7] = [
    ("devices", "device", "Device"),
    ("buckets", "bucket", "Bucket"),
    ("dashboards", "dashboard", "Dashboard"),
    ("endpoints", "endpoint", "Endpoint"),
    ("storages", "storage", "Storage"),
    ("tokens", "token", "Token"),
    ("plugins", "plugin", "Plugin"),
];

/// What `import thinger` is told besides the server.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// The subscription's own account (`original = true`): the API does not say which.
    pub(crate) original: Option<String>,
}

fn role(api: &str) -> Option<&'static str> {
    match api {
        "admin" => Some("admin"),
        "user" => Some("developer"),
        "member" => Some("user"),
        _ => None,
    }
}

/// Reads the server into a [`World`].
///
/// # Errors
/// A request failed or answered something that is not the API's shape.
pub(crate) async fn import(
    source: &Source,
    catalog: &Catalog,
    options: &Options,
) -> Result<World, String> {
    let vocab = Vocabulary::new(catalog, NS);
    let mut world = World {
        types: std::iter::once("User")
            .chain(std::iter::once("Project"))
            .chain(COLLECTIONS.iter().map(|(_, _, ty)| *ty))
            .map(|t| format!("{NS}::{t}"))
            .collect(),
        ..World::default()
    };
    let mut users: Vec<Entity> = Vec::new();
    let mut resources = Vec::new();
    for item in source.list("/v1/users").await? {
        let Some(id) = id_of(&item, "user", "account", &mut world.warnings) else {
            continue;
        };
        if users.iter().any(|u| u.uid.id == id) {
            world
                .warnings
                .push(format!("account `{id}` listed twice: the first kept"));
            continue;
        }
        users.push(account(&item, &id, options, &mut world.warnings));
        resources.extend(account_resources(source, &vocab, &id, &mut world).await?);
    }
    match &options.original {
        Some(o) if !users.iter().any(|u| &u.uid.id == o) => world.warnings.push(format!(
            "no account `{o}`: no account is the subscription's (`original`)"
        )),
        None => world.warnings.push(
            "no --original: no account is the subscription's, which no rule then protects".into(),
        ),
        Some(_) => {}
    }
    world.entities.insert("users.json", users);
    world.entities.insert("resources.json", resources);
    Ok(world)
}

fn account(item: &Value, id: &str, options: &Options, warnings: &mut Vec<String>) -> Entity {
    let api_role = item.get("role").and_then(Value::as_str).unwrap_or("");
    let role = role(api_role).unwrap_or_else(|| {
        warnings.push(format!(
            "account `{id}`: role {api_role:?} imported as the guest role `user`"
        ));
        "user"
    });
    let enabled = item
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut user = Entity::new(&format!("{NS}::User"), id)
        .attr("role", Value::from(role))
        .attr("enabled", Value::Bool(enabled));
    if options.original.as_deref() == Some(id) {
        user = user.attr("original", Value::Bool(true));
    }
    user
}

/// An account's projects (and their policy files) and resources.
async fn account_resources(
    source: &Source,
    vocab: &Vocabulary<'_>,
    owner: &str,
    world: &mut World,
) -> Result<Vec<Entity>, String> {
    let mut shared: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut roles = Roles::default();
    for item in source.list(&format!("/v1/users/{owner}/projects")).await? {
        let Some(p) = id_of(&item, "project", "project", &mut world.warnings) else {
            continue;
        };
        let project = format!("{owner}@{p}");
        if world
            .policies
            .contains_key(&format!("projects/{project}.cedar"))
        {
            world
                .warnings
                .push(format!("project `{project}` listed twice: the first kept"));
            continue;
        }
        out.push(
            Entity::new(&format!("{NS}::Project"), &project)
                .attr("owner", reference(&format!("{NS}::User"), owner)),
        );
        for (segment, key, ty) in COLLECTIONS {
            let path = format!("/v1/users/{owner}/{segment}?project={p}");
            for item in source.list(&path).await? {
                if let Some(id) = id_of(&item, key, ty, &mut world.warnings) {
                    shared.entry((ty, id)).or_default().push(project.clone());
                }
            }
        }
        let members = members(source, owner, &p, &mut roles, &mut world.warnings).await?;
        let (text, warnings) = permissions::project_file(vocab, owner, &p, &members);
        world.warnings.extend(warnings);
        let text = crate::model::policy::formatted(&text).map_err(|e| format!("{project}: {e}"))?;
        world
            .policies
            .insert(format!("projects/{project}.cedar"), text);
    }
    let mut seen = std::collections::HashSet::new();
    for (segment, key, ty) in COLLECTIONS {
        for item in source.list(&format!("/v1/users/{owner}/{segment}")).await? {
            let Some(id) = id_of(&item, key, ty, &mut world.warnings) else {
                continue;
            };
            let uid = format!("{owner}/{id}");
            if !seen.insert((ty, uid.clone())) {
                world
                    .warnings
                    .push(format!("{ty} `{uid}` listed twice: the first kept"));
                continue;
            }
            let mut entity = Entity::new(&format!("{NS}::{ty}"), &format!("{owner}/{id}"))
                .attr("owner", reference(&format!("{NS}::User"), owner));
            for project in shared.remove(&(ty, id)).unwrap_or_default() {
                entity = entity.parent(&format!("{NS}::Project"), &project);
            }
            out.push(entity);
        }
    }
    Ok(out)
}

/// Project and global roles, fetched once per owner when a member names them.
#[derive(Default)]
struct Roles {
    global: Option<BTreeMap<String, Option<Value>>>,
}

/// Roles by name; `None` for a name listed twice (which of the two applies is a guess).
async fn roles_at(source: &Source, path: &str) -> Result<BTreeMap<String, Option<Value>>, String> {
    let mut out = BTreeMap::new();
    for item in source.list(path).await? {
        if let Some(name) = item.get("role").and_then(Value::as_str) {
            let twice = out.contains_key(name);
            out.insert(name.to_string(), (!twice).then(|| item.clone()));
        }
    }
    Ok(out)
}

/// A project's members with the grants of their own sections and roles.
async fn members(
    source: &Source,
    owner: &str,
    project: &str,
    roles: &mut Roles,
    warnings: &mut Vec<String>,
) -> Result<Vec<Member>, String> {
    let base = format!("/v1/users/{owner}/projects/{project}");
    let mut project_roles: Option<BTreeMap<String, Option<Value>>> = None;
    let mut out = Vec::new();
    for item in source.list(&format!("{base}/members")).await? {
        let Some(id) = id_of(&item, "member", "member", warnings) else {
            continue;
        };
        let mut member = Member {
            id,
            enabled: item
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            grants: vec![Grant {
                label: "own".into(),
                allow: item.get("allow").cloned(),
                deny: item.get("deny").cloned(),
            }],
            blocked: None,
        };
        if names(&item, "groups").is_none_or(|g| !g.is_empty()) {
            member.blocked =
                Some("asset groups restrict it, which the import cannot express".into());
        }
        let (project_named, global_named) = (names(&item, "roles"), names(&item, "global_roles"));
        if project_named.is_none() || global_named.is_none() {
            // such a role's Deny could not be honoured
            member.blocked = Some("a role it names is not a plain id".into());
        }
        for name in project_named.unwrap_or_default() {
            if project_roles.is_none() {
                project_roles = Some(roles_at(source, &format!("{base}/roles")).await?);
            }
            let role = project_roles.as_ref().and_then(|r| r.get(&name));
            if role.is_some_and(Option::is_none) {
                member.blocked = Some(format!("role `{name}` is listed twice"));
            }
            let role = role.and_then(Option::as_ref);
            member
                .grants
                .push(role_grant(warnings, &member, "role", &name, role));
        }
        for name in global_named.unwrap_or_default() {
            if roles.global.is_none() {
                roles.global = Some(roles_at(source, &format!("/v1/users/{owner}/roles")).await?);
            }
            let role = roles.global.as_ref().and_then(|r| r.get(&name));
            if role.is_some_and(Option::is_none) {
                member.blocked = Some(format!("global role `{name}` is listed twice"));
            }
            let role = role.and_then(Option::as_ref);
            member
                .grants
                .push(role_grant(warnings, &member, "global_role", &name, role));
        }
        match out.iter_mut().find(|m: &&mut Member| m.id == member.id) {
            // two entries for one member: which one holds is a guess, so neither permits
            Some(first) => {
                first.blocked = Some("it is listed twice".into());
            }
            None => out.push(member),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The grant of a named role; a missing or disabled role grants nothing (its deny stays).
fn role_grant(
    warnings: &mut Vec<String>,
    member: &Member,
    kind: &str,
    name: &str,
    role: Option<&Value>,
) -> Grant {
    let label = format!("{kind}/{name}");
    let Some(role) = role else {
        warnings.push(format!(
            "member `{}`: {label} is not a role here; it grants nothing",
            member.id
        ));
        return Grant {
            label,
            allow: None,
            deny: None,
        };
    };
    let enabled = role.get("enabled").and_then(Value::as_bool).unwrap_or(true);
    Grant {
        allow: role.get("allow").filter(|_| enabled).cloned(),
        deny: role.get("deny").cloned(),
        label,
    }
}

/// The plain names an array member lists (absent or null: none); `None` when it is not an
/// array of plain names, which the import cannot read exactly.
fn names(item: &Value, key: &str) -> Option<std::collections::BTreeSet<String>> {
    match item.get(key) {
        None | Some(Value::Null) => Some(std::collections::BTreeSet::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|n| super::plain_id(n)).map(String::from))
            .collect(),
        Some(_) => None,
    }
}
