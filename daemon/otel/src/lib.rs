//! `vxd-otel` — the OpenTelemetry exporter of `vxd`: every traced run
//! becomes a trace in the CI/CD semantic conventions (a run span, a span
//! per task) plus run and task metrics, sent over OTLP (HTTP/protobuf or
//! gRPC) to the collector the standard `OTEL_*` variables name.
//!
//! Owns: the exporter's subscription to the engine's event bus (a
//! passive subscriber — a traced run publishes every task, its cache hits
//! included, whatever its client asked for — with its own bounded inbox:
//! output lines are never queued), the engine's tracing policy
//! ([`vxd::telemetry::set_policy`]: a run is traced when the daemon's
//! environment or the run's client environment names an endpoint), the
//! per-run [`spans::Runs`] state, and bounded, timed sends off the run's
//! path ([`MAX_INFLIGHT`] exports at once; more are dropped with a
//! warning).
//! Never: blocks, slows or fails a run (the bus never waits for it; a dead
//! or slow collector costs only dropped telemetry), or links into the
//! engine (the engine sees only the policy function and the bus).

pub mod config;
pub mod send;
pub mod spans;
pub mod vcs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vx_proto::live::{
    BusEventParams, EVENTS_EVENT, EVENTS_RESYNC, RUN_FINISHED, RUN_STARTED, RunFinishedParams,
    RunStartedParams, SubscribeParams,
};
use vx_proto::{Id, RunEvent};
use vxd::bus::{Bus, LineQueue, Queue, Subscription};

/// Exports in flight at once; a batch beyond them is dropped (counted).
pub const MAX_INFLIGHT: usize = 8;
/// How long a stopping exporter waits for its last exports.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The daemon's own `OTEL_*` variables (read once, at start).
fn base() -> &'static BTreeMap<String, String> {
    static B: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    B.get_or_init(|| {
        std::env::vars()
            .filter(|(k, _)| k.starts_with("OTEL_"))
            .collect()
    })
}

/// The engine's policy: a run is traced when its settings (the daemon's,
/// overlaid by the run's client's) name an OTLP endpoint. A traced run
/// subscribes the exporter to the bus (before the run publishes anything:
/// the engine asks while it prepares the run); until then the exporter
/// costs the bus nothing.
fn policy(env: &BTreeMap<String, String>) -> bool {
    let run: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let on = config::wanted(&config::merged(base(), &run));
    if on && let Some(l) = LINK.get() {
        l.activate();
    }
    on
}

/// The exporter's subscription to the bus, made by the first traced run.
struct Link {
    bus: Arc<Bus>,
    sub: Mutex<Option<(Arc<Inbox>, Subscription)>>,
    wake: Notify,
    n: AtomicU64,
}

static LINK: OnceLock<Link> = OnceLock::new();

impl Link {
    fn activate(&self) {
        let Ok(mut g) = self.sub.lock() else { return };
        if g.is_some() {
            return;
        }
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        let inbox = Arc::new(Inbox::default());
        // Passive: a traced run publishes every task for its exporter anyway.
        let sub = self.bus.subscribe(
            Id::Str(format!("otel-{n}")),
            SubscribeParams {
                passive: true,
                ..SubscribeParams::default()
            },
            inbox.clone(),
        );
        *g = Some((inbox, sub));
        drop(g);
        self.wake.notify_one();
    }

    fn deactivate(&self) {
        if let Ok(mut g) = self.sub.lock() {
            *g = None;
        }
    }

    fn inbox(&self) -> Option<Arc<Inbox>> {
        self.sub.lock().ok()?.as_ref().map(|(i, _)| i.clone())
    }
}

/// The exporter's inbox: the bus's queue for this subscriber. Output lines
/// are refused before they are queued; the rest is bounded by the bus.
#[derive(Default)]
struct Inbox(LineQueue);

impl Inbox {
    fn pop(&self) -> Option<Vec<u8>> {
        self.0.pop()
    }
}

/// An output line (`"type":"task_output"` near the start of the event).
fn is_output(line: &[u8]) -> bool {
    const NEEDLE: &[u8] = br#""event":{"type":"task_output""#;
    line[..line.len().min(400)]
        .windows(NEEDLE.len())
        .any(|w| w == NEEDLE)
}

impl Queue for Inbox {
    fn offer(&self, line: Vec<u8>, limit: usize) -> bool {
        is_output(&line) || self.0.push(line, limit)
    }

    fn force(&self, line: Vec<u8>) {
        self.0.force(line)
    }
}

#[derive(serde::Deserialize)]
struct Note {
    method: String,
    #[serde(default)]
    params: serde_json::Value,
}

/// The exporter (see the module doc).
pub struct Exporter {
    runs: spans::Runs,
    sender: Arc<send::Sender>,
    inflight: JoinSet<()>,
    dropped: Arc<AtomicU64>,
    /// Configuration errors already logged.
    said: Vec<String>,
}

impl Exporter {
    /// Installs the engine's tracing policy and subscribes to `bus`;
    /// exports until `stop` is cancelled, then waits up to [`FLUSH_WAIT`]
    /// for the exports in flight. The returned handle ends then.
    pub fn spawn(bus: Arc<Bus>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let _ = base();
        let link = LINK.get_or_init(|| Link {
            bus,
            sub: Mutex::new(None),
            wake: Notify::new(),
            n: AtomicU64::new(0),
        });
        vxd::telemetry::set_policy(policy);
        // The daemon's own environment asks for export: listen from now on.
        if wanted_here() {
            link.activate();
        }
        tokio::spawn(async move {
            let mut x = Exporter {
                runs: spans::Runs::default(),
                sender: Arc::new(send::Sender::default()),
                inflight: JoinSet::new(),
                dropped: Arc::new(AtomicU64::new(0)),
                said: Vec::new(),
            };
            x.pump(link, stop).await;
        })
    }

