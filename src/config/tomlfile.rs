//! Strict TOML files: unknown keys are errors, and every error has a line.
//!
//! ```text
//! file text ──DeTable (spans)──▶ KeyLines (dotted key path → line)
//!           ──serde + serde_ignored──▶ T, plus every ignored (unknown) key as a Problem
//! ```
//!
//! Structs deserialized here must *not* use `deny_unknown_fields`: unknown keys are
//! collected by `serde_ignored` so that all of them are reported at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::problem::{line_of_offset, read_text, Problem, Problems};

/// A parsed TOML file that can still say on which line a key stands.
#[derive(Debug, Clone)]
pub struct TomlFile {
    path: PathBuf,
    lines: HashMap<String, usize>,
    digest: u64,
}

/// A digest of a file's text (to tell whether it changed since it was read).
pub(crate) fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl TomlFile {
    /// The [`digest`] of the text this was parsed from.
    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Line of a dotted key path (`route.3.action`), or of its nearest parent that exists.
    pub fn line(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if let Some(line) = self.lines.get(key) {
                return Some(*line);
            }
            key = &key[..key.rfind('.')?];
        }
    }

    /// A problem located at a key of this file.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem::at_line(&self.path, self.line(key), message)
    }
}

/// A deserialized file, the line index of its keys, and its unknown keys as problems (so
/// callers can go on checking and report everything at once).
#[derive(Debug)]
pub(crate) struct Parsed<T> {
    /// The value.
    pub value: T,
    /// Lines of its keys.
    pub file: TomlFile,
    /// One problem per unknown key, in line order.
    pub unknown: Problems,
}

/// Reads and deserializes a TOML file.
///
/// # Errors
/// The file cannot be read, is not TOML, or does not fit `T` (with the unknown keys found
/// before the error).
pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Result<Parsed<T>, Problems> {
    let text = read_text(path)?;
    parse(path, &text)
}

/// Like [`load`], for text already in memory (`path` is used in messages).
///
/// # Errors
/// As [`load`].
pub(crate) fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<Parsed<T>, Problems> {
    let at = |e: &toml::de::Error| e.span().map(|s| line_of_offset(text, s.start));
    let table = DeTable::parse(text)
        .map_err(|e| Problem::at_line(path, at(&e), format!("invalid toml: {}", e.message())))?;
    let mut lines = HashMap::new();
    index_table(text, "", table.get_ref(), &mut lines);
    let file = TomlFile {
        path: path.to_path_buf(),
        lines,
        digest: digest(text),
    };
    let deserializer = toml::Deserializer::from(table);
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(deserializer, |p| unknown.push(clean_path(&p)));
    unknown.sort_by_key(|key| file.line(key));
    let mut problems = Problems::new();
    for key in &unknown {
        problems.push(file.problem(key, format!("unknown key `{key}`")));
    }
    match value {
        Ok(value) => Ok(Parsed {
            value,
            file,
            unknown: problems,
        }),
        Err(e) => {
            problems.push(Problem::at_line(path, at(&e), e.message().to_string()));
            Err(problems)
        }
    }
}

/// `serde_ignored` writes `?` for `Option` layers; drop them to get the key path.
fn clean_path(path: &serde_ignored::Path<'_>) -> String {
    path.to_string()
        .split('.')
        .filter(|s| *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

fn index_table(text: &str, prefix: &str, table: &DeTable<'_>, lines: &mut HashMap<String, usize>) {
    for (key, value) in table {
        let path = join(prefix, key.get_ref());
        lines.insert(path.clone(), line_of_offset(text, key.span().start));
        index_value(text, &path, value, lines);
    }
}

fn index_value(
    text: &str,
    path: &str,
    value: &Spanned<DeValue<'_>>,
    lines: &mut HashMap<String, usize>,
) {
    match value.get_ref() {
        DeValue::Table(table) => index_table(text, path, table, lines),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = join(path, &i.to_string());
                lines.insert(item_path.clone(), line_of_offset(text, item.span().start));
                index_value(text, &item_path, item, lines);
            }
        }
        _ => {}
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "fields exist to be deserialized")]
    struct Doc {
        server: Server,
        #[serde(default)]
        item: Vec<Item>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "fields exist to be deserialized")]
    struct Server {
        listen: String,
        #[serde(default)]
        extra: Option<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "fields exist to be deserialized")]
    struct Inner {
        #[serde(default)]
        a: u32,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "fields exist to be deserialized")]
    struct Item {
        name: String,
    }

    fn messages(err: Problems) -> Vec<String> {
        err.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn all_unknown_keys_are_reported_with_lines() {
        let text = "[server]\nlisten = \"x\"\nlisen = 1\n[server.extra]\nb = 2\n\n[[item]]\nname = \"n\"\nnmae = \"m\"\n[bogus]\n";
        let parsed = parse::<Doc>(Path::new("c.toml"), text).unwrap();
        assert_eq!(
            messages(parsed.unknown),
            vec![
                "c.toml:3: unknown key `server.lisen`",
                "c.toml:5: unknown key `server.extra.b`",
                "c.toml:9: unknown key `item.0.nmae`",
                "c.toml:10: unknown key `bogus`",
            ]
        );
    }

    #[test]
    fn syntax_and_type_errors_have_lines() {
        let err = parse::<Doc>(Path::new("c.toml"), "[server]\nlisten = \n").unwrap_err();
        assert!(messages(err)[0].starts_with("c.toml:2: invalid toml"));
        let err = parse::<Doc>(Path::new("c.toml"), "[server]\n\nlisten = 5\n").unwrap_err();
        let msg = &messages(err)[0];
        assert!(msg.starts_with("c.toml:3: "), "{msg}");
    }

    #[test]
    fn key_lines_fall_back_to_parent() {
        let file = parse::<Doc>(
            Path::new("c.toml"),
            "\n[server]\nlisten = \"x\"\n[[item]]\nname = \"n\"\n",
        )
        .unwrap()
        .file;
        assert_eq!(file.line("server.listen"), Some(3));
        assert_eq!(file.line("item.0.name"), Some(5));
        assert_eq!(file.line("server.missing"), Some(2));
        assert_eq!(file.line("nothing"), None);
    }
}
