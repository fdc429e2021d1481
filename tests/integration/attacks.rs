//! Attacks on the forwarding path, sent as raw bytes (no normalizing client) to a gateway
//! with the bundled `thinger` profile, in front of an upstream that records every byte it
//! receives and upgrades to whatever protocol it is asked for (as Hypercorn does for h2c).
//! Every case asserts what the client got and what the upstream received: nothing, or
//! exactly the request that was decided.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::support::Seen;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A token signed with the thinger example's secret.
pub(crate) fn token(claims: Value) -> String {
    let secret = std::fs::read_to_string(root().join("examples/thinger/secret.key")).unwrap();
    let mut claims = claims.as_object().unwrap().clone();
    claims.entry("exp").or_insert(json!(iotgate::now() + 300));
    iotgate::Signer::hmac(jsonwebtoken::Algorithm::HS256, secret.trim().as_bytes())
        .sign(&claims)
        .unwrap()
}

/// A token signed with the thinger secret over exactly these JOSE header and claims texts
/// (to send shapes a JSON serializer would not write).
fn raw_token(header: &str, claims: &str) -> String {
    use base64::Engine;
    let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    let secret = std::fs::read_to_string(root().join("examples/thinger/secret.key")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes());
    let message = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .unwrap();
    format!("{message}.{sig}")
}

/// The four lines of a WebSocket opening handshake.
const HANDSHAKE: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

fn bob() -> String {
    token(json!({"usr": "bob"}))
}

fn dave() -> String {
    token(json!({"usr": "dave"}))
}

// === the recording upstream ===

/// What the upstream received: every byte, the requests hyper parsed from them, and the
/// bytes that arrived on a connection after it switched protocols.
#[derive(Default)]
struct Received {
    raw: Vec<u8>,
    requests: Vec<Seen>,
    after_switch: Vec<u8>,
}

pub(crate) struct Recorder {
    pub(crate) addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl Recorder {
    /// `unsolicited`: answer every request with `101 Switching Protocols` to h2c, asked or not.
    pub(crate) async fn start(unsolicited: bool) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Received>> = Arc::default();
        let shared = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = shared.clone();
                tokio::spawn(async move {
                    let io = Tee {
                        inner: stream,
                        received: received.clone(),
                    };
                    let svc = service_fn(move |req| answer(req, received.clone(), unsolicited));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Recorder { addr, received }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.received.lock().unwrap().requests.clone()
    }

    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap().raw).into_owned()
    }

    fn after_switch(&self) -> Vec<u8> {
        self.received.lock().unwrap().after_switch.clone()
    }

    /// Nothing at all reached the upstream.
    #[track_caller]
    pub(crate) fn assert_untouched(&self) {
        assert_eq!(self.raw(), "", "the upstream received bytes");
    }
}

