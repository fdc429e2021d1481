//! The decision API (AuthZEN) of the real `iotgate serve`, on an ephemeral port, with the
//! bundled `authzen` example: the certification scenario's cases
//! (`examples/authzen/certification.json`, taken from the scenario text), callers without
//! the token, the deny-is-200 rule, what the admin caller is told, bounds, and the decision
//! log and metrics.

use std::path::Path;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::support::Served;

const TOKEN: &str = "authzen-demo-caller-token-0123456789";
const ADMIN: &str = "authzen-demo-admin-token-9876543210";

/// `examples/authzen` served from a temp copy, every listener on an ephemeral port.
fn authzen() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate::support::copy_dir(&root.join("examples/authzen"), dir.path());
    let config = dir.path().join("iotgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = ["127.0.0.1:8080", "127.0.0.1:9092", "127.0.0.1:8180"]
        .iter()
        .fold(text, |t, addr| t.replace(addr, "127.0.0.1:0"))
        .replace("http://127.0.0.1:8081", "http://127.0.0.1:9");
    std::fs::write(&config, text).unwrap();
    Served::spawn(dir, &config)
}

struct Asked<'a> {
    method: &'a str,
    path: &'a str,
    body: String,
    content_type: &'a str,
    token: Option<&'a str>,
    request_id: Option<&'a str>,
}

impl<'a> Asked<'a> {
    fn post(path: &'a str, body: &Value) -> Self {
        Asked {
            method: "POST",
            path,
            body: body.to_string(),
            content_type: "application/json",
            token: Some(TOKEN),
            request_id: None,
        }
    }
}

