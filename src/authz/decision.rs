//! The decision path: one request in, one [`Decision`] out. `serve` and `check` both call
//! exactly this.
//!
//! ```text
//! begin(head, credentials)
//!   token → Identity (401) ─▶ strict path (400) ─▶ route (404) ─▶ principal in directory
//!   (401 deleted, 403 disabled) ─▶ Pending   [serve reads the body here when the route
//!                                             needs it, bounded by max_body_bytes]
//! Pending::decide(body)
//!   JSON body (400) ─▶ fields → resource + context (400) ─▶ entity slice (principal,
//!   resource, context entities, what their attributes name, all their ancestors, the
//!   action and its groups) ─▶ Cedar request checked against the schema (400)
//!   ─▶ is_authorized ─▶ Allow only if Cedar allows AND reported no error (fail closed)
//! ```
//!
//! Every outcome is a [`Decision`]; its HTTP status (and how it prints) is decided in one
//! place, `response`, which depends on this module and not the other way round.

use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{Context, Entities, EntityId, EntityUid, Request};
use serde_json::Value;
use smol_str::SmolStr;

use crate::authn::{AuthError, Claims, Identity, Verifier};
use crate::authz::cache::{Caches, DecisionKey, TokenCache};
use crate::authz::evaluate::{self, Verdict, Verdicts};
use crate::authz::snapshot::Snapshot;
use crate::model::cedar_core::SliceError;
use crate::model::cedar_core::{self, CoreEntity};
use crate::model::directory::change::Change;
use crate::model::directory::{Directory, EntityError, NodeRef};
use crate::model::policy::Policies;
use crate::model::routes::field::{FieldError, Inputs};
use crate::model::routes::{Auth, Resolved, Route};
use crate::request::headers::{self, HeaderError};
use crate::request::subrequest::SubrequestError;
use crate::request::uri::{self, PathError, Query, QueryError};
use crate::request::{form, BodyFormat, TlsClient};

/// The parts of an HTTP request a decision reads before the body.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// Path and query.
    pub uri: &'a http::Uri,
    /// Headers (for the token).
    pub headers: &'a http::HeaderMap,
    /// Whether a body follows (a `GET` or `HEAD` with one is refused).
    pub has_body: bool,
    /// Whether `Cookie` reaches the upstream (`[server] forward_cookies`): then a token in it
    /// is a second credential like any other.
    pub forwards_cookies: bool,
    /// The verified TLS client certificate of the connection, if any.
    pub tls_client: Option<&'a TlsClient>,
}

/// How the request's identity is established.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Verify the token the request carries (serve, `check --token`).
    Token,
    /// Trust these claims without a signature (`check --as`, suite cases).
    Trusted(Claims),
}

/// Why a request is not forwarded (`response::Failure` turns it into an HTTP answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Malformed request: odd path, bad query, bad body, values that do not fit.
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
    /// No valid token.
    #[error("not authenticated: {0}")]
    Unauthenticated(AuthError),
    /// The token names an account the directory does not have (deleted).
    #[error("unknown account `{0}`")]
    UnknownPrincipal(String),
    /// The account is disabled.
    #[error("account `{0}` is disabled")]
    Disabled(String),
    /// No route matches.
    #[error("no route")]
    NoRoute,
    /// The policies deny it (or an evaluation error made it deny).
    #[error("forbidden")]
    Forbidden(Denial),
    /// The body exceeds `max_body_bytes` on a route that reads it.
    #[error("body too large")]
    BodyTooLarge,
    /// The body of a route that reads it did not arrive within `header_read_timeout_seconds`.
    #[error("body not sent in time")]
    BodyTimeout,
    /// A CORS preflight from an origin `[server.cors]` does not allow.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// A request that creates an entity the directory has already (or a look-alike of).
    #[error("`{0}` exists already")]
    Conflict(String),
    /// A public route's client sent more than `[server] public_rate_per_second` allows;
    /// a token is back in this many seconds.
    #[error("rate limited for {0} s")]
    RateLimited(u64),
    /// A body the route reads is not plain JSON (other type, charset or encoding).
    #[error("unsupported body: {0}")]
    UnsupportedMediaType(HeaderError),
    /// Decide mode: a route that reads body fields, asked about by a front proxy that does
    /// not send the body.
    #[error("the route reads the body, which the front proxy does not send")]
    BodyNotForwarded,
    /// Decide mode: the sub-request does not say which request to decide.
    #[error("sub-request: {0}")]
    Subrequest(SubrequestError),
    /// iotgate's own fault (500): the request was fine, the decision could not be made.
    #[error("internal fault: {0}")]
    Internal(InternalError),
}

