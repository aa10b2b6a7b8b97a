//! The checked-in corpus of every target in `loopix-fuzz` as a regression
//! suite on stable: each file under `corpus/<target>/` goes through the same
//! body as the libFuzzer target, and the seeds must still reach deep code
//! (the valid ones are accepted by the fixed keys).
//!
//! `LOOPIX_WRITE_CORPUS=1 cargo test -p loopix-fuzz --release --test corpus
//! -- --ignored write_corpus` rewrites the `seed_*` files (after a format
//! change); `bug_*` files, found by the fuzzer, are never rewritten.

use std::fs;
use std::path::{Path, PathBuf};

use loopix_fuzz::TARGETS;

/// Fewest seeds a target must have.
const MIN_SEEDS: usize = 2;
/// Most files a target may keep in the tree (fuzzer growth belongs in a
/// scratch directory).
const MAX_FILES: usize = 40;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, fs::read(&path).expect("read seed"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_runs_clean() {
    for (target, body) in TARGETS {
        let files = files(target);
        let seeds = files.iter().filter(|(n, _)| n.starts_with("seed_")).count();
        assert!(seeds >= MIN_SEEDS, "{target}: {seeds} seeds");
        assert!(files.len() <= MAX_FILES, "{target}: {} files", files.len());
        for (name, bytes) in &files {
            assert!(
                name.starts_with("seed_") || name.starts_with("bug_"),
                "{target}/{name}: corpus files are seed_* or bug_*"
            );
            body(bytes);
        }
    }
}

/// The node seeds reach every outcome, not only the cheap refusals.
#[test]
fn node_seeds_reach_deep_code() {
    let mut total = loopix_fuzz::NodeOutcome::default();
    for (name, bytes) in files("node_datagram") {
        let o = loopix_fuzz::node_datagram_outcome(&bytes);
        total.forwarded += o.forwarded;
        total.stored += o.stored;
        total.pulls += o.pulls;
        total.consumed += o.consumed;
        total.dropped += o.dropped;
        if name == "seed_relay_from_peer.bin" {
            assert_eq!(o.forwarded, 1, "{name}: {o:?}");
        }
    }
    assert!(total.forwarded >= 2, "{total:?}");
    assert!(total.stored >= 1, "{total:?}");
    assert!(total.pulls >= 2, "{total:?}");
    assert!(total.consumed >= 2, "{total:?}");
    assert!(total.dropped >= 5, "{total:?}");
}

/// The seeds written now equal the ones in the tree: a format change that
/// makes them stale fails here, with the command to regenerate them.
#[test]
fn seeds_in_tree_match_the_generator_where_deterministic() {
    // Topology and key seeds hold fresh random keys each time; the rest
    // are a function of the fixed keys and must match byte for byte.
    let scratch = scratch_dir("check");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (target, seeds) in loopix_fuzz::seeds::all(&repo, &scratch) {
        if matches!(target, "topology_file" | "key_files") {
            continue;
        }
        for (name, bytes) in seeds {
            let path = corpus_dir(target).join(format!("{name}.bin"));
            let have = fs::read(&path).unwrap_or_default();
            assert!(
                have == bytes,
                "{} is stale; regenerate: LOOPIX_WRITE_CORPUS=1 cargo test -p loopix-fuzz --release --test corpus -- --ignored write_corpus",
                path.display()
            );
        }
    }
    let _ = fs::remove_dir_all(&scratch);
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loopix-fuzz-seeds-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
#[ignore = "writes the seed corpus; run with LOOPIX_WRITE_CORPUS=1"]
fn write_corpus() {
    assert!(
        std::env::var_os("LOOPIX_WRITE_CORPUS").is_some(),
        "set LOOPIX_WRITE_CORPUS=1 to rewrite the seeds"
    );
    let scratch = scratch_dir("write");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (target, seeds) in loopix_fuzz::seeds::all(&repo, &scratch) {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        for (name, _) in files(target) {
            if name.starts_with("seed_") {
                fs::remove_file(dir.join(name)).expect("remove old seed");
            }
        }
        for (name, bytes) in seeds {
            fs::write(dir.join(format!("{name}.bin")), bytes).expect("write seed");
        }
    }
    let _ = fs::remove_dir_all(&scratch);
}
