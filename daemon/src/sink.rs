//! `sink` — where a run's events go.
//!
//! Owns: [`Events`], the synchronous sink every stage of a run emits its
//! [`RunEvent`]s into, in order, and the [`Observer`] seam through which
//! events the client did not ask for reach other watchers. Never: buffers,
//! queues or knows who listens (the server hands in its connection's bounded outbox; a test, a
//! channel).

use std::sync::Arc;
use tokio::sync::mpsc;
use vx_proto::RunEvent;

/// Where a run's events go: called synchronously, in order, for each event.
/// The server hands in its connection's bounded outbox, so an event is
/// queued (or, for output lines a slow client cannot take, counted) the
/// moment it happens: nothing piles up between the engine and the client.
#[derive(Clone)]
pub struct Events {
    to_client: Arc<dyn Fn(RunEvent) + Send + Sync>,
    observer: Option<Arc<dyn Observer>>,
}

/// Who else watches a run besides its client (the server's bus tee):
/// events the client did not ask for (the cache hits of a changes-only
/// run) go there alone, and only while someone is watching.
pub trait Observer: Send + Sync {
    /// Whether anyone wants the events the client did not ask for; must
    /// cost next to nothing (an atomic load), as it is asked per task.
    fn watched(&self) -> bool;
    /// Takes one event the client does not get.
    fn observe(&self, e: &RunEvent);
}

impl Events {
    pub fn new(f: impl Fn(RunEvent) + Send + Sync + 'static) -> Events {
        Events {
            to_client: Arc::new(f),
            observer: None,
        }
    }

    /// A sink whose events also reach `observer`, which additionally
    /// takes those the client did not ask for ([`Events::observe`]).
    pub fn observed(
        f: impl Fn(RunEvent) + Send + Sync + 'static,
        observer: Arc<dyn Observer>,
    ) -> Events {
        Events {
            to_client: Arc::new(f),
            observer: Some(observer),
        }
    }

    /// The same observer, another client sink (a tee in front of this
    /// one keeps the bus's view of the events the client did not ask for).
    pub fn with_client(&self, f: impl Fn(RunEvent) + Send + Sync + 'static) -> Events {
        Events {
            to_client: Arc::new(f),
            observer: self.observer.clone(),
        }
    }

    /// The observer behind this sink, if any (a tee that keeps what the
    /// watchers are handed wraps it).
    pub fn observer(&self) -> Option<Arc<dyn Observer>> {
        self.observer.clone()
    }

    /// This sink with `observer` in place of its own.
    pub fn with_observer(&self, observer: Arc<dyn Observer>) -> Events {
        Events {
            to_client: self.to_client.clone(),
            observer: Some(observer),
        }
    }

    /// Delivers one event (never fails; the `Result` keeps channel-style
    /// call sites).
    pub fn send(&self, e: RunEvent) -> Result<(), std::convert::Infallible> {
        (self.to_client)(e);
        Ok(())
    }

    /// Whether an observer wants the events the client did not ask for.
    pub fn watched(&self) -> bool {
        self.observer.as_ref().is_some_and(|o| o.watched())
    }

    /// Hands an event the client did not ask for to the observer alone.
    pub fn observe(&self, e: &RunEvent) {
        if let Some(o) = &self.observer {
            o.observe(e)
        }
    }
}

impl From<mpsc::UnboundedSender<RunEvent>> for Events {
    fn from(tx: mpsc::UnboundedSender<RunEvent>) -> Events {
        Events::new(move |e| {
            let _ = tx.send(e);
        })
    }
}
