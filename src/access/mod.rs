//! The decision API: the OpenID AuthZEN Authorization API 1.0 on its own listener
//! (`[decision_api]`), for the platform's applications to ask what the proxy would decide.
//!
//! ```text
//! request ─▶ endpoint (404; the metadata is answered here, to anyone)
//!   ─▶ caller: Bearer token_file / admin_token_file, or a verified client certificate
//!      when [decision_api.tls] requires one                              (401)
//!   ─▶ method (405) ─▶ body: application/json (400), ≤ max_body_bytes (413)
//!   ─▶ wire: the AuthZEN request shape                                    (400)
//!   ─▶ decide: each question on one snapshot, through the proxy's decision path
//!   ─▶ 200 {"decision"} | {"evaluations": [...]}; a deny is a 200 with false
//!   every answer echoes X-Request-ID; every evaluation is logged and counted as the
//!   proxy's decisions are (a batch item's request id is `<id>/<index>`); a search logs
//!   one line, not each candidate it decided; searches run off the async runtime
//! ```

pub(crate) mod decide;
pub(crate) mod narrow;
pub(crate) mod search;
pub(crate) mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use self::decide::{Answer, ItemError};
use self::wire::{Batch, WireError};
use crate::authz::snapshot::Snapshot;
use crate::config::DecisionApiConfig;
use crate::proxy::response::{full, AccessRefusal, Body, Failure, REQUEST_ID};
use crate::proxy::Gateway;
use crate::request::headers;
use crate::telemetry;

/// The endpoints, by their default AuthZEN paths.
const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";
const METADATA: &str = "/.well-known/authzen-configuration";
const SEARCHES: [(&str, search::Target, &str); 3] = [
    (
        "/access/v1/search/subject",
        search::Target::Subject,
        "search_subject_endpoint",
    ),
    (
        "/access/v1/search/resource",
        search::Target::Resource,
        "search_resource_endpoint",
    ),
    (
        "/access/v1/search/action",
        search::Target::Action,
        "search_action_endpoint",
    ),
];

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// An application: decisions and reason codes.
    App,
    /// An administrator: also the determining policies (`context.reason_admin`).
    Admin,
}

/// The decision API over a gateway's snapshots.
#[derive(Debug)]
pub(crate) struct Api {
    gateway: Arc<Gateway>,
    config: DecisionApiConfig,
    token: Option<String>,
    admin_token: Option<String>,
}

