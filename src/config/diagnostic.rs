//! Turning Cedar's `miette` diagnostics into [`Problem`]s with file and line.
//!
//! Cedar reports parse and validation errors as diagnostics whose labels are byte spans
//! into the source text; this module maps the first label of each to a line.

use std::path::Path;

use miette::Diagnostic;

use crate::config::problem::{Problem, Problems};

/// One problem per diagnostic (and per related diagnostic), located in `text`.
pub(crate) fn problems(file: &Path, text: &str, diagnostic: &dyn Diagnostic) -> Problems {
    let mut out = Problems::new();
    let related: Vec<&dyn Diagnostic> = diagnostic
        .related()
        .map(|r| r.collect())
        .unwrap_or_default();
    if related.is_empty() {
        out.push(problem(file, text, diagnostic));
    } else {
        for d in related {
            out.push(problem(file, text, d));
        }
    }
    out
}

/// One problem for a diagnostic, at its first label.
pub(crate) fn problem(file: &Path, text: &str, diagnostic: &dyn Diagnostic) -> Problem {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let mut message = diagnostic.to_string();
    if let Some(help) = diagnostic.help() {
        message = format!("{message} ({help})");
    }
    match offset {
        Some(offset) => Problem::at_offset(file, text, offset, message),
        None => Problem::in_file(file, message),
    }
}
