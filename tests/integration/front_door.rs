//! The front door of a platform (public routes, rate limits, CORS, reasons): a `thinger`
//! gateway in front of an upstream that records what it receives, spoken to over raw
//! sockets.

use serde_json::json;

use crate::attacks::{exchange, root, statuses, token, Recorder, Thinger};

const FORM: &str = "Content-Type: application/x-www-form-urlencoded";

/// One request on its own connection (closed after the answer).
fn request(method: &str, target: &str, bearer: Option<&str>, extra: &[&str], body: &str) -> String {
    let mut headers = vec!["Connection: close"];
    headers.extend_from_slice(extra);
    crate::attacks::request(method, target, bearer, &headers, body)
}

fn login(body: &str, extra: &[&str]) -> String {
    let mut headers = vec![FORM];
    headers.extend_from_slice(extra);
    request("POST", "/oauth/token", None, &headers, body)
}

#[tokio::test]
async fn login_needs_no_token_and_is_decided_by_a_policy() {
    let upstream = Recorder::start(false).await;
    let gw = Thinger::start(&upstream.url(), "").await;
    let grant = "grant_type=password&username=bob&password=s%3Dcret";
    let answer = exchange(gw.addr, login(grant, &[]).as_bytes()).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/oauth/token");
    assert_eq!(
        seen[0].body,
        grant.as_bytes(),
        "the form reaches the server as sent"
    );
    assert!(!seen[0].headers.contains_key("x-iotgate-principal"));
    // a refresh is a login too; a grant the policy does not name is not
    let refresh = login("grant_type=refresh_token&refresh_token=abc", &[]);
    assert_eq!(
        statuses(&exchange(gw.addr, refresh.as_bytes()).await),
        [200]
    );
    for (body, extra, want) in [
        ("grant_type=client_credentials", vec![], 403),
        ("username=bob&password=x", vec![], 403),
        (
            "grant_type=password&Grant_Type=client_credentials",
            vec![],
            400,
        ),
        (
            r#"{"grant_type":"password"}"#,
            vec!["Content-Type: application/json"],
            415,
        ),
    ] {
        let mut raw = request("POST", "/oauth/token", None, &extra, body);
        if extra.is_empty() {
            raw = login(body, &[]);
        }
        let answer = exchange(gw.addr, raw.as_bytes()).await;
        assert_eq!(statuses(&answer), [want], "{body}\n{answer}");
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "refused logins never reach the server"
    );
}

#[tokio::test]
async fn removing_the_policy_closes_the_public_route() {
    let upstream = Recorder::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&root().join("policies/thinger"), dir.path());
    std::fs::remove_file(dir.path().join("public.cedar")).unwrap();
    let gw = Thinger::start_with(&upstream.url(), "", dir.path()).await;
    let answer = exchange(gw.addr, login("grant_type=password", &[]).as_bytes()).await;
    assert_eq!(statuses(&answer), [403], "{answer}");
    let console = request("GET", "/console/index.html", None, &[], "");
    assert_eq!(
        statuses(&exchange(gw.addr, console.as_bytes()).await),
        [403]
    );
    upstream.assert_untouched();
}

