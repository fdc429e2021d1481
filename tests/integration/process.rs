//! `iotgate serve` as a real process: startup refusal, JSON decision logs without secrets,
//! graceful exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{get, iotgate, send, token, Served, Upstream};

#[test]
fn serve_refuses_to_start_on_a_broken_config() {
    let (code, out) = iotgate(&[
        "serve",
        "--config",
        crate::support::fixture("bad/broken-everything.toml")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("broken.cedar:6:"), "{out}");
    let (code, out) = iotgate(&[
        "serve",
        "--config",
        crate::support::fixture("bad/bad-config.toml")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not a socket address"), "{out}");
}

/// With `--log-format json` the start-up problems are JSON log lines too, one per problem
/// with its file and line, so a log collector does not have to parse two formats.
#[test]
fn start_up_problems_are_json_lines_with_log_format_json() {
    let bad = crate::support::fixture("bad/bad-config.toml");
    let (code, out) = iotgate(&[
        "--log-format",
        "json",
        "serve",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 1, "every problem is reported: {out}");
    for v in &lines {
        assert_eq!(v["level"], "ERROR", "{v}");
        assert!(
            v["file"].as_str().unwrap().ends_with("bad-config.toml"),
            "{v}"
        );
    }
    let socket = lines
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .unwrap()
                .contains("is not a socket address")
        })
        .unwrap();
    assert_eq!(socket["line"], 2, "{socket}");
}

#[tokio::test]
async fn serve_logs_one_decision_per_request_without_tokens_and_stops_on_sigterm() {
    let up = Upstream::start().await;
    let mut served = Served::start(&format!("http://{}", up.addr), "off", "");
    assert_ne!(served.addr, "127.0.0.1:0");
    let bob = token(json!({"usr": "bob"}));
    let mut traced = get(&served.url("/v1/users/alice/devices/d1"), Some(&bob));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    traced
        .headers_mut()
        .insert("traceparent", parent.parse().unwrap());
    let (status, _, _) = send(traced).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(
        up.requests()[0].headers["traceparent"],
        parent.as_str(),
        "passed on as sent"
    );
    let (status, _, _) = send(get(
        &served.url(&format!("/v1/users/alice/devices/d2?authorization={bob}")),
        None,
    ))
    .await;
    assert_eq!(status, http::StatusCode::FORBIDDEN);
    assert_eq!(served.terminate(), Some(0));
    let logs = served.logs();
    let all = logs.join("\n");
    assert!(!all.contains(&bob), "a token reached the logs:\n{all}");
    assert!(!all.to_lowercase().contains("bearer"), "{all}");
    let decisions: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 2, "{all}");
    let allow = &decisions[0];
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["principal"], "bob");
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["route"], "GET /v1/users/{owner}/devices/{device}");
    assert_eq!(allow["action"], "Mini::Action::\"ReadDevice\"");
    assert_eq!(allow["resource"], "Mini::Device::\"alice/d1\"");
    assert_eq!(allow["policies"], serde_json::json!(["shared.allow"]));
    assert!(allow["policy_version"]
        .as_str()
        .unwrap()
        .starts_with("mini-1@"));
    assert!(allow["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(allow["latency_us"].as_u64().is_some());
    assert_eq!(allow["trace_id"], trace);
    assert_eq!(allow["client"], "127.0.0.1");
    let deny = &decisions[1];
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["status"], 403);
    assert!(deny.get("trace_id").is_none(), "{deny}");
}

#[tokio::test]
async fn a_log_filter_that_turns_decisions_off_writes_none() {
    let up = Upstream::start().await;
    let (dir, config) = Served::mini(&format!("http://{}", up.addr), "off", "");
    let mut served = Served::spawn_logging(dir, &config, "info,iotgate::decision=off");
    let bob = token(json!({"usr": "bob"}));
    let (status, _, _) = send(get(&served.url("/v1/users/alice/devices/d1"), Some(&bob))).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(served.terminate(), Some(0));
    let logs = served.logs();
    assert!(
        logs.iter().any(|l| l.contains("iotgate stopped")),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("\"decision\"")),
        "a decision line passed the filter: {logs:#?}"
    );
}

/// One printed curl line: method, token variable, body, URL and the status it should get.
struct Curl {
    method: String,
    json: bool,
    token: Option<String>,
    body: Option<String>,
    url: String,
    expect: u16,
}

