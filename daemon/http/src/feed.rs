//! `feed` — the one event-bus subscription behind every HTTP event stream.
//!
//! Owns: a single `events.subscribe` made through the router when the
//! server starts, whose notifications land in a bounded ring (the last
//! [`MAX_EVENTS`] events, at most [`MAX_BYTES`]), each with an id that only
//! grows; SSE (`/events`) and NDJSON (`/stream`) clients read the ring from
//! the id they last saw (`Last-Event-ID` resumes without a gap while the
//! ring still holds it), and the counters `/metrics` reports (runs, tasks by
//! status and cache source).
//!
//! A push only takes the ring's lock and never waits, so the bus's
//! publisher is never slowed; an HTTP client that stops reading holds only
//! its position and falls off the ring's end (it is told to resync).
//!
//! Never: blocks in [`Feed::push`], keeps more than its bounds, or keeps
//! anything per client.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use vx_proto::{Id, RunEvent};
use vxd::server::attach::Door;
use vxd::server::router::{Principal, Sink, Started};

/// Events kept for resuming.
pub const MAX_EVENTS: usize = 10_000;
/// Bytes kept for resuming.
pub const MAX_BYTES: usize = 16 << 20;

/// One event in the ring.
#[derive(Clone)]
pub struct Entry {
    pub id: u64,
    /// When the feed got it (Unix microseconds).
    pub at_us: u64,
    /// The notification, one JSON line without its newline.
    pub line: Arc<[u8]>,
}

/// What a reader gets from [`Feed::after`].
pub struct Batch {
    /// Events the reader missed (they fell off the ring) before these.
    pub missed: u64,
    pub entries: Vec<Entry>,
}

#[derive(Default)]
struct Ring {
    items: VecDeque<Entry>,
    bytes: usize,
    last_id: u64,
}

/// Counters for `/metrics`, since the server started.
#[derive(Default, Clone)]
pub struct Counters {
    pub runs_started: u64,
    pub runs_finished_ok: u64,
    pub runs_finished_failed: u64,
    /// Finished tasks by (status, cache source).
    pub tasks: BTreeMap<(String, String), u64>,
    pub events: u64,
}

