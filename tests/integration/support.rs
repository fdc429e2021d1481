//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Runs the `iotgate` binary.
#[track_caller]
pub fn iotgate(args: &[&str]) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_iotgate"))
        .args(args)
        .output()
        .expect("run iotgate");
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&stderr));
    (status.code().unwrap_or(-1), text)
}
