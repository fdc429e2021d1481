//! `iotgate lint --config F`: what `validate` cannot see in policies that load.
//!
//! ```text
//! config ─▶ Loaded (load problems: printed, exit 2)
//!   ─▶ each policy (JSON form, origin file:line) ─▶ unknown-entity, forbid-without-reason,
//!      unconstrained-permit, project-reach
//!   ─▶ Cedar's validator warnings ─▶ never-applies, confusable-text
//!   ─▶ the directory files (each entity's file:line) ─▶ dangling-reference
//!   ─▶ with --prove, the solver (see `prove`) ─▶ can-error, never-matches, shadowed
//!   ─▶ findings (sorted by file, line) ─▶ report (human | json | junit)
//! ```
//!
//! Exit: 0 no errors (and no warnings with `--deny warnings`), 1 otherwise, 2 the
//! configuration does not load.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Effect, EntityId, EntityTypeName, EntityUid, Policy, ValidationMode};
use serde_json::{json, Value};

use crate::authz::snapshot::{Loaded, Snapshot};
use crate::commands::cli::{ExitStatus, LintArgs};
use crate::commands::report::{self, Finding, Format, Severity};
use crate::model::directory::Directory;
use crate::model::policy::Origin;

/// Runs `lint`.
pub(crate) fn run(args: &LintArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let loaded = match Loaded::load(&args.config.config) {
        Ok(loaded) => loaded,
        Err(problems) => {
            let findings: Vec<Finding> = problems
                .iter()
                .map(|p| Finding::of_problem(p, "load", Severity::Error))
                .collect();
            write_findings(args.format, &findings, out)?;
            return Ok(ExitStatus::Error);
        }
    };
    let mut findings = lint(&loaded);
    if args.prove {
        match solver_findings(&loaded.snapshot) {
            Ok(found) => findings.extend(found),
            Err(e) => {
                writeln!(out, "error: {e}")?;
                return Ok(ExitStatus::Error);
            }
        }
        findings.sort_by(|a, b| (&a.file, a.line, &a.code).cmp(&(&b.file, b.line, &b.code)));
    }
    write_findings(args.format, &findings, out)?;
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let fails = errors > 0 || (args.deny_warnings() && !findings.is_empty());
    Ok(if fails {
        ExitStatus::Failed
    } else {
        ExitStatus::Ok
    })
}

fn write_findings(
    format: Format,
    findings: &[Finding],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let summary = json!({ "errors": errors, "warnings": findings.len() - errors });
    report::findings(format, "lint", findings, summary, out)?;
    if format == Format::Human {
        writeln!(
            out,
            "{errors} error{}, {} warning{}",
            if errors == 1 { "" } else { "s" },
            findings.len() - errors,
            if findings.len() - errors == 1 {
                ""
            } else {
                "s"
            }
        )?;
    }
    Ok(())
}

/// `--prove`: what the solver finds (policies that can error, match nothing, or are shadowed).
#[cfg(feature = "prove")]
fn solver_findings(snapshot: &Snapshot) -> Result<Vec<Finding>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let policies = &snapshot.policies;
    let found = runtime.block_on(super::prove::lint(&policies.set, &snapshot.catalog.schema))?;
    Ok(found
        .into_iter()
        .map(|(id, code, message)| {
            located(policies.origins.get(&id), code, Severity::Warning, message)
        })
        .collect())
}

#[cfg(not(feature = "prove"))]
fn solver_findings(_: &Snapshot) -> Result<Vec<Finding>, String> {
    Err("this iotgate was built without the `prove` feature".into())
}

/// Directory entries whose parents or entity attributes name entities the directory files
/// do not have (the files as written; the journal is the gateway's own).
fn directory_findings(loaded: &Loaded) -> Vec<Finding> {
    let snapshot = &loaded.snapshot;
    let paths = &loaded.config.policy.directory;
    let Ok((dir, at)) = Directory::load_located(paths, &snapshot.catalog, &snapshot.routes.rules)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for node in dir.nodes() {
        let parents = node.parents().into_iter().filter(|p| dir.get(p).is_none());
        let parents = parents.map(|p| (p, "parent"));
        let refs = node.refs().into_iter().filter(|r| dir.node(*r).is_none());
        let refs = refs.map(|r| (dir.uid(r), "attribute"));
        for (missing, kind) in parents.chain(refs) {
            let place = at.of(node.index());
            out.push(Finding {
                file: place.map(|(f, _)| f.to_path_buf()),
                line: place.map(|(_, l)| l),
                code: "dangling-reference".to_string(),
                severity: Severity::Warning,
                message: format!(
                    "entity {} names {missing} as {kind}, which the directory does not have",
                    node.uid()
                ),
            });
        }
    }
    out
}

