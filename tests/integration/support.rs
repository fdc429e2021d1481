//! Helpers shared by the integration tests: the `iotgate` binary, a recording upstream,
//! a gateway on an ephemeral port, tokens and an HTTP client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use iotgate::Body;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

/// `tests/fixtures/<rel>`.
pub(crate) fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Runs the `iotgate` binary.
#[track_caller]
pub(crate) fn iotgate(args: &[&str]) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_iotgate"))
        .args(args)
        .output()
        .expect("run iotgate");
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&stderr));
    (status.code().unwrap_or(-1), text)
}

/// The path a `scripts/` set-up script prints (it installs a tool once, e.g. from PyPI);
/// `env` names the variable that overrides it, for the failure message.
pub(crate) fn installed_by(script: &str, env: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let made = Command::new("bash")
        .arg(root.join("scripts").join(script))
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(
        made.status.success(),
        "scripts/{script} failed (set {env} instead): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    String::from_utf8(made.stdout).unwrap().trim().to_string()
}

/// A signed HS256 token for the mini profile's secret.
pub(crate) fn token(claims: serde_json::Value) -> String {
    let secret = std::fs::read_to_string(fixture("keys/hs.secret")).unwrap();
    let mut claims = claims.as_object().unwrap().clone();
    claims
        .entry("exp")
        .or_insert(serde_json::json!(iotgate::now() + 300));
    iotgate::Signer::hmac(jsonwebtoken::Algorithm::HS256, secret.trim().as_bytes())
        .sign(&claims)
        .unwrap()
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: http::Method,
    /// Path and query as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP server standing in for the IoT platform. It records every request and
/// answers by path:
/// - `…/download/<n>`: `n` bytes, as a first 1 KiB chunk, then (after `release`) the rest;
/// - `/slow`: waits 3 s;
/// - a WebSocket upgrade: echoes every message;
/// - anything else: 200 `{"upstream": "ok"}`.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub release: Arc<Notify>,
    /// Bytes of the streamed upload received before the client finished sending.
    pub upload_progress: Arc<Mutex<Vec<usize>>>,
}

impl Upstream {
    pub(crate) async fn start() -> Upstream {
        Self::start_inner(None).await
    }

    /// The same upstream behind TLS with the test certificate of `fixtures/tls`.
    pub(crate) async fn start_tls() -> Upstream {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(fixture("tls/cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("tls/key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            addr,
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
            upload_progress: Arc::default(),
        };
        let (seen, release, progress) = (
            up.seen.clone(),
            up.release.clone(),
            up.upload_progress.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, release, progress) = (seen.clone(), release.clone(), progress.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        upstream_handler(req, seen.clone(), release.clone(), progress.clone())
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                    };
                });
            }
        });
        up
    }

    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn upstream_handler(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    progress: Arc<Mutex<Vec<usize>>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if req.headers().contains_key(http::header::UPGRADE) {
        return Ok(websocket_echo(&mut req));
    }
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let headers = req.headers().clone();
    // read the body frame by frame, noting progress (for the streaming upload test)
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map(|f| f.into_data()) {
            if let Ok(data) = data {
                bytes.extend_from_slice(&data);
                progress.lock().unwrap().push(bytes.len());
            }
        } else {
            break;
        }
    }
    seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body: Bytes::from(bytes),
    });
    if let Some((_, n)) = path.rsplit_once("/download/") {
        let n: usize = n.parse().unwrap();
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, iotgate::BoxError>>(4);
        tokio::spawn(async move {
            let first = n.min(1024);
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'a'; first]))))
                .await;
            release.notified().await;
            let mut left = n - first;
            while left > 0 {
                let chunk = left.min(64 * 1024);
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'b'; chunk]))))
                    .await
                    .is_err()
                {
                    return;
                }
                left -= chunk;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if path == "/slow" || path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut response = Response::new(
        Full::new(Bytes::from_static(b"{\"upstream\": \"ok\"}"))
            .map_err(|n| match n {})
            .boxed(),
    );
    response
        .headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    response
        .headers_mut()
        .insert("x-upstream", "yes".parse().unwrap());
    Ok(response)
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", key)
        .body(iotgate::full(Bytes::new()))
        .unwrap()
}

