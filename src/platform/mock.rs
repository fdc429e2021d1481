//! Stand-in platform servers for the demo, `iotgate mock` and the tests: they hold a
//! platform's state in memory, serve the paths `import` reads and apply the mutations the
//! profiles route, so write-through and sync can be checked against what the server holds.
//!
//! ```text
//! seed JSON ─▶ Store { collection path → id → object }
//! request ─▶ Flavor::target (thinger: /v1/users[/{u}/{devices|…|projects[/{p}/members|roles]}];
//!            central: /api/{orgs|users|devices}, /api/orgs/{o}/{orgs|users|devices} views)
//!   ├─ List (filtered: ?project=, org, parent) | Create | Read | Update (merge) | Delete
//!   │   | Set (one member: a device's projects, a user's org, an org's parent)
//!   └─ anything else: echoed ({"mock", method, path, principal, policy_version})
//! ```
//!
//! The state API needs an `Authorization` header (401 without); it does not check it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

/// Which platform it stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Thinger.io's `/v1/users/…` API.
    Thinger,
    /// The IoT Central-style `/api/…` API of the `central` profile.
    Central,
}

type Collection = BTreeMap<String, Value>;

/// A running stand-in's state.
#[derive(Debug)]
pub struct Platform {
    flavor: Flavor,
    store: Mutex<BTreeMap<String, Collection>>,
    failing: std::sync::atomic::AtomicBool,
    /// At most this many items per list (0: all), as a paging server answers.
    page: std::sync::atomic::AtomicUsize,
}

/// What a request does to the store.
#[derive(Debug, PartialEq)]
enum Target {
    List {
        collection: String,
        filter: Option<(String, String)>,
    },
    Create {
        collection: String,
        key: &'static str,
        set: Option<(String, String)>,
    },
    Item {
        method: Method,
        collection: String,
        id: String,
    },
    Set {
        collection: String,
        id: String,
        member: &'static str,
    },
    Echo,
}

/// Thinger collections and the member that holds an item's id.
const THINGER_KEYS: [(&str, &str); 11] = [
    ("users", "user"),
    ("devices", "device"),
    ("buckets", "bucket"),
    ("dashboards", "dashboard"),
    ("endpoints", "endpoint"),
    ("storages", "storage"),
    ("tokens", "token"),
    ("plugins", "plugin"),
    ("projects", "project"),
    ("members", "member"),
    ("roles", "role"),
];

