//! Decision latency: iotgate against plain Cedar over the same data, side by side.
//!
//! For 10 / 1,000 / 10,000 / 100,000 project policies and 10,000 / 1,000,000 directory
//! entities (a Thinger-like world from `support/scale.rs`), the same allowed request — a
//! project member reading a shared device — is decided:
//! - `iotgate`: the whole decision path `serve` runs (route, principal, fields, entity slice,
//!   policy index, Cedar), without the cache and without the JWT signature;
//! - `iotgate_cached`: the same with the decision cache warm (only what precedes the lookup
//!   runs);
//! - `cache_lookup`: the decision cache lookup alone, with the key that request makes;
//! - `plain_cedar`: `Authorizer::is_authorized` over the whole policy set and one `Entities`
//!   store of the whole directory (built once, not timed).
//!
//! Both answers are checked to agree before timing. A summary table with p50/p99 is printed
//! at the end. `IOTGATE_BENCH_ENTITIES` / `IOTGATE_BENCH_POLICIES` (comma lists) narrow it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks fail loudly"
)]

#[path = "support/scale.rs"]
#[allow(dead_code, reason = "each bench uses part of the shared world builder")]
mod scale;

use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicyId, PolicySet, Request};
use criterion::{BenchmarkId, Criterion};
use iotgate::Caches;
use iotgate::DecisionKey;
use iotgate::FieldValue;
use iotgate::Loaded;
use iotgate::Probe;
use iotgate::Resolved;
use iotgate::{Credentials, RequestHead};

/// p50 and p99 of `f`, over `n` runs.
/// The decision alone, without the HTTP handling around it: what these benches measure.
fn decide(probe: &Probe, loaded: &Loaded) -> iotgate::Decision {
    let head = RequestHead {
        method: &probe.method,
        uri: &probe.uri,
        headers: &probe.headers,
        has_body: probe.body.is_some(),
        forwards_cookies: false,
        tls_client: None,
    };
    let credentials = probe.credentials.clone();
    match iotgate::begin(&loaded.snapshot, &loaded.verifier, head, credentials, None) {
        Err(rejected) => *rejected,
        Ok(pending) => pending.decide(probe.body.as_deref()),
    }
}

fn percentiles(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[n / 2], times[n * 99 / 100])
}

struct Row {
    entities: usize,
    policies: usize,
    iotgate: (Duration, Duration),
    cached: (Duration, Duration),
    lookup: (Duration, Duration),
    plain: (Duration, Duration),
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let mut rows = Vec::new();
    for entities in scale::sizes("IOTGATE_BENCH_ENTITIES", &[10_000, 1_000_000]) {
        let world = scale::write_directory_world(entities);
        let (schema, plain_entities) = plain_store(&world);
        for policies in scale::sizes("IOTGATE_BENCH_POLICIES", &[10, 1_000, 10_000, 100_000]) {
            let config = world.add_policies(policies);
            rows.push(bench_one(
                &mut criterion,
                &world,
                &config,
                &schema,
                &plain_entities,
                entities,
                policies,
            ));
        }
    }
    criterion.final_summary();
    println!(
        "\n{:>10} {:>9} | {:>12} {:>12} | {:>12} {:>12} | {:>12} {:>12} | {:>12} {:>12}",
        "entities",
        "policies",
        "iotgate p50",
        "p99",
        "cached p50",
        "p99",
        "lookup p50",
        "p99",
        "plain p50",
        "p99"
    );
    for r in rows {
        println!(
            "{:>10} {:>9} | {:>12?} {:>12?} | {:>12?} {:>12?} | {:>12?} {:>12?} | {:>12?} {:>12?}",
            r.entities,
            r.policies,
            r.iotgate.0,
            r.iotgate.1,
            r.cached.0,
            r.cached.1,
            r.lookup.0,
            r.lookup.1,
            r.plain.0,
            r.plain.1
        );
    }
}