async fn answer(
    mut req: Request<Incoming>,
    received: Arc<Mutex<Received>>,
    unsolicited: bool,
) -> Result<Response<iotgate::Body>, std::convert::Infallible> {
    let upgrade = req.headers().get(http::header::UPGRADE).cloned();
    let switch = match unsolicited {
        true => Some(http::HeaderValue::from_static("h2c")),
        false => upgrade,
    };
    let on = switch.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    received.lock().unwrap().requests.push(Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let mut response = Response::new(iotgate::full(r#"{"upstream":"ok"}"#));
    // a lax server's own CORS answer, which a gateway with [server.cors] must not pass on
    response
        .headers_mut()
        .insert("access-control-allow-origin", "*".parse().unwrap());
    if let (Some(protocol), Some(on)) = (switch, on) {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        h.insert(http::header::UPGRADE, protocol);
        if let Some(key) = accept_key(&received) {
            h.insert("sec-websocket-accept", key.parse().unwrap());
        }
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received
                    .lock()
                    .unwrap()
                    .after_switch
                    .extend_from_slice(&buf[..n]);
                if io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(response)
}

/// The `Sec-WebSocket-Accept` for the last request's key, when it sent one.
fn accept_key(received: &Arc<Mutex<Received>>) -> Option<String> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let r = received.lock().unwrap();
    let key = r.requests.last()?.headers.get("sec-websocket-key")?;
    Some(derive_accept_key(key.as_bytes()))
}

/// A socket that copies every byte it reads into the recorder.
struct Tee {
    inner: TcpStream,
    received: Arc<Mutex<Received>>,
}

impl AsyncRead for Tee {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.received.lock().unwrap().raw.extend_from_slice(&new);
        polled
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === the gateway ===

pub(crate) struct Thinger {
    pub(crate) addr: SocketAddr,
    pub(crate) running: iotgate::Running,
    _dir: tempfile::TempDir,
}

impl Thinger {
    pub(crate) async fn start(upstream: &str, extra_server: &str) -> Thinger {
        Thinger::start_with(upstream, extra_server, &root().join("policies/thinger")).await
    }

    /// A gateway deciding with the policies in `policies`.
    pub(crate) async fn start_with(upstream: &str, extra_server: &str, policies: &Path) -> Thinger {
        Thinger::start_at("127.0.0.1:0", upstream, extra_server, policies).await
    }

    /// A gateway listening on `listen`.
    pub(crate) async fn start_at(
        listen: &str,
        upstream: &str,
        extra_server: &str,
        policies: &Path,
    ) -> Thinger {
        let dir = tempfile::tempdir().unwrap();
        let r = root();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nupstream_timeout_seconds = 5\n{extra_server}\n\
             [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{r}/examples/thinger/secret.key\"\n\
             principal_claim = \"usr\"\nquery_parameter = \"authorization\"\nleeway_seconds = 0\n\
             [policy]\nschema = \"{r}/schema/thinger.cedarschema\"\nroutes = \"{r}/schema/thinger.routes.toml\"\n\
             policies = [\"{p}\"]\ndirectory = [\"{r}/examples/thinger/directory\"]\nreload = \"off\"\n\
             [license]\nmax_accounts = 5\n",
            r = r.display(),
            p = policies.display()
        );
        let config = dir.path().join("iotgate.toml");
        std::fs::write(&config, text).unwrap();
        let (gateway, _) = iotgate::load(&config).unwrap();
        let listener = TcpListener::bind(listen).await.unwrap();
        let running = iotgate::Running::start(listener, gateway).unwrap();
        Thinger {
            addr: running.addr,
            running,
            _dir: dir,
        }
    }
}

/// Writes `request` on a new connection and reads until the gateway closes it (or 3 s).
pub(crate) async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends each raw request on its own connection and checks the one status it gets.
async fn answers_are(addr: SocketAddr, cases: &[(String, u16)]) {
    for (bytes, want) in cases {
        let answer = exchange(addr, bytes.as_bytes()).await;
        assert_eq!(statuses(&answer), [*want], "{bytes}\n{answer}");
    }
}

/// The status codes of every response in a raw answer, in order.
pub(crate) fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// One request with the usual headers; `extra` are more header lines.
pub(crate) fn request(
    method: &str,
    target: &str,
    token: Option<&str>,
    extra: &[&str],
    body: &str,
) -> String {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: iot.example\r\n");
    if let Some(t) = token {
        text.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

const DEVICE: &str = "/v1/users/dave/devices/sensor1";

// === 1. upgrade smuggling ===

#[tokio::test]
async fn h2c_upgrades_are_not_forwarded_and_later_bytes_are_decided() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let upgrade = request(
        "GET",
        DEVICE,
        Some(&bob()),
        &[
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
        "",
    );
    let smuggled = [
        request("GET", "/v1/users", None, &[], ""),
        request(
            "DELETE",
            "/v1/users/acme",
            None,
            &["X-Iotgate-Principal: acme"],
            "",
        ),
        request("GET", "/v1/users", None, &["Connection: close"], ""),
    ]
    .concat();
    let answer = exchange(gw.addr, format!("{upgrade}{smuggled}").as_bytes()).await;
    // the allowed GET is answered as a plain request; every later request is decided (401)
    assert_eq!(statuses(&answer), [200, 401, 401, 401], "{answer}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, DEVICE);
    for header in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !seen[0].headers.contains_key(header),
            "{header} was forwarded"
        );
    }
    let raw = up.raw();
    for never in ["h2c", "HTTP2-Settings", "DELETE", "GET /v1/users HTTP"] {
        assert!(
            !raw.contains(never),
            "`{never}` reached the upstream:\n{raw}"
        );
    }
    assert!(up.after_switch().is_empty());
    gw.running.stop().await;
}

#[tokio::test]
async fn a_websocket_handshake_on_a_plain_route_is_forwarded_without_the_upgrade() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let first = request("GET", DEVICE, Some(&bob()), &HANDSHAKE, "");
    let second = request("GET", "/v1/users", None, &["Connection: close"], "");
    let answer = exchange(gw.addr, format!("{first}{second}").as_bytes()).await;
    assert_eq!(statuses(&answer), [200, 401], "{answer}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("upgrade"));
    assert!(up.after_switch().is_empty());
    gw.running.stop().await;
}

#[tokio::test]
async fn websockets_open_only_on_stream_routes_and_only_to_websocket() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let stream = format!(
        "/v3/users/dave/devices/sensor1/resources?authorization={}",
        dave()
    );
    let url = format!("ws://{}{stream}", gw.addr);
    let (mut ws, response) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    use futures_util::SinkExt;
    ws.send("ping".into()).await.unwrap();
    for _ in 0..50 {
        if !up.after_switch().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !up.after_switch().is_empty(),
        "the frame crossed the tunnel"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, stream, "the decided target, byte for byte");
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    // the same handshake with a second protocol offered is not an upgrade
    let mixed = request(
        "GET",
        &stream,
        None,
        &[
            HANDSHAKE[0],
            "Upgrade: websocket, h2c",
            HANDSHAKE[2],
            HANDSHAKE[3],
            "Connection: close",
        ],
        "",
    );
    let answer = exchange(gw.addr, mixed.as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert!(!up.requests()[1].headers.contains_key("upgrade"));
    gw.running.stop().await;
}

#[tokio::test]
async fn a_switch_the_client_did_not_ask_for_is_a_502_and_closes_the_connection() {
    let up = Recorder::start(true).await;
    let gw = Thinger::start(&up.url(), "").await;
    // a plain request that the upstream answers with 101 → h2c
    let plain = request("GET", DEVICE, Some(&bob()), &[], "");
    let after = request("GET", "/v1/users", None, &[], "");
    let answer = exchange(gw.addr, format!("{plain}{after}").as_bytes()).await;
    assert_eq!(statuses(&answer), [502], "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // a legitimate websocket handshake that the upstream switches to h2c instead
    let stream = "/v3/users/dave/devices/sensor1/resources";
    let ws = request("GET", stream, Some(&dave()), &HANDSHAKE, "");
    let answer = exchange(
        gw.addr,
        format!("{ws}GET /v1/users HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [502], "{answer}");
    assert!(up.after_switch().is_empty(), "a tunnel was opened");
    assert!(!up.raw().contains("GET /v1/users HTTP"));
    gw.running.stop().await;
}

// === 2. catch-all routes ===

#[tokio::test]
async fn device_sub_paths_are_decided_as_their_own_operations() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let erin = token(json!({"usr": "erin"}));
    let devtoken = token(json!({"usr": "dave", "dev": "sensor1"}));
    let cases: [(&str, String, &str, u16); 6] = [
        ("POST", format!("{DEVICE}/clone"), erin.as_str(), 403),
        ("GET", format!("{DEVICE}/clone"), &bob(), 403),
        ("POST", format!("{DEVICE}/clone"), devtoken.as_str(), 403),
        (
            "GET",
            "/v2/users/dave/devices/sensor1/stats".into(),
            &bob(),
            403,
        ),
        (
            "GET",
            "/v2/users/dave/devices/sensor1/tokens".into(),
            &bob(),
            403,
        ),
        ("GET", format!("{DEVICE}/properties"), &dave(), 404),
    ];
    for (method, path, who, want) in &cases {
        let r = request(method, path, Some(who), &["Connection: close"], "");
        let answer = exchange(gw.addr, r.as_bytes()).await;
        assert_eq!(statuses(&answer), [*want], "{method} {path}: {answer}");
    }
    up.assert_untouched();
    // the owner's clone is forwarded, as CloneDevice
    let r = request(
        "POST",
        &format!("{DEVICE}/clone"),
        Some(&dave()),
        &["Connection: close"],
        "",
    );
    assert_eq!(statuses(&exchange(gw.addr, r.as_bytes()).await), [200]);
    assert_eq!(up.requests()[0].uri, format!("{DEVICE}/clone"));
    gw.running.stop().await;
}

// === 3. body confusion ===

#[tokio::test]
async fn bodies_that_decide_must_be_plain_json_objects() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let form_smuggle = r#"{"a":"&role=admin&"}"#;
    let cases: [(&[&str], &str, u16); 6] = [
        (
            &["Content-Type: application/x-www-form-urlencoded"],
            form_smuggle,
            415,
        ),
        (&["Content-Type: text/plain"], form_smuggle, 415),
        (&[], form_smuggle, 415),
        (
            &["Content-Type: application/json", "Content-Encoding: gzip"],
            form_smuggle,
            415,
        ),
        (
            &["Content-Type: application/json"],
            r#"{"role":"member","role":"admin"}"#,
            400,
        ),
        (
            &["Content-Type: application/json"],
            r#"["role","admin"]"#,
            400,
        ),
    ];
    for (headers, body, want) in cases {
        let mut extra = headers.to_vec();
        extra.push("Connection: close");
        let r = request("PUT", "/v1/users/bob", Some(&bob()), &extra, body);
        let answer = exchange(gw.addr, r.as_bytes()).await;
        assert_eq!(statuses(&answer), [want], "{headers:?} {body}: {answer}");
    }
    up.assert_untouched();
    // the same body as JSON is decided on what it says, and forwarded byte for byte
    let body = r#"{"name":"Bob B."}"#;
    let r = request(
        "PUT",
        "/v1/users/bob",
        Some(&bob()),
        &[
            "Content-Type: application/json; charset=utf-8",
            "Connection: close",
        ],
        body,
    );
    assert_eq!(statuses(&exchange(gw.addr, r.as_bytes()).await), [200]);
    assert_eq!(up.requests()[0].body, Bytes::from(body));
    gw.running.stop().await;
}

// === 4, 11. tokens ===

#[tokio::test]
async fn fractional_exp_crit_and_null_claims_are_refused() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let get = |t: &str| request("GET", DEVICE, Some(t), &["Connection: close"], "");
    // valid now, expired 1.5 s later: refused although the first use was cached
    let soon = iotgate::now() as f64 + 1.5;
    let fractional = token(json!({"usr": "bob", "exp": soon}));
    assert_eq!(
        statuses(&exchange(gw.addr, get(&fractional).as_bytes()).await),
        [200]
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        statuses(&exchange(gw.addr, get(&fractional).as_bytes()).await),
        [401]
    );
    for bad in [
        json!({"usr": "bob", "exp": "tomorrow"}),
        json!({"usr": "bob", "nbf": null}),
        json!({"usr": "bob", "dev": null}),
        json!({"usr": "bob", "iat": [1]}),
    ] {
        let answer = exchange(gw.addr, get(&token(bad.clone())).as_bytes()).await;
        assert_eq!(statuses(&answer), [401], "{bad}");
    }
    // a `crit` header iotgate does not implement
    let secret = std::fs::read_to_string(root().join("examples/thinger/secret.key")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let claims = json!({"usr": "bob", "exp": iotgate::now() + 60});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes());
    let crit = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(
        statuses(&exchange(gw.addr, get(&crit).as_bytes()).await),
        [401]
    );
    assert_eq!(up.requests().len(), 1, "only the first, valid, request");
    gw.running.stop().await;
}

// === 5, 6. credentials and spoofable headers ===

#[tokio::test]
async fn the_upstream_sees_exactly_the_verified_credential() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let acme = token(json!({"usr": "acme"}));
    let cases: [(String, Vec<String>, u16); 5] = [
        // strip the verified header on the way while a second token rides in the query
        (
            format!("{DEVICE}?Authorization={acme}"),
            vec!["Connection: Authorization".into()],
            400,
        ),
        (format!("{DEVICE}?Authorization={acme}"), vec![], 401),
        (format!("{DEVICE}?x=1;authorization={acme}"), vec![], 400),
        (format!("{DEVICE};authorization={acme}"), vec![], 400),
        (
            DEVICE.to_string(),
            vec!["Connection: content-type".into()],
            400,
        ),
    ];
    for (target, extra, want) in &cases {
        let mut extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        extra.push("Connection: close");
        let answer = exchange(
            gw.addr,
            request("GET", target, Some(&bob()), &extra, "").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answer), [*want], "{target} {extra:?}: {answer}");
    }
    up.assert_untouched();
    let spoofed = [
        "X_Iotgate_Principal: acme",
        "X-Iotgate-Principal: acme",
        "Forwarded: for=10.0.0.1;host=admin.example",
        "X-Original-URL: /v1/users",
        "X-Rewrite-URL: /v1/users",
        "X-HTTP-Method-Override: DELETE",
        "X-Method-Override: DELETE",
        "X-Forwarded-For: 10.9.9.9",
        "X-Forwarded-Host: admin.example",
        "Cookie: session=acme",
        "Connection: close",
    ];
    // one token: two made a second apart differ in `exp`
    let bob = bob();
    let answer = exchange(
        gw.addr,
        request("GET", DEVICE, Some(&bob), &spoofed, "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = &up.requests()[0];
    let h = &seen.headers;
    assert_eq!(h["authorization"], format!("Bearer {bob}").as_str());
    assert_eq!(h["x-iotgate-principal"], "bob");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "iot.example");
    assert_eq!(
        h["forwarded"], "for=127.0.0.1;proto=http;host=\"iot.example\"",
        "the client's Forwarded is replaced by what iotgate saw"
    );
    for gone in [
        "x_iotgate_principal",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "cookie",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    let raw = up.raw().to_ascii_lowercase();
    assert!(!raw.contains("acme") && !raw.contains("10.9.9.9"), "{raw}");
    gw.running.stop().await;
}

#[tokio::test]
async fn trailer_fields_never_reach_the_upstream() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let acme = token(json!({"usr": "acme"}));
    let call = format!(
        "POST /v3/users/dave/devices/sensor1/resources/led HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization\r\n\
         TE: trailers\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\nAuthorization: Bearer {acme}\r\n\r\n",
        dave()
    );
    let answer = exchange(gw.addr, call.as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(up.requests()[0].body, Bytes::from("abcd"));
    assert!(
        !up.raw().contains(&acme),
        "a trailer token reached the upstream"
    );
    gw.running.stop().await;
}

#[tokio::test]
async fn trusted_proxies_keep_their_forwarding_headers() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "trusted_proxies = [\"127.0.0.0/8\"]").await;
    let extra = [
        "X-Forwarded-For: 203.0.113.9",
        "X-Forwarded-Proto: https",
        "Forwarded: for=203.0.113.9;proto=https",
        "Connection: close",
    ];
    let answer = exchange(
        gw.addr,
        request("GET", DEVICE, Some(&bob()), &extra, "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [200]);
    let h = &up.requests()[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["forwarded"], "for=203.0.113.9;proto=https, for=127.0.0.1");
    gw.running.stop().await;
    // from anyone else they are replaced by what iotgate sees
    let gw = Thinger::start(&up.url(), "").await;
    let answer = exchange(
        gw.addr,
        request("GET", DEVICE, Some(&bob()), &extra, "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [200]);
    let h = &up.requests()[1].headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"iot.example\""
    );
    gw.running.stop().await;
}

// === 12 and the classics: framing, targets, paths, sizes ===

#[tokio::test]
async fn framing_and_target_tricks_never_reach_the_upstream_undecided() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let call = "/v3/users/dave/devices/sensor1/resources/led";
    let t = dave();
    // a tail that would be a second request to a server framing the body otherwise
    let smuggle_tail = "GET /v1/users HTTP/1.1\r\nHost: x\r\n\r\n";
    // CL+TE: iotgate frames by Transfer-Encoding (RFC 9112 §6.3), re-frames what it
    // forwards (the call goes on with its empty chunked body) and closes the connection
    // after it, so the tail is never read as a request
    let cl_te = format!("POST {call} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle_tail}");
    let answer = exchange(gw.addr, cl_te.as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let seen = up.requests();
    assert_eq!(
        (seen.len(), seen[0].uri.as_str(), seen[0].body.len()),
        (1, call, 0)
    );
    assert!(!up.raw().contains("/v1/users HTTP"), "{}", up.raw());
    let forwarded = up.requests().len();
    let cases: Vec<(&str, String)> = vec![
        (
            "duplicate Content-Length",
            format!("POST {call} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\n{smuggle_tail}"),
        ),
        (
            "obs-fold",
            format!("GET {DEVICE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nX-Fold: a\r\n b\r\n\r\n"),
        ),
        (
            "oversized header",
            format!("GET {DEVICE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nX-Big: {}\r\n\r\n", "a".repeat(128 * 1024)),
        ),
    ];
    for (name, bytes) in &cases {
        let answer = exchange(gw.addr, bytes.as_bytes()).await;
        let got = statuses(&answer);
        assert!(matches!(got[..], [400 | 431]), "{name}: {answer}");
    }
    assert_eq!(
        up.requests().len(),
        forwarded,
        "a malformed request was forwarded"
    );
    let bob = bob();
    let paths = [
        "//v1/users",
        "/v1/users/dave//devices",
        "/v1/users/dave/devices/a%2Fb",
        "/v1/users/dave/devices/%2e%2e",
        "/v1/users/dave/devices/%252e%252e",
        "/v1/users/dave/devices/a\\b",
        "/v1/users/dave/devices/a%5Cb",
        "/v1/users/dave/devices/sensor1;x=1",
        "/v2/users/dave/storages/files/files/..;/..;/..;/..;/..;/..;/v1/users",
        "/v1/users/dave/devices/%EF%BC%8E%EF%BC%8E",
        "/v1/users/dave/devices/../../../v1/users",
    ];
    for path in paths {
        let answer = exchange(
            gw.addr,
            request("GET", path, Some(&bob), &["Connection: close"], "").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answer), [400], "{path}: {answer}");
    }
    // absolute-form targets: decided on the path, forwarded with the upstream's authority
    let answer = exchange(
        gw.addr,
        request(
            "GET",
            "http://evil.example/v1/users",
            Some(&bob),
            &["Connection: close"],
            "",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [403], "{answer}");
    let before = up.requests().len();
    let answer = exchange(
        gw.addr,
        request(
            "GET",
            &format!("http://evil.example{DEVICE}"),
            Some(&bob),
            &["Connection: close"],
            "",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = &up.requests()[before];
    assert_eq!(seen.uri, DEVICE);
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());
    gw.running.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_decided_like_http1() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<iotgate::Body>();
    let get = |path: &str, token: Option<String>| {
        let mut b = Request::get(format!("http://{}{path}", gw.addr));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(iotgate::full(Bytes::new())).unwrap()
    };
    let r = client.request(get("/v1/users", None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client.request(get("/v1/users", Some(bob()))).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    up.assert_untouched();
    let r = client.request(get(DEVICE, Some(bob()))).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, DEVICE);
    assert!(up.raw().starts_with(&format!("GET {DEVICE} HTTP/1.1\r\n")));
    gw.running.stop().await;
}

// === 7. slow and idle clients ===

/// Whether the gateway closes `stream` within `secs` seconds (reading whatever it answers).
async fn closed_within(stream: &mut TcpStream, secs: u64) -> bool {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(secs), stream.read_to_end(&mut buf))
        .await
        .is_ok()
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let up = Recorder::start(false).await;
    // the idle timeout is long: only the header-read timeout can close these
    let limits = "header_read_timeout_seconds = 1\nidle_timeout_seconds = 600";
    let gw = Thinger::start(&up.url(), limits).await;
    // slowloris: headers that never end
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let partial = "GET /v1/users HTTP/1.1\r\nHost: x\r\n";
    slow.write_all(partial.as_bytes()).await.unwrap();
    assert!(
        closed_within(&mut slow, 4).await,
        "a slow client held its connection"
    );
    // a body iotgate must read (the role it decides on) that never comes: 408
    let head = format!(
        "PUT /v1/users/bob HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ro",
        bob()
    );
    let answer = tokio::time::timeout(Duration::from_secs(4), exchange(gw.addr, head.as_bytes()))
        .await
        .expect("the body read was not cut off");
    assert_eq!(statuses(&answer), [408], "{answer}");
    up.assert_untouched();
    gw.running.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let up = Recorder::start(false).await;
    // the header-read timeout is long: only the idle timeout can close these
    let limits = "header_read_timeout_seconds = 600\nidle_timeout_seconds = 1";
    let gw = Thinger::start(&up.url(), limits).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        closed_within(&mut silent, 4).await,
        "a silent connection was kept"
    );
    // after a complete exchange, a kept-alive connection that goes quiet
    let mut quiet = TcpStream::connect(gw.addr).await.unwrap();
    let get = request("GET", DEVICE, Some(&bob()), &[], "");
    quiet.write_all(get.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = quiet.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut quiet, 4).await,
        "an idle keep-alive connection was kept"
    );
    gw.running.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "max_connections = 1").await;
    let get = request("GET", DEVICE, Some(&bob()), &[], "");
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first.write_all(get.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // the first connection stays open: the second waits in the backlog
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second.write_all(get.as_bytes()).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "the second connection was served beyond the cap"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    gw.running.stop().await;
}

// === 9, 10, 13: with the real binary, its logs and its admin listener ===

/// The decision log line of a request id, once it is written (at most 5 s).
async fn decision_line(served: &crate::support::Served, request_id: &str) -> Value {
    for _ in 0..100 {
        let line = served.logs().into_iter().find(|l| {
            l.contains(&format!("\"request_id\":\"{request_id}\"")) && l.contains("\"decision\"")
        });
        if let Some(line) = line {
            return serde_json::from_str(&line).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no decision record for {request_id}: {:#?}", served.logs());
}

/// The value of an unlabelled sample in the admin `/metrics`.
async fn metric(served: &crate::support::Served, sample: &str) -> String {
    let (_, text) = served.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{sample} ")))
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
        .to_string()
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_decision_record() {
    let up = crate::support::Upstream::start().await;
    let served = crate::support::Served::start(&format!("http://{}", up.addr), "off", "");
    let bob = crate::support::token(json!({"usr": "bob"}));
    let mut client = TcpStream::connect(&served.addr).await.unwrap();
    let slow = format!(
        "GET /v1/users/alice/devices/d1/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bob}\r\n\
         X-Request-Id: hangs-up-1\r\n\r\n"
    );
    client.write_all(slow.as_bytes()).await.unwrap();
    // the upstream has it (and will execute it): the client goes away before the answer
    for _ in 0..100 {
        if !up.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.requests().len(), 1);
    drop(client);
    let record = decision_line(&served, "hangs-up-1").await;
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["status"], 499);
    assert_eq!(record["principal"], "bob");
    assert_eq!(metric(&served, "iotgate_client_aborts_total").await, "1");
}

#[tokio::test]
async fn a_client_aborting_its_upload_is_a_client_error() {
    let up = crate::support::Upstream::start().await;
    let served = crate::support::Served::start(&format!("http://{}", up.addr), "off", "");
    let alice = crate::support::token(json!({"usr": "alice"}));
    let mut client = TcpStream::connect(&served.addr).await.unwrap();
    let head = format!(
        "POST /v1/users/alice/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
         X-Request-Id: aborts-1\r\nContent-Length: 100000\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'x'; 4096]).await.unwrap();
    for _ in 0..100 {
        if !up.upload_progress.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    let record = decision_line(&served, "aborts-1").await;
    let status = record["status"].as_u64().unwrap();
    assert!(status == 400 || status == 499, "{record}");
    assert_eq!(metric(&served, "iotgate_client_aborts_total").await, "1");
    let (_, text) = served.admin_get("/metrics").await;
    assert!(
        text.contains("iotgate_upstream_errors_total{kind=\"unreachable\"} 0"),
        "counted as the upstream's failure:\n{text}"
    );
}

#[tokio::test]
async fn the_admin_listener_answers_only_its_own_host_and_no_browser_origin() {
    let served = crate::support::Served::start("http://127.0.0.1:9", "signal", "");
    let admin: SocketAddr = served.admin.parse().unwrap();
    let ask = |host: String, extra: &str| {
        format!("POST /reload HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let cases = [
        (ask("rebind.attacker.example".into(), ""), 403),
        (
            ask(served.admin.clone(), "Origin: https://attacker.example\r\n"),
            403,
        ),
        (
            ask(format!("localhost:{}", admin.port()), "Origin: null\r\n"),
            403,
        ),
        (ask(served.admin.clone(), ""), 200),
        (ask(format!("localhost:{}", admin.port()), ""), 200),
        // a Kubernetes probe or Prometheus scrape names the pod's address
        (ask(format!("10.1.2.3:{}", admin.port()), ""), 200),
        (ask(format!("[fd00::7]:{}", admin.port()), ""), 200),
        (ask(format!("10.1.2.3:{}", admin.port() ^ 1), ""), 403),
        (ask("10.1.2.3".into(), ""), 403),
    ];
    for (request, want) in cases {
        let answer = exchange(admin, request.as_bytes()).await;
        assert_eq!(statuses(&answer), [want], "{request}\n{answer}");
    }
    // the log lines come from another process: wait for both
    let reloads = || {
        served
            .logs()
            .iter()
            .filter(|l| l.contains("\"reloaded\""))
            .count()
    };
    for _ in 0..50 {
        if reloads() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloads() >= 2, "{:#?}", served.logs());
}

// === a second look (review findings) ===

#[tokio::test]
async fn body_values_keep_their_json_types() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let olivia = token(json!({"usr": "olivia"}));
    let cases = [
        // the original account cannot be disabled: "true" is not true, null is not absent
        (&olivia, "/v1/users/acme", r#"{"enabled":"true"}"#),
        (&olivia, "/v1/users/acme", r#"{"enabled":null}"#),
        (&bob(), "/v1/users/bob", r#"{"role":null}"#),
        (&bob(), "/v1/users/bob", "{\"role\\u0000\":\"admin\"}"),
    ];
    for (who, path, body) in cases {
        let extra = ["Content-Type: application/json", "Connection: close"];
        let answer = exchange(
            gw.addr,
            request("PUT", path, Some(who), &extra, body).as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answer), [400], "{path} {body}: {answer}");
    }
    up.assert_untouched();
    gw.running.stop().await;
}

#[tokio::test]
async fn second_credentials_in_any_other_place_are_refused() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let olivia = token(json!({"usr": "olivia"}));
    let headers = [
        format!("X-Authorization: Bearer {olivia}"),
        format!("X-Access-Token: {olivia}"),
        format!("X-Api-Key: {olivia}"),
        format!("Sec-WebSocket-Protocol: {olivia}"),
    ];
    for h in &headers {
        let answer = exchange(
            gw.addr,
            request("GET", DEVICE, Some(&bob()), &[h, "Connection: close"], "").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answer), [400], "{h}: {answer}");
    }
    let queries = [
        format!("?authorization={olivia}"),
        format!("%2561uthorization={olivia}"),
        format!("authorization%00={olivia}"),
        format!("+authorization={olivia}"),
        format!("authorization[]={olivia}"),
        format!("authorization%20={olivia}"),
        format!("%EF%BD%81uthorization={olivia}"),
        format!("%C1%A1uthorization={olivia}"),
        format!("access_token={olivia}"),
        format!("state={olivia}"),
        "_method=DELETE".to_string(),
    ];
    for q in &queries {
        let target = format!("{DEVICE}?{q}");
        let answer = exchange(
            gw.addr,
            request("GET", &target, Some(&bob()), &["Connection: close"], "").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answer), [400], "{target}: {answer}");
    }
    up.assert_untouched();
    // an opaque key of another scheme is not forwarded either
    let extra = [
        "X-Api-Key: k-123",
        "X-Auth-Token: t-456",
        "Connection: close",
    ];
    let answer = exchange(
        gw.addr,
        request("GET", DEVICE, Some(&bob()), &extra, "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let raw = up.raw();
    assert!(!raw.contains("k-123") && !raw.contains("t-456"), "{raw}");
    gw.running.stop().await;
}

#[tokio::test]
async fn requests_servers_frame_or_route_differently_are_refused() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let tail = "GET /v1/users HTTP/1.1\r\nHost: x\r\n\r\n";
    let t = bob();
    let olivia = token(json!({"usr": "olivia"}));
    let cases = [
        // an account id the directory has only in another case: a case-insensitive server
        // would delete the protected original account `acme`
        (request("DELETE", "/v1/users/ACME", Some(&olivia), &["Connection: close"], ""), 400),
        (request("DELETE", "/v1/users/acme.", Some(&olivia), &["Connection: close"], ""), 400),
        // a GET body an upstream could read as the next request
        (format!("GET {DEVICE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{tail}", tail.len()), 400),
        (format!("GET {DEVICE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), 400),
        (format!("GET {DEVICE} HTTP/1.1\r\nHost: x\r\nHost: y\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"), 400),
        // a literal in another case is the literal's operation to a case-insensitive router
        (request("GET", &format!("{DEVICE}/Tokens"), Some(&t), &["Connection: close"], ""), 404),
        (request("GET", &format!("{DEVICE}/STATS"), Some(&t), &["Connection: close"], ""), 404),
        (request("GET", &format!("{DEVICE}/tokens."), Some(&t), &["Connection: close"], ""), 404),
        (request("GET", "/v2/users/dave/devices/sensor1/Clone", Some(&t), &["Connection: close"], ""), 404),
    ];
    answers_are(gw.addr, &cases).await;
    up.assert_untouched();
    gw.running.stop().await;
}

#[tokio::test]
async fn a_token_with_a_repeated_claim_is_refused() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let exp = iotgate::now() + 60;
    let twice = raw_token(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"usr":"bob","usr":"olivia","exp":{exp}}}"#),
    );
    let answer = exchange(
        gw.addr,
        request("GET", "/v1/users", Some(&twice), &["Connection: close"], "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [401], "{answer}");
    up.assert_untouched();
    gw.running.stop().await;
}

// === a third look ===

/// A token whose JOSE header has whitespace before its `{` (lenient upstreams accept it).
fn spaced_token(usr: &str) -> String {
    let exp = iotgate::now() + 60;
    raw_token(
        "{ \"alg\":\"HS256\"}",
        &format!(r#"{{"usr":"{usr}","exp":{exp}}}"#),
    )
}

#[tokio::test]
async fn tokens_of_any_shape_and_raw_unicode_paths_are_refused() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "").await;
    let olivia = spaced_token("olivia");
    assert!(!olivia.starts_with("eyJ"));
    let close = "Connection: close";
    let cases: Vec<(String, u16)> = vec![
        (request("GET", DEVICE, Some(&bob()), &[&format!("X-Custom: {olivia}"), close], ""), 400),
        (request("GET", &format!("{DEVICE}?x={olivia}"), Some(&bob()), &[close], ""), 400),
        (request("GET", &format!("{DEVICE}?a=%0D%0ASet-Cookie:x"), Some(&bob()), &[close], ""), 400),
        // raw (not percent-encoded) fullwidth dots: a normalizing server reads `..`
        (request("GET", "/users/dave/plugins/p/\u{ff0e}\u{ff0e}/\u{ff0e}\u{ff0e}/v1/users", Some(&dave()), &[close], ""), 400),
        // a GET that announces a body that is empty is a plain GET
        (format!("GET {DEVICE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n{close}\r\n\r\n0\r\n\r\n", bob()), 200),
    ];
    answers_are(gw.addr, &cases).await;
    assert_eq!(up.requests().len(), 1, "only the empty-bodied GET");
    assert_eq!(up.requests()[0].body.len(), 0);
    gw.running.stop().await;
}

#[tokio::test]
async fn forwarded_cookies_are_looked_at_for_second_credentials() {
    let up = Recorder::start(false).await;
    let gw = Thinger::start(&up.url(), "forward_cookies = true").await;
    let olivia = token(json!({"usr": "olivia"}));
    let with_cookie = |cookie: String| {
        request(
            "GET",
            DEVICE,
            Some(&bob()),
            &[&cookie, "Connection: close"],
            "",
        )
    };
    let answer = exchange(
        gw.addr,
        with_cookie(format!("Cookie: authorization={olivia}")).as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [400], "{answer}");
    up.assert_untouched();
    let answer = exchange(gw.addr, with_cookie("Cookie: theme=dark".into()).as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(up.requests()[0].headers["cookie"], "theme=dark");
    gw.running.stop().await;
}
