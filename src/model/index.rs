//! The policy index: per request, evaluate only the policies whose scope can match.
//!
//! ```text
//! load:    each policy ──scope pins──▶ one bucket (principal side, resource side)
//!          side = Any (unpinned or `is T`) | Eq(uid) (`== uid`) | In(uid) (`in uid`, `is T in uid`)
//!          a bucket of more than four policies: one PolicySet per concrete action of the
//!          schema, holding the policies whose action constraint admits it (`==`, `in [..]`
//!          through the action groups, or unconstrained); a smaller one: a single set
//! request: principal sides {Any, Eq(p), In(p), In(a) for a in ancestors(p)}
//!        × resource sides  {Any, Eq(r), In(r), In(a) for a in ancestors(r)}
//!          ──present buckets only, the request action's set──▶ `authz::evaluate` runs
//!          each on the same request and entity slice and combines them into a Verdict
//! ```
//!
//! Why the combination equals evaluating the whole set: Cedar evaluates every policy on its
//! own. A policy outside the looked-up sets has a scope pin the request cannot satisfy
//! (`principal in E` holds only when E is the principal or one of its ancestors — the same
//! ancestors Cedar computes over the full directory; `action in G` only when G is the action
//! or one of its groups in the schema), so it is neither satisfied nor erroring: scope
//! constraints are checked before any condition is evaluated.
//! Over the buckets: any satisfied forbid denies, and the reasons are all satisfied forbids;
//! otherwise any satisfied permit allows, and the reasons are all satisfied permits; otherwise
//! the default deny has no reason. Errors are the union, and any error denies (fail closed).
//! The differential tests check this against plain Cedar on random data.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};

use crate::model::schema::Catalog;

/// A policy that could not join its bucket's set (it was in the validated set already, so
/// this does not happen in practice).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bucket cannot hold its policies: {0}")]
pub struct IndexError(String);

/// What a policy scope pins on one side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    /// Nothing (or only a type, which Cedar checks).
    Any,
    /// `== uid`.
    Eq(EntityUid),
    /// `in uid` (or `is T in uid`).
    In(EntityUid),
}

/// Where a policy is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BucketKey {
    /// The principal pin.
    pub principal: Side,
    /// The resource pin.
    pub resource: Side,
}

/// Buckets with at most this many policies keep one set for every action: splitting them
/// saves nothing at evaluation and costs memory and load time.
const SPLIT_ABOVE: usize = 4;

/// The policies of one bucket.
#[derive(Debug, Clone)]
enum Bucket {
    /// Few policies: one set, whatever the action (Cedar checks the action scope).
    All(Box<PolicySet>),
    /// Many: one set per concrete action, holding the policies that admit it.
    ByAction(HashMap<EntityUid, PolicySet>),
}

impl Bucket {
    /// The policies of the bucket that can apply to `action`.
    fn set_for(&self, action: &EntityUid) -> Option<&PolicySet> {
        match self {
            Bucket::All(set) => Some(set),
            Bucket::ByAction(sets) => sets.get(action),
        }
    }
}

/// Policies grouped by their scope pins, then (for big buckets) by the action they admit.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    buckets: HashMap<BucketKey, Bucket>,
    principal_sides: HashSet<Side>,
    resource_sides: HashSet<Side>,
}

fn principal_side(c: PrincipalConstraint) -> Side {
    match c {
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => Side::Any,
        PrincipalConstraint::Eq(uid) => Side::Eq(uid),
        PrincipalConstraint::In(uid) | PrincipalConstraint::IsIn(_, uid) => Side::In(uid),
    }
}

fn resource_side(c: ResourceConstraint) -> Side {
    match c {
        ResourceConstraint::Any | ResourceConstraint::Is(_) => Side::Any,
        ResourceConstraint::Eq(uid) => Side::Eq(uid),
        ResourceConstraint::In(uid) | ResourceConstraint::IsIn(_, uid) => Side::In(uid),
    }
}

