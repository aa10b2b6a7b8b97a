//! Fuzz target `config_file`: the body is `loopix_fuzz::config_file` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::config_file(data);
});
