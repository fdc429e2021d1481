//! The bundled profiles: their suites pass, `serve` agrees with `check` on every case, their
//! policies are formatted as `cedar format` formats them and carry `@id` (and `@reason` on
//! every forbid), and directory rules reject broken directories.

use std::path::{Path, PathBuf};

use crate::support::{fixture, iotgate, send, Upstream};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const PROFILES: [&str; 2] = ["thinger", "central"];

#[test]
fn bundled_suites_pass() {
    for profile in PROFILES {
        let dir = root().join("examples").join(profile);
        let (code, out) = iotgate(&[
            "check",
            "--config",
            dir.join("iotgate.toml").to_str().unwrap(),
            dir.join("checks.toml").to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{profile}:\n{out}");
        let last = out.lines().last().unwrap();
        assert!(last.ends_with(" passed, 0 failed"), "{profile}: {last}");
    }
}

/// Every case of both bundled suites gets the same status through `serve` as from `check`.
#[tokio::test]
async fn serve_agrees_with_check_on_the_bundled_suites() {
    use iotgate::Credentials;
    let up = Upstream::start().await;
    for profile in PROFILES {
        let dir = root().join("examples").join(profile);
        let loaded = iotgate::Loaded::load(&dir.join("iotgate.toml")).unwrap();
        let cases = iotgate::load_suite(&dir.join("checks.toml"), &loaded).unwrap();
        let signer = iotgate::Signer::from_config(&loaded.config).unwrap();
        let checker = iotgate::Checker::new(loaded);
        // the same profile, served in front of the recording upstream
        let mut served = iotgate::Loaded::load(&dir.join("iotgate.toml")).unwrap();
        served.config.server.as_mut().unwrap().upstream =
            Some(format!("http://{}", up.addr).parse().unwrap());
        let gateway = std::sync::Arc::new(
            iotgate::Gateway::new(&served.config, served.snapshot, served.verifier).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = iotgate::Running::start(listener, gateway.clone()).unwrap();
        for case in &cases {
            let Some(probe) = case.http() else { continue };
            let answer = checker.answer(probe).await;
            let decided = answer.status;
            let uri = format!("http://{}{}", running.addr, probe.uri);
            let mut req = http::Request::builder()
                .method(probe.method.clone())
                .uri(uri);
            for (k, v) in &probe.headers {
                req = req.header(k, v);
            }
            if let Credentials::Trusted(claims) = &probe.credentials {
                let mut claims = claims.clone();
                claims.insert("exp".into(), (iotgate::now() + 300).into());
                req = req.header(
                    "authorization",
                    format!("Bearer {}", signer.sign(&claims).unwrap()),
                );
            }
            let body = probe.body.clone().unwrap_or_default();
            let (status, _, _) = send(req.body(iotgate::full(body)).unwrap()).await;
            assert_eq!(
                status, decided,
                "{profile}: case `{}` ({})",
                case.name, case.request
            );
            // serve applied the write-through effects of what it forwarded; the next case
            // starts from the suite's directory again, as `check` decides it
            if answer.decision.is_allowed() && !answer.decision.effects.is_empty() {
                gateway.swap(iotgate::Snapshot::load(&served.config).unwrap());
            }
        }
        running.stop().await;
    }
}

fn cedar_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(cedar_files(&path));
        } else if path.extension().is_some_and(|e| e == "cedar") {
            out.push(path);
        }
    }
    out
}

/// Set `IOTGATE_FORMAT_POLICIES=write` to rewrite the files instead of failing.
#[test]
fn bundled_policies_are_cedar_formatted_and_annotated() {
    let config = cedar_policy_formatter::Config {
        line_width: 80,
        indent_width: 2,
    };
    let write = std::env::var("IOTGATE_FORMAT_POLICIES").is_ok_and(|v| v == "write");
    let mut files = cedar_files(&root().join("policies"));
    files.extend(cedar_files(&fixture("mini/policies")));
    assert!(files.len() >= 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let pretty = cedar_policy_formatter::policies_str_to_pretty(&text, &config).unwrap();
        if write && pretty != text {
            std::fs::write(&file, &pretty).unwrap();
            continue;
        }
        assert_eq!(
            text,
            pretty,
            "{} is not formatted as `cedar format` would",
            file.display()
        );
        let set: cedar_policy::PolicySet = text.parse().unwrap();
        for p in set.policies() {
            assert!(
                p.annotation("id").is_some(),
                "{}: a policy has no @id",
                file.display()
            );
            if p.effect() == cedar_policy::Effect::Forbid {
                assert!(
                    p.annotation("reason").is_some(),
                    "{}: forbid `{}` has no @reason",
                    file.display(),
                    p.annotation("id").unwrap()
                );
                let code = p.annotation("code");
                assert!(
                    !file.starts_with(root().join("policies"))
                        || code.is_some_and(|c| {
                            !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }),
                    "{}: bundled forbid `{}` has no snake_case @code",
                    file.display(),
                    p.annotation("id").unwrap()
                );
            }
        }
    }
}

#[test]
fn central_directory_rules_reject_broken_users() {
    let dir = tempfile::tempdir().unwrap();
    let central = root().join("examples/central");
    std::fs::write(
        dir.path().join("users.json"),
        r#"[
  {"uid": {"type": "Central::User", "id": "nobody"}, "attrs": {"role": "basic"}, "parents": []},
  {"uid": {"type": "Central::User", "id": "twice"}, "attrs": {"role": "basic"}, "parents": [{"type": "Central::Org", "id": "emea"}, {"type": "Central::Org", "id": "usa"}]},
  {"uid": {"type": "Central::User", "id": "king"}, "attrs": {"role": "king"}, "parents": [{"type": "Central::Org", "id": "emea"}]}
]"#,
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    let text = std::fs::read_to_string(central.join("iotgate.toml"))
        .unwrap()
        .replace("../../", &format!("{}/", root().display()))
        .replace(
            "\"secret.key\"",
            &format!("\"{}\"", central.join("secret.key").display()),
        )
        .replace(
            "directory = [\"directory\"]",
            &format!(
                "directory = [\"{}\", \"{}\"]",
                central.join("directory/orgs.json").display(),
                dir.path().join("users.json").display()
            ),
        );
    std::fs::write(&config, text).unwrap();
    let (code, out) = iotgate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("users.json:2: entity `Central::User::\"nobody\"` has 0 parents of type `Central::Org`; it needs exactly 1"), "{out}");
    assert!(out.contains("users.json:3: entity `Central::User::\"twice\"` has 2 parents of type `Central::Org`; it needs exactly 1"), "{out}");
    assert!(out.contains("users.json:4: entity `Central::User::\"king\"` has role `\"king\"`; expected one of: administrator, manager, technician, basic"), "{out}");
}
