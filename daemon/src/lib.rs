//! `vxd` — the vx engine and the servers that expose it.
//!
//! The modules follow the pipeline; each owns one concept (see its doc
//! comment and `docs/ARCHITECTURE.md`): `workspace` → `graph` → `hash` →
//! `cache` → `exec` (+ `procstat`, `persist` for long-running tasks),
//! orchestrated by `engine`, kept hot by `state` (daemon), looped by `watch`,
//! remembered by `history` (read back by `inspect`, rendered by `profile`),
//! exposed by `server`.

pub mod cache;
pub mod engine;
pub mod exec;
pub mod fsx;
pub mod globs;
pub mod graph;
pub mod hash;
pub mod history;
pub mod inspect;
pub mod persist;
pub mod procstat;
pub mod profile;
pub mod server;
pub mod state;
pub mod watch;
pub mod workspace;
