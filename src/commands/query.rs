//! `check --what-can USER [--on UID]` and `check --who-can ACTION --on UID`: the decision
//! API's searches, asked offline of the config's snapshot, printed in the `check` style.
//!
//! ```text
//! --what-can U --on R   ─▶ action search (U, R)                 ─▶ the actions U may take on R
//! --what-can U          ─▶ for each action U's type may take, a resource search of each
//!                          resource type it applies to            ─▶ (action, resource) pairs
//! --who-can A --on R    ─▶ subject search of the principal type  ─▶ the accounts that may
//! ```
//!
//! Every result is what an evaluation of it allows (`access::search`), with the context a
//! user's request would have (`token_kind = "user"` and the like).

use std::io::Write;
use std::str::FromStr;

use cedar_policy::EntityUid;
use serde_json::{json, Map, Value};

use crate::access::decide::short;
use crate::access::search::{every, Target};
use crate::authz::snapshot::Snapshot;
use crate::commands::cli::{CheckArgs, ExitStatus};
use crate::commands::report::{self, Format};

/// What is asked.
enum Query<'a> {
    WhatCan {
        user: &'a str,
        on: Option<EntityUid>,
    },
    WhoCan {
        action: &'a str,
        on: EntityUid,
    },
}

/// Runs the query `args` names; exit 0 with results, 2 for a query that cannot be asked.
pub(crate) fn run(
    snapshot: &Snapshot,
    args: &CheckArgs,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    let on = match args.on.as_deref().map(EntityUid::from_str).transpose() {
        Ok(on) => on,
        Err(e) => {
            writeln!(out, "--on: not an entity uid (Type::\"id\"): {e}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let query = match (&args.what_can, &args.who_can, on) {
        (Some(user), None, on) => Query::WhatCan { user, on },
        (None, Some(action), Some(on)) => Query::WhoCan { action, on },
        _ => {
            writeln!(out, "--who-can needs --on")?;
            return Ok(ExitStatus::Error);
        }
    };
    let found = match answer(snapshot, &query) {
        Ok(found) => found,
        Err(e) => {
            writeln!(out, "{e}")?;
            return Ok(ExitStatus::Error);
        }
    };
    print(snapshot, &query, &found, args.output(), out)?;
    Ok(ExitStatus::Ok)
}

fn entity(snapshot: &Snapshot, uid: &EntityUid) -> Value {
    json!({"type": short(snapshot, uid.type_name()), "id": uid.id().unescaped()})
}

fn body(pairs: Value) -> Map<String, Value> {
    pairs.as_object().cloned().unwrap_or_default()
}

/// The results: action names, (action, resource) pairs or account ids.
fn answer(snapshot: &Snapshot, query: &Query<'_>) -> Result<Vec<Value>, String> {
    let principal = short(snapshot, &snapshot.routes.principal_type);
    let subject = |id: &str| json!({"type": principal, "id": id});
    let ask = |target, b| every(snapshot, target, body(b)).map_err(|e| e.to_string());
    match query {
        Query::WhatCan { user, on: Some(on) } => {
            let found = ask(
                Target::Action,
                json!({"subject": subject(user), "resource": entity(snapshot, on)}),
            )?;
            Ok(found.into_iter().map(|a| a["name"].clone()).collect())
        }
        Query::WhoCan { action, on } => {
            let b = json!({"subject": {"type": principal}, "action": {"name": action}, "resource": entity(snapshot, on)});
            Ok(ask(Target::Subject, b)?
                .into_iter()
                .map(|s| s["id"].clone())
                .collect())
        }
        Query::WhatCan { user, on: None } => {
            let qualified = snapshot.routes.principal_type.to_string();
            let mut actions: Vec<(&String, &crate::model::schema::Action)> = snapshot
                .catalog
                .actions
                .iter()
                .filter(|(_, a)| a.principals.contains(&qualified))
                .collect();
            actions.sort_by(|a, b| a.0.cmp(b.0));
            let mut pairs = Vec::new();
            for (name, action) in actions {
                for resource in &action.resources {
                    let ty = resource.rsplit("::").next().unwrap_or(resource);
                    let b = json!({"subject": subject(user), "action": {"name": name}, "resource": {"type": ty}});
                    for r in ask(Target::Resource, b)? {
                        pairs.push(json!({"action": name, "resource": format!("{resource}::{}", Value::from(r["id"].as_str().unwrap_or_default()))}));
                    }
                }
            }
            Ok(pairs)
        }
    }
}

fn print(
    snapshot: &Snapshot,
    query: &Query<'_>,
    found: &[Value],
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let (asked, heading) = match query {
        Query::WhatCan { user, on: Some(on) } => (
            json!({"what_can": user, "on": on.to_string()}),
            format!("{user} may, on {on}:"),
        ),
        Query::WhatCan { user, on: None } => (json!({"what_can": user}), format!("{user} may:")),
        Query::WhoCan { action, on } => (
            json!({"who_can": action, "on": on.to_string()}),
            format!("who may {action} on {on}:"),
        ),
    };
    if format == Format::Json {
        let mut doc = asked;
        doc["results"] = Value::from(found.to_vec());
        doc["policy_version"] = Value::from(&*snapshot.policy_version);
        doc["directory_version"] = Value::from(&*snapshot.directory_version);
        return report::json("check", doc, out);
    }
    writeln!(out, "{heading}")?;
    for item in found {
        match item {
            Value::String(s) => writeln!(out, "  {s}")?,
            pair => writeln!(
                out,
                "  {:<28} {}",
                pair["action"].as_str().unwrap_or_default(),
                pair["resource"].as_str().unwrap_or_default()
            )?,
        }
    }
    writeln!(
        out,
        "{} found (policy version {}, directory version {})",
        found.len(),
        snapshot.policy_version,
        snapshot.directory_version
    )
}
