//! `iotgate check`: decision suites and single explained decisions, answered by the same
//! HTTP handler as `serve` (`checker`: `Gateway::exchange` on an offline gateway: no cache,
//! a stand-in upstream), so statuses and error codes are `serve`'s.
//!
//! ```text
//! config ─▶ Loaded ─┬─ suite.toml [[case]] ─▶ Probe ─▶ Checker ─▶ Answer ─▶ PASS/FAIL line
//!                   │                                    (status, error, decision) … "N passed, M failed"
//!                   └─ --request/--as/--token/--body ─▶ Probe ─▶ Checker ─▶ explanation
//! ```
//!
//! Exit status: 0 all cases passed (single mode: allowed), 1 a case failed (single mode:
//! rejected), 2 the config, policies, directory or a suite file has a problem.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::authn::{now, Signer};
use crate::authz::decision::{Credentials, Outcome};
use crate::authz::snapshot::{Loaded, Snapshot};
use crate::commands::checker::{Answer, CedarProbe, Checker, Probe};
use crate::commands::cli::{parse_claims, CheckArgs, ExitStatus};
use crate::commands::report::{self, CaseResult, Format};
use crate::config::problem::{Problem, Problems};
use crate::config::tomlfile;

/// With `[directory] store = "postgres"`, the shared directory read from the database and
/// laid over the files' directory, as `serve` does on start: `check` decides on what a
/// replica serves (less a replica's own outbox of effects not yet delivered). No decision
/// is made on the files alone when the database cannot be read.
///
/// # Errors
/// The database cannot be reached or read.
async fn with_shared_directory(loaded: &mut Loaded) -> Result<(), String> {
    let Some(store) = crate::proxy::shared_store(&loaded.config).map_err(|p| p.to_string())? else {
        return Ok(());
    };
    let (patch, seq) = crate::store::load(&loaded.snapshot, &store)
        .await
        .map_err(|e| format!("the shared directory ([directory] store = \"postgres\"): {e}"))?;
    let shared = crate::store::finish(&loaded.snapshot, patch, seq);
    loaded.snapshot = shared;
    Ok(())
}

/// Lifetime given to tokens minted for `sign = true` cases without `exp`.
const SIGNED_CASE_TTL: u64 = 300;

/// Runs `check`.
pub(crate) fn run(args: &CheckArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let mut loaded = match Loaded::load(&args.config.config) {
        Ok(l) => l,
        Err(problems) => {
            write!(out, "{problems}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Err(problem) = with_shared_directory(&mut loaded).await {
            writeln!(out, "{problem}")?;
            return Ok(ExitStatus::Error);
        }
        // JWKS URLs are fetched once, so `check --token` verifies as `serve` would
        for remote in loaded.verifier.remotes() {
            if let Err(e) = remote.fetch().await {
                writeln!(out, "warning: JWKS {}: {e}", remote.status().url)?;
            }
        }
        if let Some(file) = &args.replay {
            return super::replay::run(loaded, args, file, out).await;
        }
        if args.what_can.is_some() || args.who_can.is_some() {
            return super::query::run(&loaded.snapshot, args, out);
        }
        if let (true, Some(dir)) = (args.prove, &args.against) {
            return prove(&loaded, args, dir, out).await;
        }
        match (&args.request, &args.against) {
            (Some(request), _) => explain_one(loaded, args, request, out).await,
            (None, Some(dir)) => compare(loaded, args, dir, out).await,
            (None, None) => run_suites(loaded, args, out).await,
        }
    })
}

