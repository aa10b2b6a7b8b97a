//! Fuzz target: untrusted bytes as a link frame for a fixed link key, and
//! a replay window driven by its counter (see
//! `loopix_crypto_fuzz::bodies::open_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_crypto_fuzz::bodies::open_frame(data);
});
