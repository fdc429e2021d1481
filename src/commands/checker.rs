//! The offline decider `check` and `check --replay` share: a request described as a
//! [`Probe`] is answered by the very handler `serve` runs (`Gateway::exchange` on an offline
//! gateway: no cache, a stand-in upstream), so statuses and error codes are `serve`'s.
//!
//! ```text
//! Probe (method, uri, headers, credentials, body) ─▶ http::Request ─▶ Gateway::exchange
//!   ─▶ Answer (status, error and reason codes of the JSON body, the decision)
//! ```

use std::str::FromStr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::authz::decision::{Credentials, Decision};
use crate::authz::snapshot::Loaded;
use crate::proxy::{Gateway, TrustedClaims};

/// One request to decide, as `check` describes it.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: http::Uri,
    /// Headers (the token, when one is sent).
    pub headers: http::HeaderMap,
    /// How identity is established.
    pub credentials: Credentials,
    /// Body bytes.
    pub body: Option<Vec<u8>>,
}

impl Probe {
    /// Parses "METHOD /path?query".
    ///
    /// # Errors
    /// Not a method and an absolute path.
    pub fn parse(request: &str, credentials: Credentials) -> Result<Probe, String> {
        let (method, target) = request
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("`{request}` is not \"METHOD /path\""))?;
        let method = http::Method::from_str(method)
            .map_err(|_| format!("`{method}` is not an HTTP method"))?;
        let uri = http::Uri::from_str(target.trim())
            .map_err(|e| format!("`{target}` is not a path: {e}"))?;
        if uri.scheme().is_some() || !uri.path().starts_with('/') {
            return Err(format!("`{target}` must be a path starting with `/`"));
        }
        Ok(Probe {
            method,
            uri,
            headers: http::HeaderMap::new(),
            credentials,
            body: None,
        })
    }

    /// Sends `token` as `Authorization: Bearer` and verifies it.
    ///
    /// # Errors
    /// The token has characters a header cannot carry.
    pub fn with_token(mut self, token: &str) -> Result<Probe, String> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        self.headers.insert(http::header::AUTHORIZATION, value);
        self.credentials = Credentials::Token;
        Ok(self)
    }

    /// Sends `bytes` as the body, typed `application/json` when it is JSON (as clients of a
    /// JSON API do), else `application/x-www-form-urlencoded` (a login form).
    pub fn with_body(mut self, bytes: Vec<u8>) -> Probe {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
        let media = match json {
            true => "application/json",
            false => "application/x-www-form-urlencoded",
        };
        self.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(media),
        );
        self.body = Some(bytes);
        self
    }
}

/// A policy-level request: a Cedar request and the entities it is decided over (no route,
/// no directory).
#[derive(Debug, Clone)]
pub struct CedarProbe {
    /// The request (validated against the schema).
    pub request: cedar_policy::Request,
    /// The entities.
    pub entities: cedar_policy::Entities,
}

/// The handler `serve` runs, offline: each probe is answered by [`Gateway::exchange`] on a
/// gateway with no cache and a stand-in upstream (allowed requests get `200`), so status,
/// headers and error codes are what `serve` would answer.
#[derive(Debug)]
pub struct Checker {
    gateway: Gateway,
}

/// What `serve` would answer a probe, and the decision behind it.
#[derive(Debug)]
pub struct Answer {
    /// The status (200: forwarded).
    pub status: http::StatusCode,
    /// The `error` code of a refusal's JSON body.
    pub error: Option<String>,
    /// The `reason` code of a refusal's JSON body (what the client is told).
    pub reason: Option<String>,
    /// The decision.
    pub decision: Decision,
    /// The AuthZEN question it answered, when it reached the policies.
    pub question: Option<Value>,
}

impl Checker {
    /// A checker deciding with `loaded`.
    pub fn new(loaded: Loaded) -> Checker {
        Checker {
            gateway: Gateway::offline(loaded),
        }
    }

    /// The policy version it decides with.
    pub fn policy_version(&self) -> std::sync::Arc<str> {
        self.gateway.snapshot().policy_version.clone()
    }

    /// Decides a policy-level request with the policies `serve` would use (200 allowed,
    /// 403 denied).
    pub fn answer_cedar(&self, probe: &CedarProbe) -> Answer {
        let snapshot = self.gateway.snapshot();
        let decision = Decision::of_cedar(&snapshot, &probe.request, &probe.entities);
        Answer {
            status: match decision.is_allowed() {
                true => http::StatusCode::OK,
                false => http::StatusCode::FORBIDDEN,
            },
            error: None,
            reason: None,
            decision,
            question: None,
        }
    }

    /// Answers a probe as `serve` would.
    pub async fn answer(&self, probe: &Probe) -> Answer {
        let body = Full::new(Bytes::from(probe.body.clone().unwrap_or_default()));
        let mut request = http::Request::new(body);
        *request.method_mut() = probe.method.clone();
        *request.uri_mut() = probe.uri.clone();
        *request.headers_mut() = probe.headers.clone();
        if let Credentials::Trusted(claims) = &probe.credentials {
            request
                .extensions_mut()
                .insert(TrustedClaims(claims.clone()));
        }
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (response, decision) = self.gateway.exchange(request, peer, Decision::clone).await;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json = serde_json::from_slice::<Value>(&body).ok();
        let member = |name: &str| {
            json.as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let question = crate::access::decide::question_of(&self.gateway.snapshot(), &decision);
        Answer {
            status,
            error: member("error"),
            reason: member("reason"),
            decision,
            question,
        }
    }
}
