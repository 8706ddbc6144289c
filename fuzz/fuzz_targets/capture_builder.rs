//! Fuzz target `capture_builder`: Fuzzer-chosen builder calls with a small record limit: the records decode back to exactly the calls made (reads, writes, end-of-message markers), numbered 1..=N, each within the limit.
//! The invariant lives in `capture_proxy_fuzz::fuzz_capture_builder` (shared with tests/integration/props.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| capture_proxy_fuzz::fuzz_capture_builder(data));