async fn ask(served: &Served, asked: Asked<'_>) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder()
        .method(asked.method)
        .uri(format!("http://{}{}", served.decision_api, asked.path))
        .header("content-type", asked.content_type);
    if let Some(token) = asked.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(id) = asked.request_id {
        request = request.header("x-request-id", id);
    }
    let response = crate::support::client()
        .request(request.body(iotgate::full(asked.body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

fn decisions(answer: &Value) -> Vec<bool> {
    answer["evaluations"]
        .as_array()
        .unwrap_or_else(|| panic!("no evaluations: {answer}"))
        .iter()
        .map(|e| e["decision"].as_bool().unwrap_or_else(|| panic!("{e}")))
        .collect()
}

/// Runs one case of the certification file; returns its level when it passed.
async fn run_case(served: &Served, case: &Value) {
    let id = case["id"].as_str().unwrap();
    let body = match (&case["raw"], &case["body"]) {
        (Value::String(raw), _) => raw.clone(),
        (_, Value::Null) => String::new(),
        (_, body) => body.to_string(),
    };
    let asked = || Asked {
        method: case["method"].as_str().unwrap_or("POST"),
        path: case["endpoint"].as_str().unwrap(),
        body: body.clone(),
        content_type: case["content_type"].as_str().unwrap_or("application/json"),
        token: Some(TOKEN),
        request_id: case["request_id"].as_str(),
    };
    let repeat = case["repeat"].as_u64().unwrap_or(1);
    for _ in 0..repeat {
        let (status, headers, answer) = ask(served, asked()).await;
        assert_eq!(
            u64::from(status.as_u16()),
            case["status"].as_u64().unwrap_or(200),
            "{id}: {answer}"
        );
        if status == StatusCode::OK {
            assert_eq!(headers["content-type"], "application/json", "{id}");
        }
        if let Some(want) = case["decision"].as_bool() {
            assert_eq!(answer["decision"], want, "{id}: {answer}");
            assert!(answer.get("evaluations").is_none(), "{id}: {answer}");
        }
        if let Some(want) = case["decisions"].as_array() {
            let want: Vec<bool> = want.iter().map(|d| d.as_bool().unwrap()).collect();
            assert_eq!(decisions(&answer), want, "{id}: {answer}");
        }
        if let Some(count) = case["count"].as_u64() {
            assert_eq!(decisions(&answer).len() as u64, count, "{id}");
        }
        if let Some(id_sent) = case["request_id"].as_str() {
            assert_eq!(headers["x-request-id"], id_sent, "{id}");
        }
        check_search(served, case, &answer).await;
        if case["metadata"] == true {
            let base = format!("http://{}", served.decision_api);
            assert_eq!(answer["policy_decision_point"], base.as_str(), "{id}");
            for (key, path) in [
                ("access_evaluation_endpoint", "/access/v1/evaluation"),
                ("access_evaluations_endpoint", "/access/v1/evaluations"),
                ("search_subject_endpoint", "/access/v1/search/subject"),
                ("search_resource_endpoint", "/access/v1/search/resource"),
                ("search_action_endpoint", "/access/v1/search/action"),
            ] {
                assert_eq!(answer[key], format!("{base}{path}").as_str(), "{id}");
            }
        }
    }
}

/// What the search cases of the scenario check: the results (`includes`, their type,
/// `empty`) and the page object (`paged`, and a `follow_up` with the token it gave).
async fn check_search(served: &Served, case: &Value, answer: &Value) {
    let id = case["id"].as_str().unwrap();
    let results = || {
        answer["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: {answer}"))
    };
    let named = |r: &Value| r["id"].as_str().or(r["name"].as_str()).unwrap().to_string();
    if let Some(want) = case["includes"].as_array() {
        let got: Vec<String> = results().iter().map(named).collect();
        for w in want {
            assert!(
                got.contains(&w.as_str().unwrap().to_string()),
                "{id}: {w} not in {got:?}"
            );
        }
    }
    if let Some(ty) = case["result_type"].as_str() {
        assert!(results().iter().all(|r| r["type"] == ty), "{id}: {answer}");
    }
    if case["empty"] == true {
        assert_eq!(results().len(), 0, "{id}: {answer}");
    }
    if case["paged"] == true || case["follow_up"] == true {
        assert!(results().len() <= 1, "{id}: {answer}");
        assert!(answer["page"]["next_token"].is_string(), "{id}: {answer}");
    }
    if case["follow_up"] == true {
        let token = answer["page"]["next_token"].as_str().unwrap();
        assert!(!token.is_empty(), "{id}: two users, one per page: {answer}");
        let mut body = case["body"].clone();
        body["page"] = json!({ "token": token });
        let (status, _, next) = ask(
            served,
            Asked::post(case["endpoint"].as_str().unwrap(), &body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{id}: {next}");
        assert!(
            next["page"].is_object() && next["page"]["next_token"].is_string(),
            "{id}: {next}"
        );
        assert!(
            !next["results"].as_array().unwrap().is_empty(),
            "{id}: {next}"
        );
    }
}

#[tokio::test]
async fn the_authzen_certification_cases_pass_on_the_real_listener() {
    let served = authzen();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/authzen/certification.json"),
    )
    .unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let cases = file["cases"].as_array().unwrap();
    let mut levels = std::collections::BTreeSet::new();
    for case in cases {
        run_case(&served, case).await;
        levels.insert(case["level"].as_str().unwrap());
    }
    assert_eq!(
        levels.into_iter().collect::<Vec<_>>(),
        [
            "Basic Core",
            "Basic Properties",
            "Batch Core",
            "Batch Properties",
            "Discovery",
            "Search Core",
            "Search Properties"
        ]
    );
}

fn alice_reads(resource: &str) -> Value {
    json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
           "resource": {"type": "record", "id": resource}})
}

#[tokio::test]
async fn callers_need_the_token_and_only_the_admin_is_told_the_policies() {
    let served = authzen();
    let question = json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "write"},
                          "resource": {"type": "record", "id": "record-1"}});
    for token in [None, Some("wrong"), Some("")] {
        let mut asked = Asked::post("/access/v1/evaluation", &question);
        asked.token = token;
        let (status, headers, body) = ask(&served, asked).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer realm=\"iotgate-access\""
        );
        assert_eq!(body["reason"], "access_token");
    }

    // a deny is an answer: 200, false, with the reason code
    let (status, _, app) = ask(&served, Asked::post("/access/v1/evaluation", &question)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app,
        json!({"decision": false, "context": {"reason": "no_permit"}})
    );

    let mut asked = Asked::post("/access/v1/evaluation", &question);
    asked.token = Some(ADMIN);
    let (_, _, admin) = ask(&served, asked).await;
    assert_eq!(admin["decision"], false);
    assert_eq!(admin["context"]["reason_admin"]["policies"], json!([]));
    let mut asked = Asked::post("/access/v1/evaluation", &alice_reads("record-1"));
    asked.token = Some(ADMIN);
    let (_, _, admin) = ask(&served, asked).await;
    assert_eq!(
        admin["context"]["reason_admin"]["policies"],
        json!(["read"])
    );
    assert!(admin["context"]["reason_admin"]["policy_version"]
        .as_str()
        .unwrap()
        .starts_with("authzen-fixture@"));

    // the metadata is public: it tells nothing but where the endpoints are
    let mut asked = Asked::post("/.well-known/authzen-configuration", &json!({}));
    asked.method = "GET";
    asked.token = None;
    assert_eq!(ask(&served, asked).await.0, StatusCode::OK);
}

