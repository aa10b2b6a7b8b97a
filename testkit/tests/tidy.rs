//! House rules made checkable (rust-analyzer's tidy test): every `.rs` file
//! opens with a `//!` doc saying what it owns; every `allow` carries its
//! reason; no function is over 100 lines outside `bench/`; the node crate
//! does not depend on the client crate.
//!
//! Where the tree does not keep a rule yet, the debt is listed here by name
//! (`LONG_FUNCTIONS`, `DEPENDENCY_DEBT`) and may only shrink: a listed
//! function that grew, or an entry that is no longer needed, fails too, so
//! that the list is removed as the code is fixed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Longest function allowed outside `bench/`.
const MAX_FN_LINES: usize = 100;

/// Functions over the limit today: (file, function, lines now). Split them,
/// then delete their line.
const LONG_FUNCTIONS: &[(&str, &str, usize)] = &[];

/// Dependencies the layout forbids but the tree still has: (crate, on).
/// Empty since the client commands and the testnet left the node crate.
const DEPENDENCY_DEBT: &[(&str, &str)] = &[];

/// Dependencies the layout forbids: (crate, must not depend on).
const FORBIDDEN: &[(&str, &str)] = &[
    ("loopix-engine", "loopix-client"),
    ("loopix-engine", "loopix-testkit"),
    ("loopix-engine", "loopix-fuzz"),
    ("loopix-engine", "loopix-tuning"),
    ("loopix-engine", "loopix"),
    ("loopix-directory", "loopix-engine"),
    ("loopix-directory", "loopix-client"),
    ("loopix-crypto", "loopix-engine"),
    ("loopix-crypto", "loopix-client"),
    ("loopix-client", "loopix-engine"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `.rs` file of the repository, relative to the root, skipping build
/// output and hidden folders.
fn rust_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else if name.ends_with(".rs") {
                let rel = path.strip_prefix(root).expect("under the root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    let root = root();
    walk(&root, &root, &mut out);
    out.sort();
    assert!(out.len() > 50, "found only {} .rs files", out.len());
    out
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|f| !read(f).starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` doc saying what they own: {missing:?}"
    );
}

#[test]
fn every_allow_carries_a_reason() {
    let mut bare = Vec::new();
    for f in rust_files() {
        for (n, line) in read(&f).lines().enumerate() {
            let t = line.trim_start();
            let is_allow = t.starts_with("#[allow(") || t.starts_with("#![allow(");
            if is_allow && !line.contains("reason") {
                bare.push(format!("{f}:{}", n + 1));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "an `allow` needs its reason (`// reason: ...` on the line, or `reason = \"...\"`): {bare:?}"
    );
}

/// (function name, lines from `fn` to its closing brace) of every function
/// in `text` whose body is in braces.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        let rest = [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ]
        .iter()
        .fold(t, |s, p| s.strip_prefix(p).unwrap_or(s));
        let Some(sig) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || line.trim_end().ends_with(';') {
            continue;
        }
        // The closing brace at the same indentation ends it.
        let close = " ".repeat(indent) + "}";
        if let Some(end) = lines[i + 1..]
            .iter()
            .position(|l| l.starts_with(&close) && l.trim_end().len() == close.len())
        {
            out.push((name, end + 2));
        }
    }
    out
}

#[test]
fn no_function_over_the_limit_outside_bench() {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for f in rust_files()
        .into_iter()
        .filter(|f| !f.starts_with("bench/"))
    {
        for (name, len) in functions(&read(&f)) {
            if len <= MAX_FN_LINES {
                continue;
            }
            match LONG_FUNCTIONS
                .iter()
                .find(|(lf, ln, _)| *lf == f && *ln == name)
            {
                Some(&(_, _, allowed)) if len <= allowed => seen.push((f.clone(), name)),
                Some(&(_, _, allowed)) => problems.push(format!(
                    "{f}: `{name}` grew to {len} lines (listed at {allowed}); split it"
                )),
                None => problems.push(format!(
                    "{f}: `{name}` is {len} lines, over {MAX_FN_LINES}; split it"
                )),
            }
        }
    }
    for (f, name, _) in LONG_FUNCTIONS {
        if !seen.iter().any(|(sf, sn)| sf == f && sn == name) {
            problems.push(format!(
                "{f}: `{name}` is no longer over {MAX_FN_LINES} lines (or is gone): delete its line in LONG_FUNCTIONS"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// (package, its normal dependencies' names) from `cargo metadata`.
fn dependencies() -> Vec<(String, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    json["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("name").to_owned();
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("name").to_owned())
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn crates_depend_only_downwards() {
    let deps = dependencies();
    let has = |a: &str, b: &str| deps.iter().any(|(n, d)| n == a && d.iter().any(|x| x == b));
    let mut problems = Vec::new();
    for (a, b) in FORBIDDEN {
        let listed = DEPENDENCY_DEBT.contains(&(a, b));
        match (has(a, b), listed) {
            (true, false) => problems.push(format!("{a} must not depend on {b}")),
            (false, true) => problems.push(format!(
                "{a} no longer depends on {b}: delete the entry in DEPENDENCY_DEBT"
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