/// `check --against DIR`: decides every case with the live policies and with the policies
/// of `DIR` (same schema, routes and directory, the shared one included) and reports,
/// apart, the cases whose verdict changes (status) and those where only the determining
/// policies do. Exit 0 when no verdict would change, 1 when one would.
async fn compare(
    loaded: Loaded,
    args: &CheckArgs,
    dir: &Path,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    let mut candidate_config = loaded.config.clone();
    candidate_config.policy.policies = vec![dir.to_path_buf()];
    let candidate = Snapshot::load(&candidate_config).map(|snapshot| Loaded {
        config: candidate_config,
        snapshot: crate::store::with_live_shared(&loaded.snapshot, snapshot),
        verifier: loaded.verifier.clone(),
    });
    let (cases, mut problems) = load_suites(&args.suites, &loaded);
    let candidate = problems.take(candidate);
    let Some(candidate) = candidate.filter(|_| problems.is_empty()) else {
        write!(out, "{problems}")?;
        return Ok(ExitStatus::Error);
    };
    let (live, candidate) = (Checker::new(loaded), Checker::new(candidate));
    let mut changes = Vec::new();
    for case in &cases {
        let before = live.answer_case(&case.kind).await;
        let after = candidate.answer_case(&case.kind).await;
        let change = match (
            before.status != after.status,
            before.decision.policies != after.decision.policies,
        ) {
            (true, _) => Change::Verdict,
            (false, true) => Change::Policies,
            (false, false) => continue,
        };
        changes.push((change, case, before, after));
    }
    let verdicts = changes.iter().filter(|c| c.0 == Change::Verdict).count();
    let versions = (live.policy_version(), candidate.policy_version());
    match args.output() {
        Format::Human => {
            for (change, case, before, after) in &changes {
                let label = match change {
                    Change::Verdict => "VERDICT ",
                    Change::Policies => "POLICIES",
                };
                writeln!(
                    out,
                    "{label}  {}  ({}): {} → {}",
                    case.name, case.request, before.decision, after.decision
                )?;
            }
            writeln!(
                out,
                "{verdicts} of {} cases would change verdict, {} only their determining policies ({} → {})",
                cases.len(),
                changes.len() - verdicts,
                versions.0,
                versions.1
            )?;
        }
        format => {
            let results: Vec<CaseResult> = changes
                .iter()
                .map(|(change, case, before, after)| {
                    let mut r = case.result(after, None);
                    if *change == Change::Verdict {
                        r.failure = Some(format!("{} → {}", before.decision, after.decision));
                    }
                    r
                })
                .collect();
            let list = |which: Change| -> Vec<Value> {
                changes
                    .iter()
                    .filter(|c| c.0 == which)
                    .map(|(_, case, before, after)| {
                        json!({
                            "suite": case.suite, "name": case.name, "request": case.request,
                            "before": {"status": before.status.as_u16(), "decision": before.decision.to_string(), "policies": before.decision.policies},
                            "after": {"status": after.status.as_u16(), "decision": after.decision.to_string(), "policies": after.decision.policies},
                        })
                    })
                    .collect()
            };
            let extra = json!({
                "against": dir,
                "live_version": &*versions.0,
                "candidate_version": &*versions.1,
                "compared": cases.len(),
                "verdict_changed": list(Change::Verdict),
                "policies_changed": list(Change::Policies),
            });
            match format {
                Format::Json => report::json("check", extra, out)?,
                _ => report::cases(format, &results, extra, out)?,
            }
        }
    }
    Ok(if verdicts == 0 {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}

#[cfg(feature = "prove")]
async fn prove(
    loaded: &Loaded,
    args: &CheckArgs,
    dir: &Path,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    super::prove::run(loaded, args, dir, out).await
}

#[cfg(not(feature = "prove"))]
async fn prove(
    _: &Loaded,
    _: &CheckArgs,
    _: &Path,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    writeln!(
        out,
        "error: this iotgate was built without the `prove` feature"
    )?;
    Ok(ExitStatus::Error)
}

/// How a case's decision changes under the candidate policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Another status.
    Verdict,
    /// The same status, other determining policies.
    Policies,
}

async fn explain_one(
    loaded: Loaded,
    args: &CheckArgs,
    request: &str,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    let probe = match single_probe(&loaded, args, request) {
        Ok(p) => p,
        Err(m) => {
            writeln!(out, "error: {m}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let answer = Checker::new(loaded).answer(&probe).await;
    let explanation = Explanation::from(&answer);
    match args.output() {
        Format::Human => explanation.write_text(out)?,
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&explanation).unwrap_or_default()
        )?,
        Format::Junit => {
            writeln!(
                out,
                "error: --format junit reports suites; use human or json for --request"
            )?;
            return Ok(ExitStatus::Error);
        }
    }
    Ok(if answer.decision.is_allowed() {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}

fn single_probe(loaded: &Loaded, args: &CheckArgs, request: &str) -> Result<Probe, String> {
    let probe = match (&args.token, &args.as_user) {
        (Some(token), _) => Probe::parse(request, Credentials::Token)?.with_token(token)?,
        (None, Some(user)) => {
            let mut claims = parse_claims(&args.claims)?;
            claims.insert(
                loaded.config.auth.principal_claim.clone(),
                Value::String(user.clone()),
            );
            Probe::parse(request, Credentials::Trusted(claims))?
        }
        (None, None) if args.anonymous => Probe::parse(request, Credentials::Token)?,
        (None, None) => return Err("give --token, --as or --anonymous".into()),
    };
    Ok(match &args.body {
        Some(b) => probe.with_body(b.clone().into_bytes()),
        None => probe,
    })
}

/// A decision as `check` and logs present it.
#[derive(Debug, Serialize)]
pub(crate) struct Explanation<'d> {
    /// HTTP status (200 = forwarded).
    pub status: u16,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Error code of the JSON body, when rejected.
    pub error: Option<&'d str>,
    /// Reason code of the JSON body, when rejected.
    pub reason: Option<&'d str>,
    /// Why, in words, when rejected.
    pub detail: Option<String>,
    /// Principal.
    pub principal: Option<&'d str>,
    /// Route name.
    pub route: Option<&'d str>,
    /// Cedar action.
    pub action: Option<&'d str>,
    /// Cedar resource.
    pub resource: Option<String>,
    /// Determining policy ids.
    pub policies: &'d [String],
    /// `@reason` annotations of the determining policies.
    pub reasons: &'d [String],
    /// Evaluation errors.
    pub errors: &'d [String],
    /// Policy version.
    pub policy_version: &'d str,
    /// Directory version.
    pub directory_version: &'d str,
}

impl<'d> From<&'d Answer> for Explanation<'d> {
    fn from(answer: &'d Answer) -> Self {
        let d = &answer.decision;
        let detail = match &d.outcome {
            Outcome::Allow => None,
            Outcome::Reject(r) => Some(r.to_string()),
        };
        Explanation {
            status: answer.status.as_u16(),
            decision: if d.is_allowed() { "allow" } else { "deny" },
            error: answer.error.as_deref(),
            reason: answer.reason.as_deref(),
            detail,
            principal: d.principal.as_deref(),
            route: d.route.as_deref(),
            action: d.action.as_deref(),
            resource: d.resource.as_ref().map(ToString::to_string),
            policies: &d.policies,
            reasons: &d.reasons,
            errors: &d.errors,
            policy_version: &d.policy_version,
            directory_version: &d.directory_version,
        }
    }
}

impl Explanation<'_> {
    fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join("; ")
            }
        };
        let verdict = match &self.detail {
            Some(d) => format!("deny ({} {d})", self.status),
            None => "allow".to_string(),
        };
        writeln!(out, "decision:       {verdict}")?;
        if let Some(reason) = self.reason {
            writeln!(out, "reason:         {reason}")?;
        }
        writeln!(out, "principal:      {}", or_dash(self.principal))?;
        writeln!(out, "route:          {}", or_dash(self.route))?;
        writeln!(out, "action:         {}", or_dash(self.action))?;
        writeln!(out, "resource:       {}", or_dash(self.resource.as_deref()))?;
        writeln!(out, "policies:       {}", list(self.policies))?;
        writeln!(out, "reasons:        {}", list(self.reasons))?;
        writeln!(out, "errors:         {}", list(self.errors))?;
        writeln!(out, "policy version: {}", self.policy_version)?;
        writeln!(out, "directory:      {}", self.directory_version)
    }
}

