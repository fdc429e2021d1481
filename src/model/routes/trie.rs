//! Path templates and the segment trie that matches request paths against them.
//!
//! ```text
//! "/v1/users/{owner}/devices/{device}" ──PathTemplate::parse──▶ [Lit v1, Lit users, Cap owner, ...]
//! request segments ──Trie::find──▶ route index + capture values
//! ```
//!
//! At every segment a literal child is tried before a `{capture}`, and a capture before a
//! `{rest..}` tail; the search backtracks only when a *path* fails to match. A capture never
//! takes a segment that differs from a literal at its place only in case or trailing dots
//! and spaces (`/devices/d/Tokens`): such a path is no route. The method is
//! checked on the path found, with no fallback to a less specific path: a `PUT` on
//! `/devices/{d}/tokens` is not a device-resource call just because `{resource}` would take it.

use std::borrow::Cow;
use std::collections::HashMap;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this (decoded) text.
    Literal(String),
    /// Matches any one segment, bound to a name.
    Capture(String),
    /// Matches the rest of the path (zero or more segments), joined with `/`.
    Rest(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// Its segments.
    pub segments: Vec<Segment>,
}

impl PathTemplate {
    /// Parses `/a/{b}/{c..}` (`{*c}` is the same tail capture).
    ///
    /// # Errors
    /// Not absolute, empty segments, bad capture names, repeated names, or a rest capture
    /// that is not last.
    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("path `{template}` must start with `/`"))?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for raw in rest.split('/') {
                segments.push(segment(raw).map_err(|m| format!("path `{template}`: {m}"))?);
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in segments.iter().enumerate() {
            match s {
                Segment::Capture(n) | Segment::Rest(n) if !names.insert(n.clone()) => {
                    return Err(format!("path `{template}`: capture `{n}` is used twice"));
                }
                Segment::Rest(n) if i + 1 != segments.len() => {
                    return Err(format!(
                        "path `{template}`: `{{{n}..}}` must be the last segment"
                    ));
                }
                _ => {}
            }
        }
        Ok(PathTemplate { segments })
    }

    /// Names of the captures, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(n) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The shape used to detect duplicate routes: capture names erased.
    fn shape(&self) -> Vec<Segment> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Capture(_) => Segment::Capture(String::new()),
                Segment::Rest(_) => Segment::Rest(String::new()),
                lit => lit.clone(),
            })
            .collect()
    }
}

fn segment(raw: &str) -> Result<Segment, String> {
    if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let (name, rest) = match (inner.strip_suffix(".."), inner.strip_prefix('*')) {
            (Some(n), _) | (None, Some(n)) => (n, true),
            (None, None) => (inner, false),
        };
        if !is_identifier(name) {
            return Err(format!(
                "`{raw}` is not a capture (`{{name}}`, or `{{name..}}` / `{{*name}}` for the rest)"
            ));
        }
        return Ok(if rest {
            Segment::Rest(name.to_string())
        } else {
            Segment::Capture(name.to_string())
        });
    }
    if raw.is_empty() || raw == "." || raw == ".." || raw.contains(['{', '}', '%', '\\']) {
        return Err(format!("`{raw}` is not a literal segment"));
    }
    Ok(Segment::Literal(raw.to_string()))
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Routes ending at a trie node: method → route index.
type Leaf = HashMap<http::Method, usize>;

#[derive(Debug, Default, Clone)]
struct Node {
    literals: HashMap<String, Node>,
    capture: Option<Box<Node>>,
    rest: Option<Leaf>,
    leaf: Option<Leaf>,
}

/// The outcome of matching a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// A route for this path and method.
    Route(usize),
    /// The path matched a route template, but not for this method.
    MethodNotRouted,
    /// No template matches the path.
    NoPath,
}

/// Matches decoded path segments to route indexes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Trie {
    root: Node,
}

impl Trie {
    /// Adds a route; `Err` names the index of an earlier route with the same shape and method.
    ///
    /// # Errors
    /// Another route already has this path shape and method.
    pub(crate) fn insert(
        &mut self,
        template: &PathTemplate,
        methods: &[http::Method],
        index: usize,
    ) -> Result<(), usize> {
        let mut node = &mut self.root;
        let mut leaf = None;
        for seg in template.shape() {
            match seg {
                Segment::Literal(l) => node = node.literals.entry(l).or_default(),
                Segment::Capture(_) => node = node.capture.get_or_insert_with(Box::default),
                Segment::Rest(_) => leaf = Some(node.rest.get_or_insert_with(Leaf::new)),
            }
        }
        let leaf = match leaf {
            Some(leaf) => leaf,
            None => node.leaf.get_or_insert_with(Leaf::new),
        };
        for m in methods {
            if let Some(existing) = leaf.get(m) {
                return Err(*existing);
            }
        }
        for m in methods {
            leaf.insert(m.clone(), index);
        }
        Ok(())
    }

