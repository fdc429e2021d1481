//! The layering of `src/`, checked over the `use` graph: each top-level folder uses only the
//! folders listed before it (the order of `src/lib.rs`'s header), and no two modules use
//! each other, directly or through others. Test code (`tests.rs`, `#[cfg(test)]` modules)
//! is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first.
const LAYERS: [&str; 12] = [
    "config",
    "request",
    "authn",
    "model",
    "platform",
    "authz",
    "telemetry",
    "store",
    "proxy",
    "access",
    "serve",
    "commands",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            out.push(path);
        }
    }
}

/// `src/authz/decision.rs` → `authz::decision`; `src/proxy/mod.rs` → `proxy`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// The modules a file's non-test code names with `crate::…`, `super::…` or `self::…`,
/// resolved to the longest known module path.
fn uses(text: &str, module: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", ""), ("super::", parent), ("self::", module)] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            let path: Vec<&str> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
                .split("::")
                .filter(|s| !s.is_empty())
                .collect();
            let resolved = (1..=path.len())
                .rev()
                .map(|n| match base {
                    "" => path[..n].join("::"),
                    base => format!("{base}::{}", path[..n].join("::")),
                })
                .find(|candidate| known.contains(candidate));
            if let Some(target) = resolved.filter(|t| t != module) {
                out.insert(target);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| {
        !f.ends_with("main.rs") && !f.ends_with("lib.rs") && !f.ends_with("testutil.rs")
    });
    let known: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    files
        .iter()
        .map(|f| {
            let module = module_of(&src, f);
            let text = std::fs::read_to_string(f).unwrap();
            let used = uses(&text, &module, &known);
            (module, used)
        })
        .collect()
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or_default();
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("`{top}` is not in LAYERS"))
}

#[test]
fn each_folder_uses_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (module, used) in graph() {
        for target in used {
            if layer(&target) > layer(&module) {
                wrong.push(format!("{module} uses {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
}

#[test]
fn no_two_modules_use_each_other() {
    let graph = graph();
    // depth-first search for a back edge
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            let cycle = visit(node, &graph, &mut state, &mut Vec::new());
            assert!(
                cycle.is_none(),
                "cycle: {}",
                cycle.unwrap_or_default().join(" → ")
            );
        }
    }
}

#[test]
fn the_graph_is_read() {
    // guards the checks above against reading nothing
    let graph = graph();
    assert!(
        graph["proxy"].contains("authz::decision"),
        "{:?}",
        graph["proxy"]
    );
    assert!(graph["proxy::forward"].contains("request::headers"));
    assert!(graph.len() > 30);
}
