use std::path::Path;
use std::str::FromStr;

use super::*;
use crate::testutil::write_tree;

const SCHEMA: &str = r#"
namespace T {
  entity Org in [Org];
  entity User in [Org] = { role: String, enabled: Bool, buddy?: User, meta?: { boss: User } };
  entity Device in [Org] = { owner: User, tags: Set<String> };
}
"#;

fn catalog() -> Catalog {
    Catalog::parse(Path::new("s.cedarschema"), SCHEMA).unwrap()
}

/// Users have one org at most... exactly: this rule applies to the `rules` test only (ids `r-*`).
fn rules() -> Vec<EntityRule> {
    vec![EntityRule {
        entity_type: "T::User".into(),
        parents: vec![],
        values: vec![("role".into(), vec!["admin".into(), "basic".into()])],
    }]
}

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Directory, Problems>) {
    let dir = write_tree(files);
    let result = Directory::load(&[dir.path().to_path_buf()], &catalog(), &rules());
    (dir, result)
}

fn messages(dir: &tempfile::TempDir, problems: Problems) -> Vec<String> {
    crate::testutil::messages(dir.path(), problems)
}

const ORGS: &str = r#"[
  {"uid": {"type": "T::Org", "id": "root"}, "attrs": {}, "parents": []},
  {"uid": {"type": "T::Org", "id": "eu"}, "attrs": {}, "parents": [{"type": "T::Org", "id": "root"}]},
  {"uid": {"type": "T::Org", "id": "es"}, "attrs": {}, "parents": [{"type": "T::Org", "id": "eu"}]}
]"#;

const USERS: &str = r#"[
  {"uid": {"type": "T::User", "id": "ana"}, "attrs": {"role": "admin", "enabled": true,
     "meta": {"boss": {"type": "T::User", "id": "bo"}}}, "parents": [{"type": "T::Org", "id": "es"}]},
  {"uid": {"type": "T::User", "id": "bo"}, "attrs": {"role": "basic", "enabled": false,
     "buddy": {"__entity": {"type": "T::User", "id": "ana"}}}, "parents": []}
]"#;