    /// Finds the most specific template matching `segments`, then checks the method.
    pub(crate) fn find(&self, method: &http::Method, segments: &[Cow<'_, str>]) -> Found {
        match find_leaf(&self.root, segments) {
            None => Found::NoPath,
            Some(leaf) => leaf
                .get(method)
                .map_or(Found::MethodNotRouted, |i| Found::Route(*i)),
        }
    }
}

fn find_leaf<'t>(node: &'t Node, segments: &[Cow<'_, str>]) -> Option<&'t Leaf> {
    let Some((first, rest)) = segments.split_first() else {
        return node.leaf.as_ref().or(node.rest.as_ref());
    };
    if let Some(found) = node
        .literals
        .get(first.as_ref())
        .and_then(|n| find_leaf(n, rest))
    {
        return Some(found);
    }
    if !node.literals.contains_key(first.as_ref()) && shadows(node, first) {
        return None;
    }
    if let Some(found) = node.capture.as_deref().and_then(|n| find_leaf(n, rest)) {
        return Some(found);
    }
    node.rest.as_ref()
}

/// Whether `segment` is, to such a server, one of the node's literals (`Tokens`, `tokens.`
/// for `tokens`): then no capture may take it, since the upstream would serve the literal's
/// operation.
fn shadows(node: &Node, segment: &str) -> bool {
    let folded = crate::request::uri::fold(segment);
    node.literals
        .keys()
        .any(|literal| crate::request::uri::fold(literal) == folded)
}

/// Binds capture names of `template` to the values in `segments` (which it matches).
pub(crate) fn bind<'a>(
    template: &'a PathTemplate,
    segments: &[Cow<'_, str>],
) -> Vec<(&'a str, String)> {
    let mut out = Vec::new();
    for (i, seg) in template.segments.iter().enumerate() {
        match seg {
            Segment::Capture(name) => {
                if let Some(value) = segments.get(i) {
                    out.push((name.as_str(), value.to_string()));
                }
            }
            Segment::Rest(name) => {
                let tail = segments.get(i..).unwrap_or(&[]);
                out.push((name.as_str(), tail.join("/")));
            }
            Segment::Literal(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn segs(path: &str) -> Vec<Cow<'_, str>> {
        crate::request::uri::segments(path).unwrap()
    }

    fn table() -> (Trie, Vec<PathTemplate>) {
        let routes: &[(&str, &[Method])] = &[
            ("/v1/users/{owner}/devices", &[Method::GET, Method::POST]),
            (
                "/v1/users/{owner}/devices/{device}",
                &[Method::GET, Method::PUT, Method::DELETE],
            ),
            (
                "/v1/users/{owner}/devices/{device}/tokens",
                &[Method::GET, Method::POST],
            ),
            (
                "/v1/users/{owner}/devices/{device}/{resource}",
                &[Method::GET, Method::POST],
            ),
            (
                "/users/{owner}/plugins/{plugin}/{path..}",
                &[Method::GET, Method::POST, Method::DELETE],
            ),
            ("/v1/users", &[Method::GET, Method::POST]),
            ("/", &[Method::GET]),
        ];
        let mut trie = Trie::default();
        let mut templates = Vec::new();
        for (i, (path, methods)) in routes.iter().enumerate() {
            let t = PathTemplate::parse(path).unwrap();
            trie.insert(&t, methods, i).unwrap();
            templates.push(t);
        }
        (trie, templates)
    }

    /// (method, path, expected outcome, expected captures)
    type Case = (
        Method,
        &'static str,
        Found,
        &'static [(&'static str, &'static str)],
    );

    #[test]
    fn matching_table() {
        let (trie, templates) = table();
        let cases: &[Case] = &[
            (
                Method::GET,
                "/v1/users/alice/devices",
                Found::Route(0),
                &[("owner", "alice")],
            ),
            (
                Method::GET,
                "/v1/users/alice/devices/d1",
                Found::Route(1),
                &[("owner", "alice"), ("device", "d1")],
            ),
            (
                Method::GET,
                "/v1/users/alice/devices/d1/tokens",
                Found::Route(2),
                &[("owner", "alice"), ("device", "d1")],
            ),
            (
                Method::GET,
                "/v1/users/alice/devices/d1/temp",
                Found::Route(3),
                &[("owner", "alice"), ("device", "d1"), ("resource", "temp")],
            ),
            // a literal in another case, or with trailing dots or spaces, is no capture's
            (
                Method::GET,
                "/v1/users/alice/devices/d1/Tokens",
                Found::NoPath,
                &[],
            ),
            (
                Method::GET,
                "/v1/users/alice/devices/d1/TOKENS",
                Found::NoPath,
                &[],
            ),
            (
                Method::GET,
                "/v1/users/alice/devices/d1/tokens.",
                Found::NoPath,
                &[],
            ),
            (
                Method::GET,
                "/v1/users/alice/devices/d1/tokens%20",
                Found::NoPath,
                &[],
            ),
            (Method::GET, "/V1/users/alice/devices", Found::NoPath, &[]),
            // literal wins even when its method does not fit: never a device-resource call
            (
                Method::DELETE,
                "/v1/users/alice/devices/d1/tokens",
                Found::MethodNotRouted,
                &[],
            ),
            (
                Method::PATCH,
                "/v1/users/alice/devices/d1",
                Found::MethodNotRouted,
                &[],
            ),
            (
                Method::GET,
                "/users/alice/plugins/nodered/a/b/c",
                Found::Route(4),
                &[("owner", "alice"), ("plugin", "nodered"), ("path", "a/b/c")],
            ),
            (
                Method::GET,
                "/users/alice/plugins/nodered",
                Found::Route(4),
                &[("owner", "alice"), ("plugin", "nodered"), ("path", "")],
            ),
            (Method::GET, "/v1/users", Found::Route(5), &[]),
            (Method::GET, "/", Found::Route(6), &[]),
            (Method::GET, "/v1/users/alice", Found::NoPath, &[]),
            (
                Method::GET,
                "/v1/users/alice/devices/d1/temp/extra",
                Found::NoPath,
                &[],
            ),
            (Method::GET, "/v2/users", Found::NoPath, &[]),
            (
                Method::GET,
                "/v1/users/al%20ice/devices",
                Found::Route(0),
                &[("owner", "al ice")],
            ),
        ];
        for (method, path, want, captures) in cases {
            let s = segs(path);
            let got = trie.find(method, &s);
            assert_eq!(&got, want, "{method} {path}");
            if let Found::Route(i) = got {
                let bound = bind(&templates[i], &s);
                let bound: Vec<(&str, &str)> =
                    bound.iter().map(|(k, v)| (*k, v.as_str())).collect();
                assert_eq!(&bound, captures, "{method} {path}");
            }
        }
    }

    #[test]
    fn backtracking_prefers_literals_then_captures() {
        let mut trie = Trie::default();
        let a = PathTemplate::parse("/a/x/{y}/z").unwrap();
        let b = PathTemplate::parse("/a/{w}/q/{v}").unwrap();
        trie.insert(&a, &[Method::GET], 0).unwrap();
        trie.insert(&b, &[Method::GET], 1).unwrap();
        assert_eq!(trie.find(&Method::GET, &segs("/a/x/q/z")), Found::Route(0));
        // literal `x` leads nowhere for /a/x/q/w, so the capture branch is tried
        assert_eq!(trie.find(&Method::GET, &segs("/a/x/q/w")), Found::Route(1));
    }

    #[test]
    fn duplicate_shapes_are_refused() {
        let mut trie = Trie::default();
        trie.insert(&PathTemplate::parse("/a/{x}").unwrap(), &[Method::GET], 0)
            .unwrap();
        assert_eq!(
            trie.insert(
                &PathTemplate::parse("/a/{y}").unwrap(),
                &[Method::POST, Method::GET],
                1
            ),
            Err(0)
        );
        assert!(trie
            .insert(&PathTemplate::parse("/a/{y}").unwrap(), &[Method::POST], 2)
            .is_ok());
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "a/b",
            "/a//b",
            "/a/{b",
            "/a/{1b}",
            "/a/{b}/{b}",
            "/a/{r..}/x",
            "/a/{*r}/x",
            "/a/{*}",
            "/a/{**r}",
            "/a/%2F",
            "/a/..",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(PathTemplate::parse("/").unwrap().segments.is_empty());
    }

    #[test]
    fn star_and_dots_spell_the_same_tail_capture() {
        let star = PathTemplate::parse("/console/{*path}").unwrap();
        assert_eq!(star, PathTemplate::parse("/console/{path..}").unwrap());
        assert_eq!(
            star.segments.last(),
            Some(&Segment::Rest("path".to_string()))
        );
    }
}