/// Every finding of a loaded configuration, sorted by file and line.
pub(crate) fn lint(loaded: &Loaded) -> Vec<Finding> {
    let snapshot = &loaded.snapshot;
    let mut findings = directory_findings(loaded);
    for policy in snapshot.policies.set.policies() {
        let origin = snapshot.policies.origins.get(policy.id());
        let file = origin.map(|o| o.file.as_path());
        for (code, severity, message) in policy_findings(snapshot, policy, file) {
            findings.push(located(origin, code, severity, message));
        }
    }
    findings.extend(validator_findings(snapshot));
    findings.sort_by(|a, b| (&a.file, a.line, &a.code).cmp(&(&b.file, b.line, &b.code)));
    findings
}

/// The findings of one policy, from its JSON form.
fn policy_findings(
    snapshot: &Snapshot,
    policy: &Policy,
    file: Option<&Path>,
) -> Vec<(&'static str, Severity, String)> {
    let id = policy.id();
    let mut out = Vec::new();
    let Ok(json) = policy.to_json() else {
        return out;
    };
    let mut named = BTreeSet::new();
    entities_in(&json, &mut named);
    for (ty, eid) in &named {
        if ty == "Action" || ty.ends_with("::Action") {
            continue;
        }
        let Some(uid) = uid(ty, eid) else { continue };
        if snapshot.directory.get(&uid).is_none() {
            out.push((
                "unknown-entity",
                Severity::Warning,
                format!("policy `{id}` names {uid}, which the directory does not have"),
            ));
        }
    }
    let conditions = json.get("conditions").cloned().unwrap_or(Value::Null);
    match policy.effect() {
        Effect::Forbid => {
            let missing: Vec<(&str, &str)> = [
                ("reason", "a client it refuses is told no reason"),
                ("code", "clients get the generic `forbidden` code"),
            ]
            .into_iter()
            .filter(|(a, _)| policy.annotation(a).is_none())
            .collect();
            if !missing.is_empty() {
                let names: Vec<String> = missing.iter().map(|(a, _)| format!("@{a}")).collect();
                let why: Vec<&str> = missing.iter().map(|(_, w)| *w).collect();
                out.push((
                    "forbid-without-reason",
                    Severity::Warning,
                    format!(
                        "forbid `{id}` has no {}: {}",
                        names.join(" or "),
                        why.join("; ")
                    ),
                ));
            }
        }
        Effect::Permit if !is_role_file(file) => {
            if let Some(open) = unconstrained(&json, &conditions) {
                out.push((
                    "unconstrained-permit",
                    Severity::Warning,
                    format!("permit `{id}` applies to {open} outside a role file"),
                ));
            }
        }
        _ => {}
    }
    if let Some(project) = file.and_then(project_of) {
        out.extend(project_reach(&json, &named, &project, id.as_ref()));
    }
    out
}

/// A project file's policies must confine their resource to the project and name no other.
fn project_reach(
    json: &Value,
    named: &BTreeSet<(String, String)>,
    project: &str,
    id: &str,
) -> Vec<(&'static str, Severity, String)> {
    let is_project = |ty: &str| ty == "Project" || ty.ends_with("::Project");
    let mut out = Vec::new();
    for (ty, eid) in named {
        if is_project(ty) && eid != project {
            out.push((
                "project-reach",
                Severity::Error,
                format!("policy `{id}` in the file of project `{project}` names project `{eid}`"),
            ));
        }
    }
    let resource = &json["resource"];
    let the_project = |e: &Value| e["id"] == project && e["type"].as_str().is_some_and(is_project);
    let scoped = match resource["op"].as_str() {
        Some("==" | "in") => the_project(&resource["entity"]),
        Some("is") => the_project(&resource["in"]["entity"]),
        _ => false,
    };
    if !scoped {
        out.push((
            "project-reach",
            Severity::Error,
            format!("policy `{id}` in the file of project `{project}` does not confine its resource to `in` the project"),
        ));
    }
    out
}