#[test]
fn files_merge_and_ancestors_are_transitive() {
    let (_d, result) = load(&[
        ("orgs.json", ORGS),
        ("people/users.json", USERS),
        ("notes.txt", "x"),
    ]);
    let d = result.unwrap();
    assert_eq!(d.len(), 5);
    let ana = d.get(&uid(r#"T::User::"ana""#)).unwrap();
    let anc: Vec<String> = ana.ancestors.iter().map(ToString::to_string).collect();
    assert_eq!(
        anc,
        vec![r#"T::Org::"es""#, r#"T::Org::"eu""#, r#"T::Org::"root""#]
    );
    assert_eq!(
        ana.refs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![r#"T::User::"bo""#]
    );
    assert!(!ana.is_disabled());
    assert_eq!(ana.string_attr("role").as_deref(), Some("admin"));
    let bo = d.get(&uid(r#"T::User::"bo""#)).unwrap();
    assert!(bo.is_disabled());
    assert_eq!(bo.refs.len(), 1);
    assert_eq!(d.files().len(), 2);
}

#[test]
fn schema_violations_are_reported_per_entity_with_lines() {
    let bad = r#"[
  {"uid": {"type": "T::User", "id": "x"}, "attrs": {"role": 5, "enabled": true}, "parents": []},
  {"uid": {"type": "T::User", "id": "y"}, "attrs": {"role": "a"}, "parents": []},
  {"uid": {"type": "T::Nope", "id": "z"}, "attrs": {}, "parents": []},
  {"uid": {"type": "T::Device", "id": "d"}, "attrs": {"owner": {"type": "T::User", "id": "x"}, "tags": []},
   "parents": [{"type": "T::User", "id": "x"}]}
]"#;
    let (dir, result) = load(&[("bad.json", bad)]);
    let errs = messages(&dir, result.unwrap_err());
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[0].starts_with("bad.json:2: entity `T::User::\"x\"`"),
        "{}",
        errs[0]
    );
    assert!(errs[1].starts_with("bad.json:3: "), "{}", errs[1]);
    assert!(errs[2].starts_with("bad.json:4: "), "{}", errs[2]);
    assert!(errs[3].starts_with("bad.json:5: "), "{}", errs[3]);
}

#[test]
fn duplicates_across_files_name_both_places() {
    let (dir, result) = load(&[("a.json", ORGS), ("b.json", "[\n\n{\"uid\": {\"type\": \"T::Org\", \"id\": \"eu\"}, \"attrs\": {}, \"parents\": []}]")]);
    let errs = messages(&dir, result.unwrap_err());
    assert_eq!(
        errs,
        vec!["b.json:3: duplicate entity `T::Org::\"eu\"` (first in a.json:3)"]
    );
}

#[test]
fn parent_cycles_are_refused() {
    let cyclic = r#"[
  {"uid": {"type": "T::Org", "id": "a"}, "attrs": {}, "parents": [{"type": "T::Org", "id": "b"}]},
  {"uid": {"type": "T::Org", "id": "b"}, "attrs": {}, "parents": [{"type": "T::Org", "id": "a"}]}
]"#;
    let (dir, result) = load(&[("c.json", cyclic)]);
    let errs = messages(&dir, result.unwrap_err());
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("parent cycle"), "{}", errs[0]);
}

#[test]
fn malformed_json_and_missing_paths_are_problems() {
    let (dir, result) = load(&[
        ("x.json", "[\n{\"uid\": }\n]"),
        ("y.json", "{\"not\": \"an array\"}"),
    ]);
    let errs = messages(&dir, result.unwrap_err());
    assert!(
        errs[0].starts_with("x.json:2: not a JSON array of entities"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("y.json:1: not a JSON array of entities"),
        "{errs:?}"
    );
    let err = Directory::load(&[PathBuf::from("/nonexistent/dir")], &catalog(), &[]).unwrap_err();
    assert!(err.to_string().contains("cannot read"));
}

#[test]
fn synthetic_entities_inherit_ancestors() {
    let (_d, result) = load(&[("orgs.json", ORGS)]);
    let mut d = result.unwrap();
    let dev = Entity::new(
        uid(r#"T::Device::"d1""#),
        [
            (
                "owner".to_string(),
                cedar_policy::RestrictedExpression::new_entity_uid(uid(r#"T::User::"ana""#)),
            ),
            (
                "tags".to_string(),
                cedar_policy::RestrictedExpression::new_set([]),
            ),
        ]
        .into_iter()
        .collect(),
        [uid(r#"T::Org::"es""#)].into_iter().collect(),
    )
    .unwrap();
    d.insert_synthetic(dev);
    let node = d.get(&uid(r#"T::Device::"d1""#)).unwrap();
    assert_eq!(node.ancestors.len(), 3);
    assert_eq!(node.refs.len(), 1);
}

#[test]
fn profile_rules_are_checked_per_entity() {
    let strict = [EntityRule {
        entity_type: "T::User".into(),
        parents: vec![("T::Org".into(), 1)],
        values: vec![("role".into(), vec!["admin".into(), "basic".into()])],
    }];
    let users = r#"[
  {"uid": {"type": "T::User", "id": "ok"}, "attrs": {"role": "admin", "enabled": true}, "parents": [{"type": "T::Org", "id": "eu"}]},
  {"uid": {"type": "T::User", "id": "orphan"}, "attrs": {"role": "basic", "enabled": true}, "parents": []},
  {"uid": {"type": "T::User", "id": "twice"}, "attrs": {"role": "basic", "enabled": true}, "parents": [{"type": "T::Org", "id": "eu"}, {"type": "T::Org", "id": "es"}]},
  {"uid": {"type": "T::User", "id": "boss"}, "attrs": {"role": "overlord", "enabled": true}, "parents": [{"type": "T::Org", "id": "eu"}]}
]"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orgs.json"), ORGS).unwrap();
    std::fs::write(dir.path().join("users.json"), users).unwrap();
    let errs = messages(
        &dir,
        Directory::load(&[dir.path().to_path_buf()], &catalog(), &strict).unwrap_err(),
    );
    assert_eq!(errs, vec![
        "users.json:3: entity `T::User::\"orphan\"` has 0 parents of type `T::Org`; it needs exactly 1",
        "users.json:4: entity `T::User::\"twice\"` has 2 parents of type `T::Org`; it needs exactly 1",
        "users.json:5: entity `T::User::\"boss\"` has role `\"overlord\"`; expected one of: admin, basic",
    ]);
}
