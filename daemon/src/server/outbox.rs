//! One connection's outgoing queue, bounded.
//!
//! Owns: the encoded messages waiting for the connection's writer, and the
//! policy when the peer does not read them. `task_output` events are
//! droppable: past [`SOFT_LIMIT`] queued bytes they are counted, not kept,
//! until the queue has drained to half of it; then (or before the next
//! message that is always delivered) one `events_dropped` event with the
//! count goes out in place of the gap. Every other message — responses,
//! `task_finished`, `settled`, warnings — is always queued, up to
//! [`HARD_LIMIT`] queued bytes: a peer that lets that much pile up is
//! treated as gone (its queue is freed, [`Outbox::dead`] fires, the server
//! cancels its runs). So a client that stops reading never stalls a run and
//! never grows the engine's memory past a fixed bound.
//!
//! Never: blocks a producer, reorders messages, or knows what a run is.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::{Notify, watch};
use vx_proto::{Id, Message, RunEvent, methods};

/// Queued bytes past which `task_output` events are dropped.
pub const SOFT_LIMIT: usize = 8 << 20;
/// Queued bytes past which the peer counts as gone.
pub const HARD_LIMIT: usize = 64 << 20;
/// Most bytes the writer takes at once.
const BATCH: usize = 1 << 20;

