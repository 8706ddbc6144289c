//! The integration tests, one binary: each module was a test binary of its own, and every one
//! of them linked the whole crate; one binary rebuilds about 3× faster after a library edit
//! (measured, README "Development"). Run one file's tests with a filter, e.g.
//! `cargo test --test integration proxy_capture::`.
//!
//! `tests/alloc_steady_state.rs` stays a binary of its own: it installs a counting global
//! allocator, which would count every other test running in the same process.

mod common;

mod admin_abuse;
mod admin_metrics;
mod binary;
mod dashboards;
mod fault_edges;
mod fault_matrix;
mod framing_parity;
mod framing_rules;
mod handover;
mod kafka_e2e;
mod kafka_real_faults;
mod large_bodies;
mod load_script;
mod otlp_export;
mod props;
mod proxy_capture;
mod proxy_errors;
mod proxy_headers;
mod proxy_kafka;
mod proxy_pool;
mod proxy_spool;
mod proxy_tls;
mod replay_oracle;
mod systemd_notify;
