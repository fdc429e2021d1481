//! `iotgate demo`: the thinger example profile in front of a built-in mock Thinger server,
//! with ready-to-paste tokens and curl lines. No arguments, no files.
//!
//! ```text
//! embedded examples/thinger profile ──written to a temp folder──▶ serve::bind (as `serve`)
//! mock Thinger API (platform::mock, 127.0.0.1:<any>) ◀── gateway (127.0.0.1:8080, or any free
//!   port; admin listener on 127.0.0.1:9090, or any free port)
//! tokens for an admin, a developer, a guest project member and a disabled account
//!   ──▶ stdout: export lines + curl lines, each with the status it should get
//! Ctrl-C ──▶ gateway drains, mock stops, temp folder removed, exit 0
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;
use tokio::net::TcpListener;

use crate::authn::{now, Signer};
use crate::commands::cli::ExitStatus;
use crate::platform::mock::{Flavor, Platform};

/// The thinger example beyond the profile's own files (`init::THINGER`): its project
/// policies, directory and secret, as (path relative to the demo folder, content).
const EXAMPLE: &[(&str, &str)] = &[
    (
        "policies/thinger/projects/dave@greenhouse.cedar",
        include_str!("../../policies/thinger/projects/dave@greenhouse.cedar"),
    ),
    (
        "policies/thinger/projects/erin@fleet.cedar",
        include_str!("../../policies/thinger/projects/erin@fleet.cedar"),
    ),
    (
        "examples/thinger/directory/users.json",
        include_str!("../../examples/thinger/directory/users.json"),
    ),
    (
        "examples/thinger/directory/resources.json",
        include_str!("../../examples/thinger/directory/resources.json"),
    ),
    (
        "examples/thinger/secret.key",
        include_str!("../../examples/thinger/secret.key"),
    ),
];

/// Every file the demo writes: the profile's, then the example's.
fn profile() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    super::init::THINGER.iter().chain(EXAMPLE)
}

/// Where the gateway listens when the port is free.
const PREFERRED: &str = "127.0.0.1:8080";
/// Where its admin listener listens when the port is free.
const PREFERRED_ADMIN: &str = "127.0.0.1:9090";

/// Lifetime of the printed tokens.
const TOKEN_TTL: u64 = 24 * 3600;

/// Runs the demo until Ctrl-C.
pub(crate) async fn run(out: &mut dyn Write) -> ExitStatus {
    match run_inner(out).await {
        Ok(()) => ExitStatus::Ok,
        Err(message) => {
            eprintln!("demo: {message}");
            ExitStatus::Error
        }
    }
}

async fn run_inner(out: &mut dyn Write) -> Result<(), String> {
    let folder = TempFolder::new()?;
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_addr = upstream.local_addr().map_err(|e| e.to_string())?;
    let seed = serde_json::from_str(super::import::THINGER_STATE).map_err(|e| e.to_string())?;
    let mock = tokio::spawn(Platform::new(Flavor::Thinger, &seed)?.serve(upstream));
    let config = folder.write_profile(upstream_addr)?;
    // the same start as `serve`: every check, then the listeners, the admin one included
    let bound = crate::serve::bind(&config)
        .await
        .map_err(|p| p.to_string())?;
    let signer = Signer::from_config(bound.config())?;
    let (Some(addr), admin) = bound.addrs() else {
        return Err("the listener has no address".into());
    };
    print_tour(out, addr, admin, &signer).map_err(|e| e.to_string())?;
    bound.serve().await;
    mock.abort();
    let _ = writeln!(out, "demo stopped");
    Ok(())
}

/// A temporary folder removed on drop.
struct TempFolder(PathBuf);

