//! `engine::watch` — the dev loop behind `vx watch`.
//!
//! Owns: one watch client's cycle loop — an initial run, then waiting for
//! the daemon's watcher ([`Hot`]) to report changes, debouncing them, and
//! running the next cycle with the client's [`Session`] (so only tasks whose
//! keys changed run, and persistent tasks restart only when their key
//! changed); changes that arrive during a cycle start the next one; a failed
//! cycle keeps watching; when the client stops, every persistent task of its
//! session is stopped. Any number of watch clients share the one watcher.
//!
//! Never: watches files itself (`state` does), or decides what a cycle runs
//! (the engine's other stages).

use super::{EngineError, Events, Session, run_in};
use crate::state::Hot;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vx_proto::{RunEvent, WatchParams, WatchSummary};

/// The quiet time after the last change before a cycle starts.
pub const DEFAULT_DEBOUNCE_MS: u64 = 100;
/// A steady stream of changes still starts a cycle after this long.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Runs the loop until `cancel` fires. The initial cycle's errors (a broken
/// config, an unknown task) end the loop; later ones are reported and the
/// loop keeps watching for a fix.
pub async fn run(
    params: WatchParams,
    events: Events,
    mut cancel: watch::Receiver<Option<i32>>,
    hot: Arc<Hot>,
) -> Result<WatchSummary, EngineError> {
    let debounce = Duration::from_millis(params.debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS));
    let session = Arc::new(Session::default());
    let mut changes = hot.subscribe_changes();
    let mut cycle = 0u64;
    let mut pending: Vec<String> = Vec::new();
    let result = loop {
        cycle += 1;
        let seen = *changes.borrow_and_update();
        let _ = events.send(RunEvent::WatchCycle {
            cycle,
            changes: std::mem::take(&mut pending),
        });
        let r = run_in(
            params.run.clone(),
            events.clone(),
            cancel.clone(),
            Some(hot.clone()),
            Some(session.clone()),
        )
        .await;
        if cancel.borrow().is_some() {
            break Ok(());
        }
        match r {
            Ok(summary) => {
                let _ = events.send(RunEvent::Settled { summary });
            }
            Err(e) if cycle == 1 => break Err(e),
            Err(e) => {
                let _ = events.send(RunEvent::Warning {
                    message: format!("{} (still watching)", e.message),
                });
            }
        }
        // Changes that came during the cycle start the next one at once.
        if *changes.borrow() == seen {
            tokio::select! {
                r = changes.changed() => if r.is_err() { break Ok(()) },
                _ = cancel.changed() => break Ok(()),
            }
        }
        // Debounce: wait for a quiet `debounce`, at most MAX_DEBOUNCE.
        let t0 = Instant::now();
        let mut stop = false;
        loop {
            let wait = debounce.min(MAX_DEBOUNCE.saturating_sub(t0.elapsed()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => break,
                r = changes.changed() => {
                    if r.is_err() || t0.elapsed() >= MAX_DEBOUNCE {
                        break;
                    }
                }
                _ = cancel.changed() => { stop = true; break; }
            }
        }
        if stop {
            break Ok(());
        }
        pending = hot.changes_since(seen, 20);
    };
    session.stop_all().await;
    result.map(|()| WatchSummary {
        cycles: cycle,
        exit_code: 0,
    })
}
