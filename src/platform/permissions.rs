//! Thinger permission trees → Cedar: one project's policy file.
//!
//! ```text
//! tree = { Type | "*": { id | "*": "*" | "Action" | "Read*" | [actions…] } }
//!   ──expand (the schema's actions that apply to the type; a name may be an action group;
//!     `*` and `Prefix*` globs)──▶ grants
//!   "*" ids:   one policy per tree: `action in [...]`, `resource in Project::"o@p"`
//!              ({"*": {"*": "*"}}: every action on what the project shares)
//!   named ids: one policy per (type, id): `resource == T::"owner/id"`, `when { resource in
//!              Project::"o@p" }` (leaving the project ends it)
//! allow trees ─▶ permit, deny trees ─▶ forbid (`@reason`, `@code("project_denied")`)
//! ```
//!
//! A member the import cannot represent exactly (asset groups, sub-resource permission
//! objects, a tree that is not one) gets no permit at all; its forbids stay.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::model::schema::Catalog;

/// One source of permissions of a member: its own Allow/Deny sections, or a role's.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// `own`, `role/<r>`, `global_role/<r>`: part of the policy ids.
    pub(crate) label: String,
    pub(crate) allow: Option<Value>,
    pub(crate) deny: Option<Value>,
}

/// A project member as the import read it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) enabled: bool,
    pub(crate) grants: Vec<Grant>,
    /// Why the member gets no permit (set by the import, e.g. asset groups).
    pub(crate) blocked: Option<String>,
}

/// The schema facts the generator reads.
#[derive(Debug)]
pub(crate) struct Vocabulary<'c> {
    catalog: &'c Catalog,
    namespace: String,
    /// Entity types shared through projects (they have `Project` among their parents),
    /// with `Project` itself.
    shared: BTreeSet<String>,
}

