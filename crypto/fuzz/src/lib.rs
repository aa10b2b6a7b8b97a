//! Fuzz targets of `loopix-crypto` (a cargo-fuzz project, outside the main
//! workspace so that the workspace builds on stable without libFuzzer).
//!
//! The target bodies live in [`bodies`], shared with the stable regression
//! test `crypto/tests/fuzz_corpus.rs`. Owns: everything under `crypto/fuzz/`.

pub mod bodies;
