//! Fuzz target `provider_pull`: the body is `loopix_fuzz::provider_pull` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::provider_pull(data);
});