#[tokio::test]
async fn what_the_profile_does_not_know_is_a_false_with_an_error_never_an_allow() {
    let served = authzen();
    let cases = [
        (
            json!({"subject": {"type": "robot", "id": "alice"}, "action": {"name": "read"},
                "resource": {"type": "record", "id": "record-1"}}),
            "unknown_subject_type",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                "resource": {"type": "spaceship", "id": "record-1"}}),
            "unknown_resource_type",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "launch"},
                "resource": {"type": "record", "id": "record-1"}}),
            "unknown_action",
        ),
        (
            json!({"subject": {"type": "user", "id": "mallory"}, "action": {"name": "read"},
                "resource": {"type": "record", "id": "record-1"}}),
            "unknown_account",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "delete", "properties": {"soft": "yes"}},
                "resource": {"type": "record", "id": "record-1"}}),
            "bad_value",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "delete", "properties": {"soft": true}},
                "resource": {"type": "record", "id": "record-1"}, "context": {"soft": false}}),
            "bad_value",
        ),
    ];
    for (question, reason) in cases {
        let (status, _, answer) =
            ask(&served, Asked::post("/access/v1/evaluation", &question)).await;
        assert_eq!(status, StatusCode::OK, "{question}");
        assert_eq!(answer["decision"], false, "{question}: {answer}");
        assert_eq!(answer["context"]["reason"], reason, "{question}: {answer}");
    }
    // a record the directory does not have is decided on the properties given for it
    let absent = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "write"},
                        "resource": {"type": "record", "id": "record-9", "properties": {"status": "active"}}});
    let (_, _, answer) = ask(&served, Asked::post("/access/v1/evaluation", &absent)).await;
    assert_eq!(answer["decision"], true, "{answer}");
    // one the directory has is decided on the directory, whatever the caller says of it
    let lied = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "write"},
                      "resource": {"type": "record", "id": "record-2", "properties": {"status": "active"}}});
    let (_, _, answer) = ask(&served, Asked::post("/access/v1/evaluation", &lied)).await;
    assert_eq!(answer["decision"], false, "{answer}");
}

