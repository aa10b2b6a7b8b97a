//! What the `loopix` command-line tests share: run the binary, and read
//! its output as text. A panic in the binary fails the test that ran it,
//! whatever exit code the test expected.

#![allow(dead_code)] // reason: each test binary uses a different subset of these helpers

use std::process::{Command, Output};

/// Run `loopix ARGS` to the end.
pub fn loopix(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_loopix"))
        .args(args)
        .output()
        .expect("run loopix");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
