//! Helpers shared by unit tests.

use std::path::Path;

use crate::config::problem::Problems;

/// Writes `files` (relative path, text) into a new temporary folder.
pub(crate) fn write_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Problems as `file:line: message` lines, with the folder prefix removed.
pub(crate) fn messages(dir: &Path, problems: Problems) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    problems
        .iter()
        .map(|p| p.to_string().replace(&prefix, ""))
        .collect()
}

#[path = "../tests/common/fs.rs"]
mod fs;
pub(crate) use fs::copy_dir;
