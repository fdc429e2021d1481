use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;
use crate::request::uri::Query;

fn mini() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mini")
}

fn catalog() -> Catalog {
    Catalog::load(&mini().join("schema/mini.cedarschema"))
        .unwrap()
        .0
}

fn table() -> RouteTable {
    RouteTable::load(&mini().join("schema/mini.routes.toml"), &catalog())
        .unwrap()
        .0
}

/// Loads route text (after the mini header): the table or its problems, and a function
/// that prints a problem with its line relative to the text.
fn load(routes: &str) -> (Result<RouteTable, Problems>, impl Fn(&Problem) -> String) {
    let dir = tempfile::tempdir().unwrap();
    let header = std::fs::read_to_string(mini().join("schema/mini.routes.toml")).unwrap();
    let header = &header[..header.find("[[route]]").unwrap()];
    let path = dir.path().join("r.toml");
    std::fs::write(&path, format!("{header}{routes}")).unwrap();
    let first_line = header.lines().count() + 1;
    let table = RouteTable::load(&path, &catalog()).map(|(t, _)| t);
    let show = move |p: &Problem| {
        let line = p
            .line
            .map(|l| format!("+{}", l - first_line))
            .unwrap_or_default();
        format!("{line} {}", p.message)
    };
    (table, show)
}

/// The problems of route text, lines relative to it.
fn problems(routes: &str) -> Vec<String> {
    match load(routes) {
        (Ok(_), _) => vec![],
        (Err(p), show) => p.iter().map(show).collect(),
    }
}

fn resolve(
    method: &str,
    path: &str,
    claims: serde_json::Value,
    body: Option<serde_json::Value>,
) -> Option<(String, Result<Resolved, FieldError>)> {
    let table = table();
    let segments = crate::request::uri::segments(path).unwrap();
    let (route, captures) = table.find(&method.parse().unwrap(), &segments)?;
    let claims = claims.as_object().unwrap().clone();
    let inputs = Inputs {
        captures: &captures,
        query: Query::new(None),
        claims: &claims,
        body: body.as_ref(),
        principal_parents: &Vec::new,
        tls: None,
    };
    Some((route.name.clone(), route.resolve(&inputs)))
}