/// What a client is told about a policy refusal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denial {
    /// The `@code` of the first determining forbid that has one.
    pub code: Option<String>,
    /// That policy's `@reason` (sent as `message` with `[server] expose_messages`).
    pub message: Option<String>,
    /// Whether a forbid determined it (else no permit applied, or evaluation failed).
    pub by_forbid: bool,
    /// Whether a policy failed to evaluate (which denies).
    pub errored: bool,
}

impl Denial {
    /// The `reason` code: the policy's `@code`, else `evaluation_error`, `denied_by_policy`
    /// (a forbid without `@code`) or `no_permit`.
    pub fn reason(&self) -> &str {
        match (&self.code, self.errored, self.by_forbid) {
            (Some(code), _, _) => code,
            (None, true, _) => "evaluation_error",
            (None, false, true) => "denied_by_policy",
            (None, false, false) => "no_permit",
        }
    }
}

/// Why a resolved request could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeError {
    /// The request's values do not fit the action's schema: the request's fault (400).
    #[error("request does not fit the schema: {0}")]
    Schema(String),
    /// An entity the directory lacks but has in another case (400, see
    /// [`BadRequest::LookalikeId`]).
    #[error("`{0}` is a look-alike of a directory entity")]
    Lookalike(String),
    /// iotgate's own fault (500).
    #[error(transparent)]
    Internal(#[from] InternalError),
}

/// A fault of iotgate's own on the decision path; it denies, like every error there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InternalError {
    /// A route names an action the schema does not have (load checks prevent it).
    #[error("action `{0}` is not in the schema")]
    UnknownAction(String),
    /// A directory entity Cedar refuses.
    #[error(transparent)]
    Entity(#[from] EntityError),
    /// The entity slice is not a store.
    #[error(transparent)]
    Slice(#[from] SliceError),
    /// A public route matched, but the route table has no anonymous type (load checks
    /// prevent it).
    #[error("no anonymous principal type for a public route")]
    NoAnonymousType,
}

impl From<AuthorizeError> for Rejection {
    fn from(e: AuthorizeError) -> Rejection {
        match e {
            AuthorizeError::Schema(m) => Rejection::BadRequest(BadRequest::Schema(m)),
            AuthorizeError::Lookalike(uid) => Rejection::BadRequest(BadRequest::LookalikeId(uid)),
            AuthorizeError::Internal(i) => Rejection::Internal(i),
        }
    }
}

/// What was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The query.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A field (missing, wrong type, unmapped, bad query).
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The body is not a JSON object, or repeats a key.
    #[error("body is not one object without repeated keys: {0}")]
    Body(String),
    /// The body could not be read (the client went away, bad chunking).
    #[error("body could not be read: {0}")]
    BodyRead(String),
    /// An entity the directory does not have but has in another case or with trailing dots
    /// or spaces (`DELETE /v1/users/ACME` for `acme`).
    #[error("`{0}` is not in the directory, but an id that differs only in case is")]
    LookalikeId(String),
    /// A `GET` or `HEAD` with a body: an upstream that ignores it would read it as the next
    /// request on the connection.
    #[error("a {0} request carries no body")]
    BodyNotAllowed(http::Method),
    /// The token query parameter on a route that reads no token (`auth = "none"`), or in
    /// decide mode a Bearer token there (the upstream would get a token nobody verified).
    #[error("a route that reads no token was sent one")]
    TokenNotRead,
    /// Decide mode: an `Upgrade` that is not a WebSocket handshake on a stream route.
    #[error("an upgrade on a route that does not take one")]
    Upgrade,
    /// A header the decision relies on is named by `Connection`.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The values do not fit the action's schema.
    #[error("request does not fit the schema: {0}")]
    Schema(String),
}