// === suites ===

#[derive(Debug, Deserialize)]
struct SuiteFile {
    #[serde(default, rename = "case")]
    cases: Vec<FileCase>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expect {
    Word(String),
    Status(u16),
}

#[derive(Debug, Deserialize)]
struct FileCase {
    name: String,
    #[serde(rename = "as")]
    as_user: Option<String>,
    token: Option<String>,
    claims: Option<toml::Table>,
    #[serde(default)]
    sign: bool,
    #[serde(default)]
    anonymous: bool,
    request: Option<String>,
    body: Option<toml::Value>,
    /// A policy-level case (what `--prove` prints): `principal`, `action`, `resource` as
    /// Cedar uids, `context` and `entities` as Cedar JSON text.
    principal: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    context: Option<String>,
    entities: Option<String>,
    expect: Expect,
    reasons: Option<Vec<String>>,
    /// The `reason` code the client is told.
    reason: Option<String>,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Allow,
    Deny,
    Status(u16),
}

impl Expected {
    fn matches(&self, answer: &Answer) -> bool {
        match self {
            Expected::Allow => answer.decision.is_allowed() && answer.status.is_success(),
            Expected::Deny => answer.status == http::StatusCode::FORBIDDEN,
            Expected::Status(s) => answer.status.as_u16() == *s,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Allow => write!(f, "allow"),
            Expected::Deny => write!(f, "deny (403)"),
            Expected::Status(s) => write!(f, "{s}"),
        }
    }
}

/// A compiled suite case.
#[derive(Debug)]
pub struct Case {
    /// The suite file it is written in.
    pub suite: std::path::PathBuf,
    /// Its name.
    pub name: String,
    /// The request line as written (a policy-level case: its Cedar request).
    pub request: String,
    /// What to decide.
    pub kind: CaseKind,
    expect: Expected,
    reasons: Option<Vec<String>>,
    reason: Option<String>,
}

/// What a case decides.
#[derive(Debug)]
pub enum CaseKind {
    /// An HTTP request, answered as `serve` would.
    Http(Probe),
    /// A Cedar request over its own entities, decided by the policies alone.
    Cedar(CedarProbe),
}

impl Checker {
    /// Answers a case of either kind.
    pub async fn answer_case(&self, kind: &CaseKind) -> Answer {
        match kind {
            CaseKind::Http(probe) => self.answer(probe).await,
            CaseKind::Cedar(probe) => self.answer_cedar(probe),
        }
    }
}

impl Case {
    /// The HTTP request of an HTTP case.
    pub fn http(&self) -> Option<&Probe> {
        match &self.kind {
            CaseKind::Http(probe) => Some(probe),
            CaseKind::Cedar(_) => None,
        }
    }

