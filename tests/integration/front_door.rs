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