/// A config for the mini profile forwarding to `upstream`, written into `dir`.
pub(crate) fn mini_config(dir: &Path, upstream: &str, extra_server: &str) -> PathBuf {
    let m = fixture("mini");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nmax_body_bytes = 1024\nupstream_timeout_seconds = 1\n{extra_server}\n\
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

/// A gateway serving the mini profile in front of `upstream`.
pub(crate) struct Gateway {
    pub addr: SocketAddr,
    pub running: iotgate::Running,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub(crate) async fn start(upstream: &str) -> Gateway {
        Self::start_with(upstream, "").await
    }

    pub(crate) async fn start_with(upstream: &str, extra_server: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = mini_config(dir.path(), upstream, extra_server);
        let (gateway, _config) = iotgate::load(&config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = iotgate::Running::start(listener, gateway).unwrap();
        Gateway {
            addr: running.addr,
            running,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// An HTTP/1.1 client.
pub(crate) fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and collects the response.
pub(crate) async fn send(req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = client().request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

/// A GET with an optional bearer token.
pub(crate) fn get(url: &str, bearer: Option<&str>) -> Request<Body> {
    let mut b = Request::get(url);
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(iotgate::full(Bytes::new())).unwrap()
}

/// Sends raw bytes over TCP and returns the status line and the whole answer.
pub(crate) async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[path = "../common/fs.rs"]
mod fs;
pub(crate) use fs::copy_dir;

/// Writes a file atomically (temp file + rename), as an editor or a deploy tool would.
pub(crate) fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `iotgate serve` as a process, on a writable copy of the mini profile, with JSON logs.
pub(crate) struct Served {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub admin: String,
    /// The decision API's address (empty without `[decision_api]`).
    pub decision_api: String,
    child: std::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// `reload` is "watch", "signal" or "off"; `shadow` lines go under `[policy]`.
    pub(crate) fn start(upstream: &str, reload: &str, extra_policy: &str) -> Served {
        let (dir, config) = Served::mini(upstream, reload, extra_policy);
        Served::spawn(dir, &config)
    }

    /// A writable copy of the mini profile and the path of its config.
    pub(crate) fn mini(
        upstream: &str,
        reload: &str,
        extra_policy: &str,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture("mini"), &dir.path().join("mini"));
        copy_dir(&fixture("keys"), &dir.path().join("keys"));
        let config = dir.path().join("mini/served.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"../keys/hs.secret\"\nprincipal_claim = \"usr\"\nquery_parameter = \"authorization\"\n\
                 [policy]\nschema = \"schema/mini.cedarschema\"\nroutes = \"schema/mini.routes.toml\"\n\
                 policies = [\"policies\"]\ndirectory = [\"directory\"]\nreload = \"{reload}\"\n{extra_policy}\n"
            ),
        )
        .unwrap();
        (dir, config)
    }

    /// `iotgate serve --config <config>` (a file in `dir`, removed with it) with JSON logs;
    /// returns once it logged its addresses.
    pub(crate) fn spawn(dir: tempfile::TempDir, config: &Path) -> Served {
        Served::spawn_logging(dir, config, "info")
    }

    /// [`Served::spawn`] with `RUST_LOG` set to `filter` (it must let the start line through).
    /// The binary is this build's, or the one `IOTGATE_BIN` names (CI runs the release-build
    /// measurements on the release binary it builds anyway).
    pub(crate) fn spawn_logging(dir: tempfile::TempDir, config: &Path, filter: &str) -> Served {
        use std::io::{BufRead, BufReader};
        let bin = std::env::var_os("IOTGATE_BIN");
        let bin = bin
            .as_deref()
            .unwrap_or(env!("CARGO_BIN_EXE_iotgate").as_ref());
        let mut child = Command::new(bin)
            .args([
                "--log-format",
                "json",
                "serve",
                "--config",
                config.to_str().unwrap(),
            ])
            .env("RUST_LOG", filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        // the start line, after what ran before serving (a first sync logs)
        let started = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("iotgate did not start");
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
            if v.get("listen").is_some() {
                break v;
            }
        };
        Served {
            addr: started["listen"].as_str().unwrap().to_string(),
            admin: started["admin"].as_str().unwrap().to_string(),
            decision_api: started["decision_api"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            dir,
            child,
            logs,
        }
    }

    pub(crate) fn policies(&self) -> PathBuf {
        self.dir.path().join("mini/policies")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let (status, _, body) = send(get(&format!("http://{}{}", self.admin, path), None)).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub(crate) async fn admin_post(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let url = format!("http://{}{}", self.admin, path);
        send(Request::post(url).body(iotgate::full("")).unwrap()).await
    }

    pub(crate) async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/status").await.1).unwrap()
    }

    pub(crate) fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The log lines once one matches `wanted` (lines are written in batches by the
    /// process's log thread: wait at most 5 s).
    pub(crate) async fn logs_once(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        for _ in 0..100 {
            let logs = self.logs();
            if logs.iter().any(|l| wanted(l)) {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.logs()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let code = self.child.wait().ok().and_then(|s| s.code());
        // let the log reader drain the last lines
        std::thread::sleep(Duration::from_millis(100));
        code
    }

    /// The highest resident set size of the process so far, in bytes (Linux `VmHWM`).
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Polls `/status` until `done` holds (at most 15 s).
    pub(crate) async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..150 {
            let s = self.status().await;
            if done(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}: {}", self.status().await);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