    async fn pump(&mut self, link: &Link, stop: CancellationToken) {
        loop {
            let inbox = link.inbox();
            if let Some(inbox) = &inbox {
                while let Some(line) = inbox.pop() {
                    if self.line(&line) {
                        tracing::warn!(
                            "otel: the exporter fell behind the event bus; the runs in progress are not exported"
                        );
                        self.runs.clear();
                        // The next traced run subscribes again.
                        link.deactivate();
                        break;
                    }
                }
            }
            while self.inflight.try_join_next().is_some() {}
            let notified = async {
                match &inbox {
                    Some(i) => i.0.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = link.wake.notified() => {}
                _ = stop.cancelled() => {
                    if let Some(inbox) = link.inbox() {
                        while let Some(line) = inbox.pop() {
                            self.line(&line);
                        }
                    }
                    link.deactivate();
                    break;
                }
            }
        }
        let all = async { while self.inflight.join_next().await.is_some() {} };
        if tokio::time::timeout(FLUSH_WAIT, all).await.is_err() {
            tracing::warn!("otel: exports still in flight at exit were abandoned");
        }
    }

    /// Handles one notification; true when the subscription must be
    /// renewed (it fell behind).
    fn line(&mut self, line: &[u8]) -> bool {
        let Ok(note) = serde_json::from_slice::<Note>(line) else {
            return false;
        };
        match note.method.as_str() {
            RUN_STARTED => {
                if let Ok(p) = serde_json::from_value::<RunStartedParams>(note.params) {
                    self.started(&p);
                }
            }
            EVENTS_EVENT => {
                if let Ok(p) = serde_json::from_value::<BusEventParams>(note.params)
                    && !matches!(p.event, RunEvent::TaskOutput { .. })
                    && let Some(b) = self.runs.event(&p.run_id, &p.event)
                {
                    self.send(b);
                }
            }
            RUN_FINISHED => {
                if let Ok(p) = serde_json::from_value::<RunFinishedParams>(note.params) {
                    for b in self.runs.finished(&p) {
                        self.send(b);
                    }
                }
            }
            EVENTS_RESYNC => return true,
            _ => {}
        }
        false
    }

    fn started(&mut self, p: &RunStartedParams) {
        if p.traceparent.is_none() {
            return;
        }
        let run = vxd::telemetry::run_settings(&p.run_id).unwrap_or_default();
        let cfg = match config::Config::from_env(&config::merged(base(), &run)) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                if !self.said.contains(&e) {
                    tracing::warn!("otel: {e}; runs are not exported");
                    if self.said.len() < 16 {
                        self.said.push(e);
                    }
                }
                return;
            }
        };
        // Read per run: the head moves between runs.
        let vcs = vcs::attributes(&PathBuf::from(&p.root));
        self.runs.started(p, cfg, vcs);
    }

    fn send(&mut self, b: spans::Batch) {
        if self.inflight.len() >= MAX_INFLIGHT {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    "otel: the collector is too slow: {n} export batches dropped so far"
                );
            }
            return;
        }
        let sender = self.sender.clone();
        self.inflight.spawn(async move {
            let r = match &b {
                spans::Batch::Traces(cfg, req) => match &cfg.traces {
                    Some(t) => sender.traces(t, req.clone()).await,
                    None => Ok(()),
                },
                spans::Batch::Metrics(cfg, req) => match &cfg.metrics {
                    Some(t) => sender.metrics(t, req.clone()).await,
                    None => Ok(()),
                },
            };
            match r {
                Ok(()) => tracing::debug!("otel: exported"),
                // Logged, never shown in a run: telemetry is best effort.
                Err(e) => tracing::info!("otel: export failed: {e}"),
            }
        });
    }
}

/// Whether the process's own environment asks for export (the no-daemon
/// engine starts the exporter only then: its client's environment is its
/// own).
pub fn wanted_here() -> bool {
    config::wanted(base())
}

/// The exporter as a daemon attachment (`daemon.status` names it `otel`).
pub struct Attachment;

impl vxd::server::attach::Attachment for Attachment {
    fn name(&self) -> &'static str {
        "otel"
    }

    fn start(&self, door: vxd::server::attach::Door) -> anyhow::Result<()> {
        if config::wanted(base()) {
            door.advertise("otel", "exporting (OTEL_EXPORTER_OTLP_ENDPOINT)");
        }
        Exporter::spawn(vxd::bus::global().clone(), door.stopping());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_are_recognised_cheaply() {
        let out = br#"{"jsonrpc":"2.0","method":"events.event","params":{"subscription":"otel-1","run_id":"r","seq":3,"event":{"type":"task_output","id":"a#b"}}}"#;
        let fin = br#"{"jsonrpc":"2.0","method":"events.event","params":{"subscription":"otel-1","run_id":"r","seq":3,"event":{"type":"task_finished"}}}"#;
        assert!(is_output(out));
        assert!(!is_output(fin));
        let inbox = Inbox::default();
        assert!(inbox.offer(out.to_vec(), 10), "output is taken and dropped");
        assert!(inbox.pop().is_none());
        assert!(!inbox.offer(fin.to_vec(), 10), "over the limit");
        assert!(inbox.offer(fin.to_vec(), 1 << 20));
        assert_eq!(inbox.pop().as_deref(), Some(&fin[..]));
    }
}
