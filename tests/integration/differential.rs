//! Differential tests: iotgate's indexed policies and per-request entity slices against
//! plain Cedar over the whole policy set and the full entity store, on random data.
//!
//! Proptest draws the random choices (a tape that shrinks toward a smaller failing world) from
//! which a generator builds random worlds — a group hierarchy, users, nested folders and
//! items, with dangling references that make policies error — and random policies (permit
//! and forbid; scopes pinned with `==`, `in`, `is … in`; `when` and `unless` conditions over
//! attributes up to two entity hops away, `in` over the hierarchies, optional attributes and
//! context entities). Every request is decided both ways; the decisions (with iotgate's
//! fail-closed rule applied to plain Cedar's answer), the determining policies and the
//! errors must be identical. Searches (resource and subject, through the decision API's
//! search and its TPE narrowing) must find exactly the entities plain Cedar allows. Set
//! `IOTGATE_DIFF_WORLDS` to run more worlds.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request};
use iotgate::FieldValue;
use iotgate::Resolved;

const SCHEMA: &str = r#"
namespace D {
  type Ctx = { flag: Bool, level: Long, tag?: String, target?: Item };
  entity Group in [Group] = { rank: Long };
  entity User in [Group] = { level: Long, team: Group, buddy?: User };
  entity Folder in [Folder, Group] = { owner: User };
  entity Item in [Folder] = { owner: User, size: Long, tags: Set<String> };
  action view, edit;
  action read in [view] appliesTo { principal: User, resource: [Item, Folder], context: Ctx };
  action write in [edit] appliesTo { principal: User, resource: [Item, Folder], context: Ctx };
  action remove in [edit, view] appliesTo { principal: User, resource: [Item, Folder], context: Ctx };
}
"#;

const ACTIONS: [&str; 3] = ["read", "write", "remove"];

/// The random choices of one case, drawn by proptest as a tape of numbers read in order
/// (zero once it runs out). Proptest shrinks a failing tape toward fewer and smaller
/// numbers, and so the failing world toward fewer entities, policies and conditions.
struct Rng {
    tape: Vec<u64>,
    at: usize,
}

