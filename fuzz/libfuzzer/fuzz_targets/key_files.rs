//! Fuzz target `key_files`: the body is `loopix_fuzz::key_files` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::key_files(data);
});
