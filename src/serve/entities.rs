//! The entity API on the admin listener: read and change the directory without editing
//! JSON files. Every write goes through `Gateway::commit` (checked, journaled, served).
//!
//! ```text
//! GET    /directory/entities/{type}/{id}   200 the entity's JSON | 404 (an id may hold `/`)
//! PUT    /directory/entities/{type}/{id}   {"attrs": {…}, "parents": [{"type","id"}]} → 200
//! DELETE /directory/entities/{type}/{id}   200 | 404
//! PUT    /directory/entities               [Cedar entity JSON, …] as one batch → 200
//!   a change that does not fit: 422 {"problems": […]}, nothing applied; journal or shared
//!   database down: 503
//! every request: Authorization: Bearer <[admin] token_file> (401; 403 when none configured)
//! ```

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::model::directory::change::{Change, Uid};
use crate::proxy::response::{full, AdminRefusal, Body};
use crate::proxy::{CommitError, Gateway};

/// Largest entity API body.
const MAX_BODY: usize = 4 << 20;

/// What a PUT of one entity carries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    #[serde(default)]
    attrs: Map<String, Value>,
    #[serde(default)]
    parents: Vec<Uid>,
}

/// One entity of a batch (Cedar entity JSON).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entity {
    uid: Uid,
    #[serde(default)]
    attrs: Map<String, Value>,
    #[serde(default)]
    parents: Vec<Uid>,
}

/// Answers a `/directory/entities…` request (already authorized).
pub(crate) async fn handle(
    gateway: &Gateway,
    request: Request<Incoming>,
) -> Result<Response<Body>, AdminRefusal> {
    let path = request.uri().path().to_string();
    let rest = path.strip_prefix("/directory/entities").unwrap_or_default();
    let target = match rest {
        "" => None,
        _ => Some(uid_of(rest).ok_or(AdminRefusal::NotFound)?),
    };
    let method = request.method().clone();
    match (method, target) {
        (Method::GET, Some(uid)) => get(gateway, &uid),
        (Method::PUT, Some(uid)) => {
            let put: Put = read(request).await?;
            let change = put_change(gateway, uid, put.attrs, put.parents);
            commit(gateway, vec![change]).await
        }
        (Method::DELETE, Some(uid)) => {
            get(gateway, &uid)?;
            commit(gateway, vec![Change::Delete { uid }]).await
        }
        (Method::PUT, None) => {
            let batch: Vec<Entity> = read(request).await?;
            let changes = batch
                .into_iter()
                .map(|e| put_change(gateway, e.uid, e.attrs, e.parents))
                .collect();
            commit(gateway, changes).await
        }
        _ => Err(AdminRefusal::NotFound),
    }
}

/// A PUT's change: it replaces an entity that exists, and creates one that does not, which
/// refuses (422) a look-alike of one that exists (`User::"ACME"` beside `acme`), as effects do.
fn put_change(gateway: &Gateway, uid: Uid, attrs: Map<String, Value>, parents: Vec<Uid>) -> Change {
    match present(gateway, &uid) {
        true => Change::Put {
            uid,
            attrs,
            parents,
        },
        false => Change::Create {
            uid,
            attrs,
            parents,
        },
    }
}

fn present(gateway: &Gateway, uid: &Uid) -> bool {
    <cedar_policy::EntityTypeName as std::str::FromStr>::from_str(&uid.ty).is_ok_and(|ty| {
        let cedar = cedar_policy::EntityUid::from_type_name_and_id(
            ty,
            cedar_policy::EntityId::new(&uid.id),
        );
        gateway.snapshot().directory.get(&cedar).is_some()
    })
}

/// `/{type}/{id}`, percent-decoded by the strict path rules; the id is the rest of the path
/// (Thinger device ids are `owner/device`).
fn uid_of(rest: &str) -> Option<Uid> {
    let segments = crate::request::uri::segments(rest).ok()?;
    match segments.split_first() {
        Some((ty, id)) if !id.is_empty() => Some(Uid {
            ty: ty.to_string(),
            id: id.join("/"),
        }),
        _ => None,
    }
}

fn get(gateway: &Gateway, uid: &Uid) -> Result<Response<Body>, AdminRefusal> {
    let snapshot = gateway.snapshot();
    let ty = <cedar_policy::EntityTypeName as std::str::FromStr>::from_str(&uid.ty)
        .map_err(|_| AdminRefusal::NotFound)?;
    let cedar =
        cedar_policy::EntityUid::from_type_name_and_id(ty, cedar_policy::EntityId::new(&uid.id));
    let node = snapshot
        .directory
        .get(&cedar)
        .ok_or(AdminRefusal::NotFound)?;
    Ok(json_response(StatusCode::OK, &node.json()))
}

async fn read<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, AdminRefusal> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| AdminRefusal::BadBody)?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|_| AdminRefusal::BadBody)
}

async fn commit(gateway: &Gateway, changes: Vec<Change>) -> Result<Response<Body>, AdminRefusal> {
    let count = changes.len();
    match gateway.commit(changes).await {
        Ok(()) => {
            let version = gateway.snapshot().directory_version.to_string();
            Ok(json_response(
                StatusCode::OK,
                &json!({"applied": count, "directory_version": version}),
            ))
        }
        Err(CommitError::Invalid(problems)) => {
            let list: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
            Ok(json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"error": "invalid_change", "reason": "invalid_change", "problems": list}),
            ))
        }
        Err(CommitError::Journal(_)) => Err(AdminRefusal::Journal),
        Err(CommitError::Store(_)) => Err(AdminRefusal::Store),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