impl Rng {
    fn next(&mut self) -> u64 {
        let choice = self.tape.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        choice
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A random world: entity JSON and the names of what exists.
struct World {
    entities: Vec<serde_json::Value>,
    groups: usize,
    users: usize,
    folders: usize,
    items: usize,
}

fn r(t: &str, id: String) -> serde_json::Value {
    serde_json::json!({"type": format!("D::{t}"), "id": id})
}

impl World {
    fn generate(rng: &mut Rng) -> World {
        let (groups, users, folders, items) = (
            2 + rng.below(5),
            2 + rng.below(6),
            1 + rng.below(5),
            2 + rng.below(8),
        );
        let mut entities = Vec::new();
        // users may name one missing user ("u99") or team ("g99"): such references make
        // policies that follow them error
        let user_ref = |rng: &mut Rng| {
            r(
                "User",
                if rng.chance(10) {
                    "u99".into()
                } else {
                    format!("u{}", rng.below(users))
                },
            )
        };
        for g in 0..groups {
            let parents: Vec<_> = (0..g)
                .filter(|_| rng.chance(35))
                .map(|p| r("Group", format!("g{p}")))
                .collect();
            entities.push(serde_json::json!({"uid": r("Group", format!("g{g}")), "attrs": {"rank": rng.below(5)}, "parents": parents}));
        }
        for u in 0..users {
            let parents: Vec<_> = (0..groups)
                .filter(|_| rng.chance(30))
                .map(|g| r("Group", format!("g{g}")))
                .collect();
            let team = if rng.chance(8) {
                "g99".to_string()
            } else {
                format!("g{}", rng.below(groups))
            };
            let mut attrs = serde_json::json!({"level": rng.below(6), "team": r("Group", team)});
            if rng.chance(50) {
                attrs["buddy"] = user_ref(rng);
            }
            entities.push(serde_json::json!({"uid": r("User", format!("u{u}")), "attrs": attrs, "parents": parents}));
        }
        for f in 0..folders {
            let mut parents: Vec<_> = (0..f)
                .filter(|_| rng.chance(40))
                .map(|p| r("Folder", format!("f{p}")))
                .collect();
            if rng.chance(40) {
                parents.push(r("Group", format!("g{}", rng.below(groups))));
            }
            entities.push(serde_json::json!({"uid": r("Folder", format!("f{f}")), "attrs": {"owner": user_ref(rng)}, "parents": parents}));
        }
        for i in 0..items {
            let parents: Vec<_> = (0..folders)
                .filter(|_| rng.chance(30))
                .map(|f| r("Folder", format!("f{f}")))
                .collect();
            let tags: Vec<&str> = ["a", "b", "c"]
                .into_iter()
                .filter(|_| rng.chance(40))
                .collect();
            let attrs =
                serde_json::json!({"owner": user_ref(rng), "size": rng.below(100), "tags": tags});
            entities.push(serde_json::json!({"uid": r("Item", format!("i{i}")), "attrs": attrs, "parents": parents}));
        }
        World {
            entities,
            groups,
            users,
            folders,
            items,
        }
    }

    fn user(&self, rng: &mut Rng) -> String {
        format!("D::User::\"u{}\"", rng.below(self.users))
    }
    fn group(&self, rng: &mut Rng) -> String {
        format!("D::Group::\"g{}\"", rng.below(self.groups))
    }
    fn folder(&self, rng: &mut Rng) -> String {
        format!("D::Folder::\"f{}\"", rng.below(self.folders))
    }
    fn item(&self, rng: &mut Rng) -> String {
        // sometimes an item the directory does not have
        format!("D::Item::\"i{}\"", rng.below(self.items + 1))
    }

    /// A random policy, as Cedar text with an `@id`.
    fn policy(&self, rng: &mut Rng, n: usize) -> String {
        let effect = if rng.chance(35) { "forbid" } else { "permit" };
        let principal = match rng.below(5) {
            0 => format!("principal == {}", self.user(rng)),
            1 => format!("principal in {}", self.group(rng)),
            2 => format!("principal is D::User in {}", self.group(rng)),
            _ => "principal".to_string(),
        };
        let action = match rng.below(5) {
            0 => format!("action == D::Action::\"{}\"", rng.pick(&ACTIONS)),
            1 => "action in D::Action::\"edit\"".to_string(),
            2 => format!(
                "action in [D::Action::\"{}\", D::Action::\"view\"]",
                rng.pick(&ACTIONS)
            ),
            _ => "action".to_string(),
        };
        let resource = match rng.below(7) {
            0 => format!("resource == {}", self.item(rng)),
            1 | 2 => format!("resource in {}", self.folder(rng)),
            3 => format!("resource in {}", self.group(rng)),
            4 => format!("resource is D::Item in {}", self.folder(rng)),
            5 => "resource is D::Folder".to_string(),
            _ => "resource".to_string(),
        };
        let mut text = format!("@id(\"p{n}\")\n{effect} ({principal}, {action}, {resource})");
        for _ in 0..rng.below(3) {
            let clause = if rng.chance(30) { "unless" } else { "when" };
            text.push_str(&format!("\n{clause} {{ {} }}", self.condition(rng, 2)));
        }
        text.push_str(";\n");
        text
    }

    fn condition(&self, rng: &mut Rng, depth: usize) -> String {
        if depth > 0 && rng.chance(35) {
            let (a, b) = (
                self.condition(rng, depth - 1),
                self.condition(rng, depth - 1),
            );
            return match rng.below(3) {
                0 => format!("({a} && {b})"),
                1 => format!("({a} || {b})"),
                _ => format!("!({a})"),
            };
        }
        let n = rng.below(5);
        match rng.below(16) {
            0 => format!("principal.level > {n}"),
            1 => "resource.owner == principal".to_string(),
            2 => format!("resource.owner.level >= {n}"),
            3 => "principal in resource.owner.team".to_string(),
            4 => "principal.team in resource.owner.team".to_string(),
            5 => format!("(principal has buddy && principal.buddy.level > {n})"),
            6 => format!("principal.team.rank < {n}"),
            7 => "context.flag".to_string(),
            8 => format!("context.level == {n}"),
            9 => "(context has tag && context.tag == \"x\")".to_string(),
            10 => "(context has target && context.target in resource)".to_string(),
            11 => format!("(context has target && context.target.size > {})", n * 20),
            12 => format!("(resource is D::Item && resource.size < {})", n * 25),
            13 => "(resource is D::Item && resource.tags.contains(\"a\"))".to_string(),
            14 => format!("principal in {}", self.group(rng)),
            _ => format!("resource in {}", self.folder(rng)),
        }
    }

    fn request(&self, rng: &mut Rng) -> (String, &'static str, String, Vec<(String, FieldValue)>) {
        let resource = if rng.chance(50) {
            self.item(rng)
        } else {
            self.folder(rng)
        };
        let mut context = vec![
            ("flag".to_string(), FieldValue::Bool(rng.chance(50))),
            ("level".to_string(), FieldValue::Long(rng.below(5) as i64)),
        ];
        if rng.chance(40) {
            context.push((
                "tag".to_string(),
                FieldValue::Str(if rng.chance(50) { "x" } else { "y" }.into()),
            ));
        }
        if rng.chance(40) {
            context.push((
                "target".to_string(),
                FieldValue::Entity(EntityUid::from_str(&self.item(rng)).unwrap()),
            ));
        }
        (self.user(rng), *rng.pick(&ACTIONS), resource, context)
    }
}

/// What both sides must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    allowed: bool,
    reasons: BTreeSet<String>,
    errors: BTreeSet<String>,
}

fn plain_cedar(
    policies: &PolicySet,
    entities: &Entities,
    schema: &cedar_policy::Schema,
    req: &(String, &str, String, Vec<(String, FieldValue)>),
) -> Outcome {
    let context = Context::from_pairs(req.3.iter().map(|(k, v)| (k.clone(), v.to_expr()))).unwrap();
    let request = Request::new(
        EntityUid::from_str(&req.0).unwrap(),
        EntityUid::from_str(&format!("D::Action::\"{}\"", req.1)).unwrap(),
        EntityUid::from_str(&req.2).unwrap(),
        context,
        Some(schema),
    )
    .unwrap();
    let response = Authorizer::new().is_authorized(&request, policies, entities);
    let errors: BTreeSet<String> = response
        .diagnostics()
        .errors()
        .map(ToString::to_string)
        .collect();
    let cedar_allows = response.decision() == Decision::Allow;
    // iotgate's rule: an evaluation error denies, and a deny by errors names no policy
    let allowed = cedar_allows && errors.is_empty();
    let reasons = if cedar_allows && !allowed {
        BTreeSet::new()
    } else {
        response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect()
    };
    Outcome {
        allowed,
        reasons,
        errors,
    }
}

fn write_profile(dir: &Path, world: &World, policies: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::create_dir_all(dir.join("directory")).unwrap();
    std::fs::write(dir.join("d.cedarschema"), SCHEMA).unwrap();
    std::fs::write(
        dir.join("d.routes.toml"),
        "namespace = \"D\"\nprincipal = \"User\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("policies/all.cedar"), policies).unwrap();
    std::fs::write(
        dir.join("directory/world.json"),
        serde_json::to_string_pretty(&world.entities).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("secret"), "s").unwrap();
    let config = dir.join("iotgate.toml");
    std::fs::write(
        &config,
        "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"secret\"\n\
         [policy]\nschema = \"d.cedarschema\"\nroutes = \"d.routes.toml\"\npolicies = [\"policies\"]\ndirectory = [\"directory\"]\n",
    )
    .unwrap();
    config
}

/// Keeps only the policies that pass strict level-2 validation, as iotgate requires.
fn valid_policies(schema: &cedar_policy::Schema, texts: Vec<String>) -> String {
    let validator = cedar_policy::Validator::new(schema.clone());
    texts
        .into_iter()
        .filter(|t| {
            let set: PolicySet = t.parse().unwrap();
            validator
                .validate_with_level(&set, cedar_policy::ValidationMode::Strict, 2)
                .validation_passed()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the compared decisions were, so that the run proves something.
#[derive(Default)]
struct Tally {
    compared: usize,
    allowed: usize,
    errored: usize,
    forbidden: usize,
}

/// One generated world, loaded by iotgate (from files in `_dir`) and as plain Cedar has it.
struct Generated {
    world: World,
    policies: String,
    snapshot: iotgate::Snapshot,
    /// The whole set, renamed by `@id`.
    plain_set: PolicySet,
    entities: Entities,
    _dir: tempfile::TempDir,
}

impl Generated {
    fn new(rng: &mut Rng, schema: &cedar_policy::Schema) -> Generated {
        let world = World::generate(rng);
        let texts = (0..5 + rng.below(36))
            .map(|n| world.policy(rng, n))
            .collect();
        let policies = valid_policies(schema, texts);
        let dir = tempfile::tempdir().unwrap();
        let config = write_profile(dir.path(), &world, &policies);
        let snapshot = iotgate::Snapshot::load(&iotgate::Config::load(&config).unwrap())
            .unwrap_or_else(|p| panic!("{p}\n{policies}"));
        let plain_set = rename_by_id(&policies.parse().unwrap());
        let entities = Entities::from_json_value(
            serde_json::Value::Array(world.entities.clone()),
            Some(schema),
        )
        .unwrap();
        Generated {
            world,
            policies,
            snapshot,
            plain_set,
            entities,
            _dir: dir,
        }
    }
}

/// Decides every request of one generated world both ways.
fn compare_world(
    tape: Vec<u64>,
    schema: &cedar_policy::Schema,
    tally: &mut Tally,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let requests_per_world = 25;
    let mut rng = Rng { tape, at: 0 };
    let Generated {
        world,
        policies,
        snapshot,
        plain_set,
        entities,
        _dir,
    } = Generated::new(&mut rng, schema);
    for _ in 0..requests_per_world {
        let req = world.request(&mut rng);
        let expected = plain_cedar(&plain_set, &entities, schema, &req);
        let principal = snapshot
            .directory
            .get(&EntityUid::from_str(&req.0).unwrap())
            .unwrap();
        let resolved = Resolved {
            resource: EntityUid::from_str(&req.2).unwrap(),
            resource_attrs: vec![],
            context: req.3.clone(),
        };
        let verdict = iotgate::authorize(&snapshot, principal, req.1, &resolved)
            .unwrap()
            .live;
        let got = Outcome {
            allowed: verdict.allowed,
            reasons: verdict.policies.into_iter().collect(),
            errors: verdict.errors.into_iter().collect(),
        };
        proptest::prop_assert_eq!(
            &got,
            &expected,
            "{:?}\npolicies:\n{}\nentities: {}",
            req,
            policies,
            serde_json::to_string(&world.entities).unwrap()
        );
        tally.compared += 1;
        tally.allowed += usize::from(got.allowed);
        tally.errored += usize::from(!got.errors.is_empty());
        tally.forbidden += usize::from(!got.allowed && !got.reasons.is_empty());
    }
    Ok(())
}

/// Runs `compare` over `IOTGATE_DIFF_WORLDS` (150) generated worlds, the same ones on every
/// run (a deterministic generator), and returns what it tallied.
fn run_worlds<T: Default>(
    compare: impl Fn(
        Vec<u64>,
        &cedar_policy::Schema,
        &mut T,
    ) -> Result<(), proptest::test_runner::TestCaseError>,
) -> T {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let worlds: u32 = std::env::var("IOTGATE_DIFF_WORLDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
    let config = Config {
        cases: worlds,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let tally = std::cell::RefCell::new(T::default());
    let tapes = proptest::collection::vec(proptest::prelude::any::<u64>(), 1024..2048);
    let result = runner.run(&tapes, |tape| {
        compare(tape, &schema, &mut tally.borrow_mut())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    tally.into_inner()
}

#[test]
fn indexed_and_sliced_decisions_equal_plain_cedar() {
    let Tally {
        compared,
        allowed,
        errored,
        forbidden,
    } = run_worlds(compare_world);
    // the generator must exercise every kind of outcome, or the comparison proves little
    assert!(
        allowed > compared / 20,
        "only {allowed} of {compared} allowed"
    );
    assert!(
        errored > compared / 50,
        "only {errored} of {compared} with errors"
    );
    assert!(
        forbidden > compared / 50,
        "only {forbidden} of {compared} forbidden by a policy"
    );
    eprintln!("{compared} decisions compared: {allowed} allowed, {forbidden} forbidden by a policy, {errored} with errors");
}

/// The whole set renamed by `@id`, as the Cedar CLI (and iotgate) names policies.
fn rename_by_id(set: &PolicySet) -> PolicySet {
    PolicySet::from_policies(
        set.policies()
            .map(|p| p.new_id(cedar_policy::PolicyId::new(p.annotation("id").unwrap()))),
    )
    .unwrap()
}

/// What the search comparisons covered.
#[derive(Default)]
struct SearchTally {
    searches: usize,
    found: usize,
    narrowed: usize,
}

/// A random context of the world's actions, as a question sends it and as plain Cedar takes it.
fn random_context(world: &World, rng: &mut Rng) -> (serde_json::Value, Vec<(String, FieldValue)>) {
    let (_, _, _, context) = world.request(rng);
    let json = context
        .iter()
        .map(|(k, v)| {
            let value = match v {
                FieldValue::Entity(uid) => {
                    serde_json::json!({"type": "Item", "id": uid.id().unescaped()})
                }
                other => other.to_json(),
            };
            (k.clone(), value)
        })
        .collect();
    (serde_json::Value::Object(json), context)
}

/// Searches one generated world: each search's results must be exactly the entities plain
/// Cedar allows over the whole store (with iotgate's fail-closed rule).
fn compare_searches(
    tape: Vec<u64>,
    schema: &cedar_policy::Schema,
    tally: &mut SearchTally,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use iotgate::{SearchTarget, Searched};
    let mut rng = Rng { tape, at: 0 };
    let Generated {
        world,
        policies,
        snapshot,
        plain_set,
        entities,
        _dir,
    } = Generated::new(&mut rng, schema);
    let ids = |ty: &str| -> Vec<String> {
        let ty = cedar_policy::EntityTypeName::from_str(&format!("D::{ty}")).unwrap();
        snapshot
            .directory
            .ids_of(&ty)
            .into_iter()
            .map(String::from)
            .collect()
    };
    for _ in 0..8 {
        let action = *rng.pick(&ACTIONS);
        let (context, pairs) = random_context(&world, &mut rng);
        let allows = |principal: &str, resource: &str| {
            let req = (
                principal.to_string(),
                action,
                resource.to_string(),
                pairs.clone(),
            );
            plain_cedar(&plain_set, &entities, schema, &req).allowed
        };
        let (target, body, expected, all, narrowed) = if rng.chance(50) {
            let user = world.user(&mut rng);
            let ty = *rng.pick(&["Item", "Folder"]);
            let expected: Vec<String> = ids(ty)
                .into_iter()
                .filter(|id| allows(&user, &format!("D::{ty}::\"{id}\"")))
                .collect();
            let user_uid = EntityUid::from_str(&user).unwrap();
            let body = serde_json::json!({"subject": {"type": "User", "id": user_uid.id().unescaped()},
                "action": {"name": action}, "resource": {"type": ty}, "context": context});
            let action_uid = EntityUid::from_str(&format!("D::Action::\"{action}\"")).unwrap();
            let ty_name = cedar_policy::EntityTypeName::from_str(&format!("D::{ty}")).unwrap();
            let narrowed = iotgate::search_candidates(
                &snapshot,
                Searched::Resource,
                &user_uid,
                &action_uid,
                &ty_name,
            )
            .len();
            (
                SearchTarget::Resource,
                body,
                expected,
                ids(ty).len(),
                narrowed,
            )
        } else {
            let resource = if rng.chance(50) {
                world.folder(&mut rng)
            } else {
                world.item(&mut rng)
            };
            let uid = EntityUid::from_str(&resource).unwrap();
            let expected: Vec<String> = ids("User")
                .into_iter()
                .filter(|id| allows(&format!("D::User::\"{id}\""), &resource))
                .collect();
            let short = uid.type_name().basename();
            let body = serde_json::json!({"subject": {"type": "User"}, "action": {"name": action},
                "resource": {"type": short, "id": uid.id().unescaped()}, "context": context});
            let action_uid = EntityUid::from_str(&format!("D::Action::\"{action}\"")).unwrap();
            let ty_name = cedar_policy::EntityTypeName::from_str("D::User").unwrap();
            let narrowed = iotgate::search_candidates(
                &snapshot,
                Searched::Principal,
                &uid,
                &action_uid,
                &ty_name,
            )
            .len();
            (
                SearchTarget::Subject,
                body,
                expected,
                ids("User").len(),
                narrowed,
            )
        };
        let found: Vec<String> =
            iotgate::search(&snapshot, target, body.as_object().unwrap().clone())
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
        proptest::prop_assert_eq!(
            &found,
            &expected,
            "{}\npolicies:\n{}\nentities: {}",
            body,
            policies,
            serde_json::to_string(&world.entities).unwrap()
        );
        tally.searches += 1;
        tally.found += usize::from(!found.is_empty());
        tally.narrowed += usize::from(narrowed < all);
    }
    Ok(())
}

#[test]
fn searches_equal_plain_cedar_over_every_candidate() {
    let SearchTally {
        searches,
        found,
        narrowed,
    } = run_worlds(compare_searches);
    // the comparison proves something only if searches find entities and narrowing acts
    assert!(
        found > searches / 5,
        "only {found} of {searches} searches found any"
    );
    assert!(
        narrowed > searches / 10,
        "only {narrowed} of {searches} searches narrowed"
    );
    eprintln!(
        "{searches} searches compared: {found} found entities, {narrowed} narrowed the candidates"
    );
}