#[tokio::test]
async fn batches_are_bounded_and_short_circuit_as_asked() {
    let served = authzen();
    let items: Vec<Value> = (0..101)
        .map(|_| json!({"resource": {"type": "record", "id": "record-1"}}))
        .collect();
    let big = json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "read"}, "evaluations": items});
    let (status, _, body) = ask(&served, Asked::post("/access/v1/evaluations", &big)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("max_batch"),
        "{body}"
    );

    let huge = "x".repeat(2 << 20);
    let (status, _, _) = ask(
        &served,
        Asked::post("/access/v1/evaluation", &json!({"pad": huge})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let three = |semantic: &str| {
        json!({"subject": {"type": "user", "id": "bob"}, "resource": {"type": "record", "id": "record-1"},
               "options": {"evaluations_semantic": semantic},
               "evaluations": [{"action": {"name": "read"}}, {"action": {"name": "write"}}, {"action": {"name": "read"}}]})
    };
    for (semantic, want) in [
        ("execute_all", vec![true, false, true]),
        ("deny_on_first_deny", vec![true, false]),
        ("permit_on_first_permit", vec![true]),
    ] {
        let (_, _, answer) = ask(
            &served,
            Asked::post("/access/v1/evaluations", &three(semantic)),
        )
        .await;
        assert_eq!(decisions(&answer), want, "{semantic}: {answer}");
    }
    let (status, _, _) = ask(
        &served,
        Asked::post("/access/v1/evaluations", &three("fastest")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn every_decision_is_logged_and_counted_like_the_proxys() {
    let served = authzen();
    let batch = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                       "evaluations": [{"resource": {"type": "record", "id": "record-1"}},
                                       {"resource": {"type": "spaceship", "id": "x"}}]});
    let mut asked = Asked::post("/access/v1/evaluations", &batch);
    asked.request_id = Some("batch-7");
    ask(&served, asked).await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = served
            .logs()
            .into_iter()
            .filter(|l| l.contains("\"batch-7/"))
            .collect();
        if lines.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2, "{:#?}", served.logs());
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["request_id"], "batch-7/0");
    assert_eq!(first["route"], "/access/v1/evaluations");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["resource"], "AuthZEN::record::\"record-1\"");
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (second["decision"].as_str(), second["reason"].as_str()),
        (Some("deny"), Some("unknown_resource_type"))
    );

    let (_, metrics) = served.admin_get("/metrics").await;
    assert!(
        metrics.contains("iotgate_decisions_total{decision=\"allow\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iotgate_denials_total{reason=\"unknown_resource_type\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("iotgate_requests_total{route=\"/access/v1/evaluations\",status=\"200\"} 1"),
        "{metrics}"
    );
}

/// A bundled profile served with a decision API (paths made absolute, ports ephemeral).
fn profile_with_api(profile: &str) -> (Served, std::path::PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples").join(profile);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN}\n")).unwrap();
    let text = std::fs::read_to_string(example.join("iotgate.toml")).unwrap();
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        let line = match key {
            "listen" | "admin_listen" => format!("{key} = \"127.0.0.1:0\""),
            "upstream" => "upstream = \"http://127.0.0.1:9\"".to_string(),
            _ => line
                .replace("\"../../", &format!("\"{}/", root.display()))
                .replace(
                    "\"secret.key\"",
                    &format!("\"{}/secret.key\"", example.display()),
                )
                .replace(
                    "[\"directory\"]",
                    &format!("[\"{}/directory\"]", example.display()),
                ),
        };
        lines.push(line);
    }
    lines.push(format!(
        "[decision_api]\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\ntoken_file = \"{}\"\n",
        dir.path().join("admin.token").display(),
        dir.path().join("api.token").display()
    ));
    let config = dir.path().join("iotgate.toml");
    std::fs::write(&config, lines.join("\n")).unwrap();
    let suite = example.join("checks.toml");
    (Served::spawn(dir, &config), suite)
}

