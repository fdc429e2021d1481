use std::path::Path;
use std::str::FromStr;

use serde_json::json;

use super::*;
use crate::authn::{now, Signer};
use crate::authz::cache::Caches;
use crate::config::Config;
use cedar_policy::{Authorizer, Decision as CedarDecision};

struct Fixture {
    snapshot: Snapshot,
    verifier: Verifier,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mini/iotgate.toml");
    let config = Config::load(&path).unwrap();
    Fixture {
        snapshot: Snapshot::load(&config).unwrap(),
        verifier: Verifier::from_config(&config).unwrap(),
    }
}

impl Fixture {
    fn decide(
        &self,
        claims: serde_json::Value,
        request: &str,
        body: Option<&str>,
        headers: http::HeaderMap,
    ) -> Decision {
        self.decide_with(claims, request, body, headers, None)
    }

    fn decide_with(
        &self,
        claims: serde_json::Value,
        request: &str,
        body: Option<&str>,
        headers: http::HeaderMap,
        caches: Option<&Caches>,
    ) -> Decision {
        let (method, uri) = request.split_once(' ').unwrap();
        let method = http::Method::from_str(method).unwrap();
        let uri = http::Uri::from_str(uri).unwrap();
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
            has_body: body.is_some(),
            forwards_cookies: false,
            tls_client: None,
        };
        let credentials = match claims {
            serde_json::Value::Null => Credentials::Token,
            c => Credentials::Trusted(c.as_object().unwrap().clone()),
        };
        match begin(&self.snapshot, &self.verifier, head, credentials, caches) {
            Err(d) => *d,
            Ok(pending) => pending.decide(body.map(str::as_bytes)),
        }
    }

    fn as_user(&self, user: &str, request: &str) -> Decision {
        self.decide(json!({"usr": user}), request, None, http::HeaderMap::new())
    }
}

fn summary(d: &Decision) -> String {
    d.to_string()
}

#[test]
fn decision_table_for_the_mini_profile() {
    let f = fixture();
    let cases: &[(&str, &str, &str)] = &[
        (
            "alice",
            "GET /v1/users/alice/devices/d1",
            "allow by [owner-full]",
        ),
        (
            "alice",
            "GET /v1/users/alice/devices",
            "allow by [own-account]",
        ),
        (
            "alice",
            "GET /v1/users/alice/devices/nothere",
            "allow by [owner-full]",
        ),
        ("alice", "GET /v1/users/bob/devices/x", "403 forbidden"),
        ("alice", "GET /v1/users/bob/devices", "403 forbidden"),
        (
            "bob",
            "GET /v1/users/alice/devices/d1",
            "allow by [shared.allow]",
        ),
        (
            "bob",
            "GET /v1/users/alice/devices/d1/temp",
            "allow by [shared.allow]",
        ),
        (
            "bob",
            "POST /v1/users/alice/devices/d1/temp",
            "403 forbidden by [shared.deny]",
        ),
        ("bob", "DELETE /v1/users/alice/devices/d1", "403 forbidden"),
        ("bob", "GET /v1/users/alice/devices/d2", "403 forbidden"),
        ("bob", "GET /v1/users/bob/devices", "403 forbidden"),
        (
            "carol",
            "GET /v1/users/carol/devices",
            "403 account `carol` is disabled",
        ),
        (
            "dave",
            "GET /v1/users/dave/devices",
            "401 unknown account `dave`",
        ),
        ("alice", "GET /v1/users/alice/gadgets", "404 no route"),
        ("alice", "PUT /v1/users/alice/devices/d1", "404 no route"),
        (
            "alice",
            "GET /v1/users/alice/devices/%2e%2e",
            "400 bad request: path has an encoded `.`",
        ),
        (
            "alice",
            "GET /v1/users/alice//devices",
            "400 bad request: path has an empty segment",
        ),
    ];
    for (user, request, want) in cases {
        assert_eq!(
            summary(&f.as_user(user, request)),
            *want,
            "{user} {request}"
        );
    }
}

