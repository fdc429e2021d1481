//! Operations: versioned snapshots, reload (watch, SIGHUP, POST /reload), the admin
//! endpoints, shadow policies, and consistency under concurrent load during reloads.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::support::{fixture, get, iotgate, send, token, write_atomic, Served, Upstream};

const SHARE_D2: &str = "@id(\"share-d2\")\npermit (\n  principal == Mini::User::\"bob\",\n  action == Mini::Action::\"ReadDevice\",\n  resource == Mini::Device::\"alice/d2\"\n);\n";

#[tokio::test]
async fn file_changes_reload_and_a_broken_file_keeps_the_last_good_snapshot() {
    let up = Upstream::start().await;
    let served = Served::start(&format!("http://{}", up.addr), "watch", "");
    let bob = token(json!({"usr": "bob"}));
    let d2 = served.url("/v1/users/alice/devices/d2");
    let (status, _, _) = send(get(&d2, Some(&bob))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let before = served.status().await;
    assert!(before["last_reload"].is_null());

    // a new policy file: the watcher reloads and the decision flips
    write_atomic(&served.policies().join("projects/d2.cedar"), SHARE_D2);
    let after = served
        .wait_status("a reload", |s| s["last_reload"]["ok"] == true)
        .await;
    assert_eq!(after["last_reload"]["trigger"], "watch");
    assert_ne!(
        after["policy_version"], before["policy_version"],
        "content changed, version must change"
    );
    assert_eq!(after["directory_version"], before["directory_version"]);
    let (status, _, _) = send(get(&d2, Some(&bob))).await;
    assert_eq!(status, StatusCode::OK);

    // a broken file: refused with file and line, the previous snapshot keeps deciding
    write_atomic(
        &served.policies().join("broken.cedar"),
        "permit (principal action resource);\n",
    );
    let failed = served
        .wait_status("a failed reload", |s| s["last_reload"]["ok"] == false)
        .await;
    assert_eq!(failed["policy_version"], after["policy_version"]);
    let problems = failed["last_reload"]["problems"].to_string();
    assert!(problems.contains("broken.cedar:1:"), "{problems}");
    let (status, _, _) = send(get(&d2, Some(&bob))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the last good snapshot must keep serving"
    );
    let (_, metrics) = served.admin_get("/metrics").await;
    assert!(
        metrics.contains("iotgate_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "iotgate_last_reload_successful 0"),
        "{metrics}"
    );
    let serving = format!(
        "iotgate_snapshot_info{{policy_version=\"{}\",directory_version=\"{}\"}} 1",
        after["policy_version"].as_str().unwrap(),
        after["directory_version"].as_str().unwrap()
    );
    assert!(
        metrics.lines().any(|l| l == serving),
        "{serving}\n{metrics}"
    );
    assert!(
        metrics.contains("iotgate_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    let refused = |l: &str| l.contains("reload refused") && l.contains("broken.cedar:1:");
    assert!(served.logs_once(refused).await.iter().any(|l| refused(l)));
}

#[tokio::test]
async fn admin_endpoints_report_health_status_and_metrics() {
    let up = Upstream::start().await;
    let served = Served::start(&format!("http://{}", up.addr), "signal", "");
    assert_eq!(served.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(served.admin_get("/readyz").await.0, StatusCode::OK);
    assert_eq!(served.admin_get("/nothing").await.0, StatusCode::NOT_FOUND);
    let bob = token(json!({"usr": "bob"}));
    for _ in 0..3 {
        send(get(&served.url("/v1/users/alice/devices/d1"), Some(&bob))).await;
    }
    send(get(&served.url("/v1/users/alice/devices/d2"), Some(&bob))).await;
    send(get(
        &served.url("/v1/users/alice/devices/d2?raw=secret"),
        None,
    ))
    .await;
    let status = served.status().await;
    assert!(status["policy_version"]
        .as_str()
        .unwrap()
        .starts_with("mini-1@"));
    assert_eq!(status["directory_version"].as_str().unwrap().len(), 12);
    assert_eq!(
        status["counts"],
        json!({"policies": 11, "shadow_policies": null, "routes": 10, "entities": 9})
    );
    assert_eq!(status["reload"], "signal");
    assert!(status["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status["caches"]["decisions"]["hits"], 2);
    assert_eq!(status["caches"]["tokens"]["hits"], 3);
    let (_, metrics) = served.admin_get("/metrics").await;
    for line in [
        "iotgate_requests_total{route=\"GET /v1/users/{owner}/devices/{device}\",status=\"200\"} 3",
        "iotgate_requests_total{route=\"GET /v1/users/{owner}/devices/{device}\",status=\"403\"} 1",
        "iotgate_requests_total{route=\"-\",status=\"401\"} 1",
        "iotgate_decisions_total{decision=\"allow\"} 3",
        "iotgate_decisions_total{decision=\"deny\"} 2",
        "iotgate_decision_duration_seconds_count 5",
        "iotgate_decision_cache_hits_total 2",
        "iotgate_upstream_errors_total{kind=\"unreachable\"} 0",
        "iotgate_denials_total{reason=\"no_permit\"} 1",
        "iotgate_denials_total{reason=\"token_missing\"} 1",
        // three forwarded, one refused: request durations for four, upstream ones for three
        "iotgate_request_duration_seconds_count{route=\"GET /v1/users/{owner}/devices/{device}\"} 4",
        "iotgate_upstream_duration_seconds_count{route=\"GET /v1/users/{owner}/devices/{device}\"} 3",
        "iotgate_request_duration_seconds_count{route=\"-\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}`:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("secret") && !metrics.contains("alice/devices/d"),
        "raw paths in metrics"
    );
    let value = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(metrics.lines().any(|l| l
        == format!(
            "iotgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    assert_eq!(value("iotgate_last_reload_successful"), 1.0);
    assert!(value("iotgate_last_reload_success_timestamp_seconds") > 1.7e9);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    // HEAD on the admin endpoints: the status, no body
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        let url = format!("http://{}{path}", served.admin);
        let (status, _, body) =
            send(http::Request::head(url).body(iotgate::full("")).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "HEAD {path}");
        assert!(body.is_empty(), "HEAD {path} has a body");
    }

    // POST /reload with nothing changed: same version; SIGHUP after a change: new decision
    let (code, _, body) = served.admin_post("/reload").await;
    assert_eq!(code, StatusCode::OK);
    let attempt: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(attempt["ok"], true);
    assert_eq!(
        attempt["policy_version"], status["policy_version"],
        "no content change, no version change"
    );
    write_atomic(&served.policies().join("projects/d2.cedar"), SHARE_D2);
    served.signal("HUP");
    served
        .wait_status("the SIGHUP reload", |s| {
            s["last_reload"]["trigger"] == "signal"
        })
        .await;
    let (code, _, _) = send(get(&served.url("/v1/users/alice/devices/d2"), Some(&bob))).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        served.status().await["last_reload"]["warnings"],
        serde_json::json!([])
    );

    // the config file itself is read at start only: a reload after it changed says so
    let config = served.dir.path().join("mini/served.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    write_atomic(&config, &format!("{text}\n# max_body_bytes raised\n"));
    let (_, _, body) = served.admin_post("/reload").await;
    let attempt: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let warnings = attempt["warnings"].to_string();
    assert!(
        warnings.contains("served.toml changed since start: restart to apply"),
        "{attempt}"
    );
    let logs = served.logs_once(|l| l.contains("restart to apply")).await;
    assert!(
        logs.iter().any(|l| l.contains("restart to apply")),
        "{logs:#?}"
    );
    drop(up);
}

#[tokio::test]
async fn readyz_needs_the_upstream_and_reload_off_refuses_post_reload() {
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let served = Served::start(&format!("http://{free}"), "off", "");
    assert_eq!(served.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(
        served.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (code, _, _) = served.admin_post("/reload").await;
    assert_eq!(code, StatusCode::CONFLICT);
    // `iotgate probe`, the container HEALTHCHECK: 0 on 2xx, 1 otherwise, 2 for a bad URL
    let probe = |url: String| crate::support::iotgate(&["probe", "--timeout", "2", &url]).0;
    assert_eq!(probe(format!("http://{}/healthz", served.admin)), 0);
    assert_eq!(
        probe(format!("http://{}/readyz", served.admin)),
        1,
        "503 is not healthy"
    );
    assert_eq!(
        probe(format!("http://{free}/healthz")),
        1,
        "nothing listens"
    );
    assert_eq!(probe("ftp://example/".into()), 2);
}

#[tokio::test]
async fn shadow_policies_are_decided_logged_and_counted_but_never_enforced() {
    let up = Upstream::start().await;
    // the shadow set is a candidate: same live policies, plus a stricter file
    let shadow = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&fixture("mini/policies"), shadow.path());
    std::fs::write(
        shadow.path().join("candidate.cedar"),
        "@id(\"candidate.no-bob\")\n@reason(\"candidate stops bob\")\nforbid (principal == Mini::User::\"bob\", action, resource);\n",
    )
    .unwrap();
    let served = Served::start(
        &format!("http://{}", up.addr),
        "off",
        &format!("shadow = [\"{}\"]", shadow.path().display()),
    );
    let bob = token(json!({"usr": "bob"}));
    let (status, _, _) = send(get(&served.url("/v1/users/alice/devices/d1"), Some(&bob))).await;
    assert_eq!(status, StatusCode::OK, "only the live decision is enforced");
    let alice = token(json!({"usr": "alice"}));
    let (status, _, _) = send(get(&served.url("/v1/users/alice/devices/d1"), Some(&alice))).await;
    assert_eq!(status, StatusCode::OK);
    let s = served.status().await;
    assert_eq!(s["shadow_disagreements"], 1);
    assert!(s["shadow_version"].as_str().unwrap().starts_with("mini-1@"));
    assert_ne!(s["shadow_version"], s["policy_version"]);
    let (_, metrics) = served.admin_get("/metrics").await;
    assert!(
        metrics.contains("iotgate_shadow_disagreements_total 1"),
        "{metrics}"
    );
    let logged: Vec<serde_json::Value> = served
        .logs_once(|l| l.contains("shadow disagreement"))
        .await
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "shadow disagreement")
        .collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["principal"], "bob");
    assert_eq!(logged[0]["live"], "allow");
    assert_eq!(logged[0]["shadow"], "deny");
    assert_eq!(logged[0]["shadow_policies"], "candidate.no-bob");
}

#[test]
fn check_against_reports_the_cases_a_policy_change_would_flip() {
    let config = fixture("mini/iotgate.toml");
    let suite = fixture("mini/checks.toml");
    let same = fixture("mini/policies");
    let against = |dir: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "check",
            "--config",
            config.to_str().unwrap(),
            suite.to_str().unwrap(),
            "--against",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        iotgate(&args)
    };
    let (code, out) = against(&same, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("0 of 15 cases would change verdict, 0 only their determining policies"),
        "{out}"
    );

    let candidate = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&same, candidate.path());
    std::fs::remove_file(candidate.path().join("projects/shared.cedar")).unwrap();
    let (code, out) = against(candidate.path(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("VERDICT   member reads a shared device  (GET /v1/users/alice/devices/d1): allow by [shared.allow] → 403 forbidden"), "{out}");
    // 403 → 403 by other policies is not a verdict change
    assert!(
        out.contains("POLICIES  member may not call a shared device's resources  (POST /v1/users/alice/devices/d1/led): 403 forbidden by [shared.deny] → 403 forbidden"),
        "{out}"
    );
    assert!(
        out.contains("1 of 15 cases would change verdict, 1 only their determining policies"),
        "{out}"
    );
    assert!(!out.contains("owner reads own device"), "{out}");

    // the same meaning under another id: only the determining policies change (exit 0)
    let renamed = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&same, renamed.path());
    let accounts = renamed.path().join("accounts.cedar");
    let text = std::fs::read_to_string(&accounts).unwrap();
    std::fs::write(
        &accounts,
        text.replace("@id(\"owner-full\")", "@id(\"owners\")"),
    )
    .unwrap();
    let (code, out) = against(renamed.path(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("POLICIES  owner reads own device  (GET /v1/users/alice/devices/d1): allow by [owner-full] → allow by [owners]"), "{out}");
    assert!(!out.contains("VERDICT"), "{out}");
    assert!(
        out.contains("0 of 15 cases would change verdict, "),
        "{out}"
    );
    let (_, json) = against(renamed.path(), &["--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict_changed"].as_array().unwrap().len(), 0, "{json}");
    let changed = v["policies_changed"].as_array().unwrap();
    assert!(!changed.is_empty());
    assert_eq!(changed[0]["before"]["policies"][0], "owner-full");
    assert_eq!(changed[0]["after"]["policies"][0], "owners");
}

/// Clients hammer the gateway while the policies flip back and forth; every answer must come
/// from one whole snapshot: a 200 was allowed by the allowing version (the upstream saw that
/// version), a 403 names the denying version, and nothing else happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_during_repeated_reloads_are_consistent() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&fixture("mini"), &dir.path().join("mini"));
    crate::support::copy_dir(&fixture("keys"), &dir.path().join("keys"));
    let config_path = crate::support::mini_config(dir.path(), &format!("http://{}", up.addr), "");
    // point the config at the writable copy
    let text = std::fs::read_to_string(&config_path).unwrap().replace(
        &fixture("mini").display().to_string(),
        &dir.path().join("mini").display().to_string(),
    );
    std::fs::write(&config_path, text).unwrap();
    let share = dir.path().join("mini/policies/projects/d2.cedar");
    let deny_version = {
        let c = iotgate::Config::load(&config_path).unwrap();
        iotgate::Snapshot::load(&c)
            .unwrap()
            .policy_version
            .to_string()
    };
    write_atomic(&share, SHARE_D2);
    let allow_version = {
        let c = iotgate::Config::load(&config_path).unwrap();
        iotgate::Snapshot::load(&c)
            .unwrap()
            .policy_version
            .to_string()
    };
    assert_ne!(allow_version, deny_version);
    let (gateway, config) = iotgate::load(&config_path).unwrap();
    let reloader = iotgate::Reloader::new(config, gateway.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = iotgate::Running::start(listener, gateway).unwrap();
    let url = format!("http://{}/v1/users/alice/devices/d2", running.addr);
    let bob = Arc::new(token(json!({"usr": "bob"})));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, bob, stop) = (url.clone(), bob.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("c{c}-{n}");
                n += 1;
                let req = http::Request::get(&url)
                    .header("authorization", format!("Bearer {bob}"))
                    .header("x-request-id", &id)
                    .body(iotgate::full(""))
                    .unwrap();
                let (status, _, body) = send(req).await;
                answers.push((id, status, body));
            }
            answers
        }));
    }
    let mut reloads = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if reloads % 2 == 0 {
            std::fs::remove_file(&share).unwrap();
        } else {
            write_atomic(&share, SHARE_D2);
        }
        let attempt = reloader.reload("admin").await;
        assert!(attempt.ok, "{attempt:?}");
        reloads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    running.stop().await;
    assert!(reloads >= 6, "only {reloads} reloads");
    let seen: std::collections::HashMap<String, String> = up
        .requests()
        .into_iter()
        .map(|s| {
            (
                s.headers["x-request-id"].to_str().unwrap().to_string(),
                s.headers["x-iotgate-policy-version"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let (mut allowed, mut denied) = (0, 0);
    for (id, status, body) in &answers {
        match *status {
            StatusCode::OK => {
                allowed += 1;
                assert_eq!(seen[id], allow_version, "{id} was allowed by {}", seen[id]);
            }
            StatusCode::FORBIDDEN => {
                denied += 1;
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v["policy_version"], deny_version.as_str(), "{id}");
                assert!(!seen.contains_key(id), "{id} was denied but forwarded");
            }
            other => panic!("{id}: unexpected {other}"),
        }
    }
    assert!(
        allowed > 0 && denied > 0,
        "allowed {allowed}, denied {denied}"
    );
}