impl Platform {
    /// A stand-in holding `seed`: thinger `{"users": [...], "accounts": {"<u>": {"projects":
    /// [{…, "members": [...], "roles": [...]}], "devices": [...], …}}}`; central `{"orgs":
    /// [{id, parent}], "users": [{id, org, role, enabled}], "devices": [{id, org}]}`.
    ///
    /// # Errors
    /// The seed is not of that shape.
    pub fn new(flavor: Flavor, seed: &Value) -> Result<Arc<Platform>, String> {
        let mut store = BTreeMap::new();
        match flavor {
            Flavor::Thinger => thinger_seed(seed, &mut store)?,
            Flavor::Central => {
                for name in ["orgs", "users", "devices"] {
                    let items = array(seed.get(name), name)?;
                    store.insert(format!("/api/{name}"), keyed(items, "id", name)?);
                }
            }
        }
        Ok(Arc::new(Platform {
            flavor,
            store: Mutex::new(store),
            failing: std::sync::atomic::AtomicBool::new(false),
            page: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// Serves requests from `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    /// The item at `collection`/`id`, as the server holds it now.
    pub fn item(&self, collection: &str, id: &str) -> Option<Value> {
        self.lock().get(collection).and_then(|c| c.get(id)).cloned()
    }

    /// Changes the state directly, as the platform's own console would (not through iotgate).
    pub fn put(&self, collection: &str, id: &str, value: Value) {
        self.lock()
            .entry(collection.to_string())
            .or_default()
            .insert(id.to_string(), value);
    }

    /// While `on`, every request is answered 503 (an outage of the platform).
    pub fn fail(&self, on: bool) {
        self.failing.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers lists with at most `n` items (`None`: all), as a server that pages them.
    pub fn page_lists(&self, n: Option<usize>) {
        self.page
            .store(n.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes an item directly.
    pub fn remove(&self, collection: &str, id: &str) {
        let mut store = self.lock();
        if let Some(c) = store.get_mut(collection) {
            c.remove(id);
        }
        let below = format!("{collection}/{id}/");
        store.retain(|path, _| !path.starts_with(&below));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Collection>> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let target = match self.flavor {
            Flavor::Thinger => Platform::thinger_target(req.method(), req.uri()),
            Flavor::Central => central_target(req.method(), req.uri().path()),
        };
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return answer(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}));
        }
        if target == Target::Echo {
            return echo(&req, self.flavor);
        }
        if !req.headers().contains_key(http::header::AUTHORIZATION) {
            return answer(StatusCode::UNAUTHORIZED, &json!({"error": "no token"}));
        }
        let bytes = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return answer(StatusCode::BAD_REQUEST, &json!({"error": "body"})),
        };
        let body = match bytes.is_empty() {
            true => Value::Null,
            false => match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) => return answer(StatusCode::BAD_REQUEST, &json!({"error": "not JSON"})),
            },
        };
        let (status, value) = self.apply(target, body);
        answer(status, &value)
    }

    fn apply(&self, target: Target, body: Value) -> (StatusCode, Value) {
        let mut store = self.lock();
        match target {
            Target::List { collection, filter } => {
                let items = store.get(&collection).into_iter().flat_map(|c| c.values());
                let page = match self.page.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => usize::MAX,
                    n => n,
                };
                let listed: Vec<Value> = items
                    .filter(|item| filter.as_ref().is_none_or(|(k, v)| holds(item, k, v)))
                    .take(page)
                    .cloned()
                    .collect();
                (StatusCode::OK, Value::Array(listed))
            }
            Target::Create {
                collection,
                key,
                set,
            } => {
                let Some(mut object) = body.as_object().cloned() else {
                    return (StatusCode::BAD_REQUEST, json!({"error": "not an object"}));
                };
                let Some(id) = object.get(key).and_then(Value::as_str).map(String::from) else {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("no `{key}`")}),
                    );
                };
                if let Some((k, v)) = set {
                    object.insert(k, Value::String(v));
                }
                let items = store.entry(collection).or_default();
                if items.contains_key(&id) {
                    return (StatusCode::CONFLICT, json!({"error": "exists"}));
                }
                object.remove("password");
                items.insert(id, Value::Object(object.clone()));
                (StatusCode::OK, Value::Object(object))
            }
            Target::Item {
                method,
                collection,
                id,
            } => item(&mut store, &method, &collection, &id, body),
            Target::Set {
                collection,
                id,
                member,
            } => {
                let Some(found) = store.get_mut(&collection).and_then(|c| c.get_mut(&id)) else {
                    return (StatusCode::NOT_FOUND, json!({"error": "not found"}));
                };
                let value = match (member, body) {
                    ("projects", v @ Value::Array(_)) => v,
                    (m, Value::Object(mut o)) if o.contains_key(m) => {
                        o.remove(m).unwrap_or_default()
                    }
                    _ => return (StatusCode::BAD_REQUEST, json!({"error": "bad body"})),
                };
                if let Some(o) = found.as_object_mut() {
                    o.insert(member.to_string(), value);
                }
                (StatusCode::OK, found.clone())
            }
            Target::Echo => (StatusCode::OK, Value::Null),
        }
    }

    /// A Thinger path: a collection under `/v1/users[/{u}[/projects/{p}]]`, an item, or a
    /// resource's `/projects`.
    fn thinger_target(method: &Method, uri: &http::Uri) -> Target {
        let path = uri.path();
        let s: Vec<&str> = path.split('/').skip(1).collect();
        let key = |name: &str| {
            THINGER_KEYS
                .iter()
                .find(|(c, _)| *c == name && name != "users" && name != "members")
                .map(|(_, k)| *k)
        };
        let project = uri.query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("project="))
                .map(String::from)
        });
        let list = |collection: String, key: &'static str, owner: &str| match *method {
            Method::GET => Target::List {
                filter: project
                    .clone()
                    .map(|p| ("projects".to_string(), format!("{owner}@{p}"))),
                collection,
            },
            Method::POST => Target::Create {
                collection,
                key,
                set: None,
            },
            _ => Target::Echo,
        };
        let one = |collection: String, id: &str| match *method {
            Method::GET | Method::PUT | Method::DELETE => Target::Item {
                method: method.clone(),
                collection,
                id: id.to_string(),
            },
            _ => Target::Echo,
        };
        match s.as_slice() {
            ["v1", "users"] => list("/v1/users".into(), "user", ""),
            ["v1", "users", u] => one("/v1/users".into(), u),
            ["v1", "users", u, c] if key(c).is_some() => {
                list(format!("/v1/users/{u}/{c}"), key(c).unwrap_or_default(), u)
            }
            ["v1", "users", u, c, id] if key(c).is_some() => one(format!("/v1/users/{u}/{c}"), id),
            ["v1", "users", u, c, id, "projects"] if key(c).is_some() && *method == Method::PUT => {
                Target::Set {
                    collection: format!("/v1/users/{u}/{c}"),
                    id: (*id).to_string(),
                    member: "projects",
                }
            }
            ["v1", "users", u, "projects", p, c @ ("members" | "roles")] => list(
                format!("/v1/users/{u}/projects/{p}/{c}"),
                if *c == "members" { "member" } else { "role" },
                u,
            ),
            ["v1", "users", u, "projects", p, c @ ("members" | "roles"), id] => {
                one(format!("/v1/users/{u}/projects/{p}/{c}"), id)
            }
            _ => Target::Echo,
        }
    }
}