#[test]
fn mini_routes_resolve_resource_and_context() {
    let (name, r) = resolve(
        "GET",
        "/v1/users/alice/devices/d1/temp",
        json!({"usr": "bob"}),
        None,
    )
    .unwrap();
    assert_eq!(name, "device-resource-read");
    let r = r.unwrap();
    assert_eq!(r.resource.to_string(), r#"Mini::Device::"alice/d1""#);
    assert_eq!(
        r.resource_attrs,
        vec![(
            "owner".to_string(),
            FieldValue::Entity(r#"Mini::User::"alice""#.parse().unwrap())
        )]
    );
    let ctx: Vec<String> = r.context.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(ctx, vec!["device_resource=\"temp\"", "token_kind=\"user\""]);

    let (_, r) = resolve(
        "GET",
        "/v1/users/alice/devices/d1/temp",
        json!({"usr": "alice", "dev": "d1", "res": ["temp"]}),
        None,
    )
    .unwrap();
    let ctx: Vec<String> = r
        .unwrap()
        .context
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        ctx,
        vec![
            "device_resource=\"temp\"",
            "token_device=Mini::Device::\"alice/d1\"",
            "token_kind=\"device\"",
            "token_resources={\"temp\"}",
        ]
    );

    let (name, r) = resolve(
        "POST",
        "/v1/users",
        json!({"usr": "root"}),
        Some(json!({"id": "dave", "role": "member"})),
    )
    .unwrap();
    assert_eq!(name, "POST /v1/users");
    let r = r.unwrap();
    assert_eq!(r.resource.to_string(), r#"Mini::User::"dave""#);
    assert!(r
        .context
        .contains(&("new_role".to_string(), FieldValue::Str("guest".into()))));
    let (_, r) = resolve(
        "POST",
        "/v1/users",
        json!({"usr": "root"}),
        Some(json!({"role": "member"})),
    )
    .unwrap();
    assert_eq!(r.unwrap_err(), FieldError::Missing("resource id".into()));
    assert!(resolve("PUT", "/v1/users", json!({"usr": "root"}), None).is_none());
    assert!(resolve("GET", "/v1/nothing", json!({"usr": "root"}), None).is_none());
}

#[test]
fn only_routes_reading_the_body_need_it() {
    let t = table();
    let needs: Vec<(&str, bool)> = t
        .routes()
        .iter()
        .map(|r| (r.name.as_str(), r.needs_body()))
        .collect();
    assert!(needs.contains(&("POST /v1/users", true)));
    assert!(needs.contains(&("GET /v1/users/{owner}/devices", false)));
}

#[test]
fn route_problems_are_all_reported_with_lines() {
    let bad = r#"
[[route]]
method = "GET"
path = "/v1/users/{owner}/things"
action = "ListThings"
resource = { type = "User", id = "{owner}" }

[[route]]
method = ["GET", "fetch"]
path = "/v1/users/{owner}/devices/{device}"
action = "ReadDevice"
resource = { type = "Device", id = "{owner}/{dev}", attrs = ["owner", "nope"] }

[[route]]
method = "GET"
path = "/v1/projects/{p}"
action = "ReadDevice"
resource = { type = "Project", id = "{p}" }
context = ["new_role"]

[[route]]
method = "GET"
path = "/v1/users/{owner}/devices"
action = "ListDevices"
resource = { type = "User", id = "{owner}" }

[[route]]
method = "GET"
path = "/v1/users/{x}/devices"
action = "ListDevices"
resource = { type = "User", id = "{x}" }
"#;
    let got = problems(bad);
    let want = [
        "+4 action `ListThings` is not in the schema",
        "+8 `fetch` is not an HTTP method",
        "+11 field `nope` is not defined under [fields]",
        "+9 `{dev}` is used by the route but not captured by its path",
        "+17 action `ReadDevice` does not apply to resource type `Mini::Project`",
        "+26 route `GET /v1/users/{x}/devices` has the same path and method as route `GET /v1/users/{owner}/devices`",
    ];
    assert_eq!(got, want);
}

#[test]
fn context_and_attribute_types_are_checked_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    let text = r#"
namespace = "Mini"
principal = "User"
[fields.owner]
type = "string"
value = "{owner}"
[fields.token_kind]
type = "long"
value = "{claim.kind}"
[fields.extra]
type = "string"
value = "x"
[fields.maybe]
type = "string"
value = "{claim.k}"
name = "token_kind"
optional = true
[fields.urole]
type = "string"
value = "developer"
name = "role"
[fields.bad]
type = "colour"
value = "x"
[fields.badwhen]
type = "string"
value = "x"
when = "literal"
[[route]]
method = "GET"
path = "/v1/users/{owner}/devices/{device}"
action = "ReadDevice"
resource = { type = "Device", id = "{owner}/{device}", attrs = ["owner"] }
context = ["token_kind", "extra"]
[[route]]
method = "GET"
path = "/v1/users/{owner}/devices"
action = "ListDevices"
resource = { type = "User", id = "{owner}", attrs = ["urole"] }
context = ["maybe"]
[[route]]
method = "DELETE"
path = "/v1/users/{owner}/devices/{device}"
action = "DeleteDevice"
resource = { type = "Device", id = "{owner}/{device}" }
context = ["token_kind"]
"#;
    std::fs::write(&path, text).unwrap();
    let errs: Vec<String> = RouteTable::load(&path, &catalog())
        .unwrap_err()
        .iter()
        .map(|p| p.message.clone())
        .collect();
    let want = [
        "unknown field type `colour` (string, long, bool, entity, set)",
        "`when` must be a single placeholder like `{claim.dev}`",
        "`owner` is a string here but resource type `Mini::Device` declares it Entity(\"Mini::User\")",
        "`token_kind` is a long here but the context of `ReadDevice` declares it String",
        "`extra` is not declared in the context of `ReadDevice`",
        "`token_kind` is optional here but required in the context of `ListDevices`",
        "resource type `Mini::User` requires `enabled`, which the route does not fill",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
    }
}

const LEGACY: &str = r#"
[[route]]
method = "GET"
path = "/v1/users/{owner}/devices/{device}/stats"
action = "ReadDevice"
resource = { type = "Device", id = "{owner}/{device}", attrs = ["owner"] }

[[route]]
method = ["GET", "POST"]
path = "/v2/users/{owner}/devices/{device}/{resource}"
action = "ReadResource"
resource = { type = "Device", id = "{owner}/{device}", attrs = ["owner"] }
"#;

#[test]
fn captures_shadowing_a_sibling_versions_literal_are_warned_about() {
    let (table, show) = load(LEGACY);
    let warnings: Vec<String> = table.unwrap().warnings.iter().map(show).collect();
    assert_eq!(
        warnings,
        vec!["+7 `{resource}` of route `GET,POST /v2/users/{owner}/devices/{device}/{resource}` takes \
              `stats`, a literal of route `GET /v1/users/{owner}/devices/{device}/stats`; add a \
              literal route or `reserved = { resource = [\"stats\"] }`"]
    );
    let reserved = format!("{LEGACY}reserved = {{ resource = [\"stats\"] }}\n");
    let (table, _) = load(&reserved);
    let table = table.unwrap();
    assert!(table.warnings.is_empty());
    // a reserved value is no route; any other value is the capture's
    let find = |path: &str| {
        let segments = crate::request::uri::segments(path).unwrap();
        table
            .find(&http::Method::POST, &segments)
            .map(|(r, _)| r.action_name.clone())
    };
    assert_eq!(find("/v2/users/a/devices/d/stats"), None);
    assert_eq!(find("/v2/users/a/devices/d/Stats"), None);
    assert_eq!(find("/v2/users/a/devices/d/stats."), None);
    assert_eq!(
        find("/v2/users/a/devices/d/temp").as_deref(),
        Some("ReadResource")
    );
}

#[test]
fn stream_and_reserved_keys_are_checked() {
    let text = r#"
[[route]]
method = ["GET", "POST"]
path = "/v1/users/{owner}/devices/{device}/stream"
action = "ReadResource"
resource = { type = "Device", id = "{owner}/{device}", attrs = ["owner"] }
stream = true
reserved = { nothing = ["x"] }
"#;
    assert_eq!(
        problems(text),
        vec![
            "+6 a stream route takes only `GET` (WebSocket upgrades are GET requests)",
            "+7 `nothing` is not a capture of the route's path",
        ]
    );
    let table = table();
    let streams: Vec<&str> = table
        .routes()
        .iter()
        .filter(|r| r.stream)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(streams, ["GET /v1/users/{owner}/devices/{device}/stream"]);
}

#[test]
fn public_routes_must_fit_the_anonymous_principal() {
    let text = r#"
[[route]]
method = "GET"
path = "/v1/users/{owner}/devices"
auth = "none"
action = "ListDevices"
resource = { type = "User", id = "{owner}" }

[[route]]
method = "GET"
path = "/v1/status/{project}"
auth = "none"
body = "form"
action = "ReadStatus"
resource = { type = "Project", id = "{project}" }
"#;
    assert_eq!(
        problems(text),
        vec![
            "+5 action `ListDevices` does not apply to principal type `Mini::Anonymous`",
            "+12 `body` is only for a route whose fields read the body (`{body.x}`)",
        ]
    );
    let (Ok(table), _) = load(
        r#"
[[route]]
method = "GET"
path = "/status/{project}/{*page}"
auth = "optional"
action = "ReadStatus"
resource = { type = "Project", id = "{project}" }
"#,
    ) else {
        panic!("a public route on an action for anonymous principals loads")
    };
    assert_eq!(
        table.anonymous().map(|a| a.to_string()),
        Some("Mini::Anonymous::\"anonymous\"".to_string())
    );
    let segments = crate::request::uri::segments("/status/p/a/b.css").unwrap();
    let (route, captures) = table.find(&http::Method::GET, &segments).unwrap();
    assert_eq!(route.auth, Auth::Optional);
    assert_eq!(
        captures,
        [("project", "p".into()), ("page", "a/b.css".into())]
    );
}

#[test]
fn a_public_route_needs_an_anonymous_type_in_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let schema = std::fs::read_to_string(mini().join("schema/mini.cedarschema")).unwrap();
    let schema = schema
        .replace("entity Anonymous;", "")
        .replace("[User, Anonymous]", "User");
    let schema_path = dir.path().join("s.cedarschema");
    std::fs::write(&schema_path, schema).unwrap();
    let catalog = Catalog::load(&schema_path).unwrap().0;
    let problems = RouteTable::load(&mini().join("schema/mini.routes.toml"), &catalog)
        .unwrap_err()
        .to_string();
    assert!(
        problems.contains("needs entity type `Mini::Anonymous` in the schema"),
        "{problems}"
    );
}

