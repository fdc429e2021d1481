//! The AuthZEN search endpoints: which subjects may, which resources, which actions. Every
//! candidate is decided by [`decide::decide`], the path of one evaluation, so a result is
//! exactly what an evaluation of it allows (through the proxy's decision path).
//!
//! ```text
//! request ─▶ the searched-for entity's type (its id ignored) + the inputs, complete (400)
//!   ─▶ candidates, sorted: the directory's entities of that type (subject, resource
//!      search) or the schema's actions that apply to the subject and resource types
//!   ─▶ from the page token's offset, decide each until `limit` allowed or the time bound
//!   ─▶ {"page": {"next_token", "count"}, "results"}; next_token is "" at the end
//! ```
//!
//! A page token names the snapshot generation, the offset and a digest of the request: a
//! token from another snapshot or for another request is a 400, so pages never mix two
//! versions of the policies or directory. An unknown type is an empty result.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::decide;
use super::wire::{self, Action, Entity, Question, WireError};
use crate::authz::snapshot::Snapshot;

/// What is searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Subject,
    Resource,
    Action,
}

/// Results a page holds when the request sets no `limit`, and the most it may ask for.
pub(crate) const PAGE_LIMIT: usize = 1000;
/// How long one page may decide candidates before it answers with what it found.
const TIME_BOUND: Duration = Duration::from_millis(1000);

/// A search request, read.
#[derive(Debug)]
struct Search {
    /// The question, with the searched-for member's id left empty.
    question: Question,
    /// The searched-for type (the action search has none).
    ty: String,
    limit: usize,
    token: Option<String>,
    /// The request without its page, to tie a token to it.
    digest: String,
}

/// Answers a search on `snapshot`. Candidates are decided without the decision cache: a
/// search of thousands would evict what the proxy's traffic keeps there.
///
/// # Errors
/// A request that is not a search of `target` (missing or mistyped members, a bad token).
pub(crate) fn search(
    snapshot: &Snapshot,
    target: Target,
    body: &Map<String, Value>,
    route: &str,
) -> Result<Value, WireError> {
    let search = read(target, body)?;
    let start = match &search.token {
        None => 0,
        Some(token) => offset(token, snapshot.generation, &search.digest)?,
    };
    let candidates = candidates(snapshot, target, &search);
    let started = Instant::now();
    let mut results = Vec::new();
    let mut next = candidates.len();
    for (i, candidate) in candidates.iter().enumerate().skip(start) {
        if results.len() == search.limit || started.elapsed() > TIME_BOUND {
            next = i;
            break;
        }
        let mut question = search.question.clone();
        match target {
            Target::Subject => question.subject.id.clone_from(candidate),
            Target::Resource => question.resource.id.clone_from(candidate),
            Target::Action => question.action.name.clone_from(candidate),
        }
        if decide::decide(snapshot, None, &question, route).allowed() {
            results.push(match target {
                Target::Action => json!({"name": candidate}),
                _ => json!({"type": search.ty, "id": candidate}),
            });
        }
    }
    let next_token = match next < candidates.len() {
        true => token(snapshot.generation, next, &search.digest),
        false => String::new(),
    };
    Ok(json!({
        "page": {"next_token": next_token, "count": results.len()},
        "results": results,
    }))
}

/// Every result of a search, page after page (`check --what-can`, `--who-can`).
///
/// # Errors
/// As [`search`].
pub(crate) fn every(
    snapshot: &Snapshot,
    target: Target,
    mut body: Map<String, Value>,
) -> Result<Vec<Value>, WireError> {
    let mut out = Vec::new();
    loop {
        let mut page = search(snapshot, target, &body, "check")?;
        if let Some(results) = page["results"].as_array_mut() {
            out.append(results);
        }
        match page["page"]["next_token"].as_str() {
            Some(token) if !token.is_empty() => {
                body.insert("page".into(), json!({ "token": token }));
            }
            _ => return Ok(out),
        }
    }
}

