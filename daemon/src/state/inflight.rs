//! `state::inflight` — executions shared between concurrent runs.
//!
//! Owns: the executions in flight by task key (a run that needs a key
//! another run is executing joins it instead of running it again; the
//! execution is cancelled only when every attached run is), and one lock
//! per task id, so runs that would write the same outputs with different
//! keys take turns.
//! Never: executes anything itself (the engine's `task` stage does).

use super::Hot;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A finished execution, handed to every run that joined it.
pub struct Finished {
    pub result: vx_proto::TaskResult,
    pub log: Vec<u8>,
}

/// One task execution in flight, shared by every run that needs its key.
pub struct Inflight {
    pub(super) done: tokio::sync::watch::Sender<Option<Arc<Finished>>>,
    pub(super) cancel: tokio::sync::watch::Sender<Option<i32>>,
    pub(super) attached: AtomicUsize,
}

impl Inflight {
    pub fn done_receiver(&self) -> tokio::sync::watch::Receiver<Option<Arc<Finished>>> {
        self.done.subscribe()
    }

    /// What the execution listens to: fires only when every attached run
    /// has been cancelled.
    pub fn cancel_receiver(&self) -> tokio::sync::watch::Receiver<Option<i32>> {
        self.cancel.subscribe()
    }

    /// Whether another run is waiting for this execution.
    pub fn has_joiners(&self) -> bool {
        self.attached.load(Ordering::Acquire) > 1
    }

    /// A run attached to this execution was cancelled.
    pub fn detach(&self, sig: i32) {
        if self.attached.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.cancel.send_replace(Some(sig));
        }
    }
}

impl Hot {
    /// Attaches a run to the execution of `key`: returns the entry and
    /// whether this run must execute it (`true`) or join it (`false`).
    pub fn attach(&self, key: &str) -> (Arc<Inflight>, bool) {
        let mut m = match self.inflight.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = m.get(key) {
            e.attached.fetch_add(1, Ordering::AcqRel);
            return (e.clone(), false);
        }
        let e = Arc::new(Inflight {
            done: tokio::sync::watch::channel(None).0,
            cancel: tokio::sync::watch::channel(None).0,
            attached: AtomicUsize::new(1),
        });
        m.insert(key.to_string(), e.clone());
        (e, true)
    }

    /// Publishes an execution's outcome and retires the entry.
    pub fn finish(&self, key: &str, entry: &Arc<Inflight>, finished: Arc<Finished>) {
        if let Ok(mut m) = self.inflight.lock()
            && m.get(key).is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            m.remove(key);
        }
        entry.done.send_replace(Some(finished));
    }

    pub fn task_lock(&self, task_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = match self.task_locks.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(task_id.to_string()).or_default().clone()
    }
}
