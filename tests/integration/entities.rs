//! The entity API of the admin listener, against the real `iotgate serve` process: reads,
//! writes checked against the schema (422), the admin token, and no acknowledged change
//! lost when the process is killed (-9) in the middle of writes.

use std::path::Path;

use http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::support::{send, Served};

const TOKEN: &str = "admin-token-for-tests";

/// A mini gateway with a journal and an admin token, both outside its temp folder (they
/// must outlive restarts).
fn start(state: &Path, upstream: &str) -> Served {
    let token = state.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let sections = format!(
        "[directory]\njournal = \"{}\"\n[admin]\ntoken_file = \"{}\"\n",
        state.join("directory.journal").display(),
        token.display()
    );
    Served::start(upstream, "off", &sections)
}

pub(crate) async fn admin(
    served: &Served,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", served.admin));
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    // a killed process answers nothing: that is no status at all, not a test failure
    let Ok(response) = crate::support::client()
        .request(request.body(iotgate::full(body)).unwrap())
        .await
    else {
        return (StatusCode::from_u16(599).unwrap(), Value::Null);
    };
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn entities_are_read_written_and_checked_with_the_admin_token() {
    let state = tempfile::tempdir().unwrap();
    let upstream = crate::support::Upstream::start().await;
    let served = start(state.path(), &format!("http://{}", upstream.addr));
    let user = "/directory/entities/Mini::User/erin";
    let erin = json!({"attrs": {"role": "developer", "enabled": true}, "parents": []});
    assert_eq!(
        admin(&served, "GET", user, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(&served, "GET", user, None, Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin(&served, "GET", user, None, Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = admin(&served, "PUT", user, Some(erin), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = admin(&served, "GET", user, None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["attrs"]["role"], "developer");
    // a change that does not fit the schema is refused with its problems, nothing applied
    let bad = json!({"attrs": {"role": "developer"}, "parents": []});
    let (status, body) = admin(&served, "PUT", user, Some(bad), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("`enabled` is required"),
        "{body}"
    );
    let (_, body) = admin(&served, "GET", user, None, Some(TOKEN)).await;
    assert_eq!(body["attrs"]["enabled"], true);
    // a look-alike of an existing account is refused, as a create through effects is
    let lookalike = json!({"attrs": {"role": "admin", "enabled": true}, "parents": []});
    let (status, body) = admin(
        &served,
        "PUT",
        "/directory/entities/Mini::User/ERIN",
        Some(lookalike),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["problems"][0].as_str().unwrap().contains("look-alike"),
        "{body}"
    );
    // the new account decides at once
    let token = crate::support::token(json!({"usr": "erin"}));
    let (status, _, _) = send(crate::support::get(
        &served.url("/v1/users/erin/devices"),
        Some(&token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    // the command line speaks the same API
    let config = served.dir.path().join("mini/served.toml");
    let cli = |args: &[&str]| {
        let mut all = vec![
            "directory",
            "--config",
            config.to_str().unwrap(),
            "--admin",
            &served.admin,
        ];
        all.extend_from_slice(args);
        crate::support::iotgate(&all)
    };
    let (code, out) = cli(&["get", "Mini::User", "erin"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"developer\""), "{out}");
    let (code, out) = cli(&["disable-user", "erin"]);
    assert_eq!(code, 0, "{out}");
    let (status, _, _) = send(crate::support::get(
        &served.url("/v1/users/erin/devices"),
        Some(&token),
    ))
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "disabled from the command line"
    );
    let (code, out) = cli(&["get", "Mini::User", "nobody"]);
    assert_eq!(code, 1, "{out}");
    // ids with `/` (devices are `owner/device`) are the rest of the path
    let device = "/directory/entities/Mini::Device/alice/d1";
    let (status, body) = admin(&served, "GET", device, None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["uid"]["id"], "alice/d1");
    // a batch in Cedar entity JSON, then a delete
    let batch = json!([
        {"uid": {"type": "Mini::User", "id": "fay"}, "attrs": {"role": "developer", "enabled": true}, "parents": []},
        {"uid": {"type": "Mini::Project", "id": "fay@lab"}, "attrs": {}, "parents": []}
    ]);
    let (status, body) = admin(
        &served,
        "PUT",
        "/directory/entities",
        Some(batch),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, body["applied"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    assert_eq!(
        admin(&served, "DELETE", user, None, Some(TOKEN)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        admin(&served, "DELETE", user, None, Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = send(crate::support::get(
        &served.url("/v1/users/erin/devices"),
        Some(&token),
    ))
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "deleted");
}

#[tokio::test]
async fn no_acknowledged_change_is_lost_when_the_process_is_killed() {
    let state = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..4 {
        let served = start(state.path(), "http://127.0.0.1:9");
        for id in &acknowledged {
            let path = format!("/directory/entities/Mini::User/{id}");
            let (status, _) = admin(&served, "GET", &path, None, Some(TOKEN)).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "round {round}: acknowledged `{id}` was lost"
            );
        }
        // writes in flight when the process dies: those answered 200 must survive
        let writes = (0..40).map(|i| {
            let id = format!("u{round}x{i}");
            let served = &served;
            async move {
                let path = format!("/directory/entities/Mini::User/{id}");
                let body = json!({"attrs": {"role": "developer", "enabled": true}, "parents": []});
                let (status, _) = admin(served, "PUT", &path, Some(body), Some(TOKEN)).await;
                (id, status)
            }
        });
        let kill = async {
            tokio::time::sleep(std::time::Duration::from_millis(15 + 10 * round)).await;
            served.signal("KILL");
        };
        let (results, ()) = tokio::join!(futures_util::future::join_all(writes), kill);
        acknowledged.extend(
            results
                .into_iter()
                .filter(|(_, status)| *status == StatusCode::OK)
                .map(|(id, _)| id),
        );
        drop(served);
    }
    let served = start(state.path(), "http://127.0.0.1:9");
    for id in &acknowledged {
        let path = format!("/directory/entities/Mini::User/{id}");
        assert_eq!(
            admin(&served, "GET", &path, None, Some(TOKEN)).await.0,
            StatusCode::OK,
            "{id}"
        );
    }
    assert!(
        !acknowledged.is_empty(),
        "no write was acknowledged before the kills"
    );
}

#[tokio::test]
async fn posts_need_the_admin_token_once_one_is_set_or_other_hosts_reach_the_listener() {
    let state = tempfile::tempdir().unwrap();
    let served = start(state.path(), "http://127.0.0.1:9");
    let (status, body) = admin(&served, "POST", "/reload", None, None).await;
    assert_eq!(
        (status, &body["reason"]),
        (StatusCode::UNAUTHORIZED, &json!("admin_token"))
    );
    let (status, _) = admin(&served, "POST", "/reload", None, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // past the token: this config does not reload
    let (status, body) = admin(&served, "POST", "/reload", None, Some(TOKEN)).await;
    assert_eq!(
        (status, &body["reason"]),
        (StatusCode::CONFLICT, &json!("reload_off"))
    );
    let (status, _) = admin(&served, "GET", "/status", None, None).await;
    assert_eq!(status, StatusCode::OK, "reading needs no token");

    // on every address (a pod's admin port) and no token configured: no POST is answered
    let (dir, config) = Served::mini("http://127.0.0.1:9", "signal", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "admin_listen = \"127.0.0.1:0\"",
            "admin_listen = \"0.0.0.0:0\"",
        ),
    )
    .unwrap();
    let open = Served::spawn(dir, &config);
    assert!(open.admin.starts_with("0.0.0.0:"), "{}", open.admin);
    let (status, body) = admin(&open, "POST", "/reload", None, None).await;
    assert_eq!(
        (status, &body["reason"]),
        (StatusCode::FORBIDDEN, &json!("admin_token_not_configured"))
    );
    let (status, _) = admin(&open, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}
