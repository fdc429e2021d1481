//! `check`, `validate` and `token` through the real binary on the fixture profiles.

use crate::support::{fixture, iotgate};

fn mini_config() -> String {
    fixture("mini/iotgate.toml").display().to_string()
}

#[test]
fn mini_suite_passes_with_one_line_per_case() {
    let suite = fixture("mini/checks.toml").display().to_string();
    let (code, out) = iotgate(&["check", "--config", &mini_config(), &suite]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 16, "{out}");
    assert!(lines[..15].iter().all(|l| l.starts_with("PASS  ")), "{out}");
    assert_eq!(lines[15], "15 passed, 0 failed");
}

#[test]
fn failing_cases_exit_1_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("s.toml");
    std::fs::write(
        &suite,
        r#"
[[case]]
name = "wrong expectation"
as = "bob"
request = "GET /v1/users/alice/devices/d2"
expect = "allow"

[[case]]
name = "wrong reasons"
as = "alice"
request = "GET /v1/users/alice/devices/d1"
expect = "allow"
reasons = ["shared.allow"]

[[case]]
name = "right"
as = "alice"
request = "GET /v1/users/alice/devices/d1"
expect = 200
"#,
    )
    .unwrap();
    let (code, out) = iotgate(&["check", "--config", &mini_config(), suite.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  wrong expectation  (GET /v1/users/alice/devices/d2): expected allow, got 403 forbidden"), "{out}");
    assert!(out.contains("FAIL  wrong reasons  (GET /v1/users/alice/devices/d1): expected determining policies [shared.allow], got [owner-full]"), "{out}");
    assert!(out.contains("PASS  right"), "{out}");
    assert!(out.ends_with("1 passed, 2 failed\n"), "{out}");
}

#[test]
fn broken_suite_is_a_config_error() {
    let bad = fixture("bad/bad-suite.toml").display().to_string();
    let (code, out) = iotgate(&["check", "--config", &mini_config(), &bad]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "bad-suite.toml:1: a case needs `as`, `claims`, `token` or `anonymous = true`"
        ),
        "{out}"
    );
    assert!(out.contains("bad-suite.toml:6: expect `maybe`"), "{out}");
    assert!(
        out.contains("bad-suite.toml:15: unknown key `case.2.reqest`"),
        "{out}"
    );
}

