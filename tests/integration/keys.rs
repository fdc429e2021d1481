//! Keys that rotate: a JWKS URL served on loopback that changes its keys or goes down,
//! an HS256 secret file replaced on disk, and two issuers side by side. Requests go through
//! the gateway's handler (the code `serve` runs) to a recording upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::support::{fixture, Upstream};

/// A JWKS endpoint whose document can be changed (or made to fail) while it runs.
struct Jwks {
    url: String,
    document: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    async fn start(document: String) -> Jwks {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Some(document)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (shared.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let current = doc.lock().unwrap().clone();
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(
                                current.clone().unwrap_or_default(),
                            )));
                            if current.is_none() {
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Jwks {
            url,
            document: shared,
            fetches,
        }
    }

    fn serve(&self, document: Option<String>) {
        *self.document.lock().unwrap() = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The JWKS of the fixture keys with these `kid`s (rsa-2 pinned to RS256).
fn jwks_of(kids: &[&str]) -> String {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("keys/jwks.json")).unwrap()).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or_default()))
        .map(|k| {
            let mut k = k.clone();
            k["alg"] = json!("RS256");
            k
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn rs256(file: &str, kid: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(&format!("keys/{file}"))).unwrap();
    let mut claims = claims.as_object().unwrap().clone();
    claims.entry("exp").or_insert(json!(iotgate::now() + 300));
    iotgate::Signer::private_pem(Algorithm::RS256, &pem, Some(kid.into()))
        .unwrap()
        .sign(&claims)
        .unwrap()
}

struct Served {
    gateway: Arc<iotgate::Gateway>,
    config: iotgate::Config,
    running: iotgate::Running,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// A mini-profile gateway whose `[auth]` section is `auth`; `dir` may hold key files.
async fn serve(auth: &str, dir: tempfile::TempDir) -> Served {
    let upstream = Upstream::start().await;
    let m = fixture("mini");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up}\"\n\
         [auth]\nprincipal_claim = \"usr\"\nleeway_seconds = 0\n{auth}\n\
         [policy]\nschema = \"{m}/schema/mini.cedarschema\"\nroutes = \"{m}/schema/mini.routes.toml\"\n\
         policies = [\"{m}/policies\"]\ndirectory = [\"{m}/directory\"]\nreload = \"signal\"\n",
        up = upstream.addr,
        m = m.display(),
    );
    let path = dir.path().join("iotgate.toml");
    std::fs::write(&path, text).unwrap();
    let (gateway, config) = iotgate::load(&path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = iotgate::Running::start(listener, gateway.clone()).unwrap();
    Served {
        gateway,
        config,
        running,
        _upstream: upstream,
        _dir: dir,
    }
}

impl Served {
    /// The status alice's device list gets with this token.
    async fn status_with(&self, token: &str) -> u16 {
        let request = Request::get("/v1/users/alice/devices")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        self.gateway.handle(request, peer).await.status().as_u16()
    }

    /// Waits (at most `secs`) until `token` gets `want`.
    async fn eventually(&self, token: &str, want: u16, secs: u64) -> bool {
        for _ in 0..secs * 10 {
            if self.status_with(token).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

#[tokio::test]
async fn a_jwks_url_rotates_its_keys_and_a_failed_fetch_keeps_the_last_good_ones() {
    let jwks = Jwks::start(jwks_of(&["rsa-1"])).await;
    let auth = format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"\njwks_refresh_seconds = 1",
        jwks.url
    );
    let served = serve(&auth, tempfile::tempdir().unwrap()).await;
    let old = rs256("rsa.key", "rsa-1", json!({"usr": "alice"}));
    let new = rs256("rsa2.key", "rsa-2", json!({"usr": "alice"}));
    assert!(
        served.eventually(&old, 200, 5).await,
        "the first fetch serves rsa-1"
    );
    assert_eq!(served.status_with(&new).await, 401);
    jwks.serve(Some(jwks_of(&["rsa-2"])));
    assert!(
        served.eventually(&new, 200, 5).await,
        "the refresh serves rsa-2"
    );
    assert_eq!(
        served.status_with(&old).await,
        401,
        "a token of the retired key is refused at once, cached or not"
    );
    // the JWKS server goes down: the last good keys keep serving, and /status says so
    jwks.serve(None);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served.status_with(&new).await, 200);
    let remotes = served.gateway.verifier().remotes();
    let status = remotes[0].status();
    assert_eq!(status.keys, 1);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "{status:?}"
    );
    served.running.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_triggers_one_refetch() {
    let jwks = Jwks::start(jwks_of(&["rsa-1"])).await;
    let auth = format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"\njwks_refresh_seconds = 3600",
        jwks.url
    );
    let served = serve(&auth, tempfile::tempdir().unwrap()).await;
    let old = rs256("rsa.key", "rsa-1", json!({"usr": "alice"}));
    assert!(served.eventually(&old, 200, 5).await);
    let at_start = jwks.fetches();
    jwks.serve(Some(jwks_of(&["rsa-1", "rsa-2"])));
    let new = rs256("rsa2.key", "rsa-2", json!({"usr": "alice"}));
    for _ in 0..5 {
        assert_eq!(served.status_with(&new).await, 401, "not fetched yet");
    }
    // the refetch waits out the minimum interval since the first fetch (10 s)
    assert!(
        served.eventually(&new, 200, 15).await,
        "the unknown kid was fetched"
    );
    assert_eq!(
        jwks.fetches(),
        at_start + 1,
        "five unknown-kid tokens, one refetch"
    );
    served.running.stop().await;
}

#[tokio::test]
async fn an_hs256_secret_replaced_on_disk_rotates_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.key");
    std::fs::write(&secret, "first-secret-of-at-least-32-bytes!!").unwrap();
    let auth = format!(
        "algorithms = [\"HS256\"]\nhs256_secret_file = \"{}\"",
        secret.display()
    );
    let served = serve(&auth, dir).await;
    let sign = |key: &str| {
        let claims = json!({"usr": "alice", "exp": iotgate::now() + 300});
        iotgate::Signer::hmac(Algorithm::HS256, key.as_bytes())
            .sign(claims.as_object().unwrap())
            .unwrap()
    };
    let (old, new) = (
        sign("first-secret-of-at-least-32-bytes!!"),
        sign("second-secret-of-at-least-32-bytes!"),
    );
    assert_eq!(served.status_with(&old).await, 200);
    std::fs::write(&secret, "second-secret-of-at-least-32-bytes!\n").unwrap();
    let reloader = iotgate::Reloader::new(served.config.clone(), served.gateway.clone(), None);
    let attempt = reloader.reload("signal").await;
    assert!(attempt.ok, "{attempt:?}");
    assert_eq!(served.status_with(&new).await, 200);
    assert_eq!(
        served.status_with(&old).await,
        401,
        "the old secret is refused"
    );
    // a broken secret file is refused and the current secret keeps serving
    std::fs::write(&secret, "  \n").unwrap();
    let attempt = reloader.reload("signal").await;
    assert!(
        !attempt.ok && attempt.problems[0].contains("secret is empty"),
        "{attempt:?}"
    );
    assert_eq!(served.status_with(&new).await, 200);
    served.running.stop().await;
}