fn parse_curl(line: &str) -> Curl {
    let (cmd, comment) = line.split_once("   # ").unwrap();
    let expect = comment.split_whitespace().next().unwrap().parse().unwrap();
    let words: Vec<&str> = cmd.split(' ').collect();
    let after = |flag: &str| words.iter().position(|w| *w == flag).map(|i| words[i + 1]);
    let token = cmd
        .split("Bearer $")
        .nth(1)
        .map(|rest| rest.split('"').next().unwrap().to_string());
    let body = cmd
        .split(" -d '")
        .nth(1)
        .map(|rest| rest.split('\'').next().unwrap().to_string());
    // as curl does: -d without -X is a POST, typed as a form unless a header says otherwise
    let default_method = if body.is_some() { "POST" } else { "GET" };
    let json = cmd.contains("Content-Type: application/json");
    Curl {
        method: after("-X").unwrap_or(default_method).to_string(),
        json,
        token,
        body,
        url: words.last().unwrap().to_string(),
        expect,
    }
}

#[tokio::test]
async fn demo_prints_calls_that_get_the_statuses_it_announces() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotgate"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines
        .last()
        .is_some_and(|l: &String| l.starts_with("#   cargo run"))
    {
        lines.push(rx.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    let tokens: std::collections::HashMap<String, String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("export "))
        .map(|l| {
            let (var, rest) = l.split_once("='").unwrap();
            (
                var.to_string(),
                rest.split('\'').next().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(tokens.len(), 4);
    // the admin listener, as `serve` runs it
    let admin = lines
        .iter()
        .find_map(|l| l.strip_prefix("admin:   http://"))
        .and_then(|l| l.split('/').next())
        .unwrap_or_else(|| panic!("no admin line in {lines:#?}"));
    for probe in ["/healthz", "/readyz"] {
        let (status, _, _) = send(get(&format!("http://{admin}{probe}"), None)).await;
        assert_eq!(status, http::StatusCode::OK, "{probe}");
    }
    let curls: Vec<Curl> = lines
        .iter()
        .filter(|l| l.starts_with("curl ") && !l.contains("--path-as-is"))
        .map(|l| parse_curl(l))
        .collect();
    assert!(curls.len() >= 10);
    assert!(
        curls.iter().any(|c| c.expect == 200)
            && curls.iter().any(|c| c.expect == 403)
            && curls.iter().any(|c| c.expect == 401)
    );
    for c in curls {
        let mut req = http::Request::builder()
            .method(c.method.as_str())
            .uri(&c.url);
        if let Some(var) = &c.token {
            req = req.header("authorization", format!("Bearer {}", tokens[var]));
        }
        if c.body.is_some() {
            let media = match c.json {
                true => "application/json",
                false => "application/x-www-form-urlencoded",
            };
            req = req.header("content-type", media);
        }
        let body = c.body.clone().unwrap_or_default();
        let (status, _, _) = send(req.body(iotgate::full(body)).unwrap()).await;
        assert_eq!(status.as_u16(), c.expect, "{} {}", c.method, c.url);
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        !std::env::temp_dir()
            .join(format!("iotgate-demo-{pid}"))
            .exists(),
        "demo left its folder behind"
    );
}

#[tokio::test]
async fn sigterm_fails_readiness_keeps_serving_for_the_delay_then_exits() {
    let up = Upstream::start().await;
    let (dir, config) = Served::mini(&format!("http://{}", up.addr), "off", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[server]\n",
        "[server]\nshutdown_delay_seconds = 2\ndrain_seconds = 5\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut served = Served::spawn(dir, &config);
    // the upstream answers, so ready
    let bob = token(json!({"usr": "bob"}));
    let d1 = served.url("/v1/users/alice/devices/d1");
    assert_eq!(send(get(&d1, Some(&bob))).await.0, http::StatusCode::OK);
    assert_eq!(served.admin_get("/readyz").await.0, http::StatusCode::OK);
    let asked = std::time::Instant::now();
    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = served.admin_get("/readyz").await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(
        send(get(&d1, Some(&bob))).await.0,
        http::StatusCode::OK,
        "still served during the delay"
    );
    assert_eq!(served.terminate(), Some(0));
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "exited before the delay: {:?}",
        asked.elapsed()
    );
}
