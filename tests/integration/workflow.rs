//! The policy workflow through the real binary: `fmt`, `--format json|junit` of `validate`
//! and `check`, and `check --coverage`.

use crate::support::{copy_dir, fixture, iotgate};

fn mini_config() -> String {
    fixture("mini/iotgate.toml").display().to_string()
}

fn mini_suite() -> String {
    fixture("mini/checks.toml").display().to_string()
}

const MESSY: &str = "// keep this comment\n@id(\"a\") permit(principal,action,resource) when {principal.role==\"x\"};\n";

#[test]
fn fmt_check_lists_files_to_change_writes_nothing_and_fmt_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let messy = dir.path().join("nested/messy.cedar");
    std::fs::create_dir_all(messy.parent().unwrap()).unwrap();
    std::fs::write(&messy, MESSY).unwrap();
    let tidy = dir.path().join("tidy.cedar");
    copy_dir(&fixture("mini/policies"), &dir.path().join("mini"));
    std::fs::write(&tidy, "@id(\"b\")\nforbid (principal, action, resource);\n").unwrap();
    let root = dir.path().to_str().unwrap();

    let (code, out) = iotgate(&["fmt", "--check", root]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("would reformat {}", messy.display())),
        "{out}"
    );
    assert!(!out.contains("tidy.cedar"), "{out}");
    assert!(
        !out.contains("mini/"),
        "bundled policies are formatted: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(&messy).unwrap(),
        MESSY,
        "--check wrote"
    );

    let (code, out) = iotgate(&["fmt", root]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("formatted {}", messy.display())),
        "{out}"
    );
    let written = std::fs::read_to_string(&messy).unwrap();
    let config = cedar_policy_formatter::Config {
        line_width: 80,
        indent_width: 2,
    };
    let expected = cedar_policy_formatter::policies_str_to_pretty(MESSY, &config).unwrap();
    assert_eq!(written, expected);
    assert!(written.contains("// keep this comment"), "{written}");

    let (code, out) = iotgate(&["fmt", "--check", root]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("0 of 6 files would be reformatted\n"),
        "{out}"
    );
}