/// Allow, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward the request.
    Allow,
    /// Answer with this rejection.
    Reject(Rejection),
}

/// A decision, with everything needed to explain and log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or reject.
    pub outcome: Outcome,
    /// Principal id, once authenticated (the anonymous principal's whole uid).
    pub principal: Option<String>,
    /// Whether the principal is the anonymous one of a public route.
    pub anonymous: bool,
    /// Route name, once matched.
    pub route: Option<String>,
    /// Cedar action, once matched.
    pub action: Option<String>,
    /// Cedar resource, once resolved.
    pub resource: Option<EntityUid>,
    /// Determining policy ids, sorted.
    pub policies: Vec<String>,
    /// `@reason` annotations of the determining policies (`id: text`).
    pub reasons: Vec<String>,
    /// Evaluation errors (`policy: message`); any makes the decision a deny.
    pub errors: Vec<String>,
    /// The policy version that decided.
    pub policy_version: Arc<str>,
    /// The directory version that decided.
    pub directory_version: Arc<str>,
    /// What the shadow policy set would have decided, when one is configured.
    pub shadow: Option<Verdict>,
    /// Whether the verdict came from the decision cache.
    pub cached: bool,
    /// What the request changes in the directory once the upstream answers 2xx (the
    /// route's effects, resolved).
    pub effects: Vec<Change>,
    /// What the policies were asked about beyond method, path and query, kept only when
    /// the gateway records decision inputs (`[log] decision_inputs`).
    pub read: Option<Box<Read>>,
}

/// A recorded decision's claims and body fields: never the token, never the raw body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Read {
    /// The verified token's claims (empty for the anonymous principal).
    pub claims: Claims,
    /// What of the body the route read ([`Route::read_of`]), when it read one.
    pub body: Option<Value>,
    /// The context the route computed (what `check` shows as the case's question).
    #[serde(skip)]
    pub context: Vec<(String, crate::model::routes::field::FieldValue)>,
    /// The resource attributes the route computed (read when the directory lacks it).
    #[serde(skip)]
    pub resource_attrs: Vec<(String, crate::model::routes::field::FieldValue)>,
}

