//! What `validate`, `lint` and `check` print, in the format CI asks for: the same findings and
//! case results as text for people, JSON for scripts, or JUnit XML for CI dashboards.
//!
//! ```text
//! validate/lint ─▶ [Finding] (file, line, code, severity, message) ─▶ findings(format)
//! check suites  ─▶ [CaseResult] (suite, name, request, verdict or failure) ─▶ cases(format)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::config::problem::Problem;

/// Output format of `validate`, `lint` and `check`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON document.
    Json,
    /// JUnit XML (one test suite per file, one test case per finding or case).
    Junit,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// Worth a look; fails only with `--deny warnings`.
    Warning,
    /// Wrong: the command fails.
    Error,
}

/// A problem found in a file: a load problem, a warning, or a lint finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    /// The file, when the finding has one.
    pub file: Option<PathBuf>,
    /// 1-based line, when it has a position.
    pub line: Option<usize>,
    /// A stable code (`load`, `warning`, or a lint code such as `unknown-entity`).
    pub code: String,
    /// How much it matters.
    pub severity: Severity,
    /// What is wrong, in words.
    pub message: String,
}

impl Finding {
    /// A load problem or a located warning.
    pub(crate) fn of_problem(problem: &Problem, code: &str, severity: Severity) -> Finding {
        Finding {
            file: Some(problem.file.clone()),
            line: problem.line,
            code: code.to_string(),
            severity,
            message: problem.message.clone(),
        }
    }

    /// A warning that names no file.
    pub(crate) fn unlocated(code: &str, severity: Severity, message: &str) -> Finding {
        Finding {
            file: None,
            line: None,
            code: code.to_string(),
            severity,
            message: message.to_string(),
        }
    }

    /// `file:line: ` (or nothing).
    fn place(&self) -> String {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => format!("{}:{l}: ", f.display()),
            (Some(f), None) => format!("{}: ", f.display()),
            (None, _) => String::new(),
        }
    }
}

/// Writes `findings` of `tool` as JSON or JUnit (human output is each command's own).
/// `extra` adds members to the JSON document (counts, versions).
pub(crate) fn findings(
    format: Format,
    tool: &str,
    findings: &[Finding],
    extra: Value,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match format {
        Format::Human => {
            for f in findings {
                let severity = match f.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                writeln!(out, "{}{severity}[{}]: {}", f.place(), f.code, f.message)?;
            }
            Ok(())
        }
        Format::Json => {
            let mut doc = serde_json::json!({ "findings": findings });
            merge(&mut doc, extra);
            json(tool, doc, out)
        }
        Format::Junit => {
            let mut suites = Junit::new(tool);
            for f in findings {
                let file = f.file.as_deref().map_or_else(|| tool.to_string(), display);
                let name = format!("{}{}: {}", f.place(), f.code, f.message);
                suites.case(&file, &name, Some((&f.code, &f.message)));
            }
            if findings.is_empty() {
                suites.case(tool, "no findings", None);
            }
            suites.write(out)
        }
    }
}

/// One `check` case and how it ended.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseResult {
    /// The suite file.
    pub suite: PathBuf,
    /// The case's name.
    pub name: String,
    /// The request line as written.
    pub request: String,
    /// The status `serve` would answer.
    pub status: u16,
    /// `allow by [..]` or `403 forbidden by [..]`.
    pub decision: String,
    /// Determining policies.
    pub policies: Vec<String>,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// The AuthZEN question the request asked, when it reached the policies (what the
    /// decision API decides the same way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<serde_json::Value>,
}

