use std::path::Path;

use super::*;
use crate::testutil::write_tree;

const SCHEMA: &str = r#"
namespace T {
  entity Team;
  entity User in [Team] = { role: String, manager?: User };
  entity Doc = { owner: User };
  action read appliesTo { principal: User, resource: Doc, context: { flag?: Bool } };
}
"#;

fn catalog() -> Catalog {
    Catalog::parse(Path::new("s.cedarschema"), SCHEMA).unwrap()
}

fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Policies, Problems>) {
    let dir = write_tree(files);
    let result = Policies::load(&[dir.path().to_path_buf()], Some(&catalog()));
    (dir, result)
}

fn messages(dir: &tempfile::TempDir, problems: Problems) -> Vec<String> {
    crate::testutil::messages(dir.path(), problems)
}

#[test]
fn ids_come_from_at_id_or_file_and_index() {
    let (dir, result) = load(&[
        ("a.cedar", "@id(\"allow-read\")\npermit(principal, action, resource);\nforbid(principal, action, resource) when { context has flag && context.flag };"),
        ("sub/b.cedar", "@id(\"b1\") @reason(\"no\")\nforbid(principal, action, resource) when { resource.owner.role == \"x\" };"),
        ("ignored.txt", "not a policy"),
    ]);
    let p = result.unwrap();
    let mut ids: Vec<String> = p.set.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a.cedar#policy1", "allow-read", "b1"]);
    assert!(p.origins[&PolicyId::new("b1")].file.starts_with(dir.path()));
    assert_eq!(p.set.annotation(&PolicyId::new("b1"), "reason"), Some("no"));
    assert_eq!(p.origins[&PolicyId::new("allow-read")].line, Some(1));
    assert_eq!(p.files.len(), 2);
}

#[test]
fn duplicate_ids_across_files_are_errors_with_both_places() {
    let (dir, result) = load(&[
        (
            "a.cedar",
            "@id(\"x\")\npermit(principal, action, resource);",
        ),
        (
            "b.cedar",
            "\n\n@id(\"x\")\nforbid(principal, action, resource);",
        ),
    ]);
    let errs = messages(&dir, result.unwrap_err());
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("b.cedar:3: duplicate policy id `x` (first in "),
        "{}",
        errs[0]
    );
    assert!(errs[0].ends_with("a.cedar:1)"), "{}", errs[0]);
}

#[test]
fn every_parse_error_of_every_file_is_reported() {
    let (dir, result) = load(&[
        (
            "a.cedar",
            "permit(principal, action, resource);\n\npermit(principal action resource);",
        ),
        ("b.cedar", "forbid(principal, action, resource) when { ;"),
        (
            "t.cedar",
            "@id(\"tmpl\")\npermit(principal == ?principal, action, resource);",
        ),
    ]);
    let errs = messages(&dir, result.unwrap_err());
    assert!(errs.iter().any(|e| e.starts_with("a.cedar:3:")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("b.cedar:1:")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("t.cedar:1: template `tmpl`")),
        "{errs:?}"
    );
}

#[test]
fn strict_validation_errors_name_policy_file_and_line() {
    let (dir, result) = load(&[(
        "v.cedar",
        "@id(\"ok\")\npermit(principal, action, resource);\n\n@id(\"typo\")\npermit(principal, action, resource)\nwhen { principal.rol == \"admin\" };",
    )]);
    let errs = messages(&dir, result.unwrap_err());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("v.cedar:6: policy `typo`:"),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("rol"), "{}", errs[0]);
}

#[test]
fn policies_deeper_than_level_two_are_refused() {
    let two = "permit(principal, action, resource) when { resource.owner.role == \"a\" };";
    let (_d, ok) = load(&[("two.cedar", two)]);
    assert!(ok.is_ok(), "{:?}", ok.err());
    let three = "permit(principal, action, resource) when { resource.owner has manager && resource.owner.manager.role == \"a\" };";
    let (dir, bad) = load(&[("three.cedar", three)]);
    let errs = messages(&dir, bad.unwrap_err());
    assert!(errs[0].starts_with("three.cedar:1:"), "{errs:?}");
}

#[test]
fn missing_policy_directory_is_a_problem() {
    let err = Policies::load(&[PathBuf::from("/nonexistent/policies")], None).unwrap_err();
    assert!(err
        .to_string()
        .contains("/nonexistent/policies: cannot read"));
}

#[test]
fn version_label_is_read() {
    let (_d, result) = load(&[
        ("a.cedar", "permit(principal, action, resource);"),
        ("VERSION", "2026.11-r3\n"),
    ]);
    assert_eq!(result.unwrap().labels, vec!["2026.11-r3"]);
}

/// The ids and texts of a set, sorted, for comparing two loads.
fn contents(p: &Policies) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = p
        .set
        .policies()
        .map(|p| (p.id().to_string(), p.to_string()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_reload_takes_over_unchanged_files_and_decides_as_a_full_load() {
    let dir = write_tree(&[
        ("a.cedar", "@id(\"a\")\npermit(principal, action, resource);"),
        ("b.cedar", "@id(\"b\")\nforbid(principal, action, resource) when { resource.owner.role == \"x\" };"),
    ]);
    let dirs = [dir.path().to_path_buf()];
    let catalog = catalog();
    let first = Policies::load_reusing(&dirs, Some((&catalog, SCHEMA)), None).unwrap();
    // one file edited: a new policy, and one that does not validate
    std::fs::write(
        dir.path().join("b.cedar"),
        "@id(\"b\")\nforbid(principal, action, resource) when { resource.owner.role == \"y\" };\n@id(\"c\")\npermit(principal, action, resource) when { resource.nope };",
    )
    .unwrap();
    let refused = Policies::load_reusing(&dirs, Some((&catalog, SCHEMA)), Some(&first));
    let full = Policies::load(&dirs, Some(&catalog));
    let (a, b) = (refused.unwrap_err(), full.unwrap_err());
    assert_eq!(messages(&dir, a), messages(&dir, b));
    // fixed: the same set as a full load, the unchanged file's policy taken over
    std::fs::write(
        dir.path().join("b.cedar"),
        "@id(\"b\")\nforbid(principal, action, resource) when { resource.owner.role == \"y\" };\n@id(\"c\")\npermit(principal, action, resource);",
    )
    .unwrap();
    let next = Policies::load_reusing(&dirs, Some((&catalog, SCHEMA)), Some(&first)).unwrap();
    let full = Policies::load(&dirs, Some(&catalog)).unwrap();
    assert_eq!(contents(&next), contents(&full));
    assert_eq!(next.origins[&PolicyId::new("c")].line, Some(3));
    // a new file repeating a taken-over id is still a duplicate
    std::fs::write(
        dir.path().join("c.cedar"),
        "@id(\"a\")\npermit(principal, action, resource);",
    )
    .unwrap();
    let dup = Policies::load_reusing(&dirs, Some((&catalog, SCHEMA)), Some(&next)).unwrap_err();
    assert!(messages(&dir, dup)[0].contains("duplicate policy id `a`"));
    std::fs::remove_file(dir.path().join("c.cedar")).unwrap();
    // another schema: nothing is taken over, the unchanged file is validated again
    let narrower = SCHEMA.replace("entity Doc = { owner: User };", "entity Doc;");
    let other = Catalog::parse(Path::new("s.cedarschema"), &narrower).unwrap();
    let err = Policies::load_reusing(&dirs, Some((&other, &narrower)), Some(&next)).unwrap_err();
    assert!(messages(&dir, err).iter().any(|m| m.contains("policy `b`")));
}
