//! Command-line interface: clap types and exit statuses. `main` parses, the command
//! modules run.

use crate::commands::report::Format;
use crate::telemetry::LogFormat;
use std::path::PathBuf;
use std::process::{ExitCode, Termination};

use clap::{Parser, Subcommand};

/// iotgate: an authorization sidecar for IoT platforms.
#[derive(Debug, Parser)]
#[command(name = "iotgate", version, about)]
pub struct Cli {
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, global = true, default_value = "pretty")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run decision suites, or explain one decision.
    Check(CheckArgs),
    /// Load and validate everything; print every problem.
    Validate(ValidateArgs),
    /// Format policy files as `cedar format` does.
    Fmt(FmtArgs),
    /// Find what validation cannot: unknown entities, unconfined project policies, forbids
    /// without a reason, policies that can never apply.
    Lint(LintArgs),
    /// Write a self-contained deployment folder for a bundled profile.
    Init(InitArgs),
    /// Mint a token signed with the configured key, for trying things out.
    Token(TokenArgs),
    /// Read or change the directory of a running gateway (its admin listener's entity API).
    Directory(DirectoryArgs),
    /// Read a platform's REST API into directory files and project policies.
    Import(ImportArgs),
    /// Run a stand-in platform server (the Thinger or the Central API, state in memory),
    /// for trying `import`, `[directory.sync]` and write-through effects.
    Mock(MockArgs),
    /// Start a mock Thinger server and the gateway in front of it, with ready-to-paste curl lines.
    Demo,
    /// GET a health endpoint and exit 0 on a 2xx answer (a container HEALTHCHECK where
    /// the image has no curl).
    Probe(ProbeArgs),
}

/// `probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The URL (`http://127.0.0.1:9090/healthz`).
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// `import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Which platform.
    #[command(subcommand)]
    pub from: ImportFrom,
}

/// What every import takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportCommon {
    /// The server's base URL (`https://iot.example.com`).
    #[arg(long)]
    pub url: String,
    /// A file holding an administrator's API token (sent as a bearer token).
    #[arg(long)]
    pub token_file: PathBuf,
    /// The folder to write: `directory/*.json` and `policies/projects/*.cedar` (files it
    /// does not make in those two folders are removed); with `--to`, only the policies.
    #[arg(long, required_unless_present = "to")]
    pub out: Option<PathBuf>,
    /// The shared directory to write the entities to instead of `directory/*.json`
    /// (`postgres://user@host/db`, as `[directory] url`): as one batch every replica
    /// follows; entities of the imported types the server no longer has are removed.
    #[arg(long)]
    pub to: Option<String>,
    /// Write nothing: print what would change and exit 1 if anything would.
    #[arg(long)]
    pub check: bool,
}

/// `import` platforms.
#[derive(Debug, Clone, Subcommand)]
pub enum ImportFrom {
    /// A Thinger.io server: accounts, projects and their members' Allow/Deny sections,
    /// devices, buckets, dashboards, endpoints, storages, tokens and plugins.
    Thinger {
        /// Server, token, output.
        #[command(flatten)]
        common: ImportCommon,
        /// The subscription's own account (`original = true`; the API does not say which).
        #[arg(long)]
        original: Option<String>,
        /// The Cedar schema whose actions Allow/Deny sections expand to (default: the
        /// bundled `thinger` schema).
        #[arg(long)]
        schema: Option<PathBuf>,
    },
    /// An IoT Central-style server: the organization tree under `--root`, its users and devices.
    Central {
        /// Server, token, output.
        #[command(flatten)]
        common: ImportCommon,
        /// The top organization.
        #[arg(long)]
        root: String,
    },
}

/// `mock`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Which API.
    #[arg(value_enum)]
    pub flavor: MockFlavor,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// The state to start from (default: `examples/<flavor>/platform.json`, built in).
    #[arg(long)]
    pub state: Option<PathBuf>,
}

/// The APIs `mock` serves.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MockFlavor {
    /// Thinger.io's `/v1/users/…`.
    Thinger,
    /// The `central` profile's `/api/…`.
    Central,
}