/// Cedar's own warnings: policies that can never apply, and text that can deceive a reader.
fn validator_findings(snapshot: &Snapshot) -> Vec<Finding> {
    let validator = cedar_policy::Validator::new(snapshot.catalog.schema.clone());
    let result = validator.validate(&snapshot.policies.set, ValidationMode::Strict);
    result
        .validation_warnings()
        .map(|w| {
            let code = match w {
                cedar_policy::ValidationWarning::ImpossiblePolicy(_)
                | cedar_policy::ValidationWarning::InvalidActionApplication(_) => "never-applies",
                _ => "confusable-text",
            };
            let origin = snapshot.policies.origins.get(w.policy_id());
            located(origin, code, Severity::Warning, w.to_string())
        })
        .collect()
}

/// A finding at a policy's `@id` line.
fn located(origin: Option<&Origin>, code: &str, severity: Severity, message: String) -> Finding {
    Finding {
        file: origin.map(|o| o.file.clone()),
        line: origin.and_then(|o| o.line),
        code: code.to_string(),
        severity,
        message,
    }
}

/// Every entity literal in a policy's JSON form (scope and conditions), as (type, id).
fn entities_in(v: &Value, out: &mut BTreeSet<(String, String)>) {
    match v {
        Value::Object(map) => {
            for key in ["entity", "__entity"] {
                if let Some(e) = map.get(key) {
                    push_entity(e, out);
                }
            }
            if let Some(Value::Array(list)) = map.get("entities") {
                for e in list {
                    push_entity(e, out);
                }
            }
            map.values().for_each(|v| entities_in(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| entities_in(v, out)),
        _ => {}
    }
}

fn push_entity(e: &Value, out: &mut BTreeSet<(String, String)>) {
    if let (Some(ty), Some(id)) = (e["type"].as_str(), e["id"].as_str()) {
        out.insert((ty.to_string(), id.to_string()));
    }
}

/// What a permit leaves open: every principal (neither its scope nor a condition names one),
/// or every resource — except for the anonymous principal of public routes, whose resource
/// is rarely the point.
fn unconstrained(json: &Value, conditions: &Value) -> Option<&'static str> {
    let open = |var: &str| json[var]["op"] == "All" && !reads_var(conditions, var);
    let is_anonymous =
        |t: Option<&str>| t.is_some_and(|t| t == "Anonymous" || t.ends_with("::Anonymous"));
    let principal = &json["principal"];
    let anonymous = match principal["op"].as_str() {
        Some("is") => is_anonymous(principal["entity_type"].as_str()),
        Some("==") => is_anonymous(principal["entity"]["type"].as_str()),
        _ => false,
    };
    if open("principal") {
        Some("every principal (anonymous callers included)")
    } else if open("resource") && !anonymous {
        Some("every resource")
    } else {
        None
    }
}

/// Whether a condition reads the variable `name`.
fn reads_var(conditions: &Value, name: &str) -> bool {
    match conditions {
        Value::Object(map) => {
            map.get("Var").and_then(Value::as_str) == Some(name)
                || map.values().any(|v| reads_var(v, name))
        }
        Value::Array(list) => list.iter().any(|v| reads_var(v, name)),
        _ => false,
    }
}

fn uid(ty: &str, id: &str) -> Option<EntityUid> {
    let ty = EntityTypeName::from_str(ty).ok()?;
    Some(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// Role files (`roles.cedar`, or any file below a `roles/` folder) grant by role, to anyone
/// holding it: an unconstrained principal is their point.
fn is_role_file(file: Option<&Path>) -> bool {
    file.is_some_and(|f| {
        f.file_stem().is_some_and(|s| s == "roles")
            || f.parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "roles")
    })
}

/// The project a file under `projects/` is named after (`projects/<owner>@<project>.cedar`).
fn project_of(file: &Path) -> Option<String> {
    let parent = file.parent()?.file_name()?;
    let stem = file.file_stem()?.to_str()?;
    (parent == "projects" && stem.contains('@')).then(|| stem.to_string())
}
