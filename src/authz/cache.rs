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

/// A moka cache (none when caching is off) with its hit, miss and eviction counters: what
/// both caches share.
struct Counted<K, V> {
    cache: Option<Cache<K, V>>,
    counters: Counters,
}

impl<K, V> Counted<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache configured by `build` (capacity, weigher, expiry), when `on`.
    fn new(on: bool, build: impl FnOnce(CacheBuilder<K, V>) -> CacheBuilder<K, V>) -> Self {
        let counters = Counters::default();
        let cache =
            on.then(|| build(Cache::builder().eviction_listener(counters.listener())).build());
        Counted { cache, counters }
    }

    /// The value of `key` that `fresh` accepts, counted as a hit or a miss.
    fn get<Q>(&self, key: &Q, fresh: impl Fn(&V) -> bool) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let found = self.cache.as_ref()?.get(key).filter(|v| fresh(v));
        self.counters.record(found.is_some());
        found
    }

    /// Counters, entries and `bytes`.
    fn stats(&self, bytes: u64) -> Stats {
        let entries = self.cache.as_ref().map_or(0, Cache::entry_count);
        self.counters.stats(entries, bytes)
    }
}

/// The builder both caches start from.
type CacheBuilder<K, V> = moka::sync::CacheBuilder<K, V, Cache<K, V>>;

/// The decision cache.
pub struct DecisionCache {
    cached: Counted<DecisionKey, Arc<Verdicts>>,
    max_entry_bytes: u64,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("stats", &self.stats())
            .finish()
    }
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
    let code = |v: &Verdict| -> usize {
        v.code
            .as_ref()
            .map_or(0, |(c, m)| c.len() + m.as_ref().map_or(0, String::len) + 48)
    };
    let verdict =
        |v: &Verdict| strings(&v.policies) + strings(&v.reasons) + strings(&v.errors) + code(v);
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
        let floor = (config.max_bytes / config.max_entries.max(1)).max(1);
        let on = config.max_entries > 0 && config.max_bytes > 0 && !config.ttl.is_zero();
        let cached = Counted::new(on, |builder| {
            builder
                .max_capacity(config.max_bytes)
                .weigher(move |k: &DecisionKey, v: &Arc<Verdicts>| {
                    let weight = estimated_bytes(k, v).max(floor);
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .time_to_live(config.ttl)
        });
        DecisionCache {
            cached,
            max_entry_bytes: config.max_entry_bytes,
        }
    }

    /// The cached verdicts for a key.
    pub fn get(&self, key: &DecisionKey) -> Option<Arc<Verdicts>> {
        self.cached.get(key, |_| true)
    }

    /// Remembers verdicts, unless the entry is estimated above `max_entry_bytes`.
    pub fn insert(&self, key: DecisionKey, verdicts: Arc<Verdicts>) {
        if let Some(c) = &self.cached.cache {
            if estimated_bytes(&key, &verdicts) <= self.max_entry_bytes {
                c.insert(key, verdicts);
            }
        }
    }

    /// Estimated bytes held now (what `max_bytes` bounds).
    pub fn weighted_bytes(&self) -> u64 {
        self.cached.cache.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.weighted_size()
        })
    }

    /// Drops everything (after a snapshot swap: old generations can never match again).
    pub fn clear(&self) {
        if let Some(c) = &self.cached.cache {
            c.invalidate_all();
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.cached.stats(self.weighted_bytes())
    }
}

/// A verified identity and when its token expires.
#[derive(Debug, Clone)]
struct Verified {
    identity: Arc<Identity>,
    until: Option<Instant>,
    /// The verifier's key generation it was verified under.
    keys: u64,
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
    cached: Counted<Arc<str>, Verified>,
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
        let on = config.max_entries > 0 && !config.ttl.is_zero();
        let cached = Counted::new(on, |builder| {
            builder
                .max_capacity(config.max_entries)
                .expire_after(UntilExp { ttl: config.ttl })
        });
        TokenCache { cached }
    }

    /// The identity of an already verified token, while its `exp` has not passed and the
    /// keys (generation `keys`) are those it was verified with.
    pub fn get(&self, token: &str, keys: u64) -> Option<Arc<Identity>> {
        let fresh =
            |v: &Verified| v.keys == keys && v.until.is_none_or(|until| Instant::now() < until);
        self.cached.get(token, fresh).map(|v| v.identity)
    }

    /// Remembers a token verified under key generation `keys` until its `exp` (seconds
    /// since the epoch), if it has one.
    pub fn insert(&self, token: &str, identity: Arc<Identity>, exp: Option<u64>, keys: u64) {
        let Some(cache) = &self.cached.cache else {
            return;
        };
        let now_s = crate::authn::now();
        let until = match exp {
            Some(exp) if exp <= now_s => return,
            Some(exp) => Some(Instant::now() + Duration::from_secs(exp - now_s)),
            None => None,
        };
        cache.insert(
            Arc::from(token),
            Verified {
                identity,
                until,
                keys,
            },
        );
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.cached.stats(0)
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
