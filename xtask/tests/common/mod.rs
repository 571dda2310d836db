//! Helpers the command-line test files share: the repository root, running the built `xtask`
//! binary from it, and a fresh scratch folder per test.
//! (Each test file compiles this module on its own and uses part of it.)
#![allow(dead_code)]

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

/// [`xtask`] on one rayon thread: training gives the same bits on any thread count, and the
/// training tests stay light on a shared machine.
pub fn xtask_one_thread(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("the xtask binary runs")
}

/// What a run printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh, empty scratch folder named for the test file (`group`) and the test (`tag`), removed
/// when dropped (also when the test panics).
pub fn temp_dir(group: &str, tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("continuator-{group}-{tag}-"))
        .tempdir()
        .unwrap()
}