impl PolicyIndex {
    /// Buckets every policy of the set; `catalog` gives the schema's actions and groups.
    ///
    /// # Errors
    /// A policy could not be added to its set (it was already in the validated set, so this
    /// does not happen in practice).
    pub fn build(set: &PolicySet, catalog: &Catalog) -> Result<PolicyIndex, IndexError> {
        let mut grouped: HashMap<BucketKey, Vec<Policy>> = HashMap::new();
        for p in set.policies() {
            let key = BucketKey {
                principal: principal_side(p.principal_constraint()),
                resource: resource_side(p.resource_constraint()),
            };
            grouped.entry(key).or_default().push(p.clone());
        }
        let admits = Admits::new(catalog);
        let mut index = PolicyIndex::default();
        for (key, policies) in grouped {
            let bucket = if policies.len() <= SPLIT_ABOVE {
                Bucket::All(Box::new(
                    PolicySet::from_policies(policies).map_err(|e| IndexError(e.to_string()))?,
                ))
            } else {
                let mut by_action: HashMap<EntityUid, Vec<Policy>> = HashMap::new();
                for p in policies {
                    for action in admits.actions(&p.action_constraint()) {
                        by_action.entry(action.clone()).or_default().push(p.clone());
                    }
                }
                let mut sets = HashMap::with_capacity(by_action.len());
                for (action, policies) in by_action {
                    sets.insert(
                        action,
                        PolicySet::from_policies(policies)
                            .map_err(|e| IndexError(e.to_string()))?,
                    );
                }
                Bucket::ByAction(sets)
            };
            index.principal_sides.insert(key.principal.clone());
            index.resource_sides.insert(key.resource.clone());
            index.buckets.insert(key, bucket);
        }
        Ok(index)
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether there is no policy at all.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The policy sets that can apply to a principal, action and resource (principal and
    /// resource given with their ancestors).
    pub fn candidates<'a>(
        &'a self,
        principal: &EntityUid,
        principal_ancestors: &[EntityUid],
        action: &EntityUid,
        resource: &EntityUid,
        resource_ancestors: &[EntityUid],
    ) -> Vec<&'a PolicySet> {
        let principals = sides(principal, principal_ancestors, &self.principal_sides);
        let resources = sides(resource, resource_ancestors, &self.resource_sides);
        let mut out = Vec::new();
        for p in &principals {
            for r in &resources {
                let key = BucketKey {
                    principal: p.clone(),
                    resource: r.clone(),
                };
                out.extend(self.buckets.get(&key).and_then(|b| b.set_for(action)));
            }
        }
        out
    }
}

/// The side of a request a search knows (the other is searched for).
#[derive(Debug, Clone, Copy)]
pub enum Known<'a> {
    /// The principal, with its ancestors (a resource search).
    Principal(&'a EntityUid, &'a [EntityUid]),
    /// The resource, with its ancestors (a subject search).
    Resource(&'a EntityUid, &'a [EntityUid]),
}

impl PolicyIndex {
    /// The policy sets that can apply to an action when one side of the request is known:
    /// those whose pin on that side it satisfies, whatever they pin on the other.
    pub fn candidates_for(&self, known: Known<'_>, action: &EntityUid) -> Vec<&PolicySet> {
        let matching = match known {
            Known::Principal(uid, ancestors) => sides(uid, ancestors, &self.principal_sides),
            Known::Resource(uid, ancestors) => sides(uid, ancestors, &self.resource_sides),
        };
        let mut out = Vec::new();
        for (key, bucket) in &self.buckets {
            let side = match known {
                Known::Principal(..) => &key.principal,
                Known::Resource(..) => &key.resource,
            };
            if matching.contains(side) {
                out.extend(bucket.set_for(action));
            }
        }
        out
    }
}

/// Which concrete actions of the schema an action constraint admits.
struct Admits<'c> {
    all: Vec<&'c EntityUid>,
    /// uid an `action in [...]` may name → the concrete actions it reaches (itself and the
    /// actions it is a group of).
    reaching: HashMap<&'c EntityUid, Vec<&'c EntityUid>>,
}

impl<'c> Admits<'c> {
    fn new(catalog: &'c Catalog) -> Self {
        let mut reaching: HashMap<&EntityUid, Vec<&EntityUid>> = HashMap::new();
        for action in catalog.actions.values() {
            for group in &action.entity_uids {
                reaching.entry(group).or_default().push(&action.uid);
            }
        }
        Admits {
            all: catalog.actions.values().map(|a| &a.uid).collect(),
            reaching,
        }
    }

    fn actions(&self, constraint: &ActionConstraint) -> HashSet<&'c EntityUid> {
        match constraint {
            ActionConstraint::Any => self.all.iter().copied().collect(),
            ActionConstraint::Eq(a) => self.all.iter().copied().filter(|x| *x == a).collect(),
            ActionConstraint::In(list) => list
                .iter()
                .filter_map(|l| self.reaching.get(l))
                .flatten()
                .copied()
                .collect(),
        }
    }
}

/// The sides an entity can satisfy, keeping only those some policy uses.
fn sides(uid: &EntityUid, ancestors: &[EntityUid], used: &HashSet<Side>) -> Vec<Side> {
    let mut out = Vec::with_capacity(3 + ancestors.len());
    let mut add = |s: Side| {
        if used.contains(&s) {
            out.push(s);
        }
    };
    add(Side::Any);
    add(Side::Eq(uid.clone()));
    add(Side::In(uid.clone()));
    for a in ancestors {
        add(Side::In(a.clone()));
    }
    out
}
