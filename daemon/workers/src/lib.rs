//! `vxd-workers` — worker links on gRPC (tonic/prost).
//!
//! Owns: the code generated from `proto/worker/v1/worker.proto` ([`pb`],
//! at build time with `protox`: no system `protoc`), the conversions
//! between it and the engine's `engine::distribute` types with every
//! peer-controlled field validated and bounded ([`wire`]), the daemon's
//! worker door ([`door::WorkerDoor`], an attachment: token check, link
//! limits, hello deadline, keepalive) and the `vxd worker` process
//! ([`worker::worker_main`]).
//!
//! Never: decides anything about leases, keys, retries or scheduling (the
//! engine's `engine::distribute` does: this crate is a pipe), trusts a
//! peer's message beyond its validated shape, or logs a token.

pub mod door;
pub mod wire;
pub mod worker;

/// The generated messages and the `WorkerLink` client and server.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("vx.worker.v1");
}

pub use door::WorkerDoor;
pub use worker::worker_main;

/// The largest message either side decodes (a log line is cut well below).
pub const MAX_MESSAGE: usize = 1 << 20;
