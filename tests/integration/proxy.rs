//! `serve` end to end: a real upstream, the gateway on an ephemeral port, real tokens.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::support::{get, raw, send, token, Gateway, Upstream};

fn json_body(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn allowed_requests_are_forwarded_with_clean_stamped_headers() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let t = token(json!({"usr": "bob"}));
    let req = Request::get(gw.url("/v1/users/alice/devices/d1?x=1"))
        .header("authorization", format!("Bearer {t}"))
        .header("x-iotgate-principal", "root")
        .header("X-Iotgate-Policy-Version", "forged")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "client-chosen-1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("te", "trailers")
        .body(iotgate::full(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_body(&body), json!({"upstream": "ok"}));
    assert_eq!(headers["x-request-id"], "client-chosen-1");
    assert_eq!(headers["x-upstream"], "yes");
    assert!(
        !headers.contains_key("keep-alive"),
        "hop-by-hop header from upstream kept"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(seen[0].method, http::Method::GET);
    assert_eq!(seen[0].uri, "/v1/users/alice/devices/d1?x=1");
    assert_eq!(h["x-iotgate-principal"], "bob");
    assert_eq!(h.get_all("x-iotgate-principal").iter().count(), 1);
    assert!(h["x-iotgate-policy-version"]
        .to_str()
        .unwrap()
        .starts_with("mini-1@"));
    assert_eq!(h["x-request-id"], "client-chosen-1");
    // the client is no trusted proxy: its X-Forwarded-For is replaced, not extended
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string().as_str());
    assert_eq!(
        h["authorization"],
        format!("Bearer {t}").as_str(),
        "the upstream authenticates too"
    );
    assert_eq!(h["host"], up.addr.to_string().as_str());
    for gone in ["x-hop", "te", "connection"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded");
    }
    gw.running.stop().await;
}

#[tokio::test]
async fn rejections_answer_json_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let bob = token(json!({"usr": "bob"}));
    let cases: Vec<(Request<iotgate::Body>, StatusCode, &str)> = vec![
        (
            get(&gw.url("/v1/users/alice/devices/d2"), Some(&bob)),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            get(&gw.url("/v1/users/alice/devices/d1"), None),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            get(
                &gw.url("/v1/users/alice/devices/d1"),
                Some(&token(json!({"usr": "bob", "exp": 1000}))),
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            get(
                &gw.url("/v1/users/alice/devices/d1"),
                Some(&format!("{bob}x")),
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            get(
                &gw.url("/v1/users/zed/devices"),
                Some(&token(json!({"usr": "zed"}))),
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            get(
                &gw.url("/v1/users/carol/devices"),
                Some(&token(json!({"usr": "carol"}))),
            ),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            get(&gw.url("/v1/users/alice/gadgets"), Some(&bob)),
            StatusCode::NOT_FOUND,
            "no_route",
        ),
        (
            get(&gw.url("/v1/users/alice/devices/orphan"), Some(&bob)),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (req, want, code) in cases {
        let uri = req.uri().to_string();
        let (status, headers, body) = send(req).await;
        assert_eq!(status, want, "{uri}");
        let body = json_body(&body);
        assert_eq!(body["error"], code, "{uri}");
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(body["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("mini-1@"));
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            headers.contains_key("www-authenticate"),
            want == StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        if want == StatusCode::UNAUTHORIZED {
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"iotgate\""),
                "{uri}: {challenge}"
            );
        }
    }
    assert!(up.requests().is_empty(), "upstream saw {:?}", up.requests());
    gw.running.stop().await;
}

#[tokio::test]
async fn path_tricks_are_400_and_not_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let t = token(json!({"usr": "alice"}));
    for path in [
        "/v1/users/alice/devices/../devices/d1",
        "/v1/users/alice/devices/./d1",
        "/v1/users/alice//devices/d1",
        "/v1/users/alice/devices/a%2Fb",
        "/v1/users/alice/devices/%2e%2e",
        "/v1/users/alice/devices/%FF",
        "/v1/users/alice/devices/a%00",
        "/v1/users/alice/devices/a%5cb",
    ] {
        let answer = raw(gw.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("\"error\":\"bad_request\""),
            "{path}: {answer}"
        );
    }
    assert!(up.requests().is_empty());
    gw.running.stop().await;
}

#[tokio::test]
async fn body_reading_routes_are_bounded_and_forward_the_same_bytes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let root = token(json!({"usr": "root"}));
    let post = |body: Vec<u8>| {
        Request::post(gw.url("/v1/users"))
            .header("authorization", format!("Bearer {root}"))
            .header("content-type", "application/json")
            .body(iotgate::full(body))
            .unwrap()
    };
    let body = br#"{"id": "dave", "role": "admin"}"#.to_vec();
    let (status, _, _) = send(post(body.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.requests()[0].body, Bytes::from(body));
    // over max_body_bytes (1024): 413, nothing forwarded
    let big = format!(
        r#"{{"id": "dave", "role": "admin", "pad": "{}"}}"#,
        "x".repeat(2000)
    )
    .into_bytes();
    let (status, _, body) = send(post(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(&body)["error"], "payload_too_large");
    let (status, _, _) = send(post(b"{not json".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(up.requests().len(), 1);
    gw.running.stop().await;
}

#[tokio::test]
async fn large_uploads_and_downloads_stream_through() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let alice = token(json!({"usr": "alice"}));
    // upload: 8 MiB in chunks to a route that does not read the body; the upstream must
    // see the first chunk before the client sends the last one.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, iotgate::BoxError>>(2);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    let req = Request::post(gw.url("/v1/users/alice/devices"))
        .header("authorization", format!("Bearer {alice}"))
        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        .unwrap();
    let progress = up.upload_progress.clone();
    let sender = tokio::spawn(async move {
        tx.send(Ok(hyper::body::Frame::data(Bytes::from(vec![
            1u8;
            64 * 1024
        ]))))
        .await
        .unwrap();
        // wait until the upstream has the first chunk: proof the gateway did not buffer
        for _ in 0..500 {
            if !progress.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen_early = !progress.lock().unwrap().is_empty();
        for _ in 1..128 {
            tx.send(Ok(hyper::body::Frame::data(Bytes::from(vec![
                1u8;
                64 * 1024
            ]))))
            .await
            .unwrap();
        }
        seen_early
    });
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        sender.await.unwrap(),
        "upstream did not see the first chunk before the upload ended"
    );
    assert_eq!(up.requests()[0].body.len(), 128 * 64 * 1024);

    // download: the client gets the first chunk before the upstream sends the rest.
    // (`/download/<n>` is served by the upstream; the mini profile routes it as a device
    // resource read of `alice/download`.)
    let req = get(
        &gw.url("/v1/users/alice/devices/download/16777216"),
        Some(&alice),
    );
    let response = crate::support::client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first[0], b'a');
    up.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(first.len() + rest.len(), 16 * 1024 * 1024);
    gw.running.stop().await;
}

#[tokio::test]
async fn websocket_streams_are_authorized_then_tunneled() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let bob = token(json!({"usr": "bob"}));
    let url = format!(
        "ws://{}/v1/users/alice/devices/d1/stream?authorization={bob}",
        gw.addr
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "second message"] {
        ws.send(text.into()).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    // the upgrade request was stamped like any other; the token stayed in the query
    let seen = up.requests();
    assert!(
        seen.is_empty(),
        "websocket upgrade is not recorded as a plain request"
    );

    // without a valid token: refused before any upgrade
    let url = format!("ws://{}/v1/users/alice/devices/d1/stream", gw.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // a device bob cannot read: 403
    let url = format!(
        "ws://{}/v1/users/alice/devices/d2/stream?authorization={bob}",
        gw.addr
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    gw.running.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // a port with nothing listening
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&format!("http://{free}")).await;
    let alice = token(json!({"usr": "alice"}));
    let (status, _, body) = send(get(&gw.url("/v1/users/alice/devices"), Some(&alice))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json_body(&body)["error"], "bad_gateway");
    gw.running.stop().await;

    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let (status, _, body) = send(get(
        &gw.url("/v1/users/alice/devices/d1/slow"),
        Some(&alice),
    ))
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json_body(&body)["error"], "gateway_timeout");
    // the gateway is still fine afterwards
    let (status, _, _) = send(get(&gw.url("/v1/users/alice/devices"), Some(&alice))).await;
    assert_eq!(status, StatusCode::OK);
    gw.running.stop().await;
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<iotgate::Body>();
    let alice = token(json!({"usr": "alice"}));
    let response = client
        .request(get(&gw.url("/v1/users/alice/devices/d1"), Some(&alice)))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        up.requests()[0].headers["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );
    gw.running.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(&format!("http://{}", up.addr), "").await;
    let alice = token(json!({"usr": "alice"}));
    let url = gw.url("/v1/users/alice/devices/download/4096");
    let in_flight = tokio::spawn(async move {
        crate::support::client()
            .request(get(&url, Some(&alice)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr;
    let stopping = tokio::spawn(gw.running.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // new connections are refused while the old request is still open
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    up.release.notify_one();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.len(), 4096);
    stopping.await.unwrap();
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let up = Upstream::start_tls().await;
    let alice = token(json!({"usr": "alice"}));
    let ca = format!(
        "upstream_ca_file = \"{}\"",
        crate::support::fixture("tls/ca.pem").display()
    );
    let gw = Gateway::start_with(&format!("https://localhost:{}", up.addr.port()), &ca).await;
    let (status, _, body) = send(get(&gw.url("/v1/users/alice/devices"), Some(&alice))).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(up.requests().len(), 1);
    gw.running.stop().await;
    // without the CA the certificate is not trusted: 502, nothing served
    let gw = Gateway::start(&format!("https://localhost:{}", up.addr.port())).await;
    let (status, _, _) = send(get(&gw.url("/v1/users/alice/devices"), Some(&alice))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(up.requests().len(), 1);
    gw.running.stop().await;
}

/// Every case of the mini suite gets the same answer from `serve` as from `check`.
#[tokio::test]
async fn check_and_serve_agree_on_every_suite_case() {
    use iotgate::Credentials;
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!("http://{}", up.addr)).await;
    let config = crate::support::fixture("mini/iotgate.toml");
    let loaded = iotgate::Loaded::load(&config).unwrap();
    let cases = iotgate::load_suite(&crate::support::fixture("mini/checks.toml"), &loaded).unwrap();
    assert!(cases.len() >= 10);
    let checker = iotgate::Checker::new(loaded);
    for case in cases {
        let Some(probe) = case.http() else { continue };
        let decided = checker.answer(probe).await.status;
        let mut req = Request::builder()
            .method(probe.method.clone())
            .uri(gw.url(&probe.uri.to_string()));
        for (k, v) in &probe.headers {
            req = req.header(k, v);
        }
        if let Credentials::Trusted(claims) = &probe.credentials {
            req = req.header(
                "authorization",
                format!(
                    "Bearer {}",
                    token(serde_json::Value::Object(claims.clone()))
                ),
            );
        }
        let body = probe.body.clone().unwrap_or_default();
        let (served, _, _) = send(req.body(iotgate::full(body)).unwrap()).await;
        assert_eq!(served, decided, "case `{}` ({})", case.name, case.request);
    }
    gw.running.stop().await;
}
