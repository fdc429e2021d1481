//! `iotgate import central`: an IoT Central-style server's organization tree, users and
//! devices, read through the paths the `central` profile routes.
//!
//! ```text
//! GET /api/orgs/{root}              the root {id}
//! GET /api/orgs/{o}/orgs            its direct sub-organizations {id}   (walked breadth-first)
//! GET /api/orgs/{o}/users           users whose org is o {id, role, enabled}
//! GET /api/orgs/{o}/devices         devices whose org is o {id}
//!   ──▶ orgs.json (Org, parent = the org above), users.json (User: role, enabled; parent =
//!       its org), devices.json (Device, parent = its org)
//! ```
//!
//! Roles are the profile's own names (`administrator`, `manager`, `technician`, `basic`);
//! any other is imported as `basic`, warned. An org reached twice (a cycle, or two parents)
//! is kept under the first parent, warned; a user or device listed under two orgs is left
//! out, warned (the higher org would widen what it is given).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::{id_of, Entity, Source, World};

const NS: &str = "Central";
const ROLES: [&str; 4] = ["administrator", "manager", "technician", "basic"];

/// Reads the tree under `root` into a [`World`].
///
/// # Errors
/// A request failed or answered something that is not the API's shape.
pub(crate) async fn import(source: &Source, root: &str) -> Result<World, String> {
    let mut world = World {
        types: ["Org", "User", "Device"]
            .iter()
            .map(|t| format!("{NS}::{t}"))
            .collect(),
        ..World::default()
    };
    let top = source.get(&format!("/api/orgs/{root}")).await?;
    if top.get("id").and_then(Value::as_str) != Some(root) {
        return Err(format!(
            "GET /api/orgs/{root}: the answer is another organization"
        ));
    }
    let root = id_of(&top, "id", "org", &mut world.warnings)
        .ok_or_else(|| format!("GET /api/orgs/{root}: no usable `id`"))?;
    let (mut orgs, mut users, mut devices) = (Vec::new(), Vec::new(), Vec::new());
    // how often each user and device is listed
    let mut listed: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut seen = BTreeSet::from([root.clone()]);
    let mut queue = VecDeque::from([(root, None::<String>)]);
    let org_type = format!("{NS}::Org");
    while let Some((org, parent)) = queue.pop_front() {
        let mut entity = Entity::new(&org_type, &org);
        if let Some(p) = &parent {
            entity = entity.parent(&org_type, p);
        }
        orgs.push(entity);
        for child in source.list(&format!("/api/orgs/{org}/orgs")).await? {
            let Some(id) = id_of(&child, "id", "org", &mut world.warnings) else {
                continue;
            };
            match seen.insert(id.clone()) {
                true => queue.push_back((id, Some(org.clone()))),
                false => world.warnings.push(format!(
                    "org `{id}` under `{org}` skipped: it is reached twice"
                )),
            }
        }
        for item in source.list(&format!("/api/orgs/{org}/users")).await? {
            if let Some(id) = first(&item, "user", &mut listed, &mut world.warnings) {
                users.push(user(&item, &id, &org, &mut world.warnings));
            }
        }
        for item in source.list(&format!("/api/orgs/{org}/devices")).await? {
            if let Some(id) = first(&item, "device", &mut listed, &mut world.warnings) {
                devices.push(Entity::new(&format!("{NS}::Device"), &id).parent(&org_type, &org));
            }
        }
    }
    // one listed under two organizations is kept under neither: either would be a guess,
    // and the higher one would widen
    let once = |e: &Entity, what: &str| listed.get(&(what, e.uid.id.clone())) == Some(&1);
    users.retain(|e| once(e, "user"));
    devices.retain(|e| once(e, "device"));
    world.entities.insert("orgs.json", orgs);
    world.entities.insert("users.json", users);
    world.entities.insert("devices.json", devices);
    Ok(world)
}

/// The id of a user or device listed under an org, the first time it is listed.
fn first<'w>(
    item: &Value,
    what: &'w str,
    listed: &mut BTreeMap<(&'w str, String), usize>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let id = id_of(item, "id", what, warnings)?;
    let count = listed.entry((what, id.clone())).or_default();
    *count += 1;
    match *count {
        1 => Some(id),
        2 => {
            warnings.push(format!("{what} `{id}` listed under two orgs: skipped"));
            None
        }
        _ => None,
    }
}

fn user(item: &Value, id: &str, org: &str, warnings: &mut Vec<String>) -> Entity {
    let given = item.get("role").and_then(Value::as_str).unwrap_or("");
    let role = ROLES
        .iter()
        .find(|r| **r == given)
        .copied()
        .unwrap_or_else(|| {
            warnings.push(format!("user `{id}`: role {given:?} imported as `basic`"));
            "basic"
        });
    let enabled = item
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Entity::new(&format!("{NS}::User"), id)
        .attr("role", Value::from(role))
        .attr("enabled", Value::Bool(enabled))
        .parent(&format!("{NS}::Org"), org)
}
