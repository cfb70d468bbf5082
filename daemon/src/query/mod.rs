//! `query` — the live read-only methods: `graph.get` ([`graph`]),
//! `task.explain` and `task.log` ([`task`]), `runs.active` (from the
//! [`crate::bus`]).
//!
//! Owns: turning a request into the engine's own computations (selection
//! through `graph::select`, keys through `engine::explain_keys`, the same
//! code a run uses, never a second hasher) and shaping their answers as
//! `vx_proto::live` types; bounding what a log answer carries.
//! Never: runs a task, writes the cache or the history, speaks JSON-RPC.

pub mod graph;
pub mod task;

use vx_proto::live::RunsActive;

/// `runs.active`: the runs of this engine process in progress.
pub fn runs_active() -> RunsActive {
    RunsActive {
        runs: crate::bus::global().active(),
    }
}
