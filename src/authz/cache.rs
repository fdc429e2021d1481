//! Caches of the serving path: decisions and verified tokens (moka, bounded, with TTL).
//!
//! ```text
//! DecisionKey { snapshot generation, principal, action, resolved (resource, resource
//!   attributes, every context value) } ──▶ Verdicts (live, shadow)
//! whole token string ──▶ Identity, expiring at min(ttl, token exp)
//! ```
//!
//! Keys are the exact inputs of a decision, never a lossy digest, and carry the snapshot
//! generation: a cached decision cannot answer another request or another policy version.
//! `check` never uses these caches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy::EntityUid;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::authn::Identity;
use crate::authz::evaluate::{Verdict, Verdicts};
use crate::config::CacheConfig;
use crate::model::routes::Resolved;

/// Everything a decision depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    /// The snapshot that decides (new on every load).
    pub generation: u64,
    /// Principal.
    pub principal: EntityUid,
    /// Action.
    pub action: EntityUid,
    /// Resource, its route-built attributes and the whole context.
    pub resolved: Resolved,
}

/// Hit, miss and eviction counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
    /// Entries dropped for size or age.
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
    /// Estimated bytes held now (decision cache; 0 for the token cache).
    pub bytes: u64,
}

impl Counters {
    fn record(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self, entries: u64, bytes: u64) -> Stats {
        Stats {
            bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
        }
    }

    fn listener<K, V>(&self) -> impl Fn(Arc<K>, V, RemovalCause) + Send + Sync + 'static {
        let evictions = self.evictions.clone();
        move |_, _, cause| {
            if cause.was_evicted() {
                evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The decision cache.
#[derive(Debug)]
pub struct DecisionCache {
    cache: Option<Cache<DecisionKey, Arc<Verdicts>>>,
    max_entry_bytes: u64,
    counters: Counters,
}

/// Estimated bytes held by one cached decision: the structs plus every string they own.
fn estimated_bytes(key: &DecisionKey, verdicts: &Verdicts) -> u64 {
    use crate::model::routes::field::FieldValue;
    const UID: usize = std::mem::size_of::<EntityUid>();
    let uid = |u: &EntityUid| UID + u.id().unescaped().len();
    let value = |v: &FieldValue| match v {
        FieldValue::Str(s) => s.len(),
        FieldValue::Long(_) | FieldValue::Bool(_) => 0,
        FieldValue::Entity(e) => uid(e),
        FieldValue::Set(items) => items.iter().map(|i| i.len() + 32).sum(),
    };
    let fields = |f: &[(String, FieldValue)]| -> usize {
        f.iter()
            .map(|(k, v)| k.len() + value(v) + std::mem::size_of::<(String, FieldValue)>())
            .sum()
    };
    let strings = |v: &[String]| -> usize { v.iter().map(|s| s.len() + 24).sum() };
    let verdict = |v: &Verdict| strings(&v.reasons) + strings(&v.explanations) + strings(&v.errors);
    let bytes = std::mem::size_of::<DecisionKey>()
        + std::mem::size_of::<Verdicts>()
        + uid(&key.principal)
        + uid(&key.resolved.resource)
        + fields(&key.resolved.resource_attrs)
        + fields(&key.resolved.context)
        + verdict(&verdicts.live)
        + verdicts.shadow.as_ref().map_or(0, verdict);
    bytes as u64
}

impl DecisionCache {
    /// A cache per `[cache]` (`max_entries = 0` disables it). It holds at most
    /// `max_bytes` (estimated) and `max_entries` decisions: each entry weighs its estimated
    /// size, and at least `max_bytes / max_entries`.
    pub fn new(config: &CacheConfig) -> DecisionCache {
        let counters = Counters::default();
        let floor = (config.max_bytes / config.max_entries.max(1)).max(1);
        let cache =
            (config.max_entries > 0 && config.max_bytes > 0 && !config.ttl.is_zero()).then(|| {
                Cache::builder()
                    .max_capacity(config.max_bytes)
                    .weigher(move |k: &DecisionKey, v: &Arc<Verdicts>| {
                        let weight = estimated_bytes(k, v).max(floor);
                        u32::try_from(weight).unwrap_or(u32::MAX)
                    })
                    .time_to_live(config.ttl)
                    .eviction_listener(counters.listener())
                    .build()
            });
        DecisionCache {
            cache,
            max_entry_bytes: config.max_entry_bytes,
            counters,
        }
    }

    /// The cached verdicts for a key.
    pub fn get(&self, key: &DecisionKey) -> Option<Arc<Verdicts>> {
        let found = self.cache.as_ref()?.get(key);
        self.counters.record(found.is_some());
        found
    }

    /// Remembers verdicts, unless the entry is estimated above `max_entry_bytes`.
    pub fn insert(&self, key: DecisionKey, verdicts: Arc<Verdicts>) {
        if let Some(c) = &self.cache {
            if estimated_bytes(&key, &verdicts) <= self.max_entry_bytes {
                c.insert(key, verdicts);
            }
        }
    }

    /// Estimated bytes held now (what `max_bytes` bounds).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.weighted_size()
        })
    }