/// `--config FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The gateway configuration (TOML).
    #[arg(long, short = 'c', env = "IOTGATE_CONFIG")]
    pub config: PathBuf,
}

/// `directory`.
#[derive(Debug, Clone, clap::Args)]
pub struct DirectoryArgs {
    /// The configuration (its `admin_listen` and `[admin] token_file`).
    #[command(flatten)]
    pub config: ConfigArg,
    /// The admin listener's address (`host:port`), when not the config's `admin_listen`.
    #[arg(long)]
    pub admin: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub op: DirectoryOp,
}

/// `directory` operations.
#[derive(Debug, Clone, Subcommand)]
pub enum DirectoryOp {
    /// Print an entity.
    Get {
        /// Qualified entity type (`Thinger::User`).
        entity_type: String,
        /// Entity id.
        id: String,
    },
    /// Replace or create an entity: `{"attrs": {…}, "parents": [{"type", "id"}]}`.
    Put {
        /// Qualified entity type.
        entity_type: String,
        /// Entity id.
        id: String,
        /// The entity's attributes and parents, as JSON.
        json: String,
    },
    /// Remove an entity.
    Delete {
        /// Qualified entity type.
        entity_type: String,
        /// Entity id.
        id: String,
    },
    /// Set `enabled = false` on an account of the principal type.
    DisableUser {
        /// The account id.
        id: String,
    },
}

/// `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Decision suites (TOML files of `[[case]]`s).
    #[arg(required_unless_present_any = ["request", "replay", "prove", "what_can", "who_can"], conflicts_with_all = ["request", "replay", "what_can", "who_can"])]
    pub suites: Vec<PathBuf>,
    /// List what this account may do (with `--on`: the actions on that entity; without:
    /// every action and resource), as the decision API's searches answer.
    #[arg(long, value_name = "USER", conflicts_with_all = ["request", "replay", "against", "who_can"])]
    pub what_can: Option<String>,
    /// List the accounts that may take this action on `--on`.
    #[arg(long, value_name = "ACTION", requires = "on", conflicts_with_all = ["request", "replay", "against"])]
    pub who_can: Option<String>,
    /// The entity of `--what-can` / `--who-can`, as a Cedar uid (`Thinger::Device::"dave/sensor1"`).
    #[arg(long, value_name = "UID")]
    pub on: Option<String>,
    /// One request to explain, as "METHOD /path?query".
    #[arg(long)]
    pub request: Option<String>,
    /// Token to send with `--request` (verified like `serve` does).
    #[arg(long, requires = "request", conflicts_with = "as_user")]
    pub token: Option<String>,
    /// Decide as this user without a token signature.
    #[arg(long = "as", value_name = "USER", requires = "request", required_unless_present_any = ["token", "suites", "anonymous", "replay", "prove", "what_can", "who_can"])]
    pub as_user: Option<String>,
    /// Send no token: the anonymous principal on a public route (`auth` `none` or
    /// `optional`), 401 elsewhere.
    #[arg(long, requires = "request", conflicts_with_all = ["token", "as_user"])]
    pub anonymous: bool,
    /// Extra claims with `--as` (`k=v`, v read as JSON when it parses, else a string).
    #[arg(long = "claim", value_name = "K=V", requires = "as_user")]
    pub claims: Vec<String>,
    /// JSON body for `--request`.
    #[arg(long, requires = "request")]
    pub body: Option<String>,
    /// Output format: `human`, `json`, or `junit` (suites only).
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// The same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Report every suite case (or `--replay` request) whose decision would change with this
    /// policy folder instead.
    #[arg(long, value_name = "DIR", conflicts_with = "request")]
    pub against: Option<PathBuf>,
    /// Decide again every request recorded in this file (`[log] decision_inputs`), with the
    /// live and the candidate policies (`--against`) and directory (`--directory-against`),
    /// and report the decisions that flip.
    #[arg(long, value_name = "FILE", conflicts_with = "request")]
    pub replay: Option<PathBuf>,
    /// With `--against`: prove, over every request and directory the schema allows, whether
    /// the candidate permits anything the live policies deny (needs cvc5; see README).
    #[arg(long, requires = "against", conflicts_with_all = ["replay", "coverage"])]
    pub prove: bool,
    /// With `--prove`: a widening is reported but does not fail (exit 0).
    #[arg(long, requires = "prove")]
    pub allow_widening: bool,
    /// With `--replay`: the candidate directory folder.
    #[arg(long, value_name = "DIR", requires = "replay")]
    pub directory_against: Option<PathBuf>,
    /// After the suites, list the policies that determined no case.
    #[arg(long, conflicts_with_all = ["request", "against", "replay"])]
    pub coverage: bool,
    /// Fail (exit 1) when fewer than PCT % of the policies determined a case (implies
    /// `--coverage`).
    #[arg(long, value_name = "PCT", conflicts_with_all = ["request", "against", "replay"])]
    pub coverage_min: Option<f64>,
}

