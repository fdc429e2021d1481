use std::str::FromStr;
use std::time::Duration;

use super::*;
use crate::model::routes::field::FieldValue;

fn config(entries: u64, ttl: u64) -> CacheConfig {
    CacheConfig {
        max_entries: entries,
        ttl: Duration::from_secs(ttl),
        max_bytes: 64 << 20,
        max_entry_bytes: 16 << 10,
    }
}

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

fn key(generation: u64, context: Vec<(&str, FieldValue)>) -> DecisionKey {
    DecisionKey {
        generation,
        principal: uid(r#"T::User::"bob""#),
        action: uid(r#"T::Action::"read""#),
        resolved: Resolved {
            resource: uid(r#"T::Device::"d1""#),
            resource_attrs: vec![],
            context: context
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        },
    }
}

fn verdicts(allowed: bool) -> Arc<Verdicts> {
    Arc::new(Verdicts {
        live: Verdict {
            allowed,
            policies: vec!["p".into()],
            reasons: vec![],
            code: None,
            errors: vec![],
        },
        shadow: None,
    })
}

#[test]
fn keys_differ_when_any_input_differs() {
    let cache = DecisionCache::new(&config(100, 60));
    let base = key(
        1,
        vec![
            ("kind", FieldValue::Str("user".into())),
            ("n", FieldValue::Long(1)),
        ],
    );
    cache.insert(base.clone(), verdicts(true));
    assert!(cache.get(&base).unwrap().live.allowed);
    let variants = [
        key(
            2,
            vec![
                ("kind", FieldValue::Str("user".into())),
                ("n", FieldValue::Long(1)),
            ],
        ),
        key(
            1,
            vec![
                ("kind", FieldValue::Str("device".into())),
                ("n", FieldValue::Long(1)),
            ],
        ),
        key(
            1,
            vec![
                ("kind", FieldValue::Str("user".into())),
                ("n", FieldValue::Long(2)),
            ],
        ),
        key(1, vec![("kind", FieldValue::Str("user".into()))]),
        key(
            1,
            vec![
                ("kind", FieldValue::Str("user".into())),
                ("n", FieldValue::Str("1".into())),
            ],
        ),
        key(
            1,
            vec![
                ("kind", FieldValue::Str("user".into())),
                ("m", FieldValue::Long(1)),
            ],
        ),
        DecisionKey {
            principal: uid(r#"T::User::"eve""#),
            ..base.clone()
        },
        DecisionKey {
            action: uid(r#"T::Action::"write""#),
            ..base.clone()
        },
        DecisionKey {
            resolved: Resolved {
                resource: uid(r#"T::Device::"d2""#),
                ..base.resolved.clone()
            },
            ..base.clone()
        },
        DecisionKey {
            resolved: Resolved {
                resource_attrs: vec![("owner".into(), FieldValue::Entity(uid(r#"T::User::"x""#)))],
                ..base.resolved.clone()
            },
            ..base.clone()
        },
    ];
    for v in &variants {
        assert_ne!(v, &base);
        assert!(
            cache.get(v).is_none(),
            "{v:?} hit the entry of another request"
        );
    }
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (1, variants.len() as u64));
    cache.clear();
    assert!(cache.get(&base).is_none());
}

#[test]
fn the_decision_cache_is_bounded_in_bytes_and_skips_huge_entries() {
    let config = CacheConfig {
        max_entries: 1_000_000,
        ttl: Duration::from_secs(60),
        max_bytes: 64 << 10,
        max_entry_bytes: 4 << 10,
    };
    let cache = DecisionCache::new(&config);
    // a request with a big context (a long device_resource) is never cached
    let huge = key(
        1,
        vec![("device_resource", FieldValue::Str("x".repeat(8 << 10)))],
    );
    cache.insert(huge.clone(), verdicts(true));
    assert!(cache.get(&huge).is_none());
    // many small ones: the estimate held stays under max_bytes, whatever the entry count
    for i in 0..5_000 {
        let k = key(
            1,
            vec![
                ("n", FieldValue::Long(i)),
                ("pad", FieldValue::Str("y".repeat(200))),
            ],
        );
        cache.insert(k, verdicts(true));
    }
    let bytes = cache.weighted_bytes();
    assert!(bytes > 0 && bytes <= config.max_bytes, "{bytes}");
    assert!(cache.stats().entries < 5_000);
    assert_eq!(cache.stats().bytes, bytes);
}

#[test]
fn a_zero_sized_cache_is_off() {
    let cache = DecisionCache::new(&config(0, 60));
    let k = key(1, vec![]);
    cache.insert(k.clone(), verdicts(true));
    assert!(cache.get(&k).is_none());
    let tokens = TokenCache::new(&config(0, 60));
    tokens.insert("t", Arc::new(identity()), None, 0);
    assert!(tokens.get("t", 0).is_none());
}

fn identity() -> Identity {
    Identity {
        principal: "bob".into(),
        claims: serde_json::Map::new(),
    }
}

#[test]
fn tokens_never_outlive_their_exp() {
    let tokens = TokenCache::new(&config(100, 3600));
    let now = crate::authn::now();
    tokens.insert("long", Arc::new(identity()), Some(now + 3600), 0);
    tokens.insert("expired", Arc::new(identity()), Some(now - 1), 0);
    tokens.insert("short", Arc::new(identity()), Some(now + 1), 0);
    assert!(tokens.get("long", 0).is_some());
    assert!(
        tokens.get("expired", 0).is_none(),
        "an expired token must not be cached"
    );
    assert!(tokens.get("short", 0).is_some());
    std::thread::sleep(Duration::from_millis(2100));
    assert!(
        tokens.get("short", 0).is_none(),
        "a cached token outlived its exp"
    );
    assert!(tokens.get("long", 0).is_some());
    assert!(tokens.get("long-other", 0).is_none());
    assert!(
        tokens.get("long", 1).is_none(),
        "a token verified with keys that rotated since is verified again"
    );
}
