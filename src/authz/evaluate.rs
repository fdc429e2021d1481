//! Evaluating the candidate policy sets of one request and combining them into a verdict.
//!
//! ```text
//! candidate buckets (model::index) + Cedar request + entity slice
//!   ──is_authorized per bucket──▶ satisfied forbids, satisfied permits, errors
//!   ──combine──▶ Verdict { allowed: no forbid AND a permit AND no error, determining
//!                policies, their @reasons, the first determining forbid's @code, errors }
//! ```
//!
//! Why the combination equals evaluating the whole set is explained in `model::index`.

use cedar_policy::{Authorizer, Decision as CedarDecision, Entities, PolicyId, PolicySet, Request};

/// The outcome of evaluating one policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed (Cedar allowed and reported no error).
    pub allowed: bool,
    /// Determining policy ids, sorted.
    pub policies: Vec<String>,
    /// `@reason`s of the determining policies (`id: text`).
    pub reasons: Vec<String>,
    /// The `@code` of the first determining forbid (by id) that has one, with its
    /// `@reason`: what a refused client is told.
    pub code: Option<(String, Option<String>)>,
    /// Evaluation errors.
    pub errors: Vec<String>,
}

/// Live and (when configured) shadow verdicts of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// The enforced one.
    pub live: Verdict,
    /// The candidate policy set's, never enforced.
    pub shadow: Option<Verdict>,
}

/// Evaluates the candidate buckets and combines them as one policy set would decide.
/// `all` is the whole set, for the `@reason` annotations of the determining policies.
pub(crate) fn evaluate(
    buckets: &[&PolicySet],
    all: &PolicySet,
    request: &Request,
    entities: &Entities,
) -> Verdict {
    let authorizer = Authorizer::new();
    let (mut forbids, mut permits, mut errors): (Vec<PolicyId>, Vec<PolicyId>, Vec<String>) =
        Default::default();
    for bucket in buckets {
        let response = authorizer.is_authorized(request, bucket, entities);
        errors.extend(response.diagnostics().errors().map(ToString::to_string));
        let reasons = response.diagnostics().reason().cloned();
        match response.decision() {
            CedarDecision::Allow => permits.extend(reasons),
            CedarDecision::Deny => forbids.extend(reasons),
        }
    }
    errors.sort();
    forbids.sort();
    permits.sort();
    let cedar_allows = forbids.is_empty() && !permits.is_empty();
    let allowed = cedar_allows && errors.is_empty();
    let ids = if !forbids.is_empty() {
        forbids
    } else if allowed {
        permits
    } else {
        Vec::new()
    };
    let reasons = if allowed {
        Vec::new()
    } else {
        ids.iter()
            .filter_map(|id| all.annotation(id, "reason").map(|r| format!("{id}: {r}")))
            .collect()
    };
    let code = match allowed {
        true => None,
        false => ids.iter().find_map(|id| {
            let code = all.annotation(id, "code")?;
            Some((
                code.to_string(),
                all.annotation(id, "reason").map(String::from),
            ))
        }),
    };
    Verdict {
        allowed,
        policies: ids.iter().map(ToString::to_string).collect(),
        reasons,
        code,
        errors,
    }
}
