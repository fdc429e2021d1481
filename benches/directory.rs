//! Loading at scale. First, the directory: time and memory to load (parse, check against
//! the schema, index with ancestors) 10,000 and 1,000,000 entities, next to building one
//! plain Cedar `Entities` store from the same files. Then the policies: time to load a whole
//! snapshot (parse, strict validation, index) with 10 to 100,000 project policies — what a
//! start or a reload costs. With each directory, what one runtime change costs (a new
//! snapshot: the directory copied, changed, its ancestors recomputed). Prints tables; run with `cargo bench --bench directory`.
//!
//! Not a criterion bench: each size is loaded once in a fresh process state, because a load
//! takes seconds and its memory is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks fail loudly"
)]

#[path = "support/scale.rs"]
#[allow(dead_code, reason = "each bench uses part of the shared world builder")]
mod scale;

use std::time::Instant;

fn main() {
    let sizes = scale::sizes("IOTGATE_BENCH_ENTITIES", &[10_000, 1_000_000]);
    println!(
        "{:>10} {:>14} {:>14} {:>16} {:>16} {:>14}",
        "entities",
        "iotgate load",
        "iotgate RSS+",
        "plain Cedar build",
        "plain Cedar RSS+",
        "one write"
    );
    for n in sizes {
        let world = scale::write(10, n);
        let config = iotgate::Config::load(&world.config).unwrap();
        let before = scale::rss();
        let started = Instant::now();
        let snapshot = iotgate::Snapshot::load(&config).unwrap();
        let load = started.elapsed();
        let grown = scale::rss().saturating_sub(before);
        let count = snapshot.directory.len();
        let write = one_write(&snapshot);
        drop(snapshot);
        let (plain, plain_rss) = if std::env::var("IOTGATE_BENCH_SKIP_PLAIN").is_ok() {
            ("skipped".to_string(), "-".to_string())
        } else {
            plain_cedar(&world)
        };
        println!(
            "{count:>10} {:>13.2}s {:>11} MiB {plain:>16} {plain_rss:>16} {:>11.1} ms",
            load.as_secs_f64(),
            grown / (1 << 20),
            write.as_secs_f64() * 1000.0
        );
    }
    let policies = scale::sizes("IOTGATE_BENCH_POLICIES", &[10, 1_000, 10_000, 100_000]);
    println!(
        "\n{:>10} {:>16} {:>14} {:>22}",
        "policies", "snapshot load", "index buckets", "reload, 1 file edited"
    );
    let world = scale::write_directory_world(10_000);
    for n in policies {
        let path = world.add_policies(n);
        let config = iotgate::Config::load(&path).unwrap();
        // one more project file, the one an operator edits
        let edited = config.policy.policies.last().unwrap().join("edited.cedar");
        let policy = |role: &str| {
            format!("@id(\"edited\")\npermit (principal, action == Thinger::Action::\"ListDevices\", resource)\nwhen {{ principal.role == \"{role}\" }};\n")
        };
        std::fs::write(&edited, policy("admin")).unwrap();
        let started = Instant::now();
        let snapshot = iotgate::Snapshot::load(&config).unwrap();
        let load = started.elapsed();
        std::fs::write(&edited, policy("developer")).unwrap();
        let started = Instant::now();
        let reloaded = iotgate::Snapshot::load_after(&config, Some(&snapshot)).unwrap();
        let reload = started.elapsed();
        assert_ne!(reloaded.policy_version, snapshot.policy_version);
        println!(
            "{:>10} {:>15.2}s {:>14} {:>21.2}s",
            snapshot.policies.set.policies().count(),
            load.as_secs_f64(),
            snapshot.policies.index.len(),
            reload.as_secs_f64()
        );
    }
}

/// What one directory change costs (a write-through effect or an entity API PUT): a new
/// snapshot with one account disabled, the median of five.
fn one_write(snapshot: &iotgate::Snapshot) -> std::time::Duration {
    let id = snapshot
        .directory
        .nodes()
        .map(|n| n.uid())
        .find(|u| u.type_name().basename() == "User")
        .unwrap();
    let change = iotgate::DirectoryChange::Upsert {
        uid: iotgate::DirectoryUid {
            ty: id.type_name().to_string(),
            id: id.id().unescaped().to_string(),
        },
        attrs: serde_json::json!({"enabled": false})
            .as_object()
            .unwrap()
            .clone(),
        parents: None,
    };
    let mut times: Vec<_> = (0..5)
        .map(|seq| {
            let started = Instant::now();
            let next = snapshot
                .with_changes(std::slice::from_ref(&change), seq)
                .unwrap();
            let took = started.elapsed();
            drop(next);
            took
        })
        .collect();
    times.sort();
    times[2]
}

fn plain_cedar(world: &scale::World) -> (String, String) {
    let text =
        std::fs::read_to_string(world.dir.path().join("schema/thinger.cedarschema")).unwrap();
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(world.dir.path().join("directory/world.json")).unwrap(),
    )
    .unwrap();
    let before = scale::rss();
    let started = Instant::now();
    let entities = cedar_policy::Entities::from_json_value(json, Some(&schema)).unwrap();
    let took = started.elapsed();
    let grown = scale::rss().saturating_sub(before);
    drop(entities);
    (
        format!("{:.2}s", took.as_secs_f64()),
        format!("{} MiB", grown / (1 << 20)),
    )
}