#[tokio::test]
async fn console_files_need_no_token_and_get_no_credential() {
    let upstream = Recorder::start(false).await;
    let gw = Thinger::start(&upstream.url(), "").await;
    let bob = token(json!({"usr": "bob"}));
    for (target, bearer) in [
        ("/console/index.html", None),
        ("/console/assets/js/app.3f2a.js", Some(bob.as_str())),
        ("/v1/server/healthcheck", None),
        ("/v1/server/version", None),
    ] {
        let answer = exchange(gw.addr, request("GET", target, bearer, &[], "").as_bytes()).await;
        assert_eq!(statuses(&answer), [200], "{target}\n{answer}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter()
            .all(|s| !s.headers.contains_key("authorization")),
        "a token the gateway did not verify is not forwarded"
    );
    // the token parameter is forwarded byte for byte, so a public route refuses it
    let with_query = format!("/console/index.html?authorization={bob}");
    let answer = exchange(
        gw.addr,
        request("GET", &with_query, None, &[], "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [400], "{answer}");
    // path rules hold on the tail too: a path that is not strictly normal matches no
    // public route, so it is decided as a private one (token first: 401)
    for bad in ["/console/../v1/users", "/console/a//b", "/console/%2e%2e/x"] {
        let answer = exchange(gw.addr, request("GET", bad, None, &[], "").as_bytes()).await;
        assert_eq!(statuses(&answer), [401], "{bad}\n{answer}");
    }
    assert_eq!(upstream.requests().len(), 4);
}

#[tokio::test]
async fn public_routes_are_rate_limited_per_client() {
    let upstream = Recorder::start(false).await;
    let limits =
        "public_rate_per_second = 1\npublic_burst = 2\ntrusted_proxies = [\"127.0.0.0/8\"]";
    let gw = Thinger::start(&upstream.url(), limits).await;
    let grant = "grant_type=password&username=bob&password=x";
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let answer = exchange(gw.addr, login(grant, &[&from("198.51.100.7")]).as_bytes()).await;
        seen.push(statuses(&answer)[0]);
        if seen.last() == Some(&429) {
            assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
            assert!(answer.contains(r#""error":"rate_limited""#), "{answer}");
        }
    }
    assert_eq!(seen, [200, 200, 429]);
    // the client behind a trusted proxy is the first untrusted hop: another one has its
    // own bucket, and prepending addresses does not make a new client
    let other = login(grant, &[&from("203.0.113.5")]);
    assert_eq!(statuses(&exchange(gw.addr, other.as_bytes()).await), [200]);
    let spoofed = login(grant, &[&from("1.2.3.4, 198.51.100.7")]);
    assert_eq!(
        statuses(&exchange(gw.addr, spoofed.as_bytes()).await),
        [429]
    );
    // routes that need a token are not limited here
    let dave = token(json!({"usr": "dave"}));
    for _ in 0..4 {
        let mine = request("GET", "/v1/users/dave/devices", Some(&dave), &[], "");
        assert_eq!(statuses(&exchange(gw.addr, mine.as_bytes()).await), [200]);
    }
}

/// The JSON body of a raw answer.
fn body_of(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn refusals_tell_the_client_a_reason_it_can_act_on() {
    let upstream = Recorder::start(false).await;
    let gw = Thinger::start(&upstream.url(), "expose_messages = true").await;
    let now = iotgate::now();
    let as_user = |usr: &str| token(json!({"usr": usr}));
    let expired = token(json!({"usr": "dave", "exp": now - 3600}));
    let json = "Content-Type: application/json";
    let cases: Vec<(String, u16, &str)> = vec![
        (
            request(
                "POST",
                "/v1/users",
                Some(&as_user("olivia")),
                &[json],
                r#"{"user":"ivy","role":"user"}"#,
            ),
            403,
            "license_exhausted",
        ),
        (
            request(
                "POST",
                "/v3/users/dave/devices/sensor1/resources/led",
                Some(&as_user("bob")),
                &[],
                "",
            ),
            403,
            "project_denied",
        ),
        (
            request(
                "GET",
                "/v1/users/dave/devices",
                Some(&as_user("bob")),
                &[],
                "",
            ),
            403,
            "no_permit",
        ),
        (
            request(
                "GET",
                "/v1/users/frank/devices",
                Some(&as_user("frank")),
                &[],
                "",
            ),
            403,
            "account_disabled",
        ),
        (
            request(
                "GET",
                "/v1/users/zoe/devices",
                Some(&as_user("zoe")),
                &[],
                "",
            ),
            401,
            "unknown_account",
        ),
        (
            request("GET", "/v1/users/dave/devices", Some(&expired), &[], ""),
            401,
            "token_expired",
        ),
        (
            request("GET", "/v1/users/dave/devices", Some("e30.e30.x"), &[], ""),
            401,
            "token_invalid",
        ),
        (
            request("GET", "/v1/users/dave/devices", None, &[], ""),
            401,
            "token_missing",
        ),
        (
            request(
                "GET",
                "/v1/users/dave/gadgets",
                Some(&as_user("dave")),
                &[],
                "",
            ),
            404,
            "no_route",
        ),
        (
            request(
                "POST",
                "/v1/users",
                Some(&as_user("olivia")),
                &[json],
                r#"{"user":"ivy"}"#,
            ),
            400,
            "bad_field",
        ),
    ];
    for (raw, status, reason) in &cases {
        let answer = exchange(gw.addr, raw.as_bytes()).await;
        assert_eq!(statuses(&answer), [*status], "{raw}\n{answer}");
        assert!(
            answer.contains("content-length: ") && !answer.contains("chunked"),
            "an answer of known size is not chunked\n{answer}"
        );
        let body = body_of(&answer);
        assert_eq!(body["reason"], *reason, "{raw}\n{answer}");
        // the reason in a header too, for proxies that pass on headers, not bodies
        let header = format!("x-iotgate-reason: {reason}\r\n");
        assert!(answer.to_ascii_lowercase().contains(&header), "{answer}");
        assert!(body["request_id"].is_string() && body["policy_version"].is_string());
        match *status {
            401 if *reason == "token_missing" => {
                assert!(
                    answer.contains("www-authenticate: Bearer realm=\"iotgate\"\r\n"),
                    "{answer}"
                )
            }
            401 => assert!(answer.contains("error=\"invalid_token\""), "{answer}"),
            _ => {}
        }
    }
    let license = body_of(&exchange(gw.addr, cases[0].0.as_bytes()).await);
    assert!(
        license["message"]
            .as_str()
            .is_some_and(|m| m.contains("every licensed account")),
        "{license}"
    );
    let missing = body_of(&exchange(gw.addr, cases[9].0.as_bytes()).await);
    assert_eq!(missing["field"], "new_role");
    let expired_answer = exchange(gw.addr, cases[5].0.as_bytes()).await;
    assert!(expired_answer.contains("error_description=\"token expired\""));
    upstream.assert_untouched();
}

const CORS: &str =
    "[server.cors]\nallowed_origins = [\"https://console.example\"]\nmax_age_seconds = 60";

#[tokio::test]
async fn preflights_are_answered_here_and_only_allowed_origins_get_cors_headers() {
    let upstream = Recorder::start(false).await;
    let gw = Thinger::start(&upstream.url(), CORS).await;
    let preflight = |origin: &str, method: &str| {
        request(
            "OPTIONS",
            "/v1/users/dave/devices",
            None,
            &[
                &format!("Origin: {origin}"),
                &format!("Access-Control-Request-Method: {method}"),
                "Access-Control-Request-Headers: authorization",
            ],
            "",
        )
    };
    let answer = exchange(
        gw.addr,
        preflight("https://console.example", "POST").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [204], "{answer}");
    for line in [
        "access-control-allow-origin: https://console.example",
        "access-control-allow-methods: POST",
        "access-control-allow-headers: authorization, content-type",
        "access-control-max-age: 60",
    ] {
        assert!(answer.contains(&format!("{line}\r\n")), "{line}\n{answer}");
    }
    let unrouted = exchange(
        gw.addr,
        preflight("https://console.example", "PATCH").as_bytes(),
    )
    .await;
    assert!(
        !unrouted.contains("access-control-allow-methods"),
        "{unrouted}"
    );
    let evil = exchange(
        gw.addr,
        preflight("https://evil.example", "POST").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&evil), [403], "{evil}");
    assert!(!evil.contains("access-control-"), "{evil}");
    assert_eq!(body_of(&evil)["reason"], "origin_not_allowed");
    upstream.assert_untouched();
    // actual requests: the upstream's own CORS headers never reach the client; an allowed
    // origin gets iotgate's, on answers and refusals alike
    let dave = token(json!({"usr": "dave"}));
    for (origin, bearer, want) in [
        ("https://console.example", Some(dave.as_str()), true),
        ("https://console.example", None, true),
        ("https://evil.example", Some(dave.as_str()), false),
    ] {
        let raw = request(
            "GET",
            "/v1/users/dave/devices",
            bearer,
            &[&format!("Origin: {origin}")],
            "",
        );
        let answer = exchange(gw.addr, raw.as_bytes()).await;
        assert_eq!(
            answer.contains(&format!("access-control-allow-origin: {origin}\r\n")),
            want,
            "{answer}"
        );
        assert!(
            !answer.contains("access-control-allow-origin: *"),
            "{answer}"
        );
        assert!(answer.contains("vary: origin"), "{answer}");
    }
}

/// One request from a chosen loopback source address.
async fn exchange_from(source: &str, addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let mut stream = socket.connect(target).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_told_apart() {
    let upstream = Recorder::start(false).await;
    let policies = root().join("policies/thinger");
    let limits = "public_rate_per_second = 1\npublic_burst = 1\ntrusted_proxies = [\"127.0.0.2\"]";
    let Ok(probe) = std::net::TcpListener::bind("[::]:0") else {
        eprintln!("no IPv6 here: skipped");
        return;
    };
    drop(probe);
    let gw = Thinger::start_at("[::]:0", &upstream.url(), limits, &policies).await;
    let health = request("GET", "/v1/server/healthcheck", None, &[], "");
    assert_eq!(
        statuses(&exchange_from("127.0.0.5", gw.addr, &health).await),
        [200]
    );
    assert_eq!(
        statuses(&exchange_from("127.0.0.5", gw.addr, &health).await),
        [429]
    );
    let other = exchange_from("127.0.0.6", gw.addr, &health).await;
    assert_eq!(
        statuses(&other),
        [200],
        "another IPv4 client has its own bucket\n{other}"
    );
    // an IPv4 trusted proxy is recognized, and the upstream sees plain IPv4 addresses
    let via = request(
        "GET",
        "/v1/server/version",
        None,
        &["X-Forwarded-For: 198.51.100.9"],
        "",
    );
    assert_eq!(
        statuses(&exchange_from("127.0.0.2", gw.addr, &via).await),
        [200]
    );
    let seen = upstream.requests();
    assert_eq!(
        seen.last().unwrap().headers["x-forwarded-for"],
        "198.51.100.9, 127.0.0.2"
    );
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.5");
}

#[tokio::test]
async fn the_upstream_reads_the_client_the_gateway_limited() {
    let upstream = Recorder::start(false).await;
    let gw = Thinger::start(&upstream.url(), "trusted_proxies = [\"127.0.0.0/8\"]").await;
    let lines = ["X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 1.1.1.1"];
    let answer = exchange(
        gw.addr,
        request("GET", "/v1/server/version", None, &lines, "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answer), [200]);
    let seen = upstream.requests();
    assert_eq!(
        seen[0].headers["x-forwarded-for"],
        "6.6.6.6, 1.1.1.1, 127.0.0.1"
    );
}

#[tokio::test]
async fn a_login_form_cannot_be_overridden_or_disguised() {
    let upstream = Recorder::start(false).await;
    let gw = Thinger::start(&upstream.url(), "").await;
    let grant = "grant_type=password&username=dave&password=x";
    let cases = [
        (
            request(
                "POST",
                "/oauth/token?grant_type=client_credentials",
                None,
                &[FORM],
                grant,
            ),
            400,
        ),
        (
            request("POST", "/oauth/token?Grant_Type=x", None, &[FORM], grant),
            400,
        ),
        (
            login(
                r#"{"grant_type":"client_credentials","pad":"&grant_type=password&"}"#,
                &[],
            ),
            400,
        ),
    ];
    for (raw, want) in &cases {
        let answer = exchange(gw.addr, raw.as_bytes()).await;
        assert_eq!(statuses(&answer), [*want], "{raw}\n{answer}");
    }
    upstream.assert_untouched();
    // OAuth client authentication is the server's business: Basic passes, Bearer does not
    let basic = login(grant, &["Authorization: Basic Y2xpZW50OnNlY3JldA=="]);
    assert_eq!(statuses(&exchange(gw.addr, basic.as_bytes()).await), [200]);
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        "Basic Y2xpZW50OnNlY3JldA=="
    );
}
