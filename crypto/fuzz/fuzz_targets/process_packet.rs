//! Fuzz target: untrusted bytes as a Sphinx packet at a node with a fixed
//! key (see `loopix_crypto_fuzz::bodies::process_packet`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_crypto_fuzz::bodies::process_packet(data);
});