impl Decision {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        Decision {
            outcome: Outcome::Reject(Rejection::Forbidden(Denial::default())),
            principal: None,
            anonymous: false,
            route: None,
            action: None,
            resource: None,
            policies: Vec::new(),
            reasons: Vec::new(),
            errors: Vec::new(),
            policy_version: snapshot.policy_version.clone(),
            directory_version: snapshot.directory_version.clone(),
            shadow: None,
            cached: false,
            effects: Vec::new(),
            read: None,
        }
    }

    /// The decision on a CORS preflight, which iotgate answers itself (no token, no
    /// policy): allowed when the origin is.
    pub fn preflight(snapshot: &Snapshot, origin_allowed: bool) -> Decision {
        let mut decision = Decision::new(snapshot);
        decision.route = Some("CORS preflight".into());
        decision.outcome = match origin_allowed {
            true => Outcome::Allow,
            false => Outcome::Reject(Rejection::OriginNotAllowed),
        };
        decision
    }

    /// A request refused before it reached a route (decide mode's sub-request checks).
    pub fn refused(snapshot: &Snapshot, rejection: Rejection) -> Decision {
        Decision::new(snapshot).reject(rejection)
    }

    pub(crate) fn reject(mut self, rejection: Rejection) -> Self {
        self.outcome = Outcome::Reject(rejection);
        self
    }

    fn boxed(self, rejection: Rejection) -> Box<Self> {
        Box::new(self.reject(rejection))
    }

    /// Takes the live verdict (and the shadow one) as this decision's outcome.
    fn apply(mut self, verdicts: &Verdicts) -> Self {
        let live = &verdicts.live;
        self.outcome = if live.allowed {
            Outcome::Allow
        } else {
            let (code, message) = live.code.clone().unzip();
            Outcome::Reject(Rejection::Forbidden(Denial {
                code,
                message: message.flatten(),
                by_forbid: !live.policies.is_empty(),
                errored: !live.errors.is_empty(),
            }))
        };
        self.policies.clone_from(&live.policies);
        self.reasons.clone_from(&live.reasons);
        self.errors.clone_from(&live.errors);
        self.shadow.clone_from(&verdicts.shadow);
        self
    }

    /// Decides a Cedar request over the entities given with the snapshot's policies, by
    /// the same verdict rules (a forbid or an error denies): `check`'s policy-level cases
    /// and `--prove`'s counterexamples, which name no route and bring their own entities.
    pub fn of_cedar(snapshot: &Snapshot, request: &Request, entities: &Entities) -> Decision {
        let set = &snapshot.policies.set;
        let live = evaluate::evaluate(&[set], set, request, entities);
        let mut decision = Decision::new(snapshot);
        decision.principal = request.principal().map(ToString::to_string);
        decision.action = request.action().map(ToString::to_string);
        decision.resource = request.resource().cloned();
        decision.apply(&Verdicts { live, shadow: None })
    }

    /// Whether a shadow policy set decided differently (allow vs deny).
    pub fn shadow_disagrees(&self) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|s| s.allowed != self.is_allowed())
    }

    /// Whether the request is forwarded.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }
}

/// A request that passed authentication, routing and the principal checks.
#[derive(Debug)]
pub struct Pending<'s> {
    snapshot: &'s Snapshot,
    caches: Option<&'s Caches>,
    route: &'s Route,
    captures: Vec<(&'s str, String)>,
    query: Option<String>,
    /// The token's claims (none for the anonymous principal).
    claims: Claims,
    tls_client: Option<TlsClient>,
    principal: NodeRef<'s>,
    /// Whether a body would be read as JSON (checked only when one is sent).
    media: Result<(), HeaderError>,
    /// Whether the decision keeps what it read ([`Decision::read`]).
    record: bool,
    decision: Decision,
}