#[test]
fn single_request_is_explained_in_text_and_json() {
    let (code, out) = iotgate(&[
        "check",
        "--config",
        &mini_config(),
        "--request",
        "GET /v1/users/alice/devices/d1/temp",
        "--as",
        "alice",
        "--claim",
        "dev=d1",
        "--claim",
        "res=[\"hum\"]",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("decision:       deny (403 forbidden)"),
        "{out}"
    );
    assert!(
        out.contains("policies:       device-token-resources"),
        "{out}"
    );
    assert!(
        out.contains(
            "reasons:        device-token-resources: device token does not list this resource"
        ),
        "{out}"
    );
    assert!(out.contains("policy version: mini-1@"), "{out}");

    let (code, out) = iotgate(&[
        "check",
        "--config",
        &mini_config(),
        "--request",
        "GET /v1/users/alice/devices/d1",
        "--as",
        "bob",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["status"], 200);
    assert_eq!(v["policies"], serde_json::json!(["shared.allow"]));
    assert_eq!(v["action"], "Mini::Action::\"ReadDevice\"");
    assert_eq!(v["resource"], "Mini::Device::\"alice/d1\"");
}

/// `check` answers with `serve`'s HTTP handling: a body over `max_body_bytes` on a route that
/// reads it is 413, as `serve` answers, not a decision on the body.
#[test]
fn check_answers_an_oversized_body_as_serve_does() {
    let body = serde_json::json!({"id": "x", "role": "member", "pad": "p".repeat(70_000)});
    let (code, out) = iotgate(&[
        "check",
        "--config",
        &mini_config(),
        "--request",
        "POST /v1/users",
        "--as",
        "root",
        "--body",
        &body.to_string(),
        "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 413, "{out}");
    assert_eq!(v["error"], "payload_too_large");
}

/// A config without `[server]` (only `serve` needs one) is checked with the defaults.
#[test]
fn check_needs_no_server_section() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("mini/iotgate.toml")).unwrap();
    let (_, rest) = text.split_once("[auth]").unwrap();
    let m = fixture("mini");
    let rest = rest
        .replace("../keys/", &format!("{}/../keys/", m.display()))
        .replace("\"schema/", &format!("\"{}/schema/", m.display()))
        .replace("[\"policies\"]", &format!("[\"{}/policies\"]", m.display()))
        .replace(
            "[\"directory\"]",
            &format!("[\"{}/directory\"]", m.display()),
        );
    let config = dir.path().join("iotgate.toml");
    std::fs::write(&config, format!("[auth]{rest}")).unwrap();
    let suite = fixture("mini/checks.toml").display().to_string();
    let (code, out) = iotgate(&["check", "--config", config.to_str().unwrap(), &suite]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("15 passed, 0 failed\n"), "{out}");
}

#[test]
fn minted_tokens_verify_through_check() {
    let (code, token) = iotgate(&[
        "token",
        "--config",
        &mini_config(),
        "--as",
        "bob",
        "--ttl",
        "5m",
    ]);
    assert_eq!(code, 0, "{token}");
    let token = token.trim();
    let (code, out) = iotgate(&[
        "check",
        "--config",
        &mini_config(),
        "--request",
        "GET /v1/users/alice/devices/d1",
        "--token",
        token,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("principal:      bob"), "{out}");
    let (code, out) = iotgate(&[
        "check",
        "--config",
        &mini_config(),
        "--request",
        "GET /v1/users/alice/devices/d1",
        "--token",
        &format!("{token}x"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("401 not authenticated: bad signature"),
        "{out}"
    );
}

#[test]
fn validate_accepts_the_mini_profile() {
    let (code, out) = iotgate(&["validate", "--config", &mini_config()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ok: 10 routes, 11 policies, 9 entities; policy version mini-1@"),
        "{out}"
    );
}

#[test]
fn validate_reports_every_problem_with_file_and_line() {
    let config = fixture("bad/broken-everything.toml").display().to_string();
    let (code, out) = iotgate(&["validate", "--config", &config]);
    assert_eq!(code, 2, "{out}");
    // the syntax error, and the directory problems, in one run
    assert!(out.contains("broken-policy/broken.cedar:6:"), "{out}");
    assert!(
        out.contains("bad-directory/people.json:2: entity `Mini::User::\"eve\"`"),
        "{out}"
    );
    assert!(
        out.contains("bad-directory/people.json:3: duplicate entity `Mini::User::\"alice\"`"),
        "{out}"
    );
}

#[test]
fn validate_reports_schema_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let mini = fixture("mini");
    let text = format!(
        "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{keys}\"\nprincipal_claim = \"usr\"\n\
         [policy]\nschema = \"{m}/schema/mini.cedarschema\"\nroutes = \"{m}/schema/mini.routes.toml\"\n\
         policies = [\"{m}/policies\", \"{bad}\"]\ndirectory = [\"{m}/directory\"]\n",
        keys = fixture("keys/hs.secret").display(),
        m = mini.display(),
        bad = fixture("bad/schema-mismatch").display(),
    );
    std::fs::write(&config, text).unwrap();
    let (code, out) = iotgate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("mismatch.cedar:3: policy `typo-attribute`"),
        "{out}"
    );
    assert!(
        out.contains("mismatch.cedar:6: policy `unknown-type`"),
        "{out}"
    );
    // check refuses to run cases on a broken profile
    let (code, _) = iotgate(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        fixture("mini/checks.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
}

#[test]
fn validate_reports_bad_routes_and_bad_config() {
    let (code, out) = iotgate(&[
        "validate",
        "--config",
        fixture("bad/bad-routes.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("bad.routes.toml:7: action `ListGadgets` is not in the schema"),
        "{out}"
    );

    let (code, out) = iotgate(&[
        "validate",
        "--config",
        fixture("bad/bad-config.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    for want in [
        "bad-config.toml:4: unknown key `server.timeout`",
        "bad-config.toml:9: unknown key `auth.principal_clam`",
    ] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
    let (code, out) = iotgate(&["validate", "--config", "/nonexistent.toml"]);
    assert_eq!(code, 2);
    assert!(out.contains("/nonexistent.toml: cannot read"), "{out}");
}
