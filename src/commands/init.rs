//! `iotgate init --profile thinger|central DIR`: a self-contained deployment folder that
//! works where it is written, from the profile files built into the binary.
//!
//! ```text
//! bundled schema, routes, base policies ─▶ DIR/schema/, DIR/policies/ (+ empty projects/)
//! config with paths relative to DIR ─▶ DIR/iotgate.toml; a fresh random secret ─▶ DIR/secret.key (0600)
//! empty DIR/directory/, starter DIR/checks.toml ─▶ printed next steps
//! ```
//!
//! DIR must be missing or empty: `init` never overwrites a deployment.

use std::io::Write;
use std::path::Path;

use crate::commands::cli::{ExitStatus, InitArgs, Profile};

/// The `thinger` profile's schema, routes and base policies (path in the crate, content).
pub(crate) const THINGER: &[(&str, &str)] = &[
    (
        "schema/thinger.cedarschema",
        include_str!("../../schema/thinger.cedarschema"),
    ),
    (
        "schema/thinger.routes.toml",
        include_str!("../../schema/thinger.routes.toml"),
    ),
    (
        "policies/thinger/VERSION",
        include_str!("../../policies/thinger/VERSION"),
    ),
    (
        "policies/thinger/accounts.cedar",
        include_str!("../../policies/thinger/accounts.cedar"),
    ),
    (
        "policies/thinger/ownership.cedar",
        include_str!("../../policies/thinger/ownership.cedar"),
    ),
    (
        "policies/thinger/public.cedar",
        include_str!("../../policies/thinger/public.cedar"),
    ),
    (
        "policies/thinger/roles.cedar",
        include_str!("../../policies/thinger/roles.cedar"),
    ),
    (
        "policies/thinger/tokens.cedar",
        include_str!("../../policies/thinger/tokens.cedar"),
    ),
];

/// The `central` profile's schema, routes and policies.
const CENTRAL: &[(&str, &str)] = &[
    (
        "schema/central.cedarschema",
        include_str!("../../schema/central.cedarschema"),
    ),
    (
        "schema/central.routes.toml",
        include_str!("../../schema/central.routes.toml"),
    ),
    (
        "policies/central/VERSION",
        include_str!("../../policies/central/VERSION"),
    ),
    (
        "policies/central/moves.cedar",
        include_str!("../../policies/central/moves.cedar"),
    ),
    (
        "policies/central/public.cedar",
        include_str!("../../policies/central/public.cedar"),
    ),
    (
        "policies/central/ranks.cedar",
        include_str!("../../policies/central/ranks.cedar"),
    ),
    (
        "policies/central/roles.cedar",
        include_str!("../../policies/central/roles.cedar"),
    ),
    (
        "policies/central/suborgs.cedar",
        include_str!("../../policies/central/suborgs.cedar"),
    ),
];

/// What `init` writes for a profile besides its files.
struct Starter {
    files: &'static [(&'static str, &'static str)],
    config: &'static str,
    /// A request that needs an account (the starter suite sends it without and as a stranger).
    guarded: &'static str,
    /// The public login request and its body (a TOML value).
    login: &'static str,
    login_body: &'static str,
}

impl Starter {
    /// The starter `checks.toml`: three cases that hold on an empty directory.
    fn checks(&self) -> String {
        let Starter {
            guarded,
            login,
            login_body,
            ..
        } = self;
        format!(
            r#"# Decision suite: iotgate check --config iotgate.toml checks.toml
# Add a case for every rule you rely on; `--coverage` lists the policies no case reaches.

[[case]]
name = "a request without a token is refused"
anonymous = true
request = "{guarded}"
expect = 401

[[case]]
name = "an account the directory does not have is not let in"
as = "nobody"
request = "{guarded}"
expect = 401

[[case]]
name = "login needs no token"
anonymous = true
request = "{login}"
body = {login_body}
expect = "allow"
"#
        )
    }
}

const THINGER_STARTER: Starter = Starter {
    files: THINGER,
    config: r#"# iotgate in front of a Thinger.io server (`iotgate init --profile thinger`).
# Relative paths are relative to this file. Check it: iotgate validate --config iotgate.toml
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"            # /healthz /readyz /metrics /status (keep it off the public network)
upstream = "http://127.0.0.1:8081"        # your Thinger server
max_body_bytes = 65536

[auth]
algorithms = ["HS256"]                    # Thinger signs its tokens with HS256
hs256_secret_file = "secret.key"          # put the server's signing secret here
principal_claim = "usr"
query_parameter = "authorization"         # websockets and SSE carry ?authorization=<jwt>
leeway_seconds = 30

[policy]
schema = "schema/thinger.cedarschema"
routes = "schema/thinger.routes.toml"
policies = ["policies"]                   # project files go to policies/projects/
directory = ["directory"]                 # `iotgate import thinger … --out .` fills it
reload = "watch"

[cache]
max_entries = 100000
ttl_seconds = 30

[license]
max_accounts = 5                          # your subscription's account limit
"#,
    guarded: "GET /v1/users/nobody/devices",
    login: "POST /oauth/token",
    login_body: r#""grant_type=password&username=alice&password=secret""#,
};