/// See the module doc.
pub struct Feed {
    ring: Mutex<Ring>,
    counters: Mutex<Counters>,
    latest: watch::Sender<u64>,
    max_events: usize,
    max_bytes: usize,
    /// HTTP event-stream clients connected now.
    pub clients: AtomicUsize,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Feed {
    pub fn new(max_events: usize, max_bytes: usize) -> Feed {
        Feed {
            ring: Mutex::new(Ring::default()),
            counters: Mutex::new(Counters::default()),
            latest: watch::channel(0).0,
            max_events: max_events.max(1),
            max_bytes,
            clients: AtomicUsize::new(0),
        }
    }

    /// Makes the feed and its bus subscription (renewed if it ever ends,
    /// until the daemon stops).
    pub fn start(door: &Door) -> Arc<Feed> {
        let feed = Arc::new(Feed::new(MAX_EVENTS, MAX_BYTES));
        let (door, f) = (door.clone(), feed.clone());
        tokio::spawn(async move {
            let stopping = door.stopping();
            let router = door.router();
            let ctx = door.ctx().clone();
            let mut n = 0u64;
            while !stopping.is_cancelled() {
                n += 1;
                let conn = router.connect(
                    ctx.clone(),
                    Principal::new("http event feed", &[vx_proto::catalogue::Scope::Read]),
                    Arc::new(FeedSink(f.clone())),
                    Some(&ctx.cancel),
                    false,
                );
                let id = Id::Str(format!("http-feed-{n}"));
                // Passive: the feed alone does not make runs publish what their
                // clients did not ask for; a connected stream client does
                // (`stream.rs` holds a `Watching` per client).
                let params = serde_json::json!({ "passive": true });
                let fut = match router.start(&conn, id, vx_proto::live::EVENTS_SUBSCRIBE, params) {
                    Started::Running(fut) => fut,
                    Started::Done(r) => {
                        tracing::error!("the HTTP event feed could not subscribe: {r:?}");
                        return;
                    }
                };
                tokio::select! {
                    r = fut => tracing::info!("the HTTP event feed's subscription ended ({r:?}); renewing"),
                    _ = stopping.cancelled() => conn.cancel_all(libc::SIGTERM),
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        feed
    }

    /// Adds one notification line (see the module doc).
    pub fn push(&self, mut line: Vec<u8>) {
        while line.last() == Some(&b'\n') {
            line.pop();
        }
        self.count(&line);
        let id = {
            let Ok(mut r) = self.ring.lock() else { return };
            r.last_id += 1;
            let e = Entry {
                id: r.last_id,
                at_us: now_us(),
                line: line.into(),
            };
            r.bytes += e.line.len();
            r.items.push_back(e);
            while r.items.len() > self.max_events || (r.bytes > self.max_bytes && r.items.len() > 1)
            {
                if let Some(old) = r.items.pop_front() {
                    r.bytes -= old.line.len();
                }
            }
            r.last_id
        };
        self.latest.send_replace(id);
    }

    /// The id of the newest event (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.ring.lock().map(|r| r.last_id).unwrap_or(0)
    }

    /// Up to `max` events after `last` (the id a reader saw last).
    pub fn after(&self, last: u64, max: usize) -> Batch {
        let Ok(r) = self.ring.lock() else {
            return Batch {
                missed: 0,
                entries: Vec::new(),
            };
        };
        let first = r.items.front().map(|e| e.id).unwrap_or(r.last_id + 1);
        let missed = first
            .saturating_sub(last + 1)
            .min(r.last_id.saturating_sub(last));
        let skip = (last + 1).saturating_sub(first) as usize;
        Batch {
            missed,
            entries: r.items.iter().skip(skip).take(max).cloned().collect(),
        }
    }

    /// Resolves when an event newer than `last` exists.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn counters(&self) -> Counters {
        self.counters.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// (events held, bytes held)
    pub fn held(&self) -> (usize, usize) {
        self.ring
            .lock()
            .map(|r| (r.items.len(), r.bytes))
            .unwrap_or((0, 0))
    }

    fn count(&self, line: &[u8]) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        c.events += 1;
        // Notifications start with their method; an event's type comes
        // within its first few hundred bytes (subscription, run id, seq).
        const PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method":""#;
        let Some(rest) = line.strip_prefix(PREFIX) else {
            return;
        };
        if rest.starts_with(b"run.started\"") {
            c.runs_started += 1;
        } else if rest.starts_with(b"run.finished\"") {
            let ok = serde_json::from_slice::<Value>(line)
                .ok()
                .and_then(|v| v["params"]["ok"].as_bool())
                .unwrap_or(false);
            if ok {
                c.runs_finished_ok += 1;
            } else {
                c.runs_finished_failed += 1;
            }
        } else if rest.starts_with(b"events.event\"") {
            let head = &rest[..rest.len().min(400)];
            let pat = br#""event":{"type":"task_finished""#;
            if head.windows(pat.len()).any(|w| w == pat) {
                let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
                let r = &v["params"]["event"]["result"];
                if let (Some(s), Some(k)) = (r["status"].as_str(), r["cache"].as_str()) {
                    *c.tasks.entry((s.to_string(), k.to_string())).or_default() += 1;
                }
            }
        }
    }
}

/// The bus queue of the feed: every line fits (the ring drops its oldest).
impl vxd::bus::Queue for Feed {
    fn offer(&self, line: Vec<u8>, _limit: usize) -> bool {
        self.push(line);
        true
    }
    fn force(&self, line: Vec<u8>) {
        self.push(line);
    }
}

/// The feed's connection sink: its queue is the ring.
struct FeedSink(Arc<Feed>);

impl Sink for FeedSink {
    fn event(&self, _request: &Id, _e: RunEvent) {}
    fn queue(self: Arc<Self>) -> Option<Arc<dyn vxd::bus::Queue>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","method":"events.event","params":{{"seq":{i}}}}}"#)
            .into_bytes()
    }

    #[test]
    fn readers_resume_after_the_id_they_saw() {
        let f = Feed::new(100, 1 << 20);
        for i in 1..=10 {
            f.push(ev(i));
        }
        let b = f.after(0, 100);
        assert_eq!(b.missed, 0);
        assert_eq!(
            b.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        let b = f.after(7, 100);
        assert_eq!(
            b.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(f.after(10, 100).entries.len(), 0);
        assert_eq!(f.after(3, 2).entries.len(), 2);
        assert!(!f.after(0, 1).entries[0].line.ends_with(b"\n"));
    }

    #[test]
    fn the_ring_is_bounded_and_a_reader_that_fell_off_is_told() {
        let f = Feed::new(5, 1 << 20);
        for i in 1..=12 {
            f.push(ev(i));
        }
        assert_eq!(f.held().0, 5);
        let b = f.after(2, 100);
        assert_eq!(b.missed, 5, "ids 3..=7 are gone");
        assert_eq!(b.entries.first().map(|e| e.id), Some(8));
        let by_bytes = Feed::new(1000, 3 * ev(1).len());
        for i in 1..=9 {
            by_bytes.push(ev(i));
        }
        assert!(by_bytes.held().1 <= 3 * ev(1).len());
        assert_eq!(by_bytes.held().0, 3);
    }

    #[test]
    fn counters_follow_runs_and_tasks() {
        let f = Feed::new(10, 1 << 20);
        f.push(br#"{"jsonrpc":"2.0","method":"run.started","params":{}}"#.to_vec());
        for (s, k) in [
            ("success", "miss"),
            ("cached", "local"),
            ("cached", "local"),
        ] {
            f.push(format!(r#"{{"jsonrpc":"2.0","method":"events.event","params":{{"event":{{"type":"task_finished","result":{{"status":"{s}","cache":"{k}"}}}}}}}}"#).into_bytes());
        }
        f.push(br#"{"jsonrpc":"2.0","method":"run.finished","params":{"ok":true}}"#.to_vec());
        let c = f.counters();
        assert_eq!(
            (c.runs_started, c.runs_finished_ok, c.runs_finished_failed),
            (1, 1, 0)
        );
        assert_eq!(c.tasks[&("cached".to_string(), "local".to_string())], 2);
        assert_eq!(c.tasks[&("success".to_string(), "miss".to_string())], 1);
    }
}
