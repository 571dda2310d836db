//! Helpers the command-line test files share: the repository root, running the built `xtask`
//! binary from it, and a fresh scratch folder per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `cargo xtask ARGS` (the built binary) from the repository root.
pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the xtask binary runs")
}

/// A fresh, empty scratch folder named for the test file (`group`) and the test (`tag`), removed
/// when dropped (also when the test panics).
pub fn temp_dir(group: &str, tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("continuator-{group}-{tag}-"))
        .tempdir()
        .unwrap()
}