fn plain_store(world: &scale::World) -> (cedar_policy::Schema, Entities) {
    let text =
        std::fs::read_to_string(world.dir.path().join("schema/thinger.cedarschema")).unwrap();
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).unwrap();
    let json = std::fs::read_to_string(world.dir.path().join("directory/world.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    // the license entity iotgate adds, so both sides see the same world
    value.as_array_mut().unwrap().push(serde_json::json!({"uid": {"type": "Thinger::Server", "id": "instance"}, "attrs": {"max_accounts": 1_000_000, "licensed_accounts": world.users / 2}, "parents": []}));
    let t = Instant::now();
    let entities = Entities::from_json_value(value, Some(&schema)).unwrap();
    eprintln!(
        "plain Cedar: built an Entities store of {} entities in {:.1?}",
        entities.len(),
        t.elapsed()
    );
    (schema, entities)
}

fn bench_one(
    c: &mut Criterion,
    world: &scale::World,
    config: &std::path::Path,
    schema: &cedar_policy::Schema,
    entities: &Entities,
    n_entities: usize,
    n_policies: usize,
) -> Row {
    let loaded = Loaded::load(config).unwrap();
    let (user, path) = world.shared_device();
    let mut claims = serde_json::Map::new();
    claims.insert("usr".into(), user.clone().into());
    let probe = Probe::parse(&format!("GET {path}"), Credentials::Trusted(claims.clone())).unwrap();
    let decided = decide(&probe, &loaded);
    assert!(decided.is_allowed(), "{decided:?}");

    // plain Cedar: the whole renamed policy set, the same request
    let all = PolicySet::from_policies(loaded.snapshot.policies.set.policies().cloned()).unwrap();
    let device = EntityUid::from_str(&format!(
        "Thinger::Device::\"{}/d0\"",
        scale::owner(0, world.users)
    ))
    .unwrap();
    let action = EntityUid::from_str("Thinger::Action::\"ReadDeviceStatus\"").unwrap();
    let context = Context::from_json_value(
        serde_json::json!({"token_kind": "user"}),
        Some((schema, &action)),
    )
    .unwrap();
    let request = Request::new(
        EntityUid::from_str(&format!("Thinger::User::\"{user}\"")).unwrap(),
        action,
        device,
        context,
        Some(schema),
    )
    .unwrap();
    let plain = Authorizer::new().is_authorized(&request, &all, entities);
    let mut plain_reasons: Vec<String> = plain
        .diagnostics()
        .reason()
        .map(PolicyId::to_string)
        .collect();
    plain_reasons.sort();
    assert_eq!(
        plain_reasons, decided.policies,
        "iotgate and plain Cedar disagree"
    );

    let caches = Caches::new(&loaded.config.cache);
    let (method, uri, headers) = (
        probe.method.clone(),
        probe.uri.clone(),
        probe.headers.clone(),
    );
    let cached = || {
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
            has_body: false,
            forwards_cookies: false,
            tls_client: None,
        };
        match iotgate::begin(
            &loaded.snapshot,
            &loaded.verifier,
            head,
            Credentials::Trusted(claims.clone()),
            Some(&caches),
        ) {
            Ok(p) => p.decide(None),
            Err(d) => *d,
        }
    };
    assert!(cached().is_allowed());
    assert!(cached().cached);
    // the lookup a cached decision costs, with the key this request makes
    let key = DecisionKey {
        generation: loaded.snapshot.generation,
        principal: EntityUid::from_str(&format!("Thinger::User::\"{user}\"")).unwrap(),
        action: EntityUid::from_str("Thinger::Action::\"ReadDeviceStatus\"").unwrap(),
        resolved: Resolved {
            resource: EntityUid::from_str(&format!(
                "Thinger::Device::\"{}/d0\"",
                scale::owner(0, world.users)
            ))
            .unwrap(),
            resource_attrs: vec![(
                "owner".into(),
                FieldValue::Entity(
                    EntityUid::from_str(&format!(
                        "Thinger::User::\"{}\"",
                        scale::owner(0, world.users)
                    ))
                    .unwrap(),
                ),
            )],
            context: vec![("token_kind".into(), FieldValue::Str("user".into()))],
        },
    };
    assert!(
        caches.decisions.get(&key).is_some(),
        "the bench key must be the one the request made"
    );

    let mut group = c.benchmark_group(format!("decision/{n_entities}_entities"));
    if n_policies >= 10_000 {
        group.sample_size(10);
    }
    group.bench_function(BenchmarkId::new("iotgate", n_policies), |b| {
        b.iter(|| decide(&probe, &loaded))
    });
    group.bench_function(BenchmarkId::new("iotgate_cached", n_policies), |b| {
        b.iter(cached)
    });
    group.bench_function(BenchmarkId::new("plain_cedar", n_policies), |b| {
        b.iter(|| Authorizer::new().is_authorized(&request, &all, entities))
    });
    group.bench_function(BenchmarkId::new("cache_lookup", n_policies), |b| {
        b.iter(|| caches.decisions.get(&key))
    });
    group.finish();
    let plain_runs = if n_policies >= 10_000 { 50 } else { 1000 };
    Row {
        entities: n_entities,
        policies: n_policies,
        iotgate: percentiles(5000, || {
            decide(&probe, &loaded);
        }),
        cached: percentiles(5000, || {
            cached();
        }),
        lookup: percentiles(5000, || {
            caches.decisions.get(&key);
        }),
        plain: percentiles(plain_runs, || {
            Authorizer::new().is_authorized(&request, &all, entities);
        }),
    }
}