/// Authenticates, routes and checks the principal. `serve` passes its caches; `check`
/// passes none.
///
/// # Errors
/// A rejection decision (401, 400, 404, 403 for a disabled account), boxed.
pub fn begin<'s>(
    snapshot: &'s Snapshot,
    verifier: &Verifier,
    head: RequestHead<'_>,
    credentials: Credentials,
    caches: Option<&'s Caches>,
) -> Result<Pending<'s>, Box<Decision>> {
    let mut decision = Decision::new(snapshot);
    if head.has_body && matches!(*head.method, http::Method::GET | http::Method::HEAD) {
        let refused = BadRequest::BodyNotAllowed(head.method.clone());
        return Err(decision.boxed(Rejection::BadRequest(refused)));
    }
    let token_parameter = verifier.query_parameter();
    let framing = headers::check_head(head.headers, token_parameter)
        .and_then(|()| headers::second_credential(head.headers, head.forwards_cookies))
        .map_err(BadRequest::from)
        .and_then(|()| {
            uri::check_query(head.uri.query(), token_parameter).map_err(BadRequest::from)
        });
    framing.map_err(|e| decision.clone().boxed(Rejection::BadRequest(e)))?;
    let query = Query::new(head.uri.query());
    let segments = uri::segments(head.uri.path());
    let found = segments
        .as_ref()
        .ok()
        .and_then(|s| snapshot.routes.find(head.method, s));
    let auth = found.as_ref().map_or(Auth::Required, |(r, _)| r.auth);
    let identity = identify(verifier, head.headers, query, credentials, caches, auth)
        .map_err(|e| decision.clone().boxed(e))?;
    let principal_uid = match &identity {
        Some(identity) => EntityUid::from_type_name_and_id(
            snapshot.routes.principal_type.clone(),
            EntityId::new(&identity.principal),
        ),
        None => snapshot.routes.anonymous().ok_or_else(|| {
            decision
                .clone()
                .boxed(Rejection::Internal(InternalError::NoAnonymousType))
        })?,
    };
    decision.anonymous = identity.is_none();
    decision.principal = Some(match &identity {
        Some(identity) => identity.principal.clone(),
        None => principal_uid.to_string(),
    });
    segments.map_err(|e| decision.clone().boxed(Rejection::BadRequest(e.into())))?;
    let (route, captures) = found.ok_or_else(|| decision.clone().boxed(Rejection::NoRoute))?;
    decision.route = Some(route.name.clone());
    decision.action = Some(route.action_label.clone());
    let principal = snapshot.directory.get(&principal_uid).ok_or_else(|| {
        decision.clone().reject(Rejection::UnknownPrincipal(
            principal_uid.id().unescaped().to_string(),
        ))
    })?;
    if principal.is_disabled() {
        return Err(decision.boxed(Rejection::Disabled(
            principal_uid.id().unescaped().to_string(),
        )));
    }
    Ok(Pending {
        snapshot,
        caches,
        route,
        captures,
        query: head.uri.query().map(String::from),
        claims: identity.map(|i| i.claims).unwrap_or_default(),
        tls_client: head.tls_client.cloned(),
        principal,
        media: if route.needs_body() {
            headers::body_media(head.headers, route.body)
        } else {
            Ok(())
        },
        record: false,
        decision,
    })
}

impl<'s> Pending<'s> {
    /// Keeps what the decision reads in [`Decision::read`] (for the decision-input record).
    pub fn recording(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    /// Whether [`Pending::decide`] needs the request body.
    pub fn needs_body(&self) -> bool {
        self.route.needs_body()
    }

    /// The route matched.
    pub fn route(&self) -> &'s Route {
        self.route
    }

    /// The decision so far (principal, route, action), e.g. to log a body that was too large.
    pub fn reject(self, rejection: Rejection) -> Decision {
        self.decision.reject(rejection)
    }

    /// Resolves resource and context and asks Cedar. An allowed request whose `create`
    /// effect names an entity that exists (or a look-alike of one) is a conflict (409): only
    /// after the policies allowed it, so a refused client learns nothing about the entity.
    pub fn decide(self, body: Option<&[u8]>) -> Decision {
        let directory = &self.snapshot.directory;
        let decision = self.decide_policies(body);
        match decision
            .is_allowed()
            .then(|| creates_existing(directory, &decision.effects))
        {
            Some(Some(uid)) => decision.reject(Rejection::Conflict(uid)),
            _ => decision,
        }
    }