#[tokio::test]
async fn platform_and_identity_provider_tokens_are_both_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let auth = format!(
        "[[auth.issuer]]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{secret}\"\n\
         [[auth.issuer]]\nissuer = \"https://idp.test\"\naudience = \"iotgate\"\nalgorithms = [\"RS256\"]\n\
         jwks_file = \"{jwks}\"\nprincipal_claim = \"email\"\n",
        secret = fixture("keys/hs.secret").display(),
        jwks = fixture("keys/jwks.json").display(),
    );
    let served = serve(&auth, dir).await;
    let platform = crate::support::token(json!({"usr": "alice"}));
    assert_eq!(served.status_with(&platform).await, 200);
    let idp = |claims: Value| rs256("rsa.key", "rsa-1", claims);
    let good = idp(json!({"iss": "https://idp.test", "aud": "iotgate", "email": "alice"}));
    assert_eq!(served.status_with(&good).await, 200);
    for bad in [
        json!({"iss": "https://idp.test", "aud": "other", "email": "alice"}),
        json!({"iss": "https://idp.test", "aud": "iotgate", "usr": "alice"}),
        json!({"iss": "https://elsewhere.test", "aud": "iotgate", "email": "alice"}),
    ] {
        assert_eq!(served.status_with(&idp(bad.clone())).await, 401, "{bad}");
    }
    served.running.stop().await;
}
