//! The directory follows the platform: write-through effects of forwarded mutations, the
//! license counted on the updated directory, and the journal that makes changes survive a
//! restart. A `thinger` gateway's handler (the code `serve` runs) in front of an upstream
//! that answers every request 200.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::attacks::{root, token, Recorder};

/// A config with a journal and a license of `seats`, in `dir`.
pub(crate) fn config(dir: &Path, upstream: &str, seats: u64) -> PathBuf {
    let r = root();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{r}/examples/thinger/secret.key\"\n\
         principal_claim = \"usr\"\n\
         [policy]\nschema = \"{r}/schema/thinger.cedarschema\"\nroutes = \"{r}/schema/thinger.routes.toml\"\n\
         policies = [\"{r}/policies/thinger\"]\ndirectory = [\"{r}/examples/thinger/directory\"]\nreload = \"off\"\n\
         [license]\nmax_accounts = {seats}\n\
         [directory]\njournal = \"state/directory.journal\"\n",
        r = r.display(),
    );
    let path = dir.join("iotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) async fn call(
    gateway: &iotgate::Gateway,
    who: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> u16 {
    let mut request = Request::builder().method(method).uri(path).header(
        "authorization",
        format!("Bearer {}", token(json!({"usr": who}))),
    );
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    gateway.handle(request, peer).await.status().as_u16()
}

pub(crate) fn load(config: &Path) -> Arc<iotgate::Gateway> {
    iotgate::load(config).unwrap().0
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_created_through_iotgate_works_on_its_next_request_and_after_a_restart() {
    let upstream = Recorder::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &upstream.url(), 5);
    let gw = load(&config);
    assert_eq!(
        call(&gw, "hank", "GET", "/v1/users/hank", None).await,
        401,
        "not yet"
    );
    let create = json!({"user": "hank", "role": "member"});
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(create)).await,
        200
    );
    assert_eq!(
        call(&gw, "hank", "GET", "/v1/users/hank", None).await,
        200,
        "the very next request"
    );
    // disabled through the API, with the caches warm: refused at once
    assert_eq!(call(&gw, "hank", "GET", "/v1/users/hank", None).await, 200);
    let disable = json!({"enabled": false});
    assert_eq!(
        call(&gw, "olivia", "PUT", "/v1/users/hank", Some(disable)).await,
        200
    );
    assert_eq!(call(&gw, "hank", "GET", "/v1/users/hank", None).await, 403);
    // a restart replays the journal over the directory files
    drop(gw);
    let gw = load(&config);
    assert_eq!(call(&gw, "hank", "GET", "/v1/users/hank", None).await, 403);
    let enable = json!({"enabled": true});
    assert_eq!(
        call(&gw, "olivia", "PUT", "/v1/users/hank", Some(enable)).await,
        200
    );
    assert_eq!(call(&gw, "hank", "GET", "/v1/users/hank", None).await, 200);
    assert_eq!(
        call(&gw, "olivia", "DELETE", "/v1/users/hank", None).await,
        200
    );
    assert_eq!(
        call(&gw, "hank", "GET", "/v1/users/hank", None).await,
        401,
        "deleted"
    );
    let journal = std::fs::read_to_string(dir.path().join("state/directory.journal")).unwrap();
    assert_eq!(journal.lines().count(), 4, "{journal}");
    // the directory files are never rewritten
    let users =
        std::fs::read_to_string(root().join("examples/thinger/directory/users.json")).unwrap();
    assert!(!users.contains("hank"));
    // a journal past `compact_after` is compacted at start into the net changes
    let create = json!({"user": "lee", "role": "member"});
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(create)).await,
        200
    );
    drop(gw);
    let text = std::fs::read_to_string(&config).unwrap() + "compact_after = 2\n";
    std::fs::write(&config, text).unwrap();
    let gw = load(&config);
    let journal = std::fs::read_to_string(dir.path().join("state/directory.journal")).unwrap();
    assert_eq!(journal.lines().count(), 1, "{journal}");
    assert_eq!(call(&gw, "hank", "GET", "/v1/users/hank", None).await, 401);
    assert_eq!(call(&gw, "lee", "GET", "/v1/users/lee", None).await, 200);
    drop(gw);
    let gw = load(&config);
    assert_eq!(
        call(&gw, "lee", "GET", "/v1/users/lee", None).await,
        200,
        "compacted journal replays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn back_to_back_creations_and_promotions_count_the_license_as_it_is_now() {
    let upstream = Recorder::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    // the example directory has 5 licensed accounts: one seat is left
    let gw = load(&config(dir.path(), &upstream.url(), 6));
    let developer = |user: &str| json!({"user": user, "role": "user"});
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(developer("ivy"))).await,
        200
    );
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(developer("jay"))).await,
        403,
        "the seat the first creation took is counted"
    );
    let guest = json!({"user": "kim", "role": "member"});
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(guest)).await,
        200
    );
    let promote = json!({"role": "user"});
    assert_eq!(
        call(&gw, "olivia", "PUT", "/v1/users/kim", Some(promote.clone())).await,
        403
    );
    // deleting a developer frees a seat for the promotion
    assert_eq!(
        call(&gw, "olivia", "DELETE", "/v1/users/ivy", None).await,
        200
    );
    assert_eq!(
        call(&gw, "olivia", "PUT", "/v1/users/kim", Some(promote)).await,
        200
    );
    assert_eq!(
        call(&gw, "kim", "GET", "/v1/users/kim/devices", None).await,
        200,
        "kim develops now"
    );
    // creations sent at the same time are decided one after the other: one free seat, one
    // creation
    assert_eq!(
        call(&gw, "olivia", "DELETE", "/v1/users/kim", None).await,
        200
    );
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let body = json!({"user": format!("race{i}"), "role": "admin"});
                call(&gw, "olivia", "POST", "/v1/users", Some(body)).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 403, 403, 403, 403, 403, 403, 403, 403, 403]);
}

