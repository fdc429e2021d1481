//! `iotgate check --config F --against CANDIDATE --prove [--allow-widening]`: whether a
//! policy change lets through any request the live policies refuse, over every request and
//! every directory the schema allows — Cedar's symbolic compiler (cedar-policy-symcc) and an
//! SMT solver (cvc5), not tests.
//!
//! ```text
//! live set, candidate set ─▶ for each request type the schema allows (principal type,
//!   action, resource type): compile both ─▶ solver: candidate ⇒ live? (no: a widening, with
//!   a counterexample) ─ live ⇒ candidate? (no: a narrowing) ─▶ one line per change, each
//!   counterexample as a policy-level `check` case ─▶ exit 1 on a widening
//! ```
//!
//! What is proved is Cedar's decision; iotgate also denies a request on which a policy raises
//! an error. So a live policy that the candidate removes or changes, and that can raise an
//! error for a request type, could hide a widening there (today's error-deny gone): such a
//! request type is reported `UNSURE` and fails like a widening. Policies the candidate keeps
//! as they are err alike on both sides and hide nothing.

use std::io::Write;
use std::path::Path;

use cedar_policy::PolicySet;
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};

use crate::authz::snapshot::Loaded;
use crate::commands::cli::{CheckArgs, ExitStatus};
use crate::model::policy::Policies;

