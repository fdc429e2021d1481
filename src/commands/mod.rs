//! The commands, and the small ones here: `validate` and `token`.

pub(crate) mod check;
pub(crate) mod checker;
pub(crate) mod cli;
pub(crate) mod demo;
pub(crate) mod directory;
pub(crate) mod fmt;
pub(crate) mod import;
pub(crate) mod init;
pub(crate) mod lint;
#[cfg(feature = "prove")]
pub(crate) mod prove;
pub(crate) mod query;
pub(crate) mod replay;
pub(crate) mod report;

use std::io::Write;

use serde_json::{json, Value};

use crate::authn::{now, Signer};
use crate::authz::snapshot::Loaded;
use crate::commands::cli::{
    parse_claims, parse_ttl, Cli, Command, ExitStatus, ProbeArgs, ServeArgs, TokenArgs,
    ValidateArgs,
};
use crate::commands::report::{Finding, Format, Severity};
use crate::config::Config;
use crate::telemetry::LogFormat;

/// Runs the command line's command, writing its output to stdout.
pub fn run(cli: &Cli) -> ExitStatus {
    let mut out = std::io::stdout().lock();
    let result = match &cli.command {
        Command::Check(args) => check::run(args, &mut out),
        Command::Validate(args) => validate(args, &mut out),
        Command::Fmt(args) => fmt::run(args, &mut out),
        Command::Init(args) => init::run(args, &mut out),
        Command::Lint(args) => lint::run(args, &mut out),
        Command::Token(args) => token(args, &mut out),
        Command::Directory(args) => {
            runtime().and_then(|rt| rt.block_on(directory::run(args, &mut out)))
        }
        Command::Import(args) => runtime().and_then(|rt| rt.block_on(import::run(args, &mut out))),
        Command::Mock(args) => runtime().and_then(|rt| rt.block_on(import::mock(args, &mut out))),
        Command::Serve(args) => {
            let _log = crate::telemetry::init(cli.log_format);
            runtime().map(|rt| rt.block_on(serve(args, cli.log_format)))
        }
        Command::Probe(args) => runtime().map(|rt| rt.block_on(probe(args, &mut out))),
        Command::Demo => {
            let _log = crate::telemetry::init(cli.log_format);
            runtime().map(|rt| rt.block_on(demo::run(&mut out)))
        }
    };
    result.unwrap_or(ExitStatus::Error)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// `serve`: runs the gateway until a shutdown signal; start-up problems are printed (exit
/// 2): as `file:line: message` lines, or with `--log-format json` as JSON log lines (level
/// `ERROR`, `file`, `line`) a log collector parses like the rest.
pub(crate) async fn serve(args: &ServeArgs, format: LogFormat) -> ExitStatus {
    match crate::serve::run(&args.config.config).await {
        Ok(()) => ExitStatus::Ok,
        Err(problems) if format == LogFormat::Json => {
            for p in problems.iter() {
                let (file, line) = (p.file.display().to_string(), p.line.unwrap_or(0));
                tracing::error!(target: "iotgate::startup", file, line, "{}", p.message);
            }
            ExitStatus::Error
        }
        Err(problems) => {
            eprint!("{problems}");
            ExitStatus::Error
        }
    }
}

/// `probe`: one GET; 0 on 2xx, 1 on any other answer or none in time, 2 for a URL that is
/// not `http://host:port/path`.
pub(crate) async fn probe(args: &ProbeArgs, out: &mut dyn Write) -> ExitStatus {
    let uri = match args.url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => uri,
        _ => {
            eprintln!("probe: `{}` is not an http:// URL", args.url);
            return ExitStatus::Error;
        }
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let wait = std::time::Duration::from_secs(args.timeout.max(1));
    match tokio::time::timeout(wait, client.get(uri)).await {
        Ok(Ok(response)) if response.status().is_success() => {
            let _ = writeln!(out, "{}", response.status());
            ExitStatus::Ok
        }
        Ok(Ok(response)) => {
            let _ = writeln!(out, "{}", response.status());
            ExitStatus::Failed
        }
        Ok(Err(e)) => {
            eprintln!("probe: {e}");
            ExitStatus::Failed
        }
        Err(_) => {
            eprintln!("probe: no answer within {} s", wait.as_secs());
            ExitStatus::Failed
        }
    }
}

/// `validate`: loads config, keys, schema, routes, policies and directory; prints every
/// problem (exit 2) or a summary (exit 0).
pub(crate) fn validate(args: &ValidateArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let path = &args.config.config;
    let tls = Config::load(path)
        .ok()
        .and_then(|c| c.server)
        .and_then(|server| crate::serve::tls_of(&server).err());
    let loaded = match (Loaded::load(path), tls) {
        (Ok(loaded), None) => {
            let decide = crate::proxy::decide::problems(&loaded.config, &loaded.snapshot);
            decide.into_result(loaded)
        }
        (Ok(_), Some(tls)) => Err(tls),
        (Err(mut problems), tls) => {
            if let Some(tls) = tls {
                problems.extend(tls);
            }
            Err(problems)
        }
    };
    let (findings, summary) = match &loaded {
        Err(problems) => {
            let findings = problems
                .iter()
                .map(|p| Finding::of_problem(p, "load", Severity::Error))
                .collect();
            (findings, json!({ "ok": false }))
        }
        Ok(loaded) => {
            let s = &loaded.snapshot;
            let mut findings: Vec<Finding> = s
                .routes
                .warnings
                .iter()
                .map(|w| Finding::of_problem(w, "warning", Severity::Warning))
                .collect();
            findings.extend(
                s.warnings
                    .iter()
                    .map(|w| Finding::unlocated("warning", Severity::Warning, w)),
            );
            let summary = json!({
                "ok": true,
                "routes": s.routes.routes().len(),
                "policies": s.policies.set.policies().count(),
                "entities": s.directory.len(),
                "policy_version": &*s.policy_version,
                "directory_version": &*s.directory_version,
            });
            (findings, summary)
        }
    };
    match args.format {
        Format::Human => validate_text(&loaded, out)?,
        format => report::findings(format, "validate", &findings, summary, out)?,
    }
    Ok(match loaded {
        Ok(_) => ExitStatus::Ok,
        Err(_) => ExitStatus::Error,
    })
}

/// `validate`'s lines for people: every problem and a count, or the warnings and a summary.
fn validate_text(
    loaded: &Result<Loaded, crate::config::problem::Problems>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match loaded {
        Err(problems) => {
            write!(out, "{problems}")?;
            let n = problems.iter().count();
            writeln!(out, "{n} problem{}", if n == 1 { "" } else { "s" })
        }
        Ok(loaded) => {
            let s = &loaded.snapshot;
            for warning in &s.routes.warnings {
                writeln!(out, "warning: {warning}")?;
            }
            for warning in &s.warnings {
                writeln!(out, "warning: {warning}")?;
            }
            writeln!(
                out,
                "ok: {} routes, {} policies, {} entities; policy version {}, directory version {}",
                s.routes.routes().len(),
                s.policies.set.policies().count(),
                s.directory.len(),
                s.policy_version,
                s.directory_version
            )
        }
    }
}

/// `token`: mints a token for `--as` with the configured secret (or `--private-key`).
pub(crate) fn token(args: &TokenArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    match mint(args) {
        Ok(token) => {
            writeln!(out, "{token}")?;
            Ok(ExitStatus::Ok)
        }
        Err(m) => {
            writeln!(out, "error: {m}")?;
            Ok(ExitStatus::Error)
        }
    }
}

fn mint(args: &TokenArgs) -> Result<String, String> {
    let config = Config::load(&args.config.config).map_err(|p| p.to_string())?;
    let signer = match &args.private_key {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let alg = *config
                .auth
                .primary()
                .algorithms
                .first()
                .ok_or("no algorithm configured")?;
            Signer::private_pem(alg, &pem, args.kid.clone())?
        }
        None => Signer::from_config(&config)?,
    };
    let ttl = parse_ttl(&args.ttl)?;
    let mut claims = parse_claims(&args.claims)?;
    let issued = now();
    let issuer = config.auth.primary();
    claims.insert(
        issuer.principal_claim.clone(),
        Value::String(args.as_user.clone()),
    );
    claims.entry("iat").or_insert(Value::from(issued));
    claims.entry("exp").or_insert(Value::from(issued + ttl));
    if let Some(iss) = &issuer.issuer {
        claims.entry("iss").or_insert(Value::from(iss.clone()));
    }
    if let Some(aud) = &issuer.audience {
        claims.entry("aud").or_insert(Value::from(aud.clone()));
    }
    signer.sign(&claims)
}