fn read(target: Target, body: &Map<String, Value>) -> Result<Search, WireError> {
    let searched = |key: &str| -> Result<String, WireError> {
        let entity = body
            .get(key)
            .ok_or_else(|| WireError::Missing(key.into()))?
            .as_object()
            .ok_or_else(|| WireError::Type(key.into(), "an object"))?;
        match entity.get("type") {
            Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
            Some(_) => Err(WireError::Type(format!("{key}.type"), "a non-empty string")),
            None => Err(WireError::Missing(format!("{key}.type"))),
        }
    };
    let entity =
        |key: &str| wire::entity_member(body, key)?.ok_or_else(|| WireError::Missing(key.into()));
    let placeholder = |ty: &str| Entity {
        ty: ty.to_string(),
        id: String::new(),
        properties: Map::new(),
    };
    let action =
        || wire::action_member(body, "action")?.ok_or_else(|| WireError::Missing("action".into()));
    let context = wire::context_member(body, "context")?.unwrap_or_default();
    let (question, ty) = match target {
        Target::Subject => {
            let ty = searched("subject")?;
            let q = Question {
                subject: placeholder(&ty),
                action: action()?,
                resource: entity("resource")?,
                context,
            };
            (q, ty)
        }
        Target::Resource => {
            let ty = searched("resource")?;
            let q = Question {
                subject: entity("subject")?,
                action: action()?,
                resource: placeholder(&ty),
                context,
            };
            (q, ty)
        }
        Target::Action => {
            let q = Question {
                subject: entity("subject")?,
                action: Action {
                    name: String::new(),
                    properties: Map::new(),
                },
                resource: entity("resource")?,
                context,
            };
            (q, String::new())
        }
    };
    let (limit, token) = page(body)?;
    let digest = digest(target, &question);
    Ok(Search {
        question,
        ty,
        limit,
        token,
        digest,
    })
}

/// `page.limit` (at most [`PAGE_LIMIT`]) and `page.token`.
fn page(body: &Map<String, Value>) -> Result<(usize, Option<String>), WireError> {
    let Some(page) = body.get("page") else {
        return Ok((PAGE_LIMIT, None));
    };
    let page = page
        .as_object()
        .ok_or_else(|| WireError::Type("page".into(), "an object"))?;
    let limit = match page.get("limit") {
        None => PAGE_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(PAGE_LIMIT).min(PAGE_LIMIT),
            _ => return Err(WireError::Type("page.limit".into(), "a positive integer")),
        },
    };
    let token = match page.get("token") {
        None => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(WireError::Type("page.token".into(), "a string")),
    };
    Ok((limit, token))
}

/// The candidates, sorted: entity ids of the searched type, or action names.
fn candidates(snapshot: &Snapshot, target: Target, search: &Search) -> Vec<String> {
    match target {
        Target::Subject | Target::Resource => decide::entity_type(snapshot, &search.ty)
            .map(|ty| {
                snapshot
                    .directory
                    .ids_of(&ty)
                    .into_iter()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        Target::Action => {
            let q = &search.question;
            let (Some(principal), Some(resource)) = (
                decide::entity_type(snapshot, &q.subject.ty),
                decide::entity_type(snapshot, &q.resource.ty),
            ) else {
                return Vec::new();
            };
            let (principal, resource) = (principal.to_string(), resource.to_string());
            let mut names: Vec<String> = snapshot
                .catalog
                .actions
                .iter()
                .filter(|(name, a)| {
                    !name.contains("::")
                        && a.principals.contains(&principal)
                        && a.resources.contains(&resource)
                })
                .map(|(name, _)| name.clone())
                .collect();
            names.sort_unstable();
            names
        }
    }
}

/// The request without its page, as a token digest (FNV-1a over its canonical JSON).
fn digest(target: Target, q: &Question) -> String {
    let text = json!([
        format!("{target:?}"),
        [&q.subject.ty, &q.subject.id, &q.subject.properties],
        [&q.action.name, &q.action.properties],
        [&q.resource.ty, &q.resource.id, &q.resource.properties],
        &q.context,
    ])
    .to_string();
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn token(generation: u64, offset: usize, digest: &str) -> String {
    format!("{generation:x}.{offset:x}.{digest}")
}

/// Where a page token continues, if it was made for this request on this snapshot.
fn offset(token: &str, generation: u64, digest: &str) -> Result<usize, WireError> {
    let bad = |why: &str| WireError::Value("page.token".into(), why.into());
    let mut parts = token.split('.');
    let (Some(made), Some(at), Some(for_request), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a token of this API"));
    };
    let made = u64::from_str_radix(made, 16).map_err(|_| bad("not a token of this API"))?;
    let at = usize::from_str_radix(at, 16).map_err(|_| bad("not a token of this API"))?;
    if made != generation {
        return Err(bad(
            "made on another version of the policies or directory: search again",
        ));
    }
    if for_request != digest {
        return Err(bad("made for another request"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_continues_only_its_own_request_on_its_own_snapshot() {
        let t = token(7, 42, "00ff");
        assert_eq!(offset(&t, 7, "00ff"), Ok(42));
        assert!(offset(&t, 8, "00ff").is_err());
        assert!(offset(&t, 7, "00fe").is_err());
        for bad in ["", "x", "7.zz.00ff", "7.2a.00ff.1"] {
            assert!(offset(bad, 7, "00ff").is_err(), "{bad}");
        }
    }
}