/// A `run.event` notification line, serialised straight from the event
/// (the same bytes as `Message::notification(RUN_EVENT, e).encode()`,
/// without the intermediate JSON tree).
fn encode_event(request: Option<&Id>, e: &RunEvent) -> Vec<u8> {
    let slow = || {
        Message::notification(
            methods::RUN_EVENT,
            vx_proto::catalogue::RunEventParams {
                request: request.cloned(),
                event: e.clone(),
            },
        )
        .encode()
    };
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(br#"{"jsonrpc":"2.0","method":""#);
    b.extend_from_slice(methods::RUN_EVENT.as_bytes());
    b.extend_from_slice(br#"","params":"#);
    if serde_json::to_writer(&mut b, e).is_err() {
        return slow();
    }
    if let Some(id) = request {
        // The event is a JSON object: the request id goes in as its last
        // member (`RunEventParams`, without building a JSON tree).
        if b.pop() != Some(b'}') {
            return slow();
        }
        b.extend_from_slice(br#","request":"#);
        if serde_json::to_writer(&mut b, id).is_err() {
            return slow();
        }
        b.push(b'}');
    }
    b.extend_from_slice(b"}\n");
    b
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    /// Bytes queued plus bytes the writer took and has not yet written.
    bytes: usize,
    /// Output events dropped and not yet reported.
    dropped: u64,
    /// Dropping until the queue drains to `SOFT_LIMIT / 2`.
    dropping: bool,
    /// The queue held more than `SOFT_LIMIT / 2` since it was last empty.
    was_large: bool,
    /// No more messages: the writer failed, the peer is gone, or closed.
    closed: bool,
}

/// A bounded, never-blocking outgoing queue (see the module doc).
pub struct Outbox {
    q: Mutex<Queue>,
    wake: Notify,
    dead: watch::Sender<bool>,
    soft: usize,
    hard: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::with_limits(SOFT_LIMIT, HARD_LIMIT)
    }
}

impl Outbox {
    pub fn with_limits(soft: usize, hard: usize) -> Outbox {
        Outbox {
            q: Mutex::new(Queue::default()),
            wake: Notify::new(),
            dead: watch::channel(false).0,
            soft,
            hard,
        }
    }

    /// Queues a message that is always delivered (unless the peer is gone).
    pub fn send(&self, m: &Message) {
        self.push(m.encode(), false);
    }

    /// Queues a run event; `task_output` lines may be dropped. A line that
    /// will be dropped is not even encoded, so a queue that is full drains
    /// the engine's events as fast as they come.
    /// `request` is the id of the request that streams it (`None` only for
    /// tests and connection-wide notices).
    pub fn send_event(&self, request: Option<&Id>, e: RunEvent) {
        let droppable = matches!(e, RunEvent::TaskOutput { .. });
        if droppable && let Ok(mut q) = self.q.lock() {
            if q.closed {
                return;
            }
            if q.dropping && q.bytes > self.soft / 2 {
                q.dropped += 1;
                return;
            }
        }
        self.push(encode_event(request, &e), droppable);
    }

    fn push(&self, bytes: Vec<u8>, droppable: bool) {
        let Ok(mut q) = self.q.lock() else { return };
        if q.closed {
            return;
        }
        if droppable {
            if q.dropping && q.bytes <= self.soft / 2 {
                q.dropping = false;
            }
            if q.dropping || q.bytes + bytes.len() > self.soft {
                q.dropping = true;
                q.dropped += 1;
                return;
            }
        } else if q.bytes > 0 && q.bytes + bytes.len() > self.hard {
            tracing::warn!(
                queued = q.bytes,
                "a client stopped reading its messages: dropping it and cancelling its runs"
            );
            q.items = VecDeque::new();
            q.bytes = 0;
            q.closed = true;
            drop(q);
            self.dead.send_replace(true);
            self.wake.notify_one();
            return;
        }
        if q.dropped > 0 {
            let count = std::mem::take(&mut q.dropped);
            let notice =
                Message::notification(methods::RUN_EVENT, RunEvent::EventsDropped { count })
                    .encode();
            q.bytes += notice.len();
            q.items.push_back(notice);
        }
        q.bytes += bytes.len();
        q.items.push_back(bytes);
        if q.bytes > self.soft / 2 {
            q.was_large = true;
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a message that is always delivered only while the queue then
    /// holds at most `limit` bytes (a bus subscriber's bound); `false` when
    /// it does not fit or the outbox is closed.
    pub fn offer(&self, bytes: Vec<u8>, limit: usize) -> bool {
        match self.q.lock() {
            Ok(q) if !q.closed && q.bytes + bytes.len() <= limit => {}
            _ => return false,
        }
        self.push(bytes, false);
        true
    }

    /// No more messages will be queued; the writer ends once the queue is
    /// empty.
    pub fn close(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.closed = true;
        }
        self.wake.notify_one();
    }

    /// The writer failed: drop everything.
    fn broken(&self) {
        if let Ok(mut q) = self.q.lock() {
            q.closed = true;
            q.items = VecDeque::new();
            q.bytes = 0;
        }
    }

    /// Resolves once the peer is judged gone (see [`HARD_LIMIT`]).
    pub fn dead(&self) -> watch::Receiver<bool> {
        self.dead.subscribe()
    }

    /// The next messages to write (at most about [`BATCH`] bytes), or `None`
    /// when closed and empty.
    async fn next_batch(&self) -> Option<(Vec<Vec<u8>>, usize)> {
        loop {
            let notified = self.wake.notified();
            {
                let mut q = self.q.lock().ok()?;
                if !q.items.is_empty() {
                    let mut batch = Vec::new();
                    let mut n = 0;
                    while let Some(m) = q.items.pop_front() {
                        n += m.len();
                        batch.push(m);
                        if n >= BATCH {
                            break;
                        }
                    }
                    return Some((batch, n));
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Accounts for `n` written bytes; a queue that was large and is now
    /// empty gives its memory back to the system.
    fn written(&self, n: usize) {
        let drained = self.q.lock().is_ok_and(|mut q| {
            q.bytes = q.bytes.saturating_sub(n);
            let drained = q.bytes == 0 && q.was_large;
            if drained {
                q.was_large = false;
                q.items = VecDeque::new();
            }
            drained
        });
        if drained {
            tokio::task::spawn_blocking(crate::mem::give_memory_back);
        }
    }

    /// Writes queued messages to `w` until closed and drained (or `w` fails).
    pub async fn write_to<W: tokio::io::AsyncWrite + Unpin>(&self, w: W) {
        use tokio::io::AsyncWriteExt;
        let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, w);
        while let Some((batch, n)) = self.next_batch().await {
            for m in &batch {
                if w.write_all(m).await.is_err() {
                    self.broken();
                    return;
                }
            }
            drop(batch);
            if w.flush().await.is_err() {
                self.broken();
                return;
            }
            self.written(n);
        }
        let _ = w.flush().await;
    }

    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let q = self.q.lock().unwrap();
        (q.items.len(), q.bytes)
    }
}

/// A bus subscriber's queue is its connection's outbox.
impl crate::bus::Queue for Outbox {
    fn offer(&self, line: Vec<u8>, limit: usize) -> bool {
        Outbox::offer(self, line, limit)
    }
    fn force(&self, line: Vec<u8>) {
        self.push(line, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vx_proto::{Id, Stream};

    fn line(i: usize) -> RunEvent {
        RunEvent::TaskOutput {
            id: "a#b".into(),
            stream: Stream::Stdout,
            line: format!("line {i:05} {}", "x".repeat(40)),
            replay: false,
            worker: None,
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<serde_json::Value> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn output_past_the_soft_limit_is_counted_and_reported_in_place() {
        let o = Outbox::with_limits(4096, 1 << 20);
        for i in 0..1000 {
            o.send_event(None, line(i));
        }
        let (_, bytes) = o.queued();
        assert!(bytes <= 4096, "{bytes}");
        o.send(&Message::ok(Id::Num(1), serde_json::json!({"done": true})));
        o.close();
        let mut out = Vec::new();
        o.write_to(&mut out).await;
        let msgs = decode_all(&out);
        let n = msgs.len();
        assert_eq!(msgs[n - 1]["id"], 1, "the response always arrives");
        assert_eq!(msgs[n - 2]["params"]["type"], "events_dropped");
        let shown = n - 2;
        assert_eq!(
            msgs[n - 2]["params"]["count"].as_u64().unwrap() as usize + shown,
            1000,
            "every line is either sent or counted"
        );
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_is_dropped_past_the_hard_limit() {
        let o = Outbox::with_limits(1024, 8192);
        let mut dead = o.dead();
        for i in 0..100_000 {
            o.send_event(None, line(i));
        }
        assert!(!*dead.borrow(), "output alone never kills a connection");
        for _ in 0..1000 {
            o.send(&Message::notification(
                methods::RUN_EVENT,
                RunEvent::Warning {
                    message: "x".repeat(100),
                },
            ));
        }
        dead.changed().await.unwrap();
        assert!(*dead.borrow());
        assert_eq!(o.queued(), (0, 0), "its queue is freed");
    }

    #[test]
    fn events_encode_like_messages() {
        for e in [
            line(1),
            RunEvent::EventsDropped { count: 3 },
            RunEvent::Warning {
                message: "a \"quoted\" ✓ line\n".into(),
            },
        ] {
            let fast: serde_json::Value = serde_json::from_slice(&encode_event(None, &e)).unwrap();
            let slow: serde_json::Value =
                serde_json::from_slice(&Message::notification(methods::RUN_EVENT, &e).encode())
                    .unwrap();
            assert_eq!(fast, slow);
            assert!(encode_event(None, &e).ends_with(b"}\n"));
            // Tagged with its request: the same as `RunEventParams`.
            for id in [Id::Num(7), Id::Str("r\"1".into()), Id::Null] {
                let fast = encode_event(Some(&id), &e);
                let slow = Message::notification(
                    methods::RUN_EVENT,
                    vx_proto::catalogue::RunEventParams {
                        request: Some(id.clone()),
                        event: e.clone(),
                    },
                )
                .encode();
                let fast_v: serde_json::Value = serde_json::from_slice(&fast).unwrap();
                let slow_v: serde_json::Value = serde_json::from_slice(&slow).unwrap();
                assert_eq!(fast_v, slow_v);
                assert_eq!(
                    fast_v["params"]["request"],
                    serde_json::to_value(&id).unwrap()
                );
                assert!(fast.ends_with(b"}\n"));
            }
        }
    }

    #[tokio::test]
    async fn a_reading_peer_loses_nothing() {
        let o = std::sync::Arc::new(Outbox::with_limits(4096, 1 << 20));
        let (r, w) = tokio::io::duplex(1024);
        let writer = {
            let o = o.clone();
            tokio::spawn(async move { o.write_to(w).await })
        };
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut r = r;
            let mut all = Vec::new();
            r.read_to_end(&mut all).await.unwrap();
            all
        });
        for i in 0..200 {
            o.send_event(None, line(i));
            tokio::task::yield_now().await;
            // Keep the queue short, like a peer that keeps up.
            while o.queued().1 > 2048 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        o.close();
        writer.await.unwrap();
        let msgs = decode_all(&reader.await.unwrap());
        assert_eq!(msgs.len(), 200);
        assert!(msgs.iter().all(|m| m["params"]["type"] == "task_output"));
    }
}
