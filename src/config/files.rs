//! Walking the folders a config names (policy folders, directory folders, watched paths), and
//! the hex form of their content digests.
//!
//! ```text
//! folder ──files_below(keep)──▶ every file below it that `keep` accepts, sorted
//!        (a file path names itself; unreadable entries and non-UTF-8 names are problems)
//! ```
//!
//! Names starting with `.` are skipped, and each folder is read once by its real path
//! (links are followed; a link loop ends): a Kubernetes ConfigMap mount (`file ->
//! ..data/file`, `dir -> ..data/dir` for an `items` path, `..data -> ..2026_12_01_…/`) then
//! yields each file once, and editor swap files never load.

use std::path::{Path, PathBuf};

use crate::config::problem::{Problem, Problems};

/// Replaces `path` with `text` through a temporary file beside it (`*.tmp~`, which no
/// folder walk loads), so a reader — a watching gateway — never sees half a file.
///
/// # Errors
/// The temporary file cannot be written or renamed.
pub(crate) fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Lowercase hex of bytes (content digests in versions).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Every file with extension `ext` below `dir` (sorted, recursive); a file path names itself.
///
/// # Errors
/// The path does not exist, or a folder or entry cannot be read; entries whose names are
/// not UTF-8 are refused rather than skipped.
pub(crate) fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, Problems> {
    files_below(dir, |path| {
        path.extension().and_then(|e| e.to_str()) == Some(ext)
    })
}

/// Every file below `dir` that `keep` accepts (sorted, recursive); a file path names itself.
///
/// # Errors
/// As [`files_with_extension`].
pub(crate) fn files_below(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, Problems> {
    let meta =
        std::fs::metadata(dir).map_err(|e| Problem::in_file(dir, format!("cannot read: {e}")))?;
    if meta.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut problems = Problems::new();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // folders by their real path: a linked folder is read once, and a link loop ends
    let mut seen = std::collections::HashSet::new();
    while let Some(folder) = stack.pop() {
        if !seen.insert(std::fs::canonicalize(&folder).unwrap_or_else(|_| folder.clone())) {
            continue;
        }
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem::in_file(
                    &folder,
                    format!("cannot read folder: {e}"),
                ));
                continue;
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    problems.push(Problem::in_file(&folder, format!("bad folder entry: {e}")));
                    continue;
                }
            };
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                problems.push(Problem::in_file(&path, "file name is not UTF-8"));
                continue;
            };
            if name.starts_with('.') {
                continue;
            } else if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    problems.into_result(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout kubelet writes for a ConfigMap volume.
    #[cfg(unix)]
    #[test]
    fn a_configmap_mount_yields_each_file_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let version = root.join("..2026_12_01_10_00_00.123");
        std::fs::create_dir_all(version.join("projects")).unwrap();
        std::fs::write(version.join("roles.cedar"), "").unwrap();
        std::fs::write(version.join("projects/a.cedar"), "").unwrap();
        symlink("..2026_12_01_10_00_00.123", root.join("..data")).unwrap();
        symlink("..data/roles.cedar", root.join("roles.cedar")).unwrap();
        symlink("..data/projects", root.join("projects")).unwrap();
        std::fs::write(root.join(".roles.cedar.swp"), "").unwrap();
        let found = files_with_extension(root, "cedar").unwrap();
        assert_eq!(
            found,
            [root.join("projects/a.cedar"), root.join("roles.cedar")]
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_linked_into_itself_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/p.cedar"), "").unwrap();
        std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
        let found = files_with_extension(root, "cedar").unwrap();
        assert_eq!(found, [root.join("a/p.cedar")]);
    }
}
