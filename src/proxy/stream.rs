//! Open WebSocket streams follow permission changes: a stream authorized at its upgrade is
//! decided again whenever a new snapshot serves (policy reload, directory change) and when
//! its token expires; one no longer allowed is closed.
//!
//! ```text
//! upgrade allowed ──Watch::new (the request's method, target, headers)──▶ tunnel task
//! Gateway::swap ──watch channel──▶ each stream's task: begin + decide on the new snapshot
//!     (its own task: thousands of streams never stall a reload)
//!   still allowed: keep copying │ refused, or exp passed: WebSocket close 1008 "policy
//!   violation: <reason>" to the client, the upstream connection dropped, counted and logged
//! ```

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::authn::Verifier;
use crate::authz::decision::{self, Credentials, Outcome, RequestHead};
use crate::authz::snapshot::Snapshot;

/// WebSocket close code "policy violation" (RFC 6455 §7.4.1).
pub(crate) const POLICY_VIOLATION: u16 = 1008;

/// What a stream needs to be decided again.
pub(crate) struct Watch {
    snapshots: Arc<ArcSwap<Snapshot>>,
    changes: tokio::sync::watch::Receiver<u64>,
    verifier: Verifier,
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    forwards_cookies: bool,
    /// When its token expires (seconds since the epoch).
    expires: Option<u64>,
    /// Counts each decision again.
    redecided: Arc<std::sync::atomic::AtomicU64>,
}

impl Watch {
    pub(crate) fn new(
        snapshots: Arc<ArcSwap<Snapshot>>,
        changes: tokio::sync::watch::Receiver<u64>,
        verifier: Verifier,
        parts: &http::request::Parts,
        forwards_cookies: bool,
        redecided: Arc<std::sync::atomic::AtomicU64>,
    ) -> Watch {
        let token = verifier
            .token(
                &parts.headers,
                crate::request::uri::Query::new(parts.uri.query()),
            )
            .ok()
            .map(|t| t.into_owned());
        let expires = token
            .and_then(|t| verifier.verify(&t).ok())
            .and_then(|identity| crate::authn::expiry(&identity.claims));
        Watch {
            snapshots,
            changes,
            verifier,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            forwards_cookies,
            expires,
            redecided,
        }
    }

    /// Completes, with the reason, once the stream is no longer allowed.
    pub(crate) async fn revoked(mut self) -> String {
        loop {
            let expiry = async {
                match self.expires {
                    Some(exp) => {
                        let left = exp.saturating_sub(crate::authn::now());
                        tokio::time::sleep(std::time::Duration::from_secs(left)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // the gateway is gone; the connection ends with it
                        std::future::pending::<()>().await;
                    }
                    let snapshot = self.snapshots.load_full();
                    let refused = self.refused(&snapshot);
                    self.redecided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(reason) = refused {
                        return reason;
                    }
                }
                () = expiry => return "token expired".to_string(),
            }
        }
    }

    /// Why the stream's request is refused on `snapshot`, if it is.
    fn refused(&self, snapshot: &Snapshot) -> Option<String> {
        let head = RequestHead {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            has_body: false,
            forwards_cookies: self.forwards_cookies,
            tls_client: None,
        };
        let decision =
            match decision::begin(snapshot, &self.verifier, head, Credentials::Token, None) {
                Err(refused) => *refused,
                Ok(pending) => pending.decide(None),
            };
        match &decision.outcome {
            Outcome::Allow => None,
            Outcome::Reject(r) => Some(crate::proxy::response::rejection_reason(r).to_string()),
        }
    }
}

/// A server-to-client WebSocket close frame (unmasked) with `code` and a reason cut to fit
/// the 125-byte control frame limit.
pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut reason = format!("policy violation: {reason}");
    while reason.len() > 123 {
        reason.pop();
    }
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_fit_a_control_frame() {
        let frame = close_frame(POLICY_VIOLATION, "account_disabled");
        assert_eq!(&frame[..4], &[0x88, frame.len() as u8 - 2, 0x03, 0xF0]);
        assert_eq!(&frame[4..], b"policy violation: account_disabled");
        let long = close_frame(POLICY_VIOLATION, &"x".repeat(500));
        assert_eq!(long.len(), 2 + 125);
        assert_eq!(long[1], 125);
    }
}
