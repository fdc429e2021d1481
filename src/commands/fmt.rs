//! `iotgate fmt [--check] PATHS…`: policy files formatted as `cedar format` does.
//!
//! ```text
//! PATHS (files, or folders walked for *.cedar) ─▶ parse (a problem: file:line, exit 2)
//!   ─▶ cedar-policy-formatter ─▶ differs? write it (temp file + rename) │ --check: list it, exit 1
//! ```
//!
//! Every file is looked at before the exit status is decided, so one run lists every file
//! that is not formatted and every one that does not parse.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::commands::cli::{ExitStatus, FmtArgs};
use crate::config::diagnostic;
use crate::config::files::{files_with_extension, write_atomic};
use crate::config::problem::{read_text, Problems};
use crate::model::policy::formatted;

/// Runs `fmt`: exit 0 all formatted (or written), 1 `--check` found files to change, 2 a
/// path or a file has a problem.
pub(crate) fn run(args: &FmtArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let mut problems = Problems::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for path in &args.paths {
        if let Some(found) = problems.take(files_with_extension(path, "cedar")) {
            files.extend(found);
        }
    }
    let mut changed = 0;
    for file in &files {
        match format_file(file) {
            Ok(None) => {}
            Ok(Some(pretty)) => {
                changed += 1;
                if args.check {
                    writeln!(out, "would reformat {}", file.display())?;
                } else {
                    write_atomic(file, &pretty)?;
                    writeln!(out, "formatted {}", file.display())?;
                }
            }
            Err(p) => problems.extend(p),
        }
    }
    write!(out, "{problems}")?;
    let verb = if args.check {
        "would be reformatted"
    } else {
        "reformatted"
    };
    writeln!(out, "{changed} of {} files {verb}", files.len())?;
    Ok(if !problems.is_empty() {
        ExitStatus::Error
    } else if args.check && changed > 0 {
        ExitStatus::Failed
    } else {
        ExitStatus::Ok
    })
}

/// The formatted text of `file` when it differs from what is there.
fn format_file(file: &Path) -> Result<Option<String>, Problems> {
    let text = read_text(file).map_err(Problems::from)?;
    if let Err(e) = text.parse::<cedar_policy::PolicySet>() {
        return Err(diagnostic::problems(file, &text, &e));
    }
    let pretty = formatted(&text)
        .map_err(|e| Problems::from(crate::config::problem::Problem::in_file(file, e)))?;
    Ok((pretty != text).then_some(pretty))
}