impl TempFolder {
    fn new() -> Result<TempFolder, String> {
        let path = std::env::temp_dir().join(format!("iotgate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempFolder(path))
    }

    /// Writes the embedded profile and a config pointing at the mock; returns the config path.
    fn write_profile(&self, upstream: SocketAddr) -> Result<PathBuf, String> {
        for (rel, text) in profile() {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let config = self.0.join("examples/thinger/iotgate.toml");
        std::fs::write(&config, demo_config(upstream)).map_err(|e| e.to_string())?;
        Ok(config)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `preferred` when nothing listens there, else any free port.
fn free_or_any(preferred: &str) -> &str {
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => "127.0.0.1:0",
    }
}

fn demo_config(upstream: SocketAddr) -> String {
    let (listen, admin) = (free_or_any(PREFERRED), free_or_any(PREFERRED_ADMIN));
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nupstream = \"http://{upstream}\"\n\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"secret.key\"\nprincipal_claim = \"usr\"\nquery_parameter = \"authorization\"\n\n\
         [policy]\nschema = \"../../schema/thinger.cedarschema\"\nroutes = \"../../schema/thinger.routes.toml\"\n\
         policies = [\"../../policies/thinger\"]\ndirectory = [\"directory\"]\nreload = \"off\"\n\n\
         [license]\nmax_accounts = 5\n"
    )
}

/// One line of the tour: who, what, and the status it should get.
struct Call {
    who: &'static str,
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: u16,
    why: &'static str,
}

const CALLS: &[Call] = &[
    Call {
        who: "ADMIN",
        method: "GET",
        path: "/v1/users",
        body: None,
        expect: 200,
        why: "admins list accounts",
    },
    Call {
        who: "ADMIN",
        method: "POST",
        path: "/v1/users",
        body: Some(r#"{"user":"hank","role":"member"}"#),
        expect: 200,
        why: "guest accounts are never limited",
    },
    Call {
        who: "ADMIN",
        method: "POST",
        path: "/v1/users",
        body: Some(r#"{"user":"ivy","role":"user"}"#),
        expect: 403,
        why: "license_exhausted: 5 of 5 developer/admin accounts in use",
    },
    Call {
        who: "ADMIN",
        method: "GET",
        path: "/v1/users/dave/devices/lab",
        body: None,
        expect: 403,
        why: "accounts are isolated, admins included",
    },
    Call {
        who: "DEVELOPER",
        method: "GET",
        path: "/v1/users/dave/devices",
        body: None,
        expect: 200,
        why: "a developer works in their own account",
    },
    Call {
        who: "DEVELOPER",
        method: "POST",
        path: "/v3/users/dave/devices/sensor1/resources/led",
        body: Some(r#"{"in":true}"#),
        expect: 200,
        why: "and calls their own devices",
    },
    Call {
        who: "DEVELOPER",
        method: "GET",
        path: "/v1/users/erin/devices/truck2",
        body: None,
        expect: 403,
        why: "but not another account's",
    },
    Call {
        who: "GUEST",
        method: "GET",
        path: "/v1/users/dave/devices/sensor1",
        body: None,
        expect: 200,
        why: "project dave@greenhouse shares sensor1 with bob",
    },
    Call {
        who: "GUEST",
        method: "POST",
        path: "/v3/users/dave/devices/sensor1/resources/led",
        body: Some(r#"{"in":true}"#),
        expect: 403,
        why: "the project's Deny section: no calls",
    },
    Call {
        who: "GUEST",
        method: "POST",
        path: "/v1/users/bob/devices",
        body: None,
        expect: 403,
        why: "guests create nothing",
    },
    Call {
        who: "DISABLED",
        method: "GET",
        path: "/v1/users/frank/devices",
        body: None,
        expect: 403,
        why: "disabled accounts can do nothing",
    },
];

fn print_tour(
    out: &mut dyn Write,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    signer: &Signer,
) -> std::io::Result<()> {
    let accounts = [
        ("ADMIN", "olivia", "admin"),
        ("DEVELOPER", "dave", "developer"),
        ("GUEST", "bob", "guest, member of project dave@greenhouse"),
        ("DISABLED", "frank", "developer, disabled"),
    ];
    writeln!(
        out,
        "iotgate demo: the thinger profile in front of a mock Thinger server"
    )?;
    writeln!(
        out,
        "gateway: http://{addr}   (decisions are logged on stderr; Ctrl-C stops)"
    )?;
    if let Some(admin) = admin {
        writeln!(out, "admin:   http://{admin}/status  /metrics  /readyz  (loopback only; its directory endpoints need [admin] token_file)")?;
    }
    writeln!(out)?;
    writeln!(out, "# tokens (valid 24 h):")?;
    for (var, user, role) in accounts {
        let mut claims = serde_json::Map::new();
        claims.insert("usr".into(), Value::from(user));
        claims.insert("iat".into(), Value::from(now()));
        claims.insert("exp".into(), Value::from(now() + TOKEN_TTL));
        let token = signer.sign(&claims).map_err(std::io::Error::other)?;
        writeln!(out, "export {var}='{token}'   # {user}: {role}")?;
    }
    writeln!(out)?;
    writeln!(out, "# calls, each with the status it gets:")?;
    for c in CALLS {
        let body = c
            .body
            .map(|b| format!(" -H 'Content-Type: application/json' -d '{b}'"))
            .unwrap_or_default();
        writeln!(
            out,
            "curl -si -X {} -H \"Authorization: Bearer ${}\"{body} http://{addr}{}   # {} {}",
            c.method, c.who, c.path, c.expect, c.why
        )?;
    }
    writeln!(
        out,
        "curl -si http://{addr}/v1/users/dave/devices   # 401 no token (reason token_missing)"
    )?;
    writeln!(out, "curl -si -d 'grant_type=password&username=dave&password=secret' http://{addr}/oauth/token   # 200 login needs no token (public.cedar)")?;
    writeln!(out, "curl -si -d 'grant_type=client_credentials' http://{addr}/oauth/token   # 403 no_permit: that grant is not public")?;
    writeln!(out, "curl -si --path-as-is -H \"Authorization: Bearer $DEVELOPER\" http://{addr}/v1/users/dave/../erin/devices   # 400 dot segments are refused")?;
    writeln!(out)?;
    writeln!(out, "# explain a decision without the server:")?;
    writeln!(out, "#   cargo run -- check --config examples/thinger/iotgate.toml --request \"POST /v3/users/dave/devices/sensor1/resources/led\" --as bob")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The files the demo embeds, relative to the crate root.
    fn embedded_paths() -> impl Iterator<Item = &'static Path> {
        profile().map(|(rel, _)| Path::new(*rel))
    }

    /// The demo embeds every file of the example profile, so it cannot drift from it.
    #[test]
    fn embedded_profile_matches_the_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk: Vec<PathBuf> = Vec::new();
        for dir in ["policies/thinger", "examples/thinger/directory"] {
            on_disk.extend(
                crate::config::files::files_with_extension(&root.join(dir), "cedar")
                    .unwrap()
                    .into_iter()
                    .chain(
                        crate::config::files::files_with_extension(&root.join(dir), "json")
                            .unwrap(),
                    ),
            );
        }
        for file in &on_disk {
            let rel = file.strip_prefix(root).unwrap();
            assert!(
                embedded_paths().any(|p| p == rel),
                "{} is not embedded in the demo",
                rel.display()
            );
        }
        for (rel, text) in profile() {
            assert_eq!(
                &std::fs::read_to_string(root.join(rel)).unwrap(),
                text,
                "{rel}"
            );
        }
    }
}