#[test]
fn an_erroring_forbid_denies_where_plain_cedar_allows() {
    let f = fixture();
    let d = f.as_user("bob", "GET /v1/users/alice/devices/orphan");
    let Outcome::Reject(Rejection::Forbidden(denial)) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(denial.reason(), "evaluation_error");
    assert!(d.policies.is_empty());
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(d.errors[0].contains("owner-disabled"), "{:?}", d.errors);
    // Plain Cedar over the full directory allows the same request: it skips the erroring
    // forbid. This is the fail-open behaviour iotgate exists to prevent.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mini/directory");
    let mut all = Vec::new();
    for file in ["users.json", "devices.json"] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        all.extend(v.as_array().unwrap().clone());
    }
    let entities = Entities::from_json_value(
        serde_json::Value::Array(all),
        Some(&f.snapshot.catalog.schema),
    )
    .unwrap();
    let action = EntityUid::from_str(r#"Mini::Action::"ReadDevice""#).unwrap();
    let context = Context::from_json_value(
        json!({"token_kind": "user"}),
        Some((&f.snapshot.catalog.schema, &action)),
    )
    .unwrap();
    let request = Request::new(
        EntityUid::from_str(r#"Mini::User::"bob""#).unwrap(),
        action,
        EntityUid::from_str(r#"Mini::Device::"alice/orphan""#).unwrap(),
        context,
        Some(&f.snapshot.catalog.schema),
    )
    .unwrap();
    let plain = Authorizer::new().is_authorized(&request, &f.snapshot.policies.set, &entities);
    assert_eq!(plain.decision(), CedarDecision::Allow);
    assert_eq!(plain.diagnostics().errors().count(), 1);
}

#[test]
fn device_tokens_are_confined_to_their_device_and_resources() {
    let f = fixture();
    let token = json!({"usr": "alice", "dev": "d1", "res": ["temp"]});
    let h = http::HeaderMap::new;
    let d = |req: &str| summary(&f.decide(token.clone(), req, None, h()));
    assert_eq!(
        d("GET /v1/users/alice/devices/d1/temp"),
        "allow by [owner-full]"
    );
    assert_eq!(
        d("GET /v1/users/alice/devices/d1/hum"),
        "403 forbidden by [device-token-resources]"
    );
    assert_eq!(
        d("GET /v1/users/alice/devices/d2"),
        "403 forbidden by [device-token-device]"
    );
    assert_eq!(
        d("GET /v1/users/alice/devices"),
        "403 forbidden by [device-token-device]"
    );
    let explained = f.decide(token, "GET /v1/users/alice/devices/d2", None, h());
    assert_eq!(
        explained.reasons,
        vec!["device-token-device: device tokens reach only their own device"]
    );
}

#[test]
fn body_fields_feed_the_context() {
    let f = fixture();
    let typed = |content_type: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    };
    let root = json!({"usr": "root"});
    let alice = json!({"usr": "alice"});
    let d = |who: &serde_json::Value, body: &str| {
        let h = typed("application/json");
        summary(&f.decide(who.clone(), "POST /v1/users", Some(body), h))
    };
    assert_eq!(
        d(&root, r#"{"id": "dave", "role": "admin"}"#),
        "allow by [admin-creates-users]"
    );
    assert_eq!(
        d(&alice, r#"{"id": "dave", "role": "member"}"#),
        "403 forbidden"
    );
    assert_eq!(
        d(&alice, r#"{"id": "dave", "role": "admin"}"#),
        "403 forbidden by [no-admin-from-non-admin]"
    );
    assert_eq!(
        d(&root, r#"{"id": "dave", "role": "superuser"}"#),
        "400 bad request: `new_role` has an unexpected value `superuser`"
    );
    assert_eq!(
        d(&root, r#"{"id": "dave""#),
        "400 bad request: body is not one object without repeated keys: EOF while parsing an object at line 1 column 13"
    );
    assert_eq!(
        d(&root, r#"{"id": 7, "role": "admin"}"#),
        "400 bad request: `resource id` must be a string"
    );
    assert_eq!(
        d(&root, r#"{"role": "admin"}"#),
        "400 bad request: `resource id` is missing"
    );
    // what iotgate reads is what the upstream reads: one JSON object, no repeated key
    assert_eq!(
        d(&alice, r#"{"id": "dave", "role": "member", "role": "admin"}"#),
        "400 bad request: body is not one object without repeated keys: duplicate key `role` at line 1 column 39"
    );
    assert!(d(&root, r#"[{"id": "dave"}]"#).starts_with("400 bad request"));
    // a body of another type is not read as JSON (a form parser would find `role=admin`)
    let form = r#"{"id":"dave","a":"&role=admin&"}"#;
    for content_type in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json; charset=utf-16",
    ] {
        let got = f.decide(
            alice.clone(),
            "POST /v1/users",
            Some(form),
            typed(content_type),
        );
        assert!(
            summary(&got).starts_with("415 "),
            "{content_type}: {}",
            summary(&got)
        );
    }
    let mut gzip = typed("application/json");
    gzip.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
    let got = f.decide(root.clone(), "POST /v1/users", Some(r#"{"id":"x"}"#), gzip);
    assert!(summary(&got).starts_with("415 "), "{}", summary(&got));
    let untyped = f.decide(
        root.clone(),
        "POST /v1/users",
        Some(r#"{"id":"x"}"#),
        http::HeaderMap::new(),
    );
    assert!(
        summary(&untyped).starts_with("415 "),
        "{}",
        summary(&untyped)
    );
}

#[test]
fn signed_tokens_take_the_same_path() {
    let f = fixture();
    let secret = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/hs.secret"),
    )
    .unwrap();
    let signer = Signer::hmac(jsonwebtoken::Algorithm::HS256, secret.trim().as_bytes());
    let token = signer
        .sign(
            json!({"usr": "bob", "exp": now() + 60})
                .as_object()
                .unwrap(),
        )
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let d = f.decide(
        serde_json::Value::Null,
        "GET /v1/users/alice/devices/d1",
        None,
        headers,
    );
    assert_eq!(summary(&d), "allow by [shared.allow]");
    assert_eq!(d.principal.as_deref(), Some("bob"));
    assert!(d.policy_version.starts_with("mini-1@"));
    // the query parameter works too; an expired token is 401
    let q = format!("GET /v1/users/alice/devices/d1?authorization={token}");
    assert!(f
        .decide(serde_json::Value::Null, &q, None, http::HeaderMap::new())
        .is_allowed());
    let expired = signer
        .sign(
            json!({"usr": "bob", "exp": now() - 3600})
                .as_object()
                .unwrap(),
        )
        .unwrap();
    let q = format!("GET /v1/users/alice/devices/d1?authorization={expired}");
    let d = f.decide(serde_json::Value::Null, &q, None, http::HeaderMap::new());
    assert_eq!(summary(&d), "401 not authenticated: token expired");
    let d = f.decide(
        serde_json::Value::Null,
        "GET /v1/users/alice/devices/d1",
        None,
        http::HeaderMap::new(),
    );
    assert_eq!(d.status(), http::StatusCode::UNAUTHORIZED);
}

#[test]
fn optional_routes_decide_the_token_or_the_anonymous_principal() {
    let f = fixture();
    let none = http::HeaderMap::new;
    let anonymous = |path: &str| f.decide(serde_json::Value::Null, path, None, none());
    let d = anonymous("GET /v1/status/alice@shared");
    assert_eq!(summary(&d), "allow by [status-for-everyone]");
    assert_eq!(
        d.principal.as_deref(),
        Some("Mini::Anonymous::\"anonymous\"")
    );
    assert!(d.anonymous);
    let d = anonymous("GET /v1/status/private");
    assert_eq!(
        summary(&d),
        "403 forbidden by [private-status-needs-an-account]"
    );
    let d = f.as_user("bob", "GET /v1/status/private");
    assert_eq!(summary(&d), "allow by [status-for-everyone]");
    assert_eq!((d.principal.as_deref(), d.anonymous), (Some("bob"), false));
    // an invalid token is never read as "no token"; a disabled account stays refused
    let mut bad = http::HeaderMap::new();
    bad.insert("authorization", "Bearer not.a.token".parse().unwrap());
    let d = f.decide(serde_json::Value::Null, "GET /v1/status/private", None, bad);
    assert_eq!(d.status(), http::StatusCode::UNAUTHORIZED);
    let d = f.as_user("carol", "GET /v1/status/alice@shared");
    assert_eq!(d.status(), http::StatusCode::FORBIDDEN);
    // required routes still want a token
    let d = anonymous("GET /v1/users/alice/devices");
    assert_eq!(d.status(), http::StatusCode::UNAUTHORIZED);
}

#[test]
fn caches_answer_repeated_requests_and_only_them() {
    let f = fixture();
    let caches = Caches::new(&crate::config::CacheConfig {
        max_entries: 100,
        ttl: std::time::Duration::from_secs(60),
        max_bytes: 1 << 20,
        max_entry_bytes: 16 << 10,
    });
    let decide = |claims: serde_json::Value, request: &str| {
        f.decide_with(claims, request, None, http::HeaderMap::new(), Some(&caches))
    };
    let first = decide(json!({"usr": "bob"}), "GET /v1/users/alice/devices/d1/temp");
    let second = decide(json!({"usr": "bob"}), "GET /v1/users/alice/devices/d1/temp");
    assert!(!first.cached && second.cached);
    assert_eq!(
        Decision {
            cached: false,
            ..second
        },
        first
    );
    // another context value (the device resource) is another decision
    let other = decide(json!({"usr": "bob"}), "GET /v1/users/alice/devices/d1/hum");
    assert!(!other.cached);
    // a device token changes the context: not served from the user's entry
    let token = decide(
        json!({"usr": "alice", "dev": "d1", "res": ["hum"]}),
        "GET /v1/users/alice/devices/d1/temp",
    );
    assert!(!token.cached);
    assert_eq!(summary(&token), "403 forbidden by [device-token-resources]");
    assert_eq!(caches.decisions.stats().hits, 1);
}