    /// How the case ended with `answer` (`failure`: why it did not pass).
    fn result(&self, answer: &Answer, failure: Option<String>) -> CaseResult {
        CaseResult {
            suite: self.suite.clone(),
            name: self.name.clone(),
            request: self.request.clone(),
            status: answer.status.as_u16(),
            decision: answer.decision.to_string(),
            policies: answer.decision.policies.clone(),
            failure,
            question: answer.question.clone(),
        }
    }
}

async fn run_suites(
    loaded: Loaded,
    args: &CheckArgs,
    out: &mut dyn Write,
) -> std::io::Result<ExitStatus> {
    let (cases, problems) = load_suites(&args.suites, &loaded);
    if !problems.is_empty() {
        write!(out, "{problems}")?;
        return Ok(ExitStatus::Error);
    }
    let policies = PolicyList::of(&loaded.snapshot);
    let checker = Checker::new(loaded);
    let mut results = Vec::with_capacity(cases.len());
    for case in &cases {
        let answer = checker.answer_case(&case.kind).await;
        results.push(case.result(&answer, verdict(case, &answer).err()));
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let want_coverage = args.coverage || args.coverage_min.is_some();
    let coverage = want_coverage.then(|| policies.coverage(&results));
    let format = args.output();
    match format {
        Format::Human => {
            for r in &results {
                match &r.failure {
                    None => writeln!(out, "PASS  {}  ({} → {})", r.name, r.request, r.decision)?,
                    Some(why) => writeln!(out, "FAIL  {}  ({}): {why}", r.name, r.request)?,
                }
            }
            writeln!(out, "{} passed, {failed} failed", results.len() - failed)?;
            if let Some(coverage) = &coverage {
                coverage.write_text(out)?;
            }
        }
        format => {
            let extra = coverage
                .as_ref()
                .map_or(Value::Null, |c| json!({ "coverage": c }));
            report::cases(format, &results, extra, out)?;
        }
    }
    let below = match (&coverage, args.coverage_min) {
        (Some(c), Some(min)) if c.percent < min => {
            if format == Format::Human {
                writeln!(
                    out,
                    "coverage {:.1} % is below the minimum {min} %",
                    c.percent
                )?;
            }
            true
        }
        _ => false,
    };
    Ok(if failed == 0 && !below {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}

/// Every policy of the live set and where it is written, for coverage.
struct PolicyList(Vec<(String, Option<std::path::PathBuf>, Option<usize>)>);

/// The policies that determined no case.
#[derive(Debug, Serialize)]
struct Coverage {
    /// Policies in the set.
    policies: usize,
    /// Policies that determined at least one case.
    covered: usize,
    /// `covered / policies` in percent (100 for an empty set).
    percent: f64,
    /// The others, with file and line.
    uncovered: Vec<Uncovered>,
}

#[derive(Debug, Serialize)]
struct Uncovered {
    id: String,
    file: Option<std::path::PathBuf>,
    line: Option<usize>,
}

impl PolicyList {
    fn of(snapshot: &Snapshot) -> PolicyList {
        let policies = &snapshot.policies;
        let mut list: Vec<_> = policies
            .set
            .policies()
            .map(|p| {
                let origin = policies.origins.get(p.id());
                let (file, line) = origin.map_or((None, None), |o| (Some(o.file.clone()), o.line));
                (p.id().to_string(), file, line)
            })
            .collect();
        list.sort_by(|a, b| (&a.1, a.2, &a.0).cmp(&(&b.1, b.2, &b.0)));
        PolicyList(list)
    }

    fn coverage(&self, results: &[CaseResult]) -> Coverage {
        let determined: std::collections::HashSet<&str> = results
            .iter()
            .flat_map(|r| r.policies.iter().map(String::as_str))
            .collect();
        let uncovered: Vec<Uncovered> = self
            .0
            .iter()
            .filter(|(id, _, _)| !determined.contains(id.as_str()))
            .map(|(id, file, line)| Uncovered {
                id: id.clone(),
                file: file.clone(),
                line: *line,
            })
            .collect();
        let policies = self.0.len();
        let covered = policies - uncovered.len();
        let percent = match policies {
            0 => 100.0,
            n => covered as f64 * 100.0 / n as f64,
        };
        Coverage {
            policies,
            covered,
            percent,
            uncovered,
        }
    }
}

impl Coverage {
    fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "coverage: {} of {} policies determined a case ({:.1} %)",
            self.covered, self.policies, self.percent
        )?;
        for u in &self.uncovered {
            let place = match (&u.file, u.line) {
                (Some(f), Some(l)) => format!("{}:{l}", f.display()),
                (Some(f), None) => f.display().to_string(),
                (None, _) => "-".to_string(),
            };
            writeln!(out, "  not covered: {}  ({place})", u.id)?;
        }
        Ok(())
    }
}

fn verdict(case: &Case, answer: &Answer) -> Result<(), String> {
    let d = &answer.decision;
    if !case.expect.matches(answer) {
        let mut why = match answer.status == d.status() {
            true => format!("expected {}, got {d}", case.expect),
            false => format!(
                "expected {}, got {} ({d})",
                case.expect,
                answer.status.as_u16()
            ),
        };
        if !d.errors.is_empty() {
            why.push_str(&format!(" (errors: {})", d.errors.join("; ")));
        }
        return Err(why);
    }
    if let Some(want) = &case.reasons {
        let mut want = want.clone();
        want.sort();
        if want != d.policies {
            return Err(format!(
                "expected determining policies [{}], got [{}]",
                want.join(", "),
                d.policies.join(", ")
            ));
        }
    }
    if let Some(want) = case.reason.as_deref() {
        if answer.reason.as_deref() != Some(want) {
            let got = answer.reason.as_deref().unwrap_or("none");
            return Err(format!("expected reason `{want}`, got `{got}`"));
        }
    }
    Ok(())
}

/// Reads and compiles suite files: every case that compiles, and every problem.
fn load_suites(paths: &[std::path::PathBuf], loaded: &Loaded) -> (Vec<Case>, Problems) {
    let mut problems = Problems::new();
    let mut cases = Vec::new();
    for path in paths {
        if let Some(c) = problems.take(load_suite(path, loaded)) {
            cases.extend(c);
        }
    }
    (cases, problems)
}

/// Reads and compiles a suite file.
///
/// # Errors
/// Every problem of the file and its cases, with lines.
pub fn load_suite(path: &Path, loaded: &Loaded) -> Result<Vec<Case>, Problems> {
    let parsed: tomlfile::Parsed<SuiteFile> = tomlfile::load(path)?;
    let mut problems = parsed.unknown;
    let mut cases = Vec::new();
    for (i, c) in parsed.value.cases.into_iter().enumerate() {
        match compile_case(c, path, loaded) {
            Ok(case) => cases.push(case),
            Err(m) => problems.push(parsed.file.problem(&format!("case.{i}"), m)),
        }
    }
    if cases.is_empty() && problems.is_empty() {
        problems.push(Problem::in_file(path, "no [[case]] in this suite"));
    }
    problems.into_result(cases)
}

fn compile_case(c: FileCase, suite: &Path, loaded: &Loaded) -> Result<Case, String> {
    let expect = expected(&c.expect)?;
    if c.principal.is_some() || c.action.is_some() || c.resource.is_some() {
        let (request, probe) = cedar_case(&c, loaded)?;
        return Ok(Case {
            suite: suite.to_path_buf(),
            name: c.name,
            request,
            kind: CaseKind::Cedar(probe),
            expect,
            reasons: c.reasons,
            reason: c.reason,
        });
    }
    let Some(request) = c.request.clone() else {
        return Err("a case needs `request` (or `principal`, `action` and `resource`)".into());
    };
    let mut claims: Map<String, Value> = match &c.claims {
        Some(t) => serde_json::to_value(t)
            .map_err(|e| e.to_string())?
            .as_object()
            .cloned()
            .unwrap_or_default(),
        None => Map::new(),
    };
    if let Some(user) = &c.as_user {
        claims.insert(
            loaded.config.auth.principal_claim.clone(),
            Value::String(user.clone()),
        );
    }
    let named = c.as_user.is_some() || c.claims.is_some();
    if c.anonymous && (named || c.token.is_some()) {
        return Err("an `anonymous` case sends no `token`, `as` or `claims`".into());
    }
    let probe = match (&c.token, named, c.sign) {
        (Some(_), true, _) => return Err("give `token` or `as`/`claims`, not both".into()),
        (Some(token), false, _) => Probe::parse(&request, Credentials::Token)?.with_token(token)?,
        (None, true, true) => {
            claims
                .entry("exp")
                .or_insert_with(|| Value::from(now() + SIGNED_CASE_TTL));
            let token = Signer::from_config(&loaded.config)?.sign(&claims)?;
            Probe::parse(&request, Credentials::Token)?.with_token(&token)?
        }
        (None, true, false) => Probe::parse(&request, Credentials::Trusted(claims))?,
        (None, false, _) if c.anonymous => Probe::parse(&request, Credentials::Token)?,
        (None, false, _) => {
            return Err("a case needs `as`, `claims`, `token` or `anonymous = true`".into())
        }
    };
    let probe = match &c.body {
        None => probe,
        Some(toml::Value::String(s)) => probe.with_body(s.clone().into_bytes()),
        Some(v) => probe.with_body(serde_json::to_vec(v).map_err(|e| e.to_string())?),
    };
    Ok(Case {
        suite: suite.to_path_buf(),
        name: c.name,
        request,
        kind: CaseKind::Http(probe),
        expect,
        reasons: c.reasons,
        reason: c.reason,
    })
}

fn expected(expect: &Expect) -> Result<Expected, String> {
    match expect {
        Expect::Word(w) if w == "allow" => Ok(Expected::Allow),
        Expect::Word(w) if w == "deny" => Ok(Expected::Deny),
        Expect::Word(w) => Err(format!(
            "expect `{w}`: use \"allow\", \"deny\" or an HTTP status"
        )),
        Expect::Status(s) if (100..600).contains(s) => Ok(Expected::Status(*s)),
        Expect::Status(s) => Err(format!("expect {s} is not an HTTP status")),
    }
}

/// A policy-level case's request (validated against the schema) and entities, and how it
/// is shown (`principal action resource`).
fn cedar_case(c: &FileCase, loaded: &Loaded) -> Result<(String, CedarProbe), String> {
    let uid = |name: &str, v: &Option<String>| -> Result<cedar_policy::EntityUid, String> {
        let text = v
            .as_deref()
            .ok_or_else(|| format!("a policy-level case needs `{name}`"))?;
        text.parse().map_err(|e| format!("`{name}` {text}: {e}"))
    };
    let (principal, action, resource) = (
        uid("principal", &c.principal)?,
        uid("action", &c.action)?,
        uid("resource", &c.resource)?,
    );
    if c.request.is_some() || c.as_user.is_some() || c.token.is_some() || c.body.is_some() {
        return Err("a policy-level case has no `request`, `as`, `token` or `body`".into());
    }
    let schema = &loaded.snapshot.catalog.schema;
    let context = match &c.context {
        None => cedar_policy::Context::empty(),
        Some(text) => cedar_policy::Context::from_json_str(text, Some((schema, &action)))
            .map_err(|e| format!("`context`: {e}"))?,
    };
    let entities = match &c.entities {
        None => cedar_policy::Entities::empty(),
        Some(text) => cedar_policy::Entities::from_json_str(text, Some(schema))
            .map_err(|e| format!("`entities`: {e}"))?,
    };
    let shown = format!("{principal} {action} {resource}");
    let request = cedar_policy::Request::new(principal, action, resource, context, Some(schema))
        .map_err(|e| format!("the request does not fit the schema: {e}"))?;
    Ok((shown, CedarProbe { request, entities }))
}
