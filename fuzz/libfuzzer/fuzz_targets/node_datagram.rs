//! Fuzz target `node_datagram`: the body is `loopix_fuzz::node_datagram` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopix_fuzz::node_datagram(data);
});
