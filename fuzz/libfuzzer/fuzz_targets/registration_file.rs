//! Fuzz target `registration_file`: the body is `loopix_fuzz::registration_file` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::registration_file(data);
});
