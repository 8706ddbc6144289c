//! Fuzz target `head_rewriter`: Arbitrary heads and --setHeader lists: the rewriter never panics, its output matches the documented rewrite, and a head the framer accepts stays one it accepts.
//! The invariant lives in `capture_proxy_fuzz::fuzz_head_rewriter` (shared with tests/integration/props.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| capture_proxy_fuzz::fuzz_head_rewriter(data));