    /// Drops everything (after a snapshot swap: old generations can never match again).
    pub fn clear(&self) {
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let entries = self.cache.as_ref().map_or(0, Cache::entry_count);
        self.counters.stats(entries, self.weighted_bytes())
    }
}

/// A verified identity and when its token expires.
#[derive(Debug, Clone)]
struct Verified {
    identity: Arc<Identity>,
    until: Option<Instant>,
}

/// Per-entry expiry: the cache TTL, but never past the token's `exp`.
struct UntilExp {
    ttl: Duration,
}

impl moka::Expiry<Arc<str>, Verified> for UntilExp {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        v: &Verified,
        created: Instant,
    ) -> Option<Duration> {
        let left = v
            .until
            .map_or(self.ttl, |until| until.saturating_duration_since(created));
        Some(left.min(self.ttl))
    }
}

/// The verified-token cache, keyed by the whole token string.
pub struct TokenCache {
    cache: Option<Cache<Arc<str>, Verified>>,
    counters: Counters,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl TokenCache {
    /// A cache per `[cache]`.
    pub fn new(config: &CacheConfig) -> TokenCache {
        let counters = Counters::default();
        let cache = (config.max_entries > 0 && !config.ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(UntilExp { ttl: config.ttl })
                .eviction_listener(counters.listener())
                .build()
        });
        TokenCache { cache, counters }
    }

    /// The identity of an already verified token, while its `exp` has not passed.
    pub fn get(&self, token: &str) -> Option<Arc<Identity>> {
        let cache = self.cache.as_ref()?;
        let found = cache
            .get(token)
            .filter(|v| v.until.is_none_or(|until| Instant::now() < until))
            .map(|v| v.identity);
        self.counters.record(found.is_some());
        found
    }

    /// Remembers a verified token until its `exp` (seconds since the epoch), if it has one.
    pub fn insert(&self, token: &str, identity: Arc<Identity>, exp: Option<u64>) {
        let Some(cache) = &self.cache else { return };
        let now_s = crate::authn::now();
        let until = match exp {
            Some(exp) if exp <= now_s => return,
            Some(exp) => Some(Instant::now() + Duration::from_secs(exp - now_s)),
            None => None,
        };
        cache.insert(Arc::from(token), Verified { identity, until });
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let entries = self.cache.as_ref().map_or(0, Cache::entry_count);
        self.counters.stats(entries, 0)
    }
}

/// The caches `serve` decides with.
#[derive(Debug)]
pub struct Caches {
    /// Verified tokens.
    pub tokens: TokenCache,
    /// Decisions.
    pub decisions: DecisionCache,
}

impl Caches {
    /// Both caches per `[cache]`.
    pub fn new(config: &CacheConfig) -> Caches {
        Caches {
            tokens: TokenCache::new(config),
            decisions: DecisionCache::new(config),
        }
    }
}

#[cfg(test)]
mod tests;
