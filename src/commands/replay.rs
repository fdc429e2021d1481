//! `iotgate check --replay FILE --against DIR [--directory-against DIR]`: every request
//! `serve` recorded (`[log] decision_inputs`) decided again with the live policies and
//! directory and with the candidate ones, on the same handler as `serve` and `check`.
//!
//! ```text
//! FILE (one Entry per line) ─▶ Probe (method, path?query, trusted claims, the body fields
//!   read, sent back as the route's body format) ─▶ live Checker │ candidate Checker
//!   ─▶ flips (allow→deny, deny→allow) grouped by direction, route and the candidate's
//!      determining policies, with counts and a few examples ─▶ exit 1 if any
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::authz::decision::Credentials;
use crate::authz::snapshot::{Loaded, Snapshot};
use crate::commands::checker::{Answer, Checker, Probe};
use crate::commands::cli::{CheckArgs, ExitStatus};
use crate::commands::report::{self, Format};
use crate::request::uri::form_encode;
use crate::request::BodyFormat;
use crate::telemetry::inputs::{self, Entry};

/// Examples kept per group of flips.
const EXAMPLES: usize = 3;

/// Runs the replay.
pub(crate) async fn run(
    loaded: Loaded,
    args: &CheckArgs,
    file: &Path,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    if args.against.is_none() && args.directory_against.is_none() {
        writeln!(
            out,
            "error: --replay compares with --against POLICY_DIR and/or --directory-against DIR"
        )?;
        return Ok(ExitStatus::Error);
    }
    let mut config = loaded.config.clone();
    if let Some(dir) = &args.against {
        config.policy.policies = vec![dir.clone()];
    }
    if let Some(dir) = &args.directory_against {
        config.policy.directory = vec![dir.clone()];
    }
    let candidate = match Snapshot::load(&config) {
        Ok(snapshot) => Loaded {
            config,
            snapshot: crate::store::with_live_shared(&loaded.snapshot, snapshot),
            verifier: loaded.verifier.clone(),
        },
        Err(problems) => {
            write!(out, "{problems}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let recorded = match inputs::read(file) {
        Ok(read) => read,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let entries = &recorded.entries;
    let formats: BTreeMap<String, BodyFormat> = loaded
        .snapshot
        .routes
        .routes()
        .iter()
        .map(|r| (r.name.clone(), r.body))
        .collect();
    let principal_claim = loaded.config.auth.principal_claim.clone();
    let (live, candidate) = (Checker::new(loaded), Checker::new(candidate));
    let mut tally = Tally::default();
    for entry in entries {
        let format = formats.get(&entry.route).copied().unwrap_or_default();
        let Ok(probe) = probe(entry, format, &principal_claim) else {
            tally.skipped += 1;
            continue;
        };
        let before = live.answer(&probe).await;
        let after = candidate.answer(&probe).await;
        let allowed = |a: &Answer| a.decision.is_allowed() && a.status.is_success();
        let (was, will) = (allowed(&before), allowed(&after));
        if was != (entry.decision == "allow") {
            tally.drifted += 1;
        }
        if was != will {
            let key = (
                if was {
                    "allow → deny"
                } else {
                    "deny → allow"
                },
                entry.route.clone(),
                after.decision.policies.join(", "),
            );
            let group = tally.flips.entry(key).or_default();
            group.0 += 1;
            if group.1.len() < EXAMPLES {
                group.1.push(entry.clone());
            }
        }
    }
    tally.replayed = entries.len() - tally.skipped;
    tally.skipped += recorded.unreadable;
    tally.unreadable = recorded
        .first_unreadable
        .map(|first| (recorded.unreadable, first));
    let versions = (live.policy_version(), candidate.policy_version());
    tally.write(args.output(), &versions, out)?;
    Ok(if tally.flips.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}

/// The request an entry recorded, as `check` sends it.
fn probe(entry: &Entry, format: BodyFormat, principal_claim: &str) -> Result<Probe, String> {
    let target = match &entry.query {
        Some(q) => format!("{} {}?{q}", entry.method, entry.path),
        None => format!("{} {}", entry.method, entry.path),
    };
    let credentials = match entry.anonymous {
        true => Credentials::Token,
        false => {
            // the principal serve decided for, under the claim `check` reads it from (with
            // several issuers, serve read it from the matching issuer's claim)
            let mut claims = entry.claims.clone();
            claims.insert(
                principal_claim.to_string(),
                Value::String(entry.principal.clone()),
            );
            Credentials::Trusted(claims)
        }
    };
    let probe = Probe::parse(&target, credentials)?;
    Ok(match &entry.body {
        None => probe,
        Some(body) => probe.with_body(body_bytes(body, format)),
    })
}

/// The fields a route read, sent back in its body format.
fn body_bytes(body: &Value, format: BodyFormat) -> Vec<u8> {
    match (format, body) {
        (BodyFormat::Form, Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), String::from);
                format!("{}={}", form_encode(k), form_encode(&v))
            })
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes(),
        _ => serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// What the replay found.
#[derive(Default)]
struct Tally {
    replayed: usize,
    skipped: usize,
    /// Requests the live policies decide otherwise than when they were recorded.
    drifted: usize,
    /// Lines that are not records, and the first of them.
    unreadable: Option<(usize, String)>,
    /// (direction, route, candidate's determining policies) → (count, examples).
    flips: BTreeMap<(&'static str, String, String), (usize, Vec<Entry>)>,
}

impl Tally {
    fn write(
        &self,
        format: Format,
        versions: &(std::sync::Arc<str>, std::sync::Arc<str>),
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let flipped: usize = self.flips.values().map(|g| g.0).sum();
        if format != Format::Human {
            let groups: Vec<Value> = self
                .flips
                .iter()
                .map(|((direction, route, policies), (count, examples))| {
                    json!({
                        "flip": direction, "route": route, "policies": policies, "count": count,
                        "examples": examples.iter().map(example).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let doc = json!({
                "replayed": self.replayed, "skipped": self.skipped, "drifted": self.drifted,
                "flipped": flipped, "flips": groups,
                "live_version": &*versions.0, "candidate_version": &*versions.1,
            });
            return report::json("check --replay", doc, out);
        }
        if let Some((count, first)) = &self.unreadable {
            writeln!(
                out,
                "warning: {count} lines are not records and were skipped (first: {first})"
            )?;
        }
        for ((direction, route, policies), (count, examples)) in &self.flips {
            let by = if policies.is_empty() { "-" } else { policies };
            writeln!(out, "{direction}  {route}  (candidate: [{by}]): {count}")?;
            for e in examples {
                let query = e
                    .query
                    .as_deref()
                    .map_or(String::new(), |q| format!("?{q}"));
                writeln!(
                    out,
                    "    e.g. {} {} {}{query}  (request {})",
                    e.principal, e.method, e.path, e.request_id
                )?;
            }
        }
        writeln!(
            out,
            "{flipped} of {} recorded requests would flip ({} → {}); {} decided otherwise today than when recorded; {} skipped",
            self.replayed, versions.0, versions.1, self.drifted, self.skipped
        )
    }
}

fn example(e: &Entry) -> Value {
    json!({
        "request_id": e.request_id, "principal": e.principal, "method": e.method,
        "path": e.path, "query": e.query, "recorded": e.decision,
    })
}