impl Api {
    /// The API with the caller tokens read from `token_file` and `admin_token_file`.
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        config: DecisionApiConfig,
        token: Option<String>,
        admin_token: Option<String>,
    ) -> Api {
        Api {
            gateway,
            config,
            token,
            admin_token,
        }
    }

    /// Answers one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let started = Instant::now();
        let echo = request
            .headers()
            .get(REQUEST_ID)
            .filter(|v| !v.is_empty())
            .cloned();
        let asked = Asked {
            request_id: crate::proxy::request_id(request.headers()),
            trace_id: headers::trace_id(request.headers()),
            client: peer,
        };
        let path = request.uri().path().to_string();
        let snapshot = self.gateway.snapshot();
        let mut response = match self.answer(request, &snapshot, &asked).await {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(refusal) => Failure::Access(refusal).to_response(
                &asked.request_id,
                &snapshot.policy_version,
                false,
            ),
        };
        let id = echo.or_else(|| HeaderValue::from_str(&asked.request_id).ok());
        if let Some(id) = id {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        let known = [EVALUATION, EVALUATIONS, METADATA]
            .into_iter()
            .chain(SEARCHES.map(|(p, _, _)| p))
            .any(|p| p == path);
        let route = if known { path.as_str() } else { "-" };
        self.gateway.metrics().record_request(
            route,
            response.status().as_u16(),
            started.elapsed(),
            None,
        );
        response
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        snapshot: &Arc<Snapshot>,
        asked: &Asked,
    ) -> Result<Value, AccessRefusal> {
        let path = request.uri().path();
        if path == METADATA {
            return match *request.method() {
                Method::GET | Method::HEAD => Ok(self.metadata(&request)),
                _ => Err(AccessRefusal::Method),
            };
        }
        let searched = SEARCHES.iter().find(|(p, _, _)| *p == path);
        if path != EVALUATION && path != EVALUATIONS && searched.is_none() {
            return Err(AccessRefusal::NotFound);
        }
        let caller = self.caller(&request)?;
        if request.method() != Method::POST {
            return Err(AccessRefusal::Method);
        }
        let batch = path == EVALUATIONS;
        let body = self.body(request).await?;
        let body = wire::object(&body).map_err(bad)?;
        if let Some((route, target, _)) = searched {
            // a search decides many candidates: off the runtime the proxy shares
            let (snapshot, target) = (Arc::clone(snapshot), *target);
            let found = tokio::task::spawn_blocking(move || {
                search::search(&snapshot, target, &body, route)
            })
            .await
            .map_err(|e| {
                self.gateway.metrics().record_internal_error();
                tracing::error!(request_id = asked.request_id.as_str(), error = %e, "search failed");
                AccessRefusal::Internal(e.to_string())
            })?
            .map_err(bad)?;
            tracing::info!(
                request_id = asked.request_id.as_str(),
                route,
                results = found["page"]["count"].as_u64().unwrap_or(0),
                more = found["page"]["next_token"] != "",
                "search"
            );
            return Ok(found);
        }
        if !batch {
            let question = wire::evaluation(&body).map_err(bad)?;
            return Ok(self.one(snapshot, &question, EVALUATION, asked, caller));
        }
        match wire::evaluations(&body, self.config.max_batch).map_err(bad)? {
            Batch::Single(question) => {
                Ok(self.one(snapshot, &question, EVALUATIONS, asked, caller))
            }
            Batch::Items { items, semantic } => {
                let mut out = Vec::with_capacity(items.len());
                for i in 0..items.len() {
                    let started = Instant::now();
                    let answer = match items.question(i) {
                        Ok(question) => decide::decide(
                            snapshot,
                            Some(self.gateway.caches()),
                            &question,
                            EVALUATIONS,
                        ),
                        Err(e) => Answer::unaskable(snapshot, EVALUATIONS, ItemError::Wire(e)),
                    };
                    self.account(&answer, asked, Some(i), started.elapsed());
                    let allowed = answer.allowed();
                    out.push(answer.to_json(caller == Caller::Admin));
                    if semantic.stops_after(allowed) && i + 1 < items.len() {
                        if let Some(last) = out.last_mut() {
                            last["context"]["semantic"] = semantic.name().into();
                        }
                        break;
                    }
                }
                Ok(json!({ "evaluations": out }))
            }
        }
    }

    /// One question, decided, logged and answered.
    fn one(
        &self,
        snapshot: &Snapshot,
        question: &wire::Question,
        route: &str,
        asked: &Asked,
        caller: Caller,
    ) -> Value {
        let started = Instant::now();
        let answer = decide::decide(snapshot, Some(self.gateway.caches()), question, route);
        self.account(&answer, asked, None, started.elapsed());
        answer.to_json(caller == Caller::Admin)
    }

    /// Logs and counts one decision as the proxy does (`took`: deciding it).
    fn account(&self, answer: &Answer, asked: &Asked, item: Option<usize>, took: Duration) {
        let metrics = self.gateway.metrics();
        let decision = &answer.decision;
        if let crate::authz::decision::Outcome::Reject(
            crate::authz::decision::Rejection::Internal(e),
        ) = &decision.outcome
        {
            metrics.record_internal_error();
            tracing::error!(request_id = asked.request_id.as_str(), error = %e, "internal fault on the decision path");
        }
        metrics.record_decision(answer.allowed(), took);
        if !answer.allowed() {
            metrics.record_denial(answer.reason());
        }
        if decision.shadow_disagrees() {
            metrics.record_shadow_disagreement();
        }
        let request_id = match item {
            Some(i) => format!("{}/{i}", asked.request_id),
            None => asked.request_id.clone(),
        };
        let logged = telemetry::Asked {
            request_id: &request_id,
            trace_id: asked.trace_id.as_deref(),
            client: asked.client.ip(),
            method: &Method::POST,
        };
        telemetry::decision(logged, decision, answer.reason(), 200, took);
    }

    /// The caller, by its bearer token (or, with a required client certificate, the
    /// verified connection).
    fn caller(&self, request: &Request<Incoming>) -> Result<Caller, AccessRefusal> {
        let headers = request.headers();
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| headers::bearer_is(headers, t))
        {
            return Ok(Caller::Admin);
        }
        match &self.token {
            Some(t) if headers::bearer_is(headers, t) => Ok(Caller::App),
            Some(_) => Err(AccessRefusal::Token),
            // validation allows no token only when every connection presented a verified
            // client certificate
            None if request
                .extensions()
                .get::<Arc<crate::request::TlsSession>>()
                .is_some_and(|session| session.client.is_some()) =>
            {
                Ok(Caller::App)
            }
            None => Err(AccessRefusal::Token),
        }
    }

    /// The body, JSON by its media type, within `max_body_bytes` and the read timeout.
    async fn body(&self, request: Request<Incoming>) -> Result<bytes::Bytes, AccessRefusal> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(AccessRefusal::MediaType);
        }
        let limited = http_body_util::Limited::new(request.into_body(), self.config.max_body_bytes);
        let timeout = self.gateway.server().header_read_timeout;
        match tokio::time::timeout(timeout, limited.collect()).await {
            Err(_) => Err(AccessRefusal::Timeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Err(AccessRefusal::TooLarge)
            }
            Ok(Err(e)) => Err(AccessRefusal::BadRequest(format!("body read failed: {e}"))),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// The PDP metadata: the base URL (`base_url`, else the scheme and `Host` asked) and
    /// the endpoints served.
    fn metadata(&self, request: &Request<Incoming>) -> Value {
        let base = self.config.base_url.clone().unwrap_or_else(|| {
            let scheme = if self.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            // HTTP/2 names the host in the URI, not in a Host header
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str()))
                .map_or_else(|| self.config.listen.to_string(), String::from);
            format!("{scheme}://{host}")
        });
        let mut out = Map::new();
        out.insert("policy_decision_point".into(), base.clone().into());
        out.insert(
            "access_evaluation_endpoint".into(),
            format!("{base}{EVALUATION}").into(),
        );
        out.insert(
            "access_evaluations_endpoint".into(),
            format!("{base}{EVALUATIONS}").into(),
        );
        for (path, _, key) in SEARCHES {
            out.insert(key.into(), format!("{base}{path}").into());
        }
        Value::Object(out)
    }
}

/// What the decision log needs of a request.
struct Asked {
    request_id: String,
    trace_id: Option<String>,
    client: SocketAddr,
}

fn bad(e: WireError) -> AccessRefusal {
    AccessRefusal::BadRequest(e.to_string())
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