impl<'c> Vocabulary<'c> {
    pub(crate) fn new(catalog: &'c Catalog, namespace: &str) -> Vocabulary<'c> {
        let project = format!("{namespace}::Project");
        let mut shared: BTreeSet<String> = catalog
            .member_of
            .iter()
            .filter(|(_, parents)| parents.contains(&project))
            .map(|(ty, _)| ty.clone())
            .collect();
        shared.insert(project);
        Vocabulary {
            catalog,
            namespace: namespace.to_string(),
            shared,
        }
    }

    /// The qualified shared types a tree key names (`*`: all of them).
    fn types(&self, key: &str) -> Option<Vec<String>> {
        match key {
            "*" => Some(self.shared.iter().cloned().collect()),
            name => {
                let ty = format!("{}::{name}", self.namespace);
                self.shared.contains(&ty).then(|| vec![ty])
            }
        }
    }

    /// The concrete actions applying to one of `types` that `pattern` names: `*`, a
    /// `Prefix*` glob, an action, or an action group (its members).
    fn actions(&self, pattern: &str, types: &[String]) -> BTreeSet<String> {
        let group = format!("{}::Action::\"{pattern}\"", self.namespace);
        self.catalog
            .actions
            .iter()
            .filter(|(_, a)| a.resources.iter().any(|r| types.contains(r)))
            .filter(|(name, a)| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => *name == pattern || a.entity_uids.iter().any(|u| u.to_string() == group),
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// What a tree grants: actions on every shared resource, and per named resource.
#[derive(Debug, Default)]
struct Scope {
    /// `{"*": {"*": "*"}}`: any action at all.
    everything: bool,
    any_resource: BTreeSet<String>,
    named: Vec<(String, String, BTreeSet<String>)>,
}

/// Which section a tree is: a Deny must be read whole, or the member gets no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Allow,
    Deny,
}

/// A key of a tree (a type, an id, an action pattern): `*`, or plain. Anything else (quotes,
/// newlines, `//`: text that would land in a policy file) stops the member's import.
fn plain_key(key: &str) -> bool {
    key == "*" || super::plain_id(key.strip_suffix('*').unwrap_or(key))
}

/// Reads a tree; `Err` says what it cannot represent (only plain keys appear in it).
fn scope(
    tree: &Value,
    vocab: &Vocabulary<'_>,
    owner: &str,
    section: Section,
) -> Result<Scope, String> {
    let Some(types) = tree.as_object() else {
        return Err("the section is not an object".into());
    };
    let mut scope = Scope::default();
    for (type_key, ids) in types {
        if !plain_key(type_key) {
            return Err("a type key is not a plain name".into());
        }
        let Some(tys) = vocab.types(type_key) else {
            return Err(format!(
                "`{type_key}` is not a type shared through projects"
            ));
        };
        let Some(ids) = ids.as_object() else {
            return Err(format!("`{type_key}` does not map ids to actions"));
        };
        for (id, value) in ids {
            if id != "*" && !super::plain_id(id) {
                return Err(format!("an id under `{type_key}` is not a plain id"));
            }
            let patterns = patterns(value)
                .filter(|p| p.iter().all(|a| plain_key(a)))
                .ok_or_else(|| {
                    format!("`{type_key}.{id}`: only action names and `*` are understood")
                })?;
            if type_key == "*" && id == "*" && patterns.iter().any(|p| p == "*") {
                scope.everything = true;
            }
            let mut actions = BTreeSet::new();
            for p in &patterns {
                let expanded = vocab.actions(p, &tys);
                if expanded.is_empty() && section == Section::Deny {
                    // a deny that names nothing the schema has cannot be honoured exactly
                    return Err(format!(
                        "`{type_key}.{id}`: `{p}` names no action of the type"
                    ));
                }
                actions.extend(expanded);
            }
            match id.as_str() {
                "*" => scope.any_resource.extend(actions),
                named if type_key != "*" && !tys[0].ends_with("::Project") => {
                    scope
                        .named
                        .push((tys[0].clone(), format!("{owner}/{named}"), actions));
                }
                other => {
                    return Err(format!(
                        "`{type_key}.{other}`: not a resource id of the owner"
                    ))
                }
            }
        }
    }
    Ok(scope)
}

/// The action names of a tree leaf: `"*"`, `"Name"`, or an array of names.
fn patterns(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|v| v.as_str().map(String::from)).collect(),
        _ => None,
    }
}

/// The policy file of project `owner@name`, and what it left out.
pub(crate) fn project_file(
    vocab: &Vocabulary<'_>,
    owner: &str,
    name: &str,
    members: &[Member],
) -> (String, Vec<String>) {
    let project = format!("{owner}@{name}");
    let ns = &vocab.namespace;
    let mut warnings = Vec::new();
    let mut text = format!(
        "// Project {project} (owner: {owner}), written by `iotgate import`: do not edit, the\n\
         // next import rewrites it. One permit per member's Allow section (and each of its\n\
         // roles'), one forbid per Deny section, on resources `in` the project. Deny always wins.\n"
    );
    for member in members {
        let principal = format!("{ns}::User::{}", quoted(&member.id));
        let mut blocked = member.blocked.clone();
        if !member.enabled {
            blocked = Some("the membership is disabled".into());
        }
        let mut permits = String::new();
        let mut forbids = String::new();
        for grant in &member.grants {
            // the member's own sections: `o@p/member/allow`; a role's: `o@p/member/role/r/allow`
            let base = match grant.label.as_str() {
                "own" => format!("{project}/{}", member.id),
                label => format!("{project}/{}/{label}", member.id),
            };
            if let Some(tree) = &grant.allow {
                match scope(tree, vocab, owner, Section::Allow) {
                    Ok(s) => permits.push_str(&policies(
                        "permit", &base, "allow", &principal, &project, vocab, &s, None,
                    )),
                    Err(why) => {
                        blocked = blocked.or(Some(format!("{}: allow: {why}", grant.label)))
                    }
                }
            }
            if let Some(tree) = &grant.deny {
                let reason = format!("the Deny section of {} in {project}", member.id);
                match scope(tree, vocab, owner, Section::Deny) {
                    Ok(s) => forbids.push_str(&policies(
                        "forbid",
                        &base,
                        "deny",
                        &principal,
                        &project,
                        vocab,
                        &s,
                        Some(&reason),
                    )),
                    Err(why) => {
                        // a deny that cannot be read exactly: no permit for the member here
                        blocked = blocked.or(Some(format!("{}: deny: {why}", grant.label)));
                    }
                }
            }
        }
        text.push_str(&format!("\n// member {}\n", member.id));
        match &blocked {
            Some(why) => {
                warnings.push(format!(
                    "{project}: member `{}` gets no permit: {why}",
                    member.id
                ));
                // a fixed phrase: server text never lands in a policy file
                text.push_str("// no permit: the import could not read its sections exactly (see its warnings)\n");
            }
            None => text.push_str(&permits),
        }
        text.push_str(&forbids);
    }
    (text, warnings)
}

/// The policies of one section.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the parts of a policy head"
)]
fn policies(
    effect: &str,
    base: &str,
    section: &str,
    principal: &str,
    project: &str,
    vocab: &Vocabulary<'_>,
    scope: &Scope,
    reason: Option<&str>,
) -> String {
    let ns = &vocab.namespace;
    let project_ref = format!("{ns}::Project::{}", quoted(project));
    let head = |id: String| {
        let mut h = format!("@id({})\n", quoted(&id));
        if let Some(r) = reason {
            h.push_str(&format!(
                "@reason({})\n@code(\"project_denied\")\n",
                quoted(r)
            ));
        }
        h
    };
    let mut out = String::new();
    if scope.everything {
        out.push_str(&format!(
            "{}{effect} (principal == {principal}, action, resource in {project_ref});\n",
            head(format!("{base}/{section}"))
        ));
    } else if !scope.any_resource.is_empty() {
        out.push_str(&format!(
            "{}{effect} (principal == {principal}, action in {}, resource in {project_ref});\n",
            head(format!("{base}/{section}")),
            action_list(ns, &scope.any_resource)
        ));
    }
    for (ty, id, actions) in &scope.named {
        if actions.is_empty() {
            continue;
        }
        let short = ty.rsplit("::").next().unwrap_or(ty);
        out.push_str(&format!(
            "{}{effect} (principal == {principal}, action in {}, resource == {ty}::{}) when {{ resource in {project_ref} }};\n",
            head(format!("{base}/{section}/{short}/{}", id.split_once('/').map_or(id.as_str(), |(_, i)| i))),
            action_list(ns, actions),
            quoted(id)
        ));
    }
    out
}

fn action_list(ns: &str, actions: &BTreeSet<String>) -> String {
    let items: Vec<String> = actions
        .iter()
        .map(|a| format!("{ns}::Action::{}", quoted(a)))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A Cedar string literal.
fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}
