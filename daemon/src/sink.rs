//! `sink` — where a run's events go.
//!
//! Owns: [`Events`], the synchronous sink every stage of a run emits its
//! [`RunEvent`]s into, in order. Never: buffers, queues or knows who
//! listens (the server hands in its connection's bounded outbox; a test, a
//! channel).

use std::sync::Arc;
use tokio::sync::mpsc;
use vx_proto::RunEvent;

/// Where a run's events go: called synchronously, in order, for each event.
/// The server hands in its connection's bounded outbox, so an event is
/// queued (or, for output lines a slow client cannot take, counted) the
/// moment it happens: nothing piles up between the engine and the client.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(RunEvent) + Send + Sync>);

impl Events {
    pub fn new(f: impl Fn(RunEvent) + Send + Sync + 'static) -> Events {
        Events(Arc::new(f))
    }

    /// Delivers one event (never fails; the `Result` keeps channel-style
    /// call sites).
    pub fn send(&self, e: RunEvent) -> Result<(), std::convert::Infallible> {
        (self.0)(e);
        Ok(())
    }
}

impl From<mpsc::UnboundedSender<RunEvent>> for Events {
    fn from(tx: mpsc::UnboundedSender<RunEvent>) -> Events {
        Events::new(move |e| {
            let _ = tx.send(e);
        })
    }
}