    fn decide_policies(self, body: Option<&[u8]>) -> Decision {
        let mut decision = self.decision.clone();
        let body: Option<Value> = match body.filter(|b| self.needs_body() && !b.is_empty()) {
            None => None,
            Some(bytes) => {
                if let Err(e) = &self.media {
                    return decision.reject(Rejection::UnsupportedMediaType(e.clone()));
                }
                let parsed = self.route.body.parse(bytes).and_then(|value| {
                    let shared = match (self.route.body, &value) {
                        (BodyFormat::Form, Value::Object(map)) => {
                            form::in_query(map, self.query.as_deref())
                        }
                        _ => None,
                    };
                    match shared {
                        Some(name) => Err(format!("`{name}` is in both the query and the form")),
                        None => Ok(value),
                    }
                });
                match parsed {
                    Ok(value) => Some(value),
                    Err(e) => return decision.reject(Rejection::BadRequest(BadRequest::Body(e))),
                }
            }
        };
        let principal = self.principal;
        let principal_parents = move || principal.parents();
        let inputs = Inputs {
            captures: &self.captures,
            query: Query::new(self.query.as_deref()),
            claims: &self.claims,
            body: body.as_ref(),
            principal_parents: &principal_parents,
            tls: self.tls_client.as_ref(),
        };
        let resolved = match self.route.resolve(&inputs) {
            Ok(r) => r,
            Err(e) => return decision.reject(Rejection::BadRequest(e.into())),
        };
        decision.effects = match self.route.effects(&inputs, &resolved) {
            Ok(effects) => effects,
            Err(e) => return decision.reject(Rejection::BadRequest(e.into())),
        };
        // only a request whose fields all resolved is kept: a 400 (a key in another case,
        // a missing field) is the request's fault, not the policies', and its record could
        // not be replayed as it was sent
        if self.record {
            decision.read = Some(Box::new(Read {
                claims: self.claims.clone(),
                body: body.as_ref().map(|b| self.route.read_of(b)),
                context: resolved.context.clone(),
                resource_attrs: resolved.resource_attrs.clone(),
            }));
        }
        let asking = Asking {
            snapshot: self.snapshot,
            caches: self.caches,
            principal: self.principal,
            action: &self.route.action,
            action_name: &self.route.action_name,
        };
        asking.decide(decision, resolved)
    }
}

/// A principal of the directory asking for one action: what [`Pending::decide`] and the
/// decision API (`access`) both decide through, so both read the decision cache
/// the same way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asking<'s> {
    pub snapshot: &'s Snapshot,
    pub caches: Option<&'s Caches>,
    pub principal: NodeRef<'s>,
    pub action: &'s EntityUid,
    pub action_name: &'s str,
}

impl Asking<'_> {
    /// `decision` (principal, route and action filled in) with the verdict on `resolved`:
    /// from the decision cache when it holds the exact inputs, else from [`authorize`].
    pub(crate) fn decide(self, mut decision: Decision, resolved: Resolved) -> Decision {
        decision.resource = Some(resolved.resource.clone());
        let Some(cache) = self.caches.map(|c| &c.decisions) else {
            return match self.authorize(&resolved) {
                Ok(verdicts) => decision.apply(&verdicts),
                Err(e) => decision.reject(e.into()),
            };
        };
        let key = DecisionKey {
            generation: self.snapshot.generation,
            principal: self.principal.uid(),
            action: self.action.clone(),
            resolved,
        };
        if let Some(verdicts) = cache.get(&key) {
            decision.cached = true;
            return decision.apply(&verdicts);
        }
        match self.authorize(&key.resolved) {
            Ok(verdicts) => {
                let verdicts = Arc::new(verdicts);
                let decision = decision.apply(&verdicts);
                cache.insert(key, verdicts);
                decision
            }
            Err(e) => decision.reject(e.into()),
        }
    }

    fn authorize(&self, resolved: &Resolved) -> Result<Verdicts, AuthorizeError> {
        authorize(self.snapshot, self.principal, self.action_name, resolved)
    }
}