/// A central path: the flat collections and the per-org views.
fn central_target(method: &Method, path: &str) -> Target {
    let s: Vec<&str> = path.split('/').skip(1).collect();
    let flat = |name: &str| format!("/api/{name}");
    match s.as_slice() {
        ["api", "orgs", org, view @ ("orgs" | "users" | "devices")] => {
            let member = if *view == "orgs" { "parent" } else { "org" };
            match *method {
                Method::GET => Target::List {
                    collection: flat(view),
                    filter: Some((member.into(), (*org).into())),
                },
                Method::POST => Target::Create {
                    collection: flat(view),
                    key: "id",
                    set: Some((member.into(), (*org).into())),
                },
                _ => Target::Echo,
            }
        }
        ["api", kind @ ("orgs" | "users" | "devices"), id, m @ ("org" | "parent")]
            if *method == Method::PUT =>
        {
            Target::Set {
                collection: flat(kind),
                id: (*id).into(),
                member: if *m == "org" { "org" } else { "parent" },
            }
        }
        ["api", kind @ ("orgs" | "users" | "devices"), id]
            if matches!(
                *method,
                Method::GET | Method::PUT | Method::PATCH | Method::DELETE
            ) =>
        {
            Target::Item {
                method: method.clone(),
                collection: flat(kind),
                id: (*id).into(),
            }
        }
        _ => Target::Echo,
    }
}

/// Read, update (merge) or delete one item; a deleted item takes what hangs from it.
fn item(
    store: &mut BTreeMap<String, Collection>,
    method: &Method,
    collection: &str,
    id: &str,
    body: Value,
) -> (StatusCode, Value) {
    let Some(found) = store.get_mut(collection).and_then(|c| c.get_mut(id)) else {
        return (StatusCode::NOT_FOUND, json!({"error": "not found"}));
    };
    match *method {
        Method::GET => (StatusCode::OK, found.clone()),
        Method::DELETE => {
            if let Some(c) = store.get_mut(collection) {
                c.remove(id);
            }
            let below = format!("{collection}/{id}/");
            store.retain(|path, _| !path.starts_with(&below));
            (StatusCode::OK, json!({}))
        }
        _ => {
            let (Some(current), Value::Object(changes)) = (found.as_object_mut(), body) else {
                return (StatusCode::BAD_REQUEST, json!({"error": "not an object"}));
            };
            for (k, v) in changes {
                if k != "password" {
                    current.insert(k, v);
                }
            }
            (StatusCode::OK, found.clone())
        }
    }
}

/// Whether `item`'s member `key` is `value`, or an array holding it.
fn holds(item: &Value, key: &str, value: &str) -> bool {
    match item.get(key) {
        Some(Value::String(s)) => s == value,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(value)),
        _ => false,
    }
}

fn array<'v>(value: Option<&'v Value>, name: &str) -> Result<&'v [Value], String> {
    match value {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("`{name}` is not an array")),
    }
}

/// Items by their `key` member.
fn keyed(items: &[Value], key: &str, name: &str) -> Result<Collection, String> {
    let mut out = Collection::new();
    for item in items {
        let id = item
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("an item of `{name}` has no `{key}`"))?;
        out.insert(id.to_string(), item.clone());
    }
    Ok(out)
}

/// The thinger seed, spread over collection paths.
fn thinger_seed(seed: &Value, store: &mut BTreeMap<String, Collection>) -> Result<(), String> {
    store.insert(
        "/v1/users".into(),
        keyed(array(seed.get("users"), "users")?, "user", "users")?,
    );
    let accounts = seed.get("accounts").and_then(Value::as_object);
    for (user, account) in accounts.into_iter().flatten() {
        for (name, key) in THINGER_KEYS
            .iter()
            .filter(|(c, _)| !matches!(*c, "users" | "members"))
        {
            let items = array(account.get(*name), name)?;
            let mut collection = Collection::new();
            for (id, item) in keyed(items, key, name)? {
                let Value::Object(mut object) = item else {
                    return Err(format!("`{name}.{id}` is not an object"));
                };
                if *name == "projects" {
                    for sub in ["members", "roles"] {
                        let below = object.remove(sub).unwrap_or(Value::Array(Vec::new()));
                        let k = if sub == "members" { "member" } else { "role" };
                        let path = format!("/v1/users/{user}/projects/{id}/{sub}");
                        store.insert(path, keyed(array(Some(&below), sub)?, k, sub)?);
                    }
                }
                collection.insert(id, Value::Object(object));
            }
            store.insert(format!("/v1/users/{user}/{name}"), collection);
        }
    }
    Ok(())
}

fn answer(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// What any other path answers: what it received.
fn echo(req: &Request<Incoming>, flavor: Flavor) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let body: Map<String, Value> = [
        (
            "mock",
            Value::from(match flavor {
                Flavor::Thinger => "thinger",
                Flavor::Central => "central",
            }),
        ),
        ("method", Value::from(req.method().as_str())),
        ("path", Value::from(req.uri().path())),
        ("principal", Value::from(header("x-iotgate-principal"))),
        (
            "policy_version",
            Value::from(header("x-iotgate-policy-version")),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    answer(StatusCode::OK, &Value::Object(body))
}