/// Writes suite results (and the coverage summary, when asked for) as JSON or JUnit.
pub(crate) fn cases(
    format: Format,
    results: &[CaseResult],
    extra: Value,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    match format {
        Format::Human => Ok(()),
        Format::Json => {
            let mut doc = serde_json::json!({
                "passed": results.len() - failed,
                "failed": failed,
                "cases": results,
            });
            merge(&mut doc, extra);
            json("check", doc, out)
        }
        Format::Junit => {
            let mut suites = Junit::new("iotgate check");
            for r in results {
                let failure = r.failure.as_deref().map(|why| ("case", why));
                let name = format!("{} ({})", r.name, r.request);
                suites.case(&display(&r.suite), &name, failure);
            }
            suites.write(out)
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Writes `{"tool": tool, …doc}` as one pretty-printed JSON document.
pub(crate) fn json(tool: &str, doc: Value, out: &mut dyn Write) -> std::io::Result<()> {
    let mut all = serde_json::json!({ "tool": tool });
    merge(&mut all, doc);
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&all).unwrap_or_default()
    )
}

fn merge(doc: &mut Value, extra: Value) {
    if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
        doc.extend(extra);
    }
}

/// JUnit XML: test suites by name, in first-seen order, each with its cases.
struct Junit {
    name: String,
    suites: Vec<(String, Vec<JunitCase>)>,
}

struct JunitCase {
    name: String,
    failure: Option<(String, String)>,
}

impl Junit {
    fn new(name: &str) -> Junit {
        Junit {
            name: name.to_string(),
            suites: Vec::new(),
        }
    }

    fn case(&mut self, suite: &str, name: &str, failure: Option<(&str, &str)>) {
        let case = JunitCase {
            name: name.to_string(),
            failure: failure.map(|(kind, message)| (kind.to_string(), message.to_string())),
        };
        match self.suites.iter_mut().find(|(s, _)| s == suite) {
            Some((_, cases)) => cases.push(case),
            None => self.suites.push((suite.to_string(), vec![case])),
        }
    }

    fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let count = |cases: &[JunitCase]| {
            let failures = cases.iter().filter(|c| c.failure.is_some()).count();
            (cases.len(), failures)
        };
        let all: Vec<&JunitCase> = self.suites.iter().flat_map(|(_, c)| c).collect();
        let failures = all.iter().filter(|c| c.failure.is_some()).count();
        writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            out,
            r#"<testsuites name="{}" tests="{}" failures="{failures}">"#,
            xml(&self.name),
            all.len()
        )?;
        for (suite, cases) in &self.suites {
            let (tests, failures) = count(cases);
            writeln!(
                out,
                r#"  <testsuite name="{}" tests="{tests}" failures="{failures}" errors="0">"#,
                xml(suite)
            )?;
            for case in cases {
                let (name, class) = (xml(&case.name), xml(suite));
                match &case.failure {
                    None => writeln!(out, r#"    <testcase name="{name}" classname="{class}"/>"#)?,
                    Some((kind, message)) => {
                        writeln!(out, r#"    <testcase name="{name}" classname="{class}">"#)?;
                        writeln!(
                            out,
                            r#"      <failure type="{}" message="{}">{}</failure>"#,
                            xml(kind),
                            xml(message),
                            xml(message)
                        )?;
                        writeln!(out, "    </testcase>")?;
                    }
                }
            }
            writeln!(out, "  </testsuite>")?;
        }
        writeln!(out, "</testsuites>")
    }
}

/// Text escaped for XML attributes and content (control characters XML 1.0 cannot carry
/// become U+FFFD).
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_what_xml_cannot_carry_and_counts_failures() {
        let results = vec![
            CaseResult {
                suite: PathBuf::from("a.toml"),
                name: "bob <reads> \"d1\" & more\u{1}".into(),
                request: "GET /x".into(),
                status: 200,
                decision: "allow".into(),
                policies: vec![],
                failure: None,
                question: None,
            },
            CaseResult {
                suite: PathBuf::from("a.toml"),
                name: "eve".into(),
                request: "GET /y".into(),
                status: 200,
                decision: "allow".into(),
                policies: vec![],
                failure: Some("expected deny (403), got allow".into()),
                question: None,
            },
        ];
        let mut out = Vec::new();
        cases(Format::Junit, &results, Value::Null, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#"<testsuites name="iotgate check" tests="2" failures="1">"#));
        assert!(text.contains("bob &lt;reads&gt; &quot;d1&quot; &amp; more\u{fffd} (GET /x)"));
        assert!(text.contains(r#"message="expected deny (403), got allow""#));
        assert_eq!(text.matches("<testcase ").count(), 2);
    }
}