/// Decides a resolved request for a principal of the directory: builds the entity slice and
/// the schema-checked Cedar request, and evaluates the live (and shadow) policies through
/// their indexes. `serve` and `check` reach this through [`Pending::decide`]; benches and the
/// differential tests call it directly.
///
/// # Errors
/// The request does not fit the action's schema, or an internal fault.
pub fn authorize(
    snapshot: &Snapshot,
    principal: NodeRef<'_>,
    action_name: &str,
    resolved: &Resolved,
) -> Result<Verdicts, AuthorizeError> {
    let action = snapshot
        .catalog
        .actions
        .get(action_name)
        .ok_or_else(|| InternalError::UnknownAction(action_name.to_string()))?;
    let resource = snapshot.directory.get(&resolved.resource);
    if let Some(uid) = lookalike(&snapshot.directory, resolved, resource.is_none()) {
        return Err(AuthorizeError::Lookalike(uid.to_string()));
    }
    let entities = slice(
        snapshot,
        principal,
        resource,
        &action.core_entities,
        resolved,
    )?;
    let context = Context::from_pairs(
        resolved
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.to_expr())),
    )
    .map_err(|e| AuthorizeError::Schema(e.to_string()))?;
    let principal_uid = principal.uid();
    let principal_ancestors = principal.ancestors();
    let request = Request::new(
        principal_uid.clone(),
        action.uid.clone(),
        resolved.resource.clone(),
        context,
        Some(&snapshot.catalog.schema),
    )
    .map_err(|e| AuthorizeError::Schema(e.to_string()))?;
    let resource_ancestors = resource.map(|n| n.ancestors()).unwrap_or_default();
    let decide = |policies: &Policies| {
        let buckets = policies.index.candidates(
            &principal_uid,
            &principal_ancestors,
            &action.uid,
            &resolved.resource,
            &resource_ancestors,
        );
        evaluate::evaluate(&buckets, &policies.set, &request, &entities)
    };
    Ok(Verdicts {
        live: decide(&snapshot.policies),
        shadow: snapshot.shadow.as_deref().map(decide),
    })
}

/// The entities a request can reach: principal, resource and context entities, the entities
/// their attributes name, all their ancestors, and the action with its groups.
fn slice(
    snapshot: &Snapshot,
    principal: NodeRef<'_>,
    resource: Option<NodeRef<'_>>,
    action_entities: &[CoreEntity],
    resolved: &Resolved,
) -> Result<Entities, InternalError> {
    let directory = &snapshot.directory;
    let mut slice = Slice::new(directory);
    slice.add_root(principal)?;
    match resource {
        Some(node) => slice.add_root(node)?,
        None if !resolved.resource_attrs.is_empty() => {
            for (_, v) in &resolved.resource_attrs {
                slice.add_uid(v.entity())?;
            }
            slice.entities.push(build_resource(resolved));
        }
        None => {}
    }
    for (_, v) in &resolved.context {
        slice.add_uid(v.entity())?;
    }
    slice.entities.extend(action_entities.iter().cloned());
    Ok(cedar_core::slice(slice.entities)?)
}

/// The entities one known side of a request reaches (itself, its ancestors, the entities
/// its attributes name with theirs): what a search knows before it has the other side.
#[cfg(feature = "tpe")]
pub(crate) fn reach(snapshot: &Snapshot, node: NodeRef<'_>) -> Result<Entities, InternalError> {
    let mut slice = Slice::new(&snapshot.directory);
    slice.add_root(node)?;
    Ok(cedar_core::slice(slice.entities)?)
}

/// The resource or context entity of a request that the directory does not have but
/// would have to a case-insensitive server, if any.
/// `resource_absent`: the directory does not have the resource (looked up once by the
/// caller). Runs on cache misses only: a refused request is never cached.
fn lookalike<'r>(
    directory: &Directory,
    resolved: &'r Resolved,
    resource_absent: bool,
) -> Option<&'r EntityUid> {
    let resource = Some(&resolved.resource).filter(|_| resource_absent);
    let context = resolved.context.iter().filter_map(|(_, v)| v.entity());
    resource
        .into_iter()
        .chain(context.filter(|uid| directory.get(uid).is_none()))
        .find(|uid| directory.shadows_present(uid))
}

