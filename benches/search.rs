//! The decision API's searches as deployed: the release `iotgate serve` with a decision API
//! over a Thinger-like world (default about 100,000 devices, 11,600 users, 5,800 projects with
//! two project policies each), asked over HTTP on loopback. Times one evaluation (for scale),
//! the first page and every page of "which devices may this member read", "who may read this
//! device", and "what may this member do on it". Medians of `IOTGATE_BENCH_ROUNDS` (5).
//!
//! Run with `cargo bench --bench search` (`IOTGATE_BENCH_ENTITIES=116000` sets the world).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks fail loudly"
)]

#[path = "support/scale.rs"]
#[allow(dead_code, reason = "each bench uses part of the shared world builder")]
mod scale;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "bench-decision-token";

/// `iotgate serve` with a decision API on `config`; its decision API address.
fn serve(config: &std::path::Path) -> (Child, String) {
    let dir = config.parent().unwrap();
    std::fs::write(dir.join("api.token"), TOKEN).unwrap();
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("[decision_api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"api.token\"\n");
    std::fs::write(config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotgate"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,iotgate=info,iotgate::decision=off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let Some(addr) = v["decision_api"].as_str().filter(|a| !a.is_empty()) {
                return (child, addr.to_string());
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("iotgate did not start");
}

/// One POST, answered.
fn post(addr: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    serde_json::from_str(body).unwrap()
}

/// Every page of a search: (results, pages).
fn all_pages(addr: &str, path: &str, mut body: Value, limit: u64) -> (usize, usize) {
    let (mut results, mut pages) = (0, 0);
    body["page"] = json!({ "limit": limit });
    loop {
        let answer = post(addr, path, &body);
        results += answer["results"].as_array().unwrap().len();
        pages += 1;
        match answer["page"]["next_token"].as_str() {
            Some(t) if !t.is_empty() => body["page"] = json!({ "limit": limit, "token": t }),
            _ => return (results, pages),
        }
    }
}

fn median(rounds: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        n = f();
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], n)
}

fn main() {
    let entities = scale::sizes("IOTGATE_BENCH_ENTITIES", &[116_000])[0];
    let rounds = scale::sizes("IOTGATE_BENCH_ROUNDS", &[5])[0];
    let world = scale::write_directory_world(entities);
    let config = world.add_policies(world.projects * 2);
    let (mut child, addr) = serve(&config);
    let (member, path) = world.shared_device();
    let device_id = path
        .trim_start_matches("/v1/users/")
        .replace("/devices/", "/");
    let ctx = json!({"token_kind": "user"});
    let subject = json!({"type": "User", "id": member});
    let device = json!({"type": "Device", "id": device_id});
    let evaluation = json!({"subject": subject, "action": {"name": "ReadDeviceStatus"}, "resource": device, "context": ctx});
    let resources = json!({"subject": subject, "action": {"name": "ReadDeviceStatus"}, "resource": {"type": "Device"}, "context": ctx});
    let subjects = json!({"subject": {"type": "User"}, "action": {"name": "ReadDeviceStatus"}, "resource": device, "context": ctx});
    let actions = json!({"subject": subject, "resource": device, "context": ctx});

    println!(
        "world: {} users, {} projects, {} devices, {} project policies",
        world.users,
        world.projects,
        world.devices,
        world.projects * 2
    );
    println!(
        "{:<44} {:>12} {:>9} {:>6}",
        "query", "median", "results", "pages"
    );
    let row = |name: &str, (took, n): (Duration, usize), pages: usize| {
        println!("{name:<44} {took:>12.2?} {n:>9} {pages:>6}");
    };
    row(
        "evaluation (one decision, over HTTP)",
        median(rounds, || {
            usize::from(post(&addr, "/access/v1/evaluation", &evaluation)["decision"] == true)
        }),
        1,
    );
    for (name, path, body) in [
        (
            "resource search: devices a member may read",
            "/access/v1/search/resource",
            &resources,
        ),
        (
            "subject search: users who may read a device",
            "/access/v1/search/subject",
            &subjects,
        ),
    ] {
        row(
            &format!("{name}, first page of 100"),
            median(rounds, || {
                let mut b = body.clone();
                b["page"] = json!({"limit": 100});
                post(&addr, path, &b)["results"].as_array().unwrap().len()
            }),
            1,
        );
        let mut pages = 0;
        let timed = median(rounds, || {
            let (n, p) = all_pages(&addr, path, body.clone(), 1000);
            pages = p;
            n
        });
        row(&format!("{name}, every page"), timed, pages);
    }
    row(
        "action search: what a member may do on a device",
        median(rounds, || {
            post(&addr, "/access/v1/search/action", &actions)["results"]
                .as_array()
                .unwrap()
                .len()
        }),
        1,
    );
    let _ = child.kill();
    let _ = child.wait();
}
