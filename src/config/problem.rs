//! Load-time problems: what `validate` prints and `serve` refuses to start with.
//!
//! Every loader (config, routes, schema, policies, directory) reports into a
//! [`Problems`] list instead of stopping at the first error, so an operator sees
//! everything that is wrong in one run:
//!
//! ```text
//! loader ──Problem{file, line, message}──▶ Problems ──Display──▶ "file:line: message" lines
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the problem has a position.
    pub line: Option<usize>,
    /// Lowercase message, no trailing period.
    pub message: String,
}

impl Problem {
    /// A problem about a whole file (missing, unreadable, ...).
    pub fn in_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }

    /// A problem at a line of a file.
    pub fn at_line(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// A problem at a byte offset of a file's text.
    pub fn at_offset(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        Self::at_line(file, Some(line_of_offset(text, offset)), message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found while loading; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// An empty list to collect into.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one problem.
    pub fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    /// Adds every problem of another list.
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// `Ok(value)` when no problem was collected, else the problems.
    ///
    /// # Errors
    /// Returns `self` when it holds at least one problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Problems> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Records the error of `result` (if any) and returns its value.
    pub fn take<T>(&mut self, result: Result<T, Problems>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problems) => {
                self.extend(problems);
                None
            }
        }
    }
}

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Self {
        Self(vec![problem])
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// 1-based line number of a byte offset (offsets past the end count as the last line).
pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Line numbers of increasing offsets in one text, in time linear in the text (for files
/// with a million entities, where counting from the start each time would be quadratic).
#[derive(Debug)]
pub(crate) struct LineCounter<'t> {
    text: &'t [u8],
    offset: usize,
    line: usize,
}

impl<'t> LineCounter<'t> {
    /// Starts at line 1, offset 0.
    pub(crate) fn new(text: &'t str) -> Self {
        Self {
            text: text.as_bytes(),
            offset: 0,
            line: 1,
        }
    }

    /// 1-based line of `offset`; offsets must not decrease between calls (a smaller one
    /// restarts from the beginning).
    pub(crate) fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        if offset < self.offset {
            *self = Self {
                text: self.text,
                offset: 0,
                line: 1,
            };
        }
        self.line += self.text[self.offset..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.offset = offset;
        self.line
    }
}

/// Reads a text file, turning an I/O error into a problem about that file.
///
/// # Errors
/// The file cannot be read or is not UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, Problem> {
    std::fs::read_to_string(path).map_err(|e| Problem::in_file(path, format!("cannot read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_count_newlines_before_offset() {
        let text = "a\nbb\nccc";
        assert_eq!(line_of_offset(text, 0), 1);
        assert_eq!(line_of_offset(text, 2), 2);
        assert_eq!(line_of_offset(text, 5), 3);
        assert_eq!(line_of_offset(text, 500), 3);
    }

    #[test]
    fn line_counter_agrees_with_line_of_offset() {
        let text = "a\nbb\n\nccc\n";
        let mut counter = LineCounter::new(text);
        for offset in [0, 1, 2, 4, 5, 6, 9, 3, 100] {
            assert_eq!(
                counter.line_at(offset),
                line_of_offset(text, offset),
                "{offset}"
            );
        }
    }

    #[test]
    fn display_has_file_and_line() {
        let p = Problem::at_line(Path::new("x.toml"), Some(3), "bad key `y`");
        assert_eq!(p.to_string(), "x.toml:3: bad key `y`");
        let p = Problem::in_file(Path::new("x.toml"), "cannot read");
        assert_eq!(p.to_string(), "x.toml: cannot read");
    }
}