const CENTRAL_STARTER: Starter = Starter {
    files: CENTRAL,
    config: r#"# iotgate in front of an IoT Central-style server (`iotgate init --profile central`).
# Relative paths are relative to this file. Check it: iotgate validate --config iotgate.toml
[server]
listen = "127.0.0.1:8090"
admin_listen = "127.0.0.1:9091"            # /healthz /readyz /metrics /status (keep it off the public network)
upstream = "http://127.0.0.1:8091"        # your server
max_body_bytes = 65536

[auth]
algorithms = ["HS256"]
hs256_secret_file = "secret.key"          # put the server's signing secret here
principal_claim = "sub"
leeway_seconds = 30

[policy]
schema = "schema/central.cedarschema"
routes = "schema/central.routes.toml"
policies = ["policies"]
directory = ["directory"]                 # `iotgate import central … --out .` fills it
reload = "watch"
"#,
    guarded: "GET /api/devices/d1",
    login: "POST /auth/login",
    login_body: r#"{ username = "alice", password = "secret" }"#,
};

/// Runs `init`: exit 0 written, 2 the folder is not empty or cannot be written.
pub(crate) fn run(args: &InitArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let starter = match args.profile {
        Profile::Thinger => &THINGER_STARTER,
        Profile::Central => &CENTRAL_STARTER,
    };
    let dir = &args.dir;
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        writeln!(
            out,
            "error: {} is not empty; init writes a new deployment folder only",
            dir.display()
        )?;
        return Ok(ExitStatus::Error);
    }
    if let Err(e) = write(starter, dir) {
        writeln!(out, "error: {}: {e}", dir.display())?;
        return Ok(ExitStatus::Error);
    }
    let config = dir.join("iotgate.toml");
    let checks = dir.join("checks.toml");
    writeln!(out, "wrote {}", dir.display())?;
    writeln!(out, "next:")?;
    writeln!(
        out,
        "  put your server's token signing secret in {}",
        dir.join("secret.key").display()
    )?;
    writeln!(out, "  iotgate validate --config {}", config.display())?;
    writeln!(
        out,
        "  iotgate check --config {} {}",
        config.display(),
        checks.display()
    )?;
    writeln!(out, "  iotgate serve --config {}", config.display())?;
    Ok(ExitStatus::Ok)
}

fn write(starter: &Starter, dir: &Path) -> std::io::Result<()> {
    for (rel, text) in starter.files {
        // policies/<profile>/x.cedar ─▶ policies/x.cedar
        let target = match rel.strip_prefix("policies/") {
            Some(rest) => Path::new("policies").join(rest.split_once('/').map_or(rest, |r| r.1)),
            None => Path::new(rel).to_path_buf(),
        };
        put(&dir.join(target), text)?;
    }
    std::fs::create_dir_all(dir.join("policies/projects"))?;
    std::fs::create_dir_all(dir.join("directory"))?;
    put(&dir.join("iotgate.toml"), starter.config)?;
    put(&dir.join("checks.toml"), &starter.checks())?;
    let secret = dir.join("secret.key");
    put(&secret, &random_secret()?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn put(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

/// 32 random bytes as hex: a placeholder secret nobody else has until the real one is put
/// there.
fn random_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!("{}\n", crate::config::files::hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Each profile embeds every base policy file of its folder (project files are examples,
    /// not the profile), its schema and routes, as they are on disk.
    #[test]
    fn embedded_profiles_match_the_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, files) in [("thinger", THINGER), ("central", CENTRAL)] {
            let dir = root.join("policies").join(name);
            let mut on_disk: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect();
            on_disk.push(root.join(format!("schema/{name}.cedarschema")));
            on_disk.push(root.join(format!("schema/{name}.routes.toml")));
            for file in &on_disk {
                let rel = file.strip_prefix(root).unwrap();
                assert!(
                    files.iter().any(|(p, _)| Path::new(p) == rel),
                    "{} is not embedded in the {name} profile",
                    rel.display()
                );
            }
            assert_eq!(files.len(), on_disk.len(), "{name}");
            for (rel, text) in files {
                assert_eq!(
                    &std::fs::read_to_string(root.join(rel)).unwrap(),
                    text,
                    "{rel}"
                );
            }
        }
    }
}
