//! Fuzz target `pipeline`: Valid request streams read in fuzzer-chosen pieces, framed and captured the way conn.rs does: the decoded reads are the stream, with one end-of-message marker right after each request.
//! The invariant lives in `capture_proxy_fuzz::fuzz_pipeline` (shared with tests/integration/props.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| capture_proxy_fuzz::fuzz_pipeline(data));
