//! Fuzz target `topology_file`: the body is `loopix_fuzz::topology_file` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::topology_file(data);
});
