//! Fuzz target `access_session`: the body is `loopix_fuzz::access_session` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::access_session(data);
});