#[test]
fn only_routes_with_effects_mutate() {
    let (Ok(table), _) = load(
        r#"
[[route]]
method = ["GET", "POST"]
path = "/v1/users"
action = "CreateUser"
resource = { type = "User", id = "{body.id}" }
context = ["new_role"]
effects = [{ op = "create", type = "User", id = "{body.id}", attrs = { role = "{field.new_role}", enabled = true } }]

[[route]]
method = "DELETE"
path = "/v1/users/{owner}/devices/{device}"
action = "DeleteDevice"
resource = { type = "Device", id = "{owner}/{device}", attrs = ["owner"] }
"#,
    ) else {
        panic!("the effect route loads")
    };
    assert!(table.mutates(&http::Method::POST, "/v1/users"));
    assert!(table.mutates(&http::Method::GET, "/v1/users"));
    assert!(!table.mutates(&http::Method::DELETE, "/v1/users/a/devices/b"));
    assert!(!table.mutates(&http::Method::POST, "/v1/users/x"));
    assert!(!table.mutates(&http::Method::PUT, "/v1/users"));
}

#[test]
fn a_whole_body_is_read_only_by_json_array_routes() {
    let route = |body: &str, parents: &str| {
        format!(
            r#"
[[route]]
method = "DELETE"
path = "/v1/users/{{owner}}/devices/{{device}}"
action = "DeleteDevice"
resource = {{ type = "Device", id = "{{owner}}/{{device}}", attrs = ["owner"] }}
{body}
effects = [{{ op = "set_parents", type = "Device", id = "{{owner}}/{{device}}", parents = [{parents}] }}]
"#
        )
    };
    let each = r#"{ type = "Project", each = "{body}", prefix = "{owner}@" }"#;
    assert_eq!(
        problems(&route("body = \"json-array\"", each)),
        Vec::<String>::new()
    );
    assert_eq!(
        problems(&route("", each)),
        vec!["+1 `{body}` (the whole body) is for a `body = \"json-array\"` route"]
    );
    assert_eq!(
        problems(&route(
            "body = \"json-array\"",
            r#"{ type = "Project", id = "{body.p}" }"#
        )),
        vec!["+6 a `json-array` route reads its body whole, as `{body}`, never `{body.x}`"]
    );
    assert_eq!(
        problems(&route(
            "body = \"json-array\"",
            r#"{ type = "Project", each = "x{body}" }"#
        )),
        vec![
            "+7 `each = \"x{body}\"` must be one placeholder (`{body}`)",
            "+6 `body` is only for a route whose fields read the body (`{body.x}`)"
        ]
    );
    assert_eq!(
        problems(&route(
            "body = \"json-array\"",
            r#"{ type = "Project", id = "p", each = "{body}" }"#
        )),
        vec![
            "+7 a parent has `id`, or `each` (with an optional `prefix`)",
            "+6 `body` is only for a route whose fields read the body (`{body.x}`)"
        ]
    );
}