/// A copy of the mini profile in `dir`, served with `reload = "signal"` and `shadow`.
fn mini_copy(dir: &Path) -> PathBuf {
    let m = dir.join("mini");
    crate::support::copy_dir(&crate::support::fixture("mini"), &m);
    std::fs::create_dir_all(dir.join("shadow")).unwrap();
    std::fs::write(
        dir.join("shadow/broken.cedar"),
        "permit (principal, action, resource",
    )
    .unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{secret}\"\nprincipal_claim = \"usr\"\n\
         [policy]\nschema = \"mini/schema/mini.cedarschema\"\nroutes = \"mini/schema/mini.routes.toml\"\n\
         policies = [\"mini/policies\"]\ndirectory = [\"mini/directory\"]\nreload = \"signal\"\nshadow = [\"shadow\"]\n",
        secret = crate::support::fixture("keys/hs.secret").display(),
    );
    let path = dir.join("iotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_directory_reloads_while_a_policy_file_is_broken_and_a_broken_shadow_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = mini_copy(dir.path());
    let (gateway, config) = iotgate::load(&config_path).unwrap();
    let snapshot = gateway.snapshot();
    assert!(
        snapshot.shadow.is_none(),
        "the broken shadow set is left out"
    );
    assert!(
        snapshot
            .warnings
            .iter()
            .any(|w| w.contains("shadow policies dropped")),
        "{:?}",
        snapshot.warnings
    );
    let who = |id: &str| {
        let uid = format!("Mini::User::\"{id}\"")
            .parse::<cedar_policy::EntityUid>()
            .unwrap();
        gateway.snapshot().directory.get(&uid).is_some()
    };
    assert!(!who("gus"));
    // a new account in the directory files while a policy file is broken
    let users = dir.path().join("mini/directory/users.json");
    let text = std::fs::read_to_string(&users).unwrap();
    let gus = r#"{"uid": {"type": "Mini::User", "id": "gus"}, "attrs": {"role": "developer", "enabled": true}, "parents": []},"#;
    std::fs::write(&users, text.replacen('[', &format!("[{gus}"), 1)).unwrap();
    std::fs::write(dir.path().join("mini/policies/broken.cedar"), "forbid (").unwrap();
    let reloader = iotgate::Reloader::new(config, gateway.clone(), None);
    let attempt = reloader.reload("signal").await;
    assert!(!attempt.ok && attempt.directory_applied, "{attempt:?}");
    assert!(
        attempt.problems.iter().any(|p| p.contains("broken.cedar")),
        "{attempt:?}"
    );
    assert!(who("gus"), "the directory change applied");
    assert_eq!(
        gateway.snapshot().policy_version,
        snapshot.policy_version,
        "policies kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_stream_closes_when_its_permission_goes_and_stays_open_otherwise() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;
    let up = crate::support::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::mini_config(dir.path(), &format!("http://{}", up.addr), "");
    let (gateway, _) = iotgate::load(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = iotgate::Running::start(listener, gateway.clone()).unwrap();
    let open = |claims: serde_json::Value| {
        let token = crate::support::token(claims);
        let url = format!(
            "ws://{}/v1/users/alice/devices/d1/stream?authorization={token}",
            running.addr
        );
        async move { tokio_tungstenite::connect_async(url).await.unwrap().0 }
    };
    async fn echoes(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        text: &str,
    ) {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    let upsert = |id: &str, attrs: serde_json::Value| iotgate::DirectoryChange::Upsert {
        uid: iotgate::DirectoryUid {
            ty: "Mini::User".into(),
            id: id.into(),
        },
        attrs: attrs.as_object().unwrap().clone(),
        parents: None,
    };
    let mut ws = open(json!({"usr": "bob"})).await;
    echoes(&mut ws, "one").await;
    // an unrelated change: the stream is decided again and stays open
    let other = upsert("newcomer", json!({"role": "developer", "enabled": true}));
    gateway.commit(vec![other]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    echoes(&mut ws, "two").await;
    // bob is disabled: his stream closes with 1008 within a second
    let disable = upsert("bob", json!({"enabled": false}));
    gateway.commit(vec![disable]).await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(1), ws.next())
        .await
        .unwrap();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Policy);
            assert!(frame.reason.contains("account_disabled"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // a stream also ends when its token expires
    let mut short = open(json!({"usr": "alice", "exp": iotgate::now() + 2})).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(4), short.next())
        .await
        .unwrap();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert!(frame.reason.contains("token expired"), "{frame:?}")
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_journal_is_compacted_as_it_grows_and_replays_the_same() {
    let upstream = Recorder::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &upstream.url(), 5);
    let text = std::fs::read_to_string(&config).unwrap() + "compact_after = 2\n";
    std::fs::write(&config, text).unwrap();
    let journal = dir.path().join("state/directory.journal");
    let gw = load(&config);
    for user in ["m1", "m2", "m3", "m4", "m5"] {
        let body = json!({"user": user, "role": "member"});
        assert_eq!(
            call(&gw, "olivia", "POST", "/v1/users", Some(body)).await,
            200
        );
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(lines <= 2, "{user}: {lines} entries");
    }
    assert_eq!(
        call(&gw, "olivia", "DELETE", "/v1/users/m2", None).await,
        200
    );
    drop(gw);
    let gw = load(&config);
    for (user, want) in [("m1", 200), ("m2", 401), ("m5", 200)] {
        let path = format!("/v1/users/{user}");
        assert_eq!(call(&gw, user, "GET", &path, None).await, want, "{user}");
    }
}
