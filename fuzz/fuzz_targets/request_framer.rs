//! Fuzz target `request_framer`: Arbitrary bytes split at fuzzer-chosen points: the request framer never panics and reports the same events at the same offsets as one whole-input call.
//! The invariant lives in `capture_proxy_fuzz::fuzz_request_framer` (shared with tests/integration/props.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| capture_proxy_fuzz::fuzz_request_framer(data));