/// Who the request is from: `Some` account, or `None` for the anonymous principal of a
/// public route (`auth = "none"`, or `"optional"` without a token).
///
/// # Errors
/// 401 for a missing or invalid token where one is read; 400 for the token query parameter
/// on a route that reads no token (iotgate forwards the query as sent, so the upstream
/// would read a credential iotgate did not decide on).
fn identify(
    verifier: &Verifier,
    headers: &http::HeaderMap,
    query: Query<'_>,
    credentials: Credentials,
    caches: Option<&Caches>,
    auth: Auth,
) -> Result<Option<Identity>, Rejection> {
    let unauthenticated = Rejection::Unauthenticated;
    if auth == Auth::None {
        let in_query = verifier
            .query_parameter()
            .is_some_and(|name| !matches!(query.get_any_case(name), Ok(None)));
        return match in_query {
            true => Err(Rejection::BadRequest(BadRequest::TokenNotRead)),
            false => Ok(None),
        };
    }
    let claims = match credentials {
        Credentials::Trusted(claims) => {
            return verifier.identity(claims).map(Some).map_err(unauthenticated)
        }
        Credentials::Token => match verifier.token(headers, query) {
            Err(AuthError::Missing) if auth == Auth::Optional => return Ok(None),
            other => other.map_err(unauthenticated)?,
        },
    };
    authenticate(verifier, &claims, caches.map(|c| &c.tokens))
        .map(Some)
        .map_err(unauthenticated)
}

/// The first entity a `create` effect names that exists already (or a look-alike of it).
fn creates_existing(directory: &Directory, effects: &[Change]) -> Option<String> {
    effects.iter().find_map(|c| {
        let Change::Create { uid, .. } = c else {
            return None;
        };
        let ty = uid.ty.parse::<cedar_policy::EntityTypeName>().ok()?;
        let cedar = EntityUid::from_type_name_and_id(ty, EntityId::new(&uid.id));
        (directory.get(&cedar).is_some() || directory.shadows_present(&cedar))
            .then(|| cedar.to_string())
    })
}

/// Verifies a token, through the token cache when there is one.
fn authenticate(
    verifier: &Verifier,
    token: &str,
    cache: Option<&TokenCache>,
) -> Result<Identity, AuthError> {
    let Some(cache) = cache else {
        return verifier.verify(token);
    };
    let keys = verifier.generation();
    if let Some(identity) = cache.get(token, keys) {
        return Ok((*identity).clone());
    }
    let identity = verifier.verify(token)?;
    let exp = crate::authn::expiry(&identity.claims);
    cache.insert(token, Arc::new(identity.clone()), exp, keys);
    Ok(identity)
}

/// A resource the directory does not have, built from the route's attributes (no parents).
fn build_resource(resolved: &Resolved) -> CoreEntity {
    let attrs = resolved
        .resource_attrs
        .iter()
        .map(|(k, v)| (SmolStr::new(k), v.to_value()));
    cedar_core::entity(resolved.resource.clone(), attrs, [])
}

/// Directory entities gathered for one request, each once.
struct Slice<'d> {
    directory: &'d Directory,
    seen: HashSet<u32>,
    entities: Vec<CoreEntity>,
}

impl<'d> Slice<'d> {
    fn new(directory: &'d Directory) -> Self {
        Slice {
            directory,
            seen: HashSet::new(),
            entities: Vec::new(),
        }
    }

    /// An entity present in the directory, once.
    fn add_index(&mut self, index: u32) -> Result<(), EntityError> {
        if self.seen.insert(index) {
            if let Some(node) = self.directory.node(index) {
                self.entities.push(node.core_entity()?);
            }
        }
        Ok(())
    }

    fn add_with_ancestors(&mut self, node: NodeRef<'d>) -> Result<(), EntityError> {
        self.add_index(node.index())?;
        for a in node.ancestor_indices() {
            self.add_index(a)?;
        }
        Ok(())
    }

    /// A root entity: itself, its ancestors, and the entities its attributes name with
    /// their ancestors.
    fn add_root(&mut self, node: NodeRef<'d>) -> Result<(), EntityError> {
        self.add_with_ancestors(node)?;
        for r in node.refs() {
            if let Some(n) = self.directory.node(r) {
                self.add_with_ancestors(n)?;
            }
        }
        Ok(())
    }

    fn add_uid(&mut self, uid: Option<&EntityUid>) -> Result<(), EntityError> {
        match uid.and_then(|u| self.directory.get(u)) {
            Some(node) => self.add_root(node),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
