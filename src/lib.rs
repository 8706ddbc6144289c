//! # capture-proxy
//!
//! A thread-per-core, io_uring HTTP/1.1 capture proxy for the OpenSearch Migration Assistant.
//! It forwards every client request to one source cluster unchanged and records every
//! connection's bytes as protobuf `TrafficStream` records (Kafka, or base64 lines in trace
//! files) that the Traffic Replayer reads.
//!
//! Layout (see README "Design"): `cli` → `config` (validated once) → `runtime` (threads,
//! pinned by the `cpu` plan) → `worker` (per core: connection table, batcher, `buf` pools) →
//! `conn` (hot path, spawned by the worker through the function `runtime` hands it) using the
//! sans-IO `http1` framers, the `capture` record builder and `upstream` (destination
//! connections); records cross threads only through `handoff` to the single `sink` thread.
//! `inspect` reads captures back and verifies them. The Kafka producer and `inspect`'s
//! consumer share one Kafka client module, `kafka` (settings, auth, logging). Each module's
//! `//!` docs say what it may depend on; a test (`layering`) holds the code to that and the
//! graph to no cycles.
//!
//! The public surface is what the binary, the tests, benches and fuzz targets use: start the
//! whole proxy in-process with [`start`] (tests and benches do, on port 0), and every sans-IO
//! piece (`http1`, `capture`, `handoff`) on its own. Everything else is `pub(crate)` or in a
//! private module, so the compiler reports dead code.

// The no-panic rule: nothing a peer sends, the sink reports or the system returns may panic
// the proxy. Clippy enforces it for every module but `cli` (it runs once, before the proxy
// starts); test code is exempt (`clippy.toml`). Where an index is provably in bounds, say why
// next to an `#[allow]`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod admin;
mod buf;
pub mod capture;
// Flags and configuration: runs once, before anything starts (a panic there is an exit
// before the proxy runs, not a lost connection).
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
pub mod cli;
pub mod config;
mod conn;
mod cpu;
pub mod handoff;
pub mod handover;
pub mod http1;
pub mod inspect;
pub mod kafka;
pub mod notify;
pub mod otlp;
mod runtime;
mod signal;
pub mod sink;
pub mod stats;
mod tls;
mod upstream;
mod worker;

#[cfg(test)]
mod layering;

pub use runtime::{start, start_with, Handle, StartError};
pub use tls::TlsError;