/// Runs the proof.
pub(crate) async fn run(
    loaded: &Loaded,
    args: &CheckArgs,
    candidate_dir: &Path,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    let catalog = &loaded.snapshot.catalog;
    let candidate = match Policies::load(&[candidate_dir.to_path_buf()], Some(catalog)) {
        Ok(p) => p,
        Err(problems) => {
            write!(out, "{problems}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let solver = match LocalSolver::cvc5() {
        Ok(solver) => solver,
        Err(e) => {
            writeln!(out, "error: cannot start cvc5 ({e}): set CVC5 to a cvc5 ≥ 1.3.1 executable (`scripts/setup-cvc5.sh` makes one from the PyPI wheel)")?;
            return Ok(ExitStatus::Error);
        }
    };
    let mut prover = match CedarSymCompiler::new(solver) {
        Ok(p) => p,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let live = &loaded.snapshot.policies.set;
    // live policies the candidate removes or rewrites: only their errors can hide a widening
    let changed: Vec<&cedar_policy::Policy> = live
        .policies()
        .filter(|p| {
            candidate
                .set
                .policy(p.id())
                .is_none_or(|c| c.to_string() != p.to_string())
        })
        .collect();
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    for env in catalog.schema.request_envs() {
        let shown = format!(
            "{} for {} on {}",
            env.action(),
            env.principal(),
            env.resource()
        );
        tally.types += 1;
        let outcome = compare(&mut prover, live, &candidate.set, &env, &catalog.schema).await;
        let outcome = match outcome {
            Ok((None, narrowing)) => {
                match can_error(&mut prover, &changed, &env, &catalog.schema).await {
                    Ok(Some(id)) => {
                        tally.unsure += 1;
                        writeln!(out, "UNSURE   {shown}: live policy `{id}`, which the candidate changes, can raise an error here (iotgate denies such a request; the proof covers Cedar's decision only)")?;
                        continue;
                    }
                    Ok(None) => Ok((None, narrowing)),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        match outcome {
            Err(e) => {
                tally.failed += 1;
                writeln!(out, "ERROR    {shown}: {e}")?;
            }
            Ok((None, None)) => tally.same += 1,
            Ok((widening, narrowing)) => {
                if let Some(cex) = widening {
                    tally.widened += 1;
                    writeln!(out, "WIDENS   {shown}: the candidate allows, today denies:")?;
                    write_case(out, &shown, &cex, "deny")?;
                }
                if let Some(cex) = narrowing {
                    tally.narrowed += 1;
                    writeln!(out, "NARROWS  {shown}: today allows, the candidate denies:")?;
                    write_case(out, &shown, &cex, "allow")?;
                }
            }
        }
    }
    writeln!(
        out,
        "{} request types: {} widen, {} narrow, {} unchanged, {} unsure, {} not proved ({:.1} s)",
        tally.types,
        tally.widened,
        tally.narrowed,
        tally.same,
        tally.unsure,
        tally.failed,
        started.elapsed().as_secs_f64()
    )?;
    Ok(if tally.failed > 0 {
        ExitStatus::Error
    } else if tally.widened + tally.unsure > 0 && !args.allow_widening {
        ExitStatus::Failed
    } else {
        ExitStatus::Ok
    })
}

/// Request types, and how many of them the change widens, narrows, leaves alone, or could
/// not be proved for.
#[derive(Default)]
struct Tally {
    types: usize,
    widened: usize,
    narrowed: usize,
    same: usize,
    /// Request types where a changed live policy can error (a widening cannot be ruled out).
    unsure: usize,
    failed: usize,
}

/// The first of `policies` that can raise an evaluation error for the request type.
async fn can_error(
    prover: &mut CedarSymCompiler<LocalSolver>,
    policies: &[&cedar_policy::Policy],
    env: &cedar_policy::RequestEnv,
    schema: &cedar_policy::Schema,
) -> Result<Option<cedar_policy::PolicyId>, String> {
    for policy in policies {
        let compiled = CompiledPolicy::compile(policy, env, schema).map_err(|e| e.to_string())?;
        if !prover
            .check_never_errors_opt(&compiled)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Some(policy.id().clone()));
        }
    }
    Ok(None)
}

/// (a request the candidate allows and the live set denies, the reverse), for one request
/// type.
async fn compare(
    prover: &mut CedarSymCompiler<LocalSolver>,
    live: &PolicySet,
    candidate: &PolicySet,
    env: &cedar_policy::RequestEnv,
    schema: &cedar_policy::Schema,
) -> Result<(Option<Env>, Option<Env>), String> {
    let compiled =
        |set: &PolicySet| CompiledPolicySet::compile(set, env, schema).map_err(|e| e.to_string());
    let (live, candidate) = (compiled(live)?, compiled(candidate)?);
    let widening = prover
        .check_implies_with_counterexample_opt(&candidate, &live)
        .await
        .map_err(|e| e.to_string())?;
    let narrowing = prover
        .check_implies_with_counterexample_opt(&live, &candidate)
        .await
        .map_err(|e| e.to_string())?;
    Ok((widening, narrowing))
}

/// A counterexample as a policy-level `check` case expecting what the live set decides.
fn write_case(out: &mut dyn Write, shown: &str, cex: &Env, today: &str) -> std::io::Result<()> {
    let request = &cex.request;
    let text = |v: Option<String>| toml::Value::String(v.unwrap_or_default()).to_string();
    let context = request
        .context()
        .and_then(|c| c.to_json_value().ok())
        .map(|v| v.to_string());
    let entities = cex.entities.to_json_value().ok().map(|v| v.to_string());
    writeln!(out, "[[case]]")?;
    writeln!(out, "name = {}", text(Some(format!("proved: {shown}"))))?;
    writeln!(
        out,
        "principal = {}",
        text(request.principal().map(|p| p.to_string()))
    )?;
    writeln!(
        out,
        "action = {}",
        text(request.action().map(|a| a.to_string()))
    )?;
    writeln!(
        out,
        "resource = {}",
        text(request.resource().map(|r| r.to_string()))
    )?;
    writeln!(out, "context = {}", text(context))?;
    writeln!(out, "entities = {}", text(entities))?;
    writeln!(out, "expect = \"{today}\"")?;
    writeln!(out)
}

/// What the solver finds in one policy set for `lint --prove`: each policy that can raise
/// an evaluation error, that matches no request at all, or that is shadowed (removing it
/// changes no decision), as (policy id, code, message).
///
/// # Errors
/// The solver cannot be started or fails on a query.
pub(crate) async fn lint(
    set: &PolicySet,
    schema: &cedar_policy::Schema,
) -> Result<Vec<(cedar_policy::PolicyId, &'static str, String)>, String> {
    let solver = LocalSolver::cvc5()
        .map_err(|e| format!("cannot start cvc5 ({e}): set CVC5 (see `scripts/setup-cvc5.sh`)"))?;
    let mut prover = CedarSymCompiler::new(solver).map_err(|e| e.to_string())?;
    let envs: Vec<cedar_policy::RequestEnv> = schema.request_envs().collect();
    let mut findings = Vec::new();
    for policy in set.policies() {
        let id = policy.id();
        let (mut matches_somewhere, mut errs, mut shadowed) = (false, None, true);
        for env in &envs {
            let compiled =
                CompiledPolicy::compile(policy, env, schema).map_err(|e| e.to_string())?;
            if prover
                .check_never_matches_opt(&compiled)
                .await
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            matches_somewhere = true;
            if errs.is_none()
                && !prover
                    .check_never_errors_opt(&compiled)
                    .await
                    .map_err(|e| e.to_string())?
            {
                errs = Some(format!("{} on {}", env.action(), env.resource()));
            }
            if shadowed {
                let mut without = set.clone();
                let _ = without.remove_static(id.clone());
                let (all, rest) = (
                    CompiledPolicySet::compile(set, env, schema).map_err(|e| e.to_string())?,
                    CompiledPolicySet::compile(&without, env, schema).map_err(|e| e.to_string())?,
                );
                shadowed = prover
                    .check_equivalent_opt(&all, &rest)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        if !matches_somewhere {
            findings.push((
                id.clone(),
                "never-matches",
                format!("policy `{id}` matches no request the schema allows, in any directory"),
            ));
            continue;
        }
        if let Some(at) = &errs {
            findings.push((id.clone(), "can-error", format!("policy `{id}` can raise an evaluation error ({at}); iotgate denies such a request, where Cedar alone would ignore an erroring forbid")));
        }
        // an erroring policy decides (iotgate denies on its errors), so it is never shadowed
        if shadowed && errs.is_none() {
            findings.push((
                id.clone(),
                "shadowed",
                format!(
                    "policy `{id}` is shadowed: removing it alone changes no decision, in any directory"
                ),
            ));
        }
    }
    Ok(findings)
}