#[test]
fn fmt_reports_every_file_that_does_not_parse_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.cedar"), MESSY).unwrap();
    std::fs::write(
        dir.path().join("b.cedar"),
        "@id(\"b\")\npermit (principal, action, resource)\nwhen { };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.cedar"),
        "\n\nforbid (principal action);\n",
    )
    .unwrap();
    let (code, out) = iotgate(&["fmt", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    let b = dir.path().join("b.cedar");
    let c = dir.path().join("c.cedar");
    assert!(out.contains(&format!("{}:3: ", b.display())), "{out}");
    assert!(out.contains(&format!("{}:3: ", c.display())), "{out}");
    // the file that parses is still formatted
    assert_ne!(
        std::fs::read_to_string(dir.path().join("a.cedar")).unwrap(),
        MESSY
    );
    let (code, out) = iotgate(&["fmt", "--check", "/nonexistent/policies"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn check_json_reports_every_case_with_its_verdict_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("s.toml");
    std::fs::write(
        &suite,
        "[[case]]\nname = \"wrong\"\nas = \"bob\"\nrequest = \"GET /v1/users/alice/devices/d2\"\nexpect = \"allow\"\n\n\
         [[case]]\nname = \"right\"\nas = \"alice\"\nrequest = \"GET /v1/users/alice/devices/d1\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let args = ["check", "--config", &mini_config(), suite.to_str().unwrap()];
    let (code, out) = iotgate(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tool"], "check");
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases[0]["name"], "wrong");
    assert_eq!(cases[0]["status"], 403);
    assert!(cases[0]["failure"]
        .as_str()
        .unwrap()
        .starts_with("expected allow, got 403 forbidden"));
    assert_eq!(cases[1]["failure"], serde_json::Value::Null);
    assert_eq!(cases[1]["policies"][0], "owner-full");
    assert_eq!(cases[1]["suite"], suite.to_str().unwrap());
    // `--json` is `--format json`, for suites too
    let (_, again) = iotgate(&[&args[..], &["--json"]].concat());
    assert_eq!(again, out);
}

#[test]
fn check_junit_is_well_formed_xml_with_one_case_per_case_and_failures_counted() {
    let (code, out) = iotgate(&[
        "check",
        "--config",
        &mini_config(),
        &mini_suite(),
        "--format",
        "junit",
    ]);
    assert_eq!(code, 0, "{out}");
    let doc = roxmltree::Document::parse(&out).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("15"));
    assert_eq!(root.attribute("failures"), Some("0"));
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 15);
    assert!(cases
        .iter()
        .any(|c| c.attribute("name") == Some("member may not call a shared device's resources (POST /v1/users/alice/devices/d1/led)")));
}

#[test]
fn coverage_lists_the_policies_no_case_determined_and_min_fails_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("s.toml");
    std::fs::write(
        &suite,
        "[[case]]\nname = \"owner\"\nas = \"alice\"\nrequest = \"GET /v1/users/alice/devices/d1\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let args = ["check", "--config", &mini_config(), suite.to_str().unwrap()];
    let (code, out) = iotgate(&[&args[..], &["--coverage"]].concat());
    assert_eq!(code, 0, "{out}");
    let (_, json) = iotgate(&[&args[..], &["--coverage", "--format", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let coverage = &v["coverage"];
    let total = coverage["policies"].as_u64().unwrap();
    assert_eq!(coverage["covered"], 1, "{json}");
    let uncovered = coverage["uncovered"].as_array().unwrap();
    assert_eq!(uncovered.len() as u64, total - 1);
    assert!(!uncovered.iter().any(|u| u["id"] == "owner-full"));
    let admin = uncovered
        .iter()
        .find(|u| u["id"] == "admin-creates-users")
        .unwrap();
    assert!(admin["file"].as_str().unwrap().ends_with("accounts.cedar"));
    assert_eq!(admin["line"], 18);
    assert!(
        out.contains(&format!(
            "coverage: 1 of {total} policies determined a case"
        )),
        "{out}"
    );
    assert!(
        out.contains("  not covered: admin-creates-users  ("),
        "{out}"
    );
    assert!(out.contains("accounts.cedar:18)"), "{out}");

    let (code, out) = iotgate(&[&args[..], &["--coverage-min", "50"]].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is below the minimum 50 %"), "{out}");
    let floor = format!("{}", 100.0 / total as f64 - 0.5);
    let (code, out) = iotgate(&[&args[..], &["--coverage-min", &floor]].concat());
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_json_and_junit_list_every_problem_with_file_and_line() {
    let bad = fixture("bad/broken-everything.toml");
    let (code, out) = iotgate(&[
        "validate",
        "--config",
        bad.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tool"], "validate");
    assert_eq!(v["ok"], false);
    let findings = v["findings"].as_array().unwrap();
    assert!(!findings.is_empty());
    let broken = findings
        .iter()
        .find(|f| {
            f["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("broken.cedar"))
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(broken["line"], 6);
    assert_eq!(broken["severity"], "error");
    assert_eq!(broken["code"], "load");

    let (code, xml) = iotgate(&[
        "validate",
        "--config",
        bad.to_str().unwrap(),
        "--format",
        "junit",
    ]);
    assert_eq!(code, 2, "{xml}");
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failures = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .count();
    assert_eq!(failures, findings.len());

    let (code, out) = iotgate(&["validate", "--config", &mini_config(), "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["routes"].as_u64().is_some_and(|n| n > 0));
}

#[test]
fn init_writes_a_folder_that_validates_and_passes_its_suite_wherever_it_is_moved() {
    for profile in ["thinger", "central"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("gate");
        let (code, out) = iotgate(&["init", "--profile", profile, dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("iotgate check --config"), "{out}");
        // self-contained: it works after a move
        let moved = tmp.path().join("elsewhere");
        std::fs::rename(&dir, &moved).unwrap();
        let config = moved.join("iotgate.toml");
        let (code, out) = iotgate(&["validate", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{profile}: {out}");
        let checks = moved.join("checks.toml");
        let (code, out) = iotgate(&[
            "check",
            "--config",
            config.to_str().unwrap(),
            checks.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{profile}: {out}");
        assert!(out.ends_with("3 passed, 0 failed\n"), "{out}");
        let (code, out) = iotgate(&["fmt", "--check", moved.join("policies").to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        let secret = std::fs::read_to_string(moved.join("secret.key")).unwrap();
        assert_eq!(secret.trim().len(), 64, "a fresh 32-byte secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(moved.join("secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the secret is readable by others: {mode:o}"
            );
        }
        // never over an existing deployment
        let (code, out) = iotgate(&["init", "--profile", profile, moved.to_str().unwrap()]);
        assert_eq!(code, 2, "{out}");
        assert_eq!(
            std::fs::read_to_string(moved.join("secret.key")).unwrap(),
            secret
        );
    }
}

/// A writable mini profile with `files` added under its policy folder.
fn mini_with(files: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("mini"), &dir.path().join("mini"));
    copy_dir(&fixture("keys"), &dir.path().join("keys"));
    for (rel, text) in files {
        let path = dir.path().join("mini/policies").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let config = dir.path().join("mini/iotgate.toml");
    (dir, config)
}

const LINTED: &str = r#"@id("typo")
permit (
  principal == Mini::User::"caorl",
  action == Mini::Action::"ReadDevice",
  resource
);

@id("no-reason")
forbid (principal, action == Mini::Action::"ReadDevice", resource)
when { principal.role == "x" };

@id("wrong-type")
permit (
  principal is Mini::User,
  action == Mini::Action::"CreateUser",
  resource is Mini::Device
);

@id("look-alike")
@reason("blocks the look-alike admin")
@code("look_alike")
forbid (principal is Mini::User, action == Mini::Action::"ReadDevice", resource)
when { principal.role == "аdmin" };
"#;

const PROJECT: &str = r#"@id("alice@p1/bob/allow")
permit (
  principal == Mini::User::"bob",
  action == Mini::Action::"ReadDevice",
  resource
)
when { resource in Mini::Project::"shared" };
"#;

#[test]
fn lint_reports_each_code_with_file_line_and_severity_and_exits_by_severity() {
    let (dir, config) = mini_with(&[
        ("linted.cedar", LINTED),
        ("projects/alice@p1.cedar", PROJECT),
    ]);
    std::fs::write(
        dir.path().join("mini/directory/extra.json"),
        "[\n  {\"uid\": {\"type\": \"Mini::Device\", \"id\": \"alice/d9\"}, \"attrs\": {\"owner\": {\"type\": \"Mini::User\", \"id\": \"alice\"}},\n   \"parents\": [{\"type\": \"Mini::Project\", \"id\": \"nowhere\"}]}\n]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, out) = iotgate(&["lint", "--config", config, "--format", "json"]);
    assert_eq!(code, 1, "a project-reach error fails: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let find = |code: &str, needle: &str| {
        findings
            .iter()
            .find(|f| f["code"] == code && f["message"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no {code} about {needle}: {out}"))
            .clone()
    };
    let typo = find("unknown-entity", "Mini::User::\"caorl\"");
    assert!(typo["file"].as_str().unwrap().ends_with("linted.cedar"));
    assert_eq!(typo["line"], 1);
    assert_eq!(typo["severity"], "warning");
    assert_eq!(find("forbid-without-reason", "no-reason")["line"], 8);
    assert_eq!(find("never-applies", "wrong-type")["line"], 12);
    assert_eq!(find("confusable-text", "look-alike")["line"], 19);
    let anything = find(
        "unconstrained-permit",
        "`admin-creates-users` applies to every resource",
    );
    assert!(anything["file"]
        .as_str()
        .unwrap()
        .ends_with("accounts.cedar"));
    let everyone = find("unconstrained-permit", "status-for-everyone");
    assert!(everyone["file"].as_str().unwrap().ends_with("public.cedar"));
    let reach = find("project-reach", "does not confine its resource");
    assert_eq!(reach["severity"], "error");
    assert!(reach["file"]
        .as_str()
        .unwrap()
        .ends_with("projects/alice@p1.cedar"));
    find("project-reach", "names project `shared`");
    let orphan = find(
        "dangling-reference",
        "Mini::Device::\"alice/orphan\" names Mini::User::\"ghost\" as attribute",
    );
    assert!(orphan["file"]
        .as_str()
        .unwrap()
        .ends_with("directory/devices.json"));
    assert_eq!(orphan["line"], 6);
    let homeless = find(
        "dangling-reference",
        "names Mini::Project::\"nowhere\" as parent",
    );
    assert!(homeless["file"]
        .as_str()
        .unwrap()
        .ends_with("directory/extra.json"));
    assert_eq!(homeless["line"], 2);
    assert_eq!(v["errors"], 2);
    // the forbid with a reason and the constrained permits are not flagged
    assert!(
        !findings.iter().any(|f| f["code"] == "forbid-without-reason"
            && f["message"].as_str().unwrap().contains("look-alike"))
    );

    let (code, out) = iotgate(&["lint", "--config", config]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "linted.cedar:1: warning[unknown-entity]: policy `typo` names Mini::User::\"caorl\""
        ),
        "{out}"
    );
    assert!(out.ends_with("2 errors, 18 warnings\n"), "{out}");

    // warnings alone pass, unless denied
    let (_clean, config) = mini_with(&[("linted.cedar", LINTED)]);
    let config = config.to_str().unwrap();
    let (code, out) = iotgate(&["lint", "--config", config]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = iotgate(&["lint", "--config", config, "--deny", "warnings"]);
    assert_eq!(code, 1, "{out}");
    let (code, xml) = iotgate(&["lint", "--config", config, "--format", "junit"]);
    assert_eq!(code, 0, "{xml}");
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("failure"))
            .count(),
        16
    );

    // a config that does not load is exit 2, with its problems
    let bad = fixture("bad/broken-everything.toml");
    let (code, out) = iotgate(&["lint", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("broken.cedar:6: error[load]"), "{out}");
}

#[test]
fn the_bundled_profiles_lint_clean_with_warnings_denied() {
    for profile in ["thinger", "central"] {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("examples/{profile}/iotgate.toml"));
        let (code, out) = iotgate(&[
            "lint",
            "--config",
            config.to_str().unwrap(),
            "--deny",
            "warnings",
        ]);
        assert_eq!(code, 0, "{profile}: {out}");
        assert!(out.ends_with("0 errors, 0 warnings\n"), "{out}");
    }
}

/// A request with a bearer token and an optional JSON body.
fn call(method: &str, url: &str, bearer: &str, body: Option<&str>) -> http::Request<iotgate::Body> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {bearer}"));
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let bytes = bytes::Bytes::from(body.unwrap_or("").to_string());
    b.body(iotgate::full(bytes)).unwrap()
}

#[tokio::test]
async fn replay_of_recorded_traffic_reports_exactly_the_flips_a_change_makes() {
    use crate::support::{send, token, Served, Upstream};
    let up = Upstream::start().await;
    let (dir, config) = Served::mini(&format!("http://{}", up.addr), "off", "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[log]\ndecision_inputs = \"inputs.jsonl\"\n");
    std::fs::write(&config, text).unwrap();
    let mut served = Served::spawn(dir, &config);
    let (bob, alice, root) = (
        token(serde_json::json!({"usr": "bob"})),
        token(serde_json::json!({"usr": "alice"})),
        token(serde_json::json!({"usr": "root"})),
    );
    let d1 = served.url("/v1/users/alice/devices/d1");
    let traffic = [
        (call("GET", &d1, &bob, None), 200),
        (call("GET", &d1, &bob, None), 200),
        (
            call(
                "POST",
                &served.url("/v1/users/alice/devices/d1/led"),
                &bob,
                None,
            ),
            403,
        ),
        (call("GET", &d1, &alice, None), 200),
        (
            call(
                "POST",
                &served.url("/v1/users"),
                &root,
                Some(r#"{"id": "dora", "role": "admin", "password": "hunter2"}"#),
            ),
            200,
        ),
        // the request's own fault (a key in another case than the route reads): not recorded
        (
            call(
                "POST",
                &served.url("/v1/users"),
                &root,
                Some(r#"{"id": "eddy", "Role": "admin"}"#),
            ),
            400,
        ),
    ];
    for (request, status) in traffic {
        assert_eq!(send(request).await.0.as_u16(), status);
    }
    // the token in the query is never recorded
    let url = served.url(&format!("/v1/users/alice/devices/d2?authorization={bob}"));
    let (status, _, _) = send(crate::support::get(&url, None)).await;
    assert_eq!(status.as_u16(), 403);
    assert_eq!(served.terminate(), Some(0));
    let record_path = config.parent().unwrap().join("inputs.jsonl");
    let record = std::fs::read_to_string(&record_path).unwrap();
    assert_eq!(record.lines().count(), 6, "{record}");
    for secret in [&bob, &alice, &root, &"hunter2".to_string()] {
        assert!(
            !record.contains(secret.as_str()),
            "a token or the raw body was recorded: {record}"
        );
    }
    let entries: Vec<serde_json::Value> = record
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        entries[4]["body"],
        serde_json::json!({"id": "dora", "role": "admin"})
    );
    assert_eq!(entries[5]["path"], "/v1/users/alice/devices/d2");
    assert!(entries[5].get("query").is_none(), "{}", entries[5]);

    // a torn last line (a crash mid-write) skips only itself
    let mut torn = record.clone();
    torn.push_str("{\"at\": \"2026-12-02T0");
    std::fs::write(&record_path, torn).unwrap();

    // the candidate: the shared project's grant removed, admins may no longer make admins
    let policies = config.parent().unwrap().join("policies");
    let candidate = tempfile::tempdir().unwrap();
    copy_dir(&policies, candidate.path());
    std::fs::remove_file(candidate.path().join("projects/shared.cedar")).unwrap();
    std::fs::write(
        candidate.path().join("no-new-admins.cedar"),
        "@id(\"no-new-admins\")\n@reason(\"no new admins\")\nforbid (principal, action == Mini::Action::\"CreateUser\", resource)\nwhen { context has new_role && context.new_role == \"admin\" };\n",
    )
    .unwrap();
    let args = [
        "check",
        "--config",
        config.to_str().unwrap(),
        "--replay",
        record_path.to_str().unwrap(),
        "--against",
        candidate.path().to_str().unwrap(),
    ];
    let (code, out) = iotgate(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("allow → deny  GET /v1/users/{owner}/devices/{device}  (candidate: [-]): 2"),
        "{out}"
    );
    assert!(
        out.contains("allow → deny  POST /v1/users  (candidate: [no-new-admins]): 1"),
        "{out}"
    );
    assert!(
        out.contains("    e.g. bob GET /v1/users/alice/devices/d1  (request "),
        "{out}"
    );
    assert!(out.contains("3 of 6 recorded requests would flip"), "{out}");
    assert!(
        out.contains("0 decided otherwise today than when recorded; 1 skipped"),
        "{out}"
    );
    assert!(
        out.contains("warning: 1 lines are not records and were skipped"),
        "{out}"
    );
    assert_eq!(
        out.matches("allow → deny").count() + out.matches("deny → allow").count(),
        2,
        "{out}"
    );
    let (_, json) = iotgate(&[&args[..], &["--format", "json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["flipped"], 3);
    assert_eq!(v["flips"].as_array().unwrap().len(), 2);

    // the same policies flip nothing (exit 0); a candidate directory that disables alice does
    let (code, out) = iotgate(&[&args[..5], &["--against", policies.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 of 6 recorded requests would flip"), "{out}");
    let directory = tempfile::tempdir().unwrap();
    copy_dir(
        &config.parent().unwrap().join("directory"),
        directory.path(),
    );
    let users = directory.path().join("users.json");
    let text = std::fs::read_to_string(&users).unwrap().replace(
        r#""id": "alice"}, "attrs": {"role": "developer", "enabled": true}"#,
        r#""id": "alice"}, "attrs": {"role": "developer", "enabled": false}"#,
    );
    std::fs::write(&users, text).unwrap();
    let (code, out) = iotgate(
        &[
            &args[..5],
            &["--directory-against", directory.path().to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(code, 1, "{out}");
    // alice is refused, and so is bob on her devices (their owner is disabled)
    assert!(out.contains("3 of 6 recorded requests would flip"), "{out}");
    assert!(
        out.contains("allow → deny  GET /v1/users/{owner}/devices/{device}  (candidate: [owner-disabled]): 2"),
        "{out}"
    );
    assert!(
        out.contains("    e.g. alice GET /v1/users/alice/devices/d1"),
        "{out}"
    );
}

#[test]
fn validate_lists_every_problem_across_stages_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("mini"), &dir.path().join("mini"));
    copy_dir(&fixture("keys"), &dir.path().join("keys"));
    copy_dir(&fixture("bad"), &dir.path().join("bad"));
    // an unknown key, a folder that does not exist, a policy that does not parse beside one
    // that does not type-check, and an entity with three problems of its own
    let config = dir.path().join("mini/iotgate.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[policy]\n", "colour = \"blue\"\n[policy]\n");
    let text = text
        .replace(
            "policies = [\"policies\"]",
            "policies = [\"policies\", \"../bad/broken-policy\", \"../bad/schema-mismatch\"]",
        )
        .replace(
            "directory = [\"directory\"]",
            "directory = [\"directory\", \"missing-folder\", \"more\"]",
        );
    std::fs::write(&config, text).unwrap();
    std::fs::create_dir_all(dir.path().join("mini/more")).unwrap();
    std::fs::write(
        dir.path().join("mini/more/odd.json"),
        "[\n  {\"uid\": {\"type\": \"Mini::User\", \"id\": \"zed\"}, \"attrs\": {\"role\": 7, \"enabled\": true, \"shoe\": 1}, \"parents\": [{\"type\": \"Mini::Device\", \"id\": \"x\"}]}\n]\n",
    )
    .unwrap();
    let (code, out) = iotgate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    for wanted in [
        "unknown key",
        "missing-folder",
        "broken.cedar:6:",
        "mismatch.cedar:3: policy `typo-attribute`",
        "mismatch.cedar:6: policy `unknown-type`",
    ] {
        assert!(out.contains(wanted), "no `{wanted}` in:\n{out}");
    }
    let zed = out
        .lines()
        .find(|l| l.contains("odd.json:2:"))
        .unwrap_or_else(|| panic!("{out}"));
    for wanted in [
        "attribute `role`: expected a String",
        "attribute `shoe` is not declared",
        "`Mini::Device` is not a parent type",
    ] {
        assert!(zed.contains(wanted), "no `{wanted}` in: {zed}");
    }
}

/// The `cvc5` for `--prove`: `CVC5`, or the one `scripts/setup-cvc5.sh` makes (the PyPI
/// wheel and a driver; needs python3 and PyPI once). `None`: skipped by
/// `IOTGATE_PROVE_TESTS=0`.
fn cvc5() -> Option<String> {
    if std::env::var("IOTGATE_PROVE_TESTS").is_ok_and(|v| v == "0") {
        eprintln!("skipped: IOTGATE_PROVE_TESTS=0");
        return None;
    }
    if let Ok(path) = std::env::var("CVC5") {
        return Some(path);
    }
    Some(crate::support::installed_by(
        "setup-cvc5.sh",
        "CVC5, or IOTGATE_PROVE_TESTS=0 to skip,",
    ))
}

/// `check --config CONFIG --against CANDIDATE --prove` with `CVC5` set.
fn prove(cvc5: &str, config: &str, candidate: &str) -> (i32, String) {
    iotgate_proving(
        cvc5,
        &[
            "check",
            "--config",
            config,
            "--against",
            candidate,
            "--prove",
        ],
    )
}

/// `iotgate` with `CVC5` set.
fn iotgate_proving(cvc5: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iotgate"))
        .args(args)
        .env("CVC5", cvc5)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn prove_finds_a_widening_with_a_counterexample_check_confirms_and_proves_a_rewrite_equivalent() {
    let Some(cvc5) = cvc5() else { return };
    let config = mini_config();
    let live = fixture("mini/policies");
    // a new permit for guests
    let widened = tempfile::tempdir().unwrap();
    copy_dir(&live, widened.path());
    std::fs::write(
        widened.path().join("guests.cedar"),
        "@id(\"guests-read\")\npermit (principal, action == Mini::Action::\"ReadDevice\", resource)\nwhen { principal.role == \"guest\" };\n",
    )
    .unwrap();
    let widened_dir = widened.path().to_str().unwrap();
    let args = [
        "check",
        "--config",
        &config,
        "--against",
        widened_dir,
        "--prove",
    ];
    let (code, out) = iotgate_proving(&cvc5, &args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("WIDENS   Mini::Action::\"ReadDevice\" for Mini::User on Mini::Device"),
        "{out}"
    );
    assert_eq!(
        out.matches("WIDENS").count(),
        1,
        "only ReadDevice widens: {out}"
    );
    assert!(!out.contains("NARROWS"), "{out}");
    // the counterexample is a case: denied today, allowed by the candidate
    let case: String = out
        .lines()
        .skip_while(|l| *l != "[[case]]")
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("proved.toml");
    std::fs::write(&suite, &case).unwrap();
    let suite = suite.to_str().unwrap();
    let (code, today) = iotgate(&["check", "--config", &config, suite]);
    assert_eq!(code, 0, "denied today:\n{case}\n{today}");
    assert!(today.contains("→ 403 forbidden"), "{today}");
    let (code, candidate) = iotgate(&[
        "check",
        "--config",
        &config,
        suite,
        "--against",
        widened_dir,
    ]);
    assert_eq!(code, 1, "{candidate}");
    assert!(
        candidate.contains("→ allow by [guests-read]"),
        "{candidate}"
    );
    let (code, out) = iotgate_proving(&cvc5, &[&args[..], &["--allow-widening"]].concat());
    assert_eq!(code, 0, "{out}");

    // the same meaning in other words: proved equivalent
    let rewritten = tempfile::tempdir().unwrap();
    copy_dir(&live, rewritten.path());
    let accounts = rewritten.path().join("accounts.cedar");
    let text = std::fs::read_to_string(&accounts).unwrap();
    let text = text.replace(
        "when { resource.owner == principal && principal.role != \"guest\" };",
        "when { !(principal.role == \"guest\") }\nunless { principal != resource.owner };",
    );
    assert!(text.contains("unless"), "the rewrite applies");
    std::fs::write(&accounts, text).unwrap();
    let (code, out) = prove(&cvc5, &config, rewritten.path().to_str().unwrap());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 widen, 0 narrow, "), "{out}");
    assert!(out.contains(" 0 not proved"), "{out}");

    // a narrowing alone passes, and is shown
    let narrowed = tempfile::tempdir().unwrap();
    copy_dir(&live, narrowed.path());
    std::fs::write(
        narrowed.path().join("no-developers.cedar"),
        "@id(\"no-developers\")\n@reason(\"no\")\nforbid (principal, action == Mini::Action::\"ReadDevice\", resource)\nwhen { principal.role == \"developer\" };\n",
    )
    .unwrap();
    let (code, out) = prove(&cvc5, &config, narrowed.path().to_str().unwrap());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("NARROWS  Mini::Action::\"ReadDevice\""),
        "{out}"
    );
    assert!(!out.contains("WIDENS"), "{out}");
}

#[test]
fn lint_prove_finds_shadowed_and_unmatchable_policies() {
    let Some(cvc5) = cvc5() else { return };
    let (dir, config) = mini_with(&[
        (
            "never.cedar",
            "@id(\"never\")\npermit (principal, action == Mini::Action::\"ReadDevice\", resource)\nwhen { principal.role == \"x\" && principal.role == \"y\" };\n",
        ),
        (
            "overflow.cedar",
            "@id(\"overflow\")\n@reason(\"too high\")\n@code(\"too_high\")\nforbid (principal, action == Mini::Action::\"ReadDevice\", resource)\nwhen { principal has level && principal.level * 2 > 10 };\n",
        ),
    ]);
    with_level(&dir);
    let config = config.to_str().unwrap();
    let (code, out) = iotgate_proving(
        &cvc5,
        &["lint", "--config", config, "--prove", "--format", "json"],
    );
    assert_eq!(code, 0, "warnings only: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let codes: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |code: &str, id: &str| {
        codes
            .iter()
            .any(|(c, m)| c == code && m.contains(&format!("`{id}`")))
    };
    assert!(has("never-matches", "never"), "{out}");
    assert!(has("can-error", "overflow"), "{out}");
    assert!(!has("can-error", "owner-full"), "{out}");
    // only admins create users, so the forbid on non-admins making admins decides nothing
    assert!(has("shadowed", "no-admin-from-non-admin"), "{out}");
    assert!(!has("shadowed", "owner-full"), "{out}");
    assert!(!has("never-matches", "owner-full"), "{out}");
}

/// Gives the mini copy's users a `level?: Long`, so that a policy can overflow.
fn with_level(dir: &tempfile::TempDir) {
    let schema = dir.path().join("mini/schema/mini.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap().replace(
        "entity User = { role: String, enabled: Bool };",
        "entity User = { role: String, enabled: Bool, level?: Long };",
    );
    assert!(text.contains("level?: Long"));
    std::fs::write(&schema, text).unwrap();
}

#[test]
fn prove_is_unsure_when_a_removed_policy_could_error_where_cedar_sees_no_change() {
    let Some(cvc5) = cvc5() else { return };
    // never true, but it overflows for a large level: iotgate denies those requests today
    let (dir, config) = mini_with(&[(
        "overflow.cedar",
        "@id(\"overflow\")\n@reason(\"x\")\n@code(\"x\")\nforbid (principal, action == Mini::Action::\"ReadDevice\", resource)\nwhen { principal has level && principal.level * 2 == principal.level * 2 + 1 };\n",
    )]);
    with_level(&dir);
    let candidate = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("mini/policies"), candidate.path());
    std::fs::remove_file(candidate.path().join("overflow.cedar")).unwrap();
    let (code, out) = prove(
        &cvc5,
        config.to_str().unwrap(),
        candidate.path().to_str().unwrap(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("UNSURE   Mini::Action::\"ReadDevice\" for Mini::User on Mini::Device: live policy `overflow`"), "{out}");
    assert!(
        out.contains(" 0 widen, "),
        "Cedar alone sees no change: {out}"
    );
}
