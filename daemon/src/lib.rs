//! `vxd` — the vx engine and the servers that expose it.
//!
//! The modules follow the pipeline; each owns one concept (see its doc
//! comment and `docs/ARCHITECTURE.md`): `workspace` → `graph` → `hash` →
//! `cache` → `exec` (+ `procstat`, `persist` for long-running tasks),
//! orchestrated by `engine`, kept hot by `state` (daemon), looped by `watch`,
//! remembered by `history` (read back by `inspect`, rendered by `profile`),
//! exposed by `server`.

pub mod bus;
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
pub mod query;
pub mod server;
pub mod state;
pub mod watch;
pub mod workspace;

#[cfg(test)]
mod knob_defaults {
    use std::time::Duration;
    use vx_proto::knobs::{self, Knob};

    /// The defaults `docs/cli.md` states (from `vx_proto::knobs`) are the
    /// ones the engine applies.
    #[test]
    fn the_tables_defaults_are_the_engines() {
        let ms = |d: Duration| d.as_millis().to_string();
        let cases: [(Knob, String); 6] = [
            (knobs::KILL_GRACE_MS, ms(crate::exec::DEFAULT_KILL_GRACE)),
            (
                knobs::READY_NOTICE_MS,
                ms(crate::persist::DEFAULT_READY_NOTICE),
            ),
            (
                knobs::CACHE_LOCK_TIMEOUT_MS,
                ms(crate::engine::CACHE_LOCK_WAIT),
            ),
            (
                knobs::HISTORY_MAX_RUNS,
                crate::history::DEFAULT_MAX_RUNS.to_string(),
            ),
            (
                knobs::HISTORY_MAX_AGE_DAYS,
                crate::history::DEFAULT_MAX_AGE_DAYS.to_string(),
            ),
            (
                knobs::DAEMON_IDLE_TIMEOUT,
                format!("{}h", crate::server::daemon::DEFAULT_IDLE.as_secs() / 3600),
            ),
        ];
        for (k, code) in cases {
            assert_eq!(k.default, code, "{}: table vs engine default", k.name);
        }
    }
}