impl CheckArgs {
    /// The output format asked for (`--json` is `--format json`).
    pub fn output(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

/// `validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

/// `init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Which bundled profile.
    #[arg(long, value_enum)]
    pub profile: Profile,
    /// The folder to write (missing or empty).
    pub dir: PathBuf,
}

/// The bundled profiles.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Profile {
    /// Thinger.io accounts, projects and their members.
    Thinger,
    /// IoT Central-style roles over an organization tree.
    Central,
}

/// `lint`.
#[derive(Debug, Clone, clap::Args)]
pub struct LintArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// `warnings`: fail (exit 1) on warnings too.
    #[arg(long, value_name = "WHAT", value_parser = ["warnings"])]
    pub deny: Option<String>,
    /// Also ask the solver (cvc5, as `check --prove`) which policies can raise an error,
    /// match nothing, or are shadowed by others.
    #[arg(long)]
    pub prove: bool,
}

impl LintArgs {
    /// Whether warnings fail the run.
    pub fn deny_warnings(&self) -> bool {
        self.deny.is_some()
    }
}

/// `fmt`.
#[derive(Debug, Clone, clap::Args)]
pub struct FmtArgs {
    /// Policy files, or folders whose `*.cedar` files are formatted.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Write nothing: list the files that would change and exit 1 if any would.
    #[arg(long)]
    pub check: bool,
}

/// `token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The principal the token names.
    #[arg(long = "as", value_name = "USER")]
    pub as_user: String,
    /// Extra claims (`k=v`, v read as JSON when it parses, else a string).
    #[arg(long = "claim", value_name = "K=V")]
    pub claims: Vec<String>,
    /// Lifetime: `90s`, `30m`, `1h`, `2d` or seconds.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Private key PEM (PKCS#8) to sign with, for configs that verify with a public key.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// `kid` header to set.
    #[arg(long, requires = "private_key")]
    pub kid: Option<String>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything passed / was allowed.
    Ok,
    /// A check case failed, or the explained request was rejected.
    Failed,
    /// Configuration, policy or usage error.
    Error,
}

impl Termination for ExitStatus {
    fn report(self) -> ExitCode {
        match self {
            ExitStatus::Ok => ExitCode::SUCCESS,
            ExitStatus::Failed => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
        }
    }
}

/// Parses `k=v` claim arguments; `v` is JSON when it parses, else a string.
///
/// # Errors
/// An argument without `=`.
pub(crate) fn parse_claims(
    args: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut out = serde_json::Map::new();
    for arg in args {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| format!("claim `{arg}` is not k=v"))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

/// Parses a duration: `90s`, `30m`, `1h`, `2d`, or plain seconds.
///
/// # Errors
/// Not a number with an optional unit.
pub(crate) fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    Ok(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_durations() {
        let c = parse_claims(&["dev=d1".into(), "res=[\"a\"]".into(), "n=3".into()]).unwrap();
        assert_eq!(c["dev"], "d1");
        assert_eq!(c["res"], serde_json::json!(["a"]));
        assert_eq!(c["n"], 3);
        assert!(parse_claims(&["nope".into()]).is_err());
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("45"), Ok(45));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn cli_shape_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