/// Every suite case that reached the policies, asked again through the decision API as
/// `check` says it was asked: the API must decide what `serve` does.
async fn api_agrees_with_the_proxy(profile: &str, at_least: usize) {
    let (served, suite) = profile_with_api(profile);
    let config = served.dir.path().join("iotgate.toml");
    let (_, out) = crate::support::iotgate(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        suite.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let start = out.find('{').unwrap();
    let report: Value = serde_json::from_str(&out[start..]).unwrap();
    let mut compared = 0;
    for case in report["cases"].as_array().unwrap() {
        let Some(question) = case.get("question") else {
            continue;
        };
        let mut asked = Asked::post("/access/v1/evaluation", question);
        asked.token = Some(ADMIN);
        let (status, _, answer) = ask(&served, asked).await;
        assert_eq!(status, StatusCode::OK, "{question}");
        // 409: a create the policies allowed on an entity that exists
        let proxy = matches!(case["status"].as_u64(), Some(200 | 409));
        assert_eq!(
            answer["decision"], proxy,
            "{}: {question} → {answer}",
            case["name"]
        );
        let policies = &answer["context"]["reason_admin"]["policies"];
        assert_eq!(policies, &case["policies"], "{}: {question}", case["name"]);
        compared += 1;
    }
    assert!(
        compared >= at_least,
        "{profile}: only {compared} cases compared"
    );
}

#[tokio::test]
async fn the_api_decides_every_thinger_suite_case_as_the_proxy() {
    api_agrees_with_the_proxy("thinger", 120).await;
}

#[tokio::test]
async fn the_api_decides_every_central_suite_case_as_the_proxy() {
    api_agrees_with_the_proxy("central", 250).await;
}

async fn evaluate(served: &Served, question: &Value) -> bool {
    let (status, _, answer) = ask(served, Asked::post("/access/v1/evaluation", question)).await;
    assert_eq!(status, StatusCode::OK, "{question}");
    answer["decision"].as_bool().unwrap()
}

/// Every page of a search, followed by its tokens (`limit` per page).
async fn search_all(served: &Served, path: &str, mut body: Value, limit: u64) -> Vec<String> {
    let mut found = Vec::new();
    body["page"] = json!({ "limit": limit });
    loop {
        let (status, _, answer) = ask(served, Asked::post(path, &body)).await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
        let results = answer["results"].as_array().unwrap();
        assert!(results.len() as u64 <= limit);
        found.extend(
            results
                .iter()
                .map(|r| r["id"].as_str().or(r["name"].as_str()).unwrap().to_string()),
        );
        let token = answer["page"]["next_token"].as_str().unwrap();
        if token.is_empty() {
            return found;
        }
        body["page"] = json!({ "limit": limit, "token": token });
    }
}

#[tokio::test]
async fn searches_equal_deciding_every_candidate_and_pages_add_up() {
    let (served, _) = profile_with_api("thinger");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |file: &str| -> Vec<Value> {
        let text =
            std::fs::read_to_string(root.join("examples/thinger/directory").join(file)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let ids = |entities: &[Value], ty: &str| -> Vec<String> {
        let mut ids: Vec<String> = entities
            .iter()
            .filter(|e| e["uid"]["type"] == ty)
            .map(|e| e["uid"]["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let users = ids(&read("users.json"), "Thinger::User");
    let devices = ids(&read("resources.json"), "Thinger::Device");
    assert!(
        users.len() >= 5 && devices.len() >= 3,
        "{users:?} {devices:?}"
    );
    let ctx = json!({"token_kind": "user"});
    for user in &users {
        let subject = json!({"type": "User", "id": user});
        let searched = search_all(
            &served,
            "/access/v1/search/resource",
            json!({"subject": subject, "action": {"name": "ReadDeviceStatus"}, "resource": {"type": "Device"}, "context": ctx}),
            2,
        )
        .await;
        let mut brute = Vec::new();
        for device in &devices {
            let q = json!({"subject": subject, "action": {"name": "ReadDeviceStatus"},
                           "resource": {"type": "Device", "id": device}, "context": ctx});
            if evaluate(&served, &q).await {
                brute.push(device.clone());
            }
        }
        assert_eq!(searched, brute, "devices {user} may read");
    }
    for device in &devices {
        let resource = json!({"type": "Device", "id": device});
        let searched = search_all(
            &served,
            "/access/v1/search/subject",
            json!({"subject": {"type": "User"}, "action": {"name": "DeleteDevice"}, "resource": resource, "context": ctx}),
            3,
        )
        .await;
        let mut brute = Vec::new();
        for user in &users {
            let q = json!({"subject": {"type": "User", "id": user}, "action": {"name": "DeleteDevice"},
                           "resource": resource, "context": ctx});
            if evaluate(&served, &q).await {
                brute.push(user.clone());
            }
        }
        assert_eq!(searched, brute, "who may delete {device}");
    }
    // what bob may do on one of the devices shared with him
    let shared = json!({"type": "Device", "id": "dave/sensor1"});
    let actions = search_all(
        &served,
        "/access/v1/search/action",
        json!({"subject": {"type": "User", "id": "bob"}, "resource": shared, "context": ctx}),
        100,
    )
    .await;
    assert!(
        actions.contains(&"ReadDeviceStatus".to_string()),
        "{actions:?}"
    );
    assert!(
        !actions.contains(&"DeleteDevice".to_string()),
        "{actions:?}"
    );
    for action in &actions {
        let q = json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": action}, "resource": shared, "context": ctx});
        assert!(evaluate(&served, &q).await, "{action}");
    }
}

#[tokio::test]
async fn a_page_token_from_an_older_directory_or_another_search_is_refused() {
    let served = authzen();
    let who = json!({"subject": {"type": "user"}, "action": {"name": "read"},
                     "resource": {"type": "record", "id": "record-1"}, "page": {"limit": 1}});
    let (_, _, first) = ask(&served, Asked::post("/access/v1/search/subject", &who)).await;
    let token = first["page"]["next_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty(), "{first}");
    let mut other = who.clone();
    other["action"] = json!({"name": "write"});
    other["page"] = json!({ "token": token });
    let (status, _, body) = ask(&served, Asked::post("/access/v1/search/subject", &other)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("another request"),
        "{body}"
    );
    // nor with another limit
    let mut resized = who.clone();
    resized["page"] = json!({ "token": token, "limit": 5 });
    let (status, _, _) = ask(&served, Asked::post("/access/v1/search/subject", &resized)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // a limit of 0 sets none
    let mut unlimited = who.clone();
    unlimited["page"] = json!({ "limit": 0 });
    let (status, _, all) = ask(
        &served,
        Asked::post("/access/v1/search/subject", &unlimited),
    )
    .await;
    assert_eq!(
        (status, all["results"].as_array().unwrap().len()),
        (StatusCode::OK, 2),
        "{all}"
    );

    // the directory changes (the watcher reloads it): the old token no longer continues
    let directory = served.dir.path().join("directory/fixture.json");
    let text = std::fs::read_to_string(&directory).unwrap().replace(
        "\n]",
        ",\n  {\"uid\": {\"type\": \"AuthZEN::user\", \"id\": \"carol\"}, \"attrs\": {}, \"parents\": []}\n]",
    );
    crate::support::write_atomic(&directory, &text);
    let mut again = who.clone();
    again["page"] = json!({ "token": token });
    for _ in 0..100 {
        let (status, _, body) =
            ask(&served, Asked::post("/access/v1/search/subject", &again)).await;
        if status == StatusCode::BAD_REQUEST {
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("another version"),
                "{body}"
            );
            let (_, _, fresh) = ask(&served, Asked::post("/access/v1/search/subject", &who)).await;
            assert_eq!(fresh["results"], json!([{"type": "user", "id": "alice"}]));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the reload never made the token stale");
}

#[tokio::test]
async fn check_what_can_and_who_can_answer_as_the_api_searches() {
    let (served, _) = profile_with_api("thinger");
    let config = served.dir.path().join("iotgate.toml");
    let config = config.to_str().unwrap();
    let cli = |args: &[&str]| -> Value {
        let mut all = vec!["check", "--config", config, "--format", "json"];
        all.extend(args);
        let (code, out) = crate::support::iotgate(&all);
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap()
    };
    let ctx = json!({"token_kind": "user"});
    let on = r#"Thinger::Device::"dave/sensor1""#;
    let device = json!({"type": "Device", "id": "dave/sensor1"});

    let actions = cli(&["--what-can", "bob", "--on", on]);
    let api = search_all(
        &served,
        "/access/v1/search/action",
        json!({"subject": {"type": "User", "id": "bob"}, "resource": device, "context": ctx}),
        100,
    )
    .await;
    assert_eq!(actions["results"], json!(api), "{actions}");
    assert!(!api.is_empty());

    let who = cli(&["--who-can", "DeleteDevice", "--on", on]);
    let api = search_all(
        &served,
        "/access/v1/search/subject",
        json!({"subject": {"type": "User"}, "action": {"name": "DeleteDevice"}, "resource": device, "context": ctx}),
        100,
    )
    .await;
    assert_eq!(who["results"], json!(api), "{who}");
    assert_eq!(api, ["dave"]);

    // everything bob may do includes each action the action search found on the device
    let everything = cli(&["--what-can", "bob"]);
    let pairs = everything["results"].as_array().unwrap();
    for action in actions["results"].as_array().unwrap() {
        assert!(
            pairs.contains(&json!({"action": action, "resource": on})),
            "{action} missing from {everything}"
        );
    }
    let (code, out) = crate::support::iotgate(&[
        "check",
        "--config",
        config,
        "--what-can",
        "bob",
        "--on",
        "not a uid",
    ]);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test]
async fn what_the_proxy_computes_or_needs_cannot_be_left_out_or_said_otherwise() {
    let (served, _) = profile_with_api("thinger");
    let ask_as = |subject: Value, action: &str, resource: Value, context: Value| json!({"subject": subject, "action": {"name": action}, "resource": resource, "context": context});
    let olivia = json!({"type": "User", "id": "olivia"});
    let server = json!({"type": "Server", "id": "instance"});
    let cases = [
        // the proxy reads the role from the body and refuses a request without it
        (
            ask_as(olivia.clone(), "CreateUser", server.clone(), json!({})),
            "is required",
        ),
        // the API spells the directory's roles; the route's map says which exist
        (
            ask_as(
                olivia.clone(),
                "CreateUser",
                server.clone(),
                json!({"new_role": "superadmin"}),
            ),
            "must be one of",
        ),
        // the instance the license counts is the gateway's, not the caller's
        (
            ask_as(
                olivia.clone(),
                "UpdateUser",
                json!({"type": "User", "id": "bob"}),
                json!({"license": {"type": "Server", "id": "other"}}),
            ),
            "computed by the gateway",
        ),
    ];
    for (question, told) in cases {
        let (_, _, answer) = ask(&served, Asked::post("/access/v1/evaluation", &question)).await;
        assert_eq!(answer["decision"], false, "{question}: {answer}");
        assert_eq!(answer["context"]["reason"], "bad_value", "{answer}");
        let message = answer["context"]["error"]["message"].as_str().unwrap();
        assert!(message.contains(told), "{question}: {message}");
    }
    // with what the proxy would have read, the same question is decided
    let created = ask_as(
        olivia,
        "CreateUser",
        server.clone(),
        json!({"new_role": "user"}),
    );
    let (_, _, answer) = ask(&served, Asked::post("/access/v1/evaluation", &created)).await;
    assert_eq!(answer["context"]["error"], Value::Null, "{answer}");

    // the anonymous principal asks only what a public route lets it
    let anonymous = json!({"type": "Anonymous", "id": "anonymous"});
    let device = json!({"type": "Device", "id": "dave/sensor1"});
    let private = ask_as(anonymous.clone(), "ReadDeviceStatus", device, json!({}));
    let (_, _, answer) = ask(&served, Asked::post("/access/v1/evaluation", &private)).await;
    assert_eq!(
        (
            answer["decision"].as_bool(),
            answer["context"]["reason"].as_str()
        ),
        (Some(false), Some("token_missing")),
        "{answer}"
    );
    let login = ask_as(
        anonymous,
        "Login",
        server,
        json!({"grant_type": "password"}),
    );
    let (_, _, answer) = ask(&served, Asked::post("/access/v1/evaluation", &login)).await;
    assert_eq!(answer["decision"], true, "{answer}");
}
