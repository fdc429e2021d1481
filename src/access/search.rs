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
//! A page token names the snapshot generation, the offset and a digest of the request and
//! its limit: a token from another snapshot or for another request is a 400, so pages
//! never mix two versions of the policies or directory (stricter than AuthZEN, which lets
//! results repeat or go missing across changes). An unknown type is an empty result.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

use super::decide;
use super::narrow::{self, Searched};
use super::wire::{self, Action, Entity, Question, WireError};
use crate::authz::snapshot::Snapshot;

/// What is searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/search/subject`: who may.
    Subject,
    /// `/search/resource`: on what.
    Resource,
    /// `/search/action`: what.
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
    /// `page.limit`, when the request sets one.
    limit: Option<usize>,
    token: Option<String>,
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
    let (start, limit) = match &search.token {
        None => (0, search.limit.unwrap_or(PAGE_LIMIT)),
        Some(token) => continuation(token, snapshot.generation, target, &search)?,
    };
    let digest = digest(target, &search.question, limit);
    let started = Instant::now();
    let candidates = candidates(snapshot, target, &search);
    let mut results = Vec::new();
    let mut next = candidates.len();
    for (i, candidate) in candidates.iter().enumerate().skip(start) {
        if results.len() == limit || started.elapsed() > TIME_BOUND {
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
        true => token(snapshot.generation, next, limit, &digest),
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
pub fn every(
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
    Ok(Search {
        question,
        ty,
        limit,
        token,
    })
}

/// `page.limit` (at most [`PAGE_LIMIT`]) and `page.token`.
fn page(body: &Map<String, Value>) -> Result<(Option<usize>, Option<String>), WireError> {
    let Some(page) = body.get("page") else {
        return Ok((None, None));
    };
    let page = page
        .as_object()
        .ok_or_else(|| WireError::Type("page".into(), "an object"))?;
    let limit = match page.get("limit") {
        None => None,
        Some(v) => match v.as_u64() {
            // 0 sets no limit of the caller's: the page holds what the bounds allow
            Some(0) => Some(PAGE_LIMIT),
            Some(n) => Some(usize::try_from(n).unwrap_or(PAGE_LIMIT).min(PAGE_LIMIT)),
            None => {
                return Err(WireError::Type(
                    "page.limit".into(),
                    "a non-negative integer",
                ))
            }
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
                entities(snapshot, target, search, &ty)
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
                .filter(|(_, a)| {
                    a.principals.contains(&principal) && a.resources.contains(&resource)
                })
                .map(|(name, _)| name.clone())
                .collect();
            names.sort_unstable();
            names
        }
    }
}

/// The ids of the entities of type `ty` a subject or resource search decides: those some
/// permit could allow ([`narrow`]), or every one when the question names no known side or
/// action of the profile (each is then refused as the evaluation would).
fn entities<'s>(
    snapshot: &'s Snapshot,
    target: Target,
    search: &Search,
    ty: &EntityTypeName,
) -> Vec<&'s str> {
    let q = &search.question;
    let action = snapshot.catalog.actions.get(&q.action.name);
    let known = match target {
        Target::Resource => decide::subject(snapshot, &q.subject.ty, &q.subject.id).ok(),
        _ => decide::entity_type(snapshot, &q.resource.ty)
            .map(|t| EntityUid::from_type_name_and_id(t, EntityId::new(&q.resource.id))),
    };
    let searched = match target {
        Target::Resource => Searched::Resource,
        _ => Searched::Principal,
    };
    match (known, action) {
        (Some(known), Some(action)) => {
            narrow::candidates(snapshot, searched, &known, &action.uid, ty)
        }
        _ => snapshot.directory.ids_of(ty),
    }
}

/// The request and its limit, as a token digest (FNV-1a over its canonical JSON). It keeps
/// a token from continuing another search by mistake; it is no secret: a forged token only
/// skips or repeats candidates, each still decided.
fn digest(target: Target, q: &Question, limit: usize) -> String {
    let text = json!([
        format!("{target:?}"),
        limit,
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

fn token(generation: u64, offset: usize, limit: usize, digest: &str) -> String {
    format!("{generation:x}.{offset:x}.{limit:x}.{digest}")
}

/// Where a page token continues and with which limit, if it was made for this request (and
/// limit, when the request repeats one) on this snapshot.
fn continuation(
    token: &str,
    generation: u64,
    target: Target,
    search: &Search,
) -> Result<(usize, usize), WireError> {
    let bad = |why: &str| WireError::Value("page.token".into(), why.into());
    let foreign = || bad("not a token of this API");
    let mut parts = token.split('.');
    let (Some(made), Some(at), Some(limit), Some(for_request), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(foreign());
    };
    let number = |hex: &str| u64::from_str_radix(hex, 16).map_err(|_| foreign());
    let made = number(made)?;
    let at = usize::try_from(number(at)?).map_err(|_| foreign())?;
    let limit = usize::try_from(number(limit)?).map_err(|_| foreign())?;
    if made != generation {
        return Err(bad(
            "made on another version of the policies or directory: search again",
        ));
    }
    let limit = search.limit.unwrap_or(limit);
    if for_request != digest(target, &search.question, limit) {
        return Err(bad("made for another request"));
    }
    Ok((at, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(limit: Option<usize>) -> Search {
        let entity = |ty: &str| wire::Entity {
            ty: ty.into(),
            id: "x".into(),
            properties: Map::new(),
        };
        Search {
            question: Question {
                subject: entity("user"),
                action: Action {
                    name: "read".into(),
                    properties: Map::new(),
                },
                resource: entity("record"),
                context: Map::new(),
            },
            ty: "user".into(),
            limit,
            token: None,
        }
    }

    #[test]
    fn a_token_continues_only_its_own_request_on_its_own_snapshot() {
        let asked = search(Some(2));
        let made = token(7, 42, 2, &digest(Target::Subject, &asked.question, 2));
        assert_eq!(continuation(&made, 7, Target::Subject, &asked), Ok((42, 2)));
        // the follow-up may leave the limit out: the token's holds
        assert_eq!(
            continuation(&made, 7, Target::Subject, &search(None)),
            Ok((42, 2))
        );
        assert!(continuation(&made, 8, Target::Subject, &asked).is_err());
        assert!(continuation(&made, 7, Target::Resource, &asked).is_err());
        assert!(continuation(&made, 7, Target::Subject, &search(Some(3))).is_err());
        for bad in ["", "x", "7.zz.2.00ff", "7.2a.2.00ff.1"] {
            assert!(
                continuation(bad, 7, Target::Subject, &asked).is_err(),
                "{bad}"
            );
        }
    }
}
