//! Open streams follow permission changes: with N WebSocket streams open through the gateway
//! (half alice's, half bob's, to a real WebSocket echo upstream), how long a directory change
//! takes to commit, how long until every stream was decided again, and how long until every
//! stream of a disabled account was closed (1008). Prints a table; run with
//! `cargo bench --bench streams` (`IOTGATE_BENCH_STREAMS=1000,4000` to choose the sizes; each
//! stream holds four sockets in this one process).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks fail loudly"
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/scale.rs"]
#[allow(dead_code, reason = "each bench uses part of the shared world builder")]
mod scale;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn config(dir: &Path, upstream: &str) -> PathBuf {
    let m = fixture("mini");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nmax_connections = 20000\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{secret}\"\nprincipal_claim = \"usr\"\nquery_parameter = \"authorization\"\n\
         [policy]\nschema = \"{m}/schema/mini.cedarschema\"\nroutes = \"{m}/schema/mini.routes.toml\"\n\
         policies = [\"{m}/policies\"]\ndirectory = [\"{m}/directory\"]\nreload = \"off\"\n",
        secret = fixture("keys/hs.secret").display(),
        m = m.display(),
    );
    let path = dir.join("iotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A WebSocket upstream that echoes every message.
async fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn token(user: &str) -> String {
    let secret = std::fs::read_to_string(fixture("keys/hs.secret")).unwrap();
    let claims = serde_json::json!({"usr": user, "exp": iotgate::now() + 3600});
    iotgate::Signer::hmac(jsonwebtoken::Algorithm::HS256, secret.trim().as_bytes())
        .sign(claims.as_object().unwrap())
        .unwrap()
}

fn upsert(id: &str, attrs: serde_json::Value) -> iotgate::DirectoryChange {
    iotgate::DirectoryChange::Upsert {
        uid: iotgate::DirectoryUid {
            ty: "Mini::User".into(),
            id: id.into(),
        },
        attrs: attrs.as_object().unwrap().clone(),
        parents: None,
    }
}

/// Waits until `counter` reaches `target`; the time it took.
async fn until(counter: &std::sync::atomic::AtomicU64, target: u64, started: Instant) -> Duration {
    while counter.load(Ordering::Relaxed) < target {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "streams did not follow"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sizes = scale::sizes("IOTGATE_BENCH_STREAMS", &[1_000, 4_000]);
    println!(
        "{:>8} {:>14} {:>18} {:>16} {:>22}",
        "streams", "commit (open)", "all re-decided", "commit (none)", "bob's closed (1008)"
    );
    for n in sizes {
        runtime.block_on(run(n));
    }
}

async fn run(n: usize) {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, _) = iotgate::load(&config(dir.path(), &upstream)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = iotgate::Running::start(listener, gateway.clone()).unwrap();
    let (alice, bob) = (token("alice"), token("bob"));
    let mut clients: Vec<(bool, Client)> = Vec::with_capacity(n);
    for i in 0..n {
        let (is_bob, t) = match i % 2 {
            0 => (false, &alice),
            _ => (true, &bob),
        };
        let url = format!(
            "ws://{}/v1/users/alice/devices/d1/stream?authorization={t}",
            running.addr
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        clients.push((is_bob, ws));
    }
    let redecided = gateway.metrics().streams_redecided();
    let revoked = gateway.metrics().streams_revoked();
    // an unrelated change: every stream is decided again and stays open
    let before = redecided.load(Ordering::Relaxed);
    let started = Instant::now();
    gateway
        .commit(vec![upsert(
            "newcomer",
            serde_json::json!({"role": "developer", "enabled": true}),
        )])
        .await
        .unwrap();
    let commit_open = started.elapsed();
    let all = until(&redecided, before + n as u64, started).await;
    // the same change with no stream open costs what a commit costs
    let quiet = iotgate::load(&config(dir.path(), &upstream)).unwrap().0;
    let started = Instant::now();
    quiet
        .commit(vec![upsert(
            "newcomer",
            serde_json::json!({"role": "developer", "enabled": true}),
        )])
        .await
        .unwrap();
    let commit_none = started.elapsed();
    // bob is disabled: each of his streams closes
    let started = Instant::now();
    gateway
        .commit(vec![upsert("bob", serde_json::json!({"enabled": false}))])
        .await
        .unwrap();
    let bobs = until(&revoked, (n / 2) as u64, started).await;
    for (is_bob, ws) in clients.iter_mut() {
        if *is_bob {
            assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
        }
    }
    println!(
        "{n:>8} {:>11.2} ms {:>15.1} ms {:>13.2} ms {:>19.1} ms",
        ms(commit_open),
        ms(all),
        ms(commit_none),
        ms(bobs)
    );
    drop(clients);
    running.stop().await;
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
