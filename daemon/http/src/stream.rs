//! `stream` — `GET /events` (Server-Sent Events) and `GET /stream`
//! (NDJSON): the event bus, read from the shared [`crate::feed`].
//!
//! Owns: each client's position in the feed, where it starts (the newest
//! event, or after `Last-Event-ID` / `?after=ID`, or `?after=0` for
//! everything the ring holds), the framing (SSE: `id:` + `data:` per event,
//! a `: t=` comment with the feed's receive time when `?timing=1`; NDJSON:
//! the notification with an `event_id` member first), a resync notice when
//! the client fell off the ring, and a heartbeat so a dead client is noticed.
//!
//! Never: buffers more than one batch per client (the body is pulled by the
//! client's socket: a client that does not read holds only its position),
//! or touches the bus.

use crate::Shared;
use crate::feed::{Batch, Feed};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Events per write.
const BATCH: usize = 256;
/// A comment line this often keeps proxies and dead-peer detection going.
const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(serde::Deserialize, Default)]
pub struct StreamQuery {
    /// Resume after this event id (`0`: everything the ring holds).
    after: Option<u64>,
    /// Add the feed's receive time to each SSE event (a `: t=` comment).
    #[serde(default)]
    timing: Option<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

pub async fn sse(
    State(s): State<Arc<Shared>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    start(&s, last.or(q.after), q.timing == Some(1), Format::Sse)
}

pub async fn ndjson(
    State(s): State<Arc<Shared>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    start(&s, last.or(q.after), false, Format::Ndjson)
}

/// Counts a connected stream client (for `/metrics`) and keeps the daemon
/// from idling out while it is connected.
struct Client {
    feed: Arc<Feed>,
    _conn: vxd::server::attach::ConnectionGuard,
    /// While connected, runs publish every task (also the cache hits of a
    /// changes-only run).
    _watching: vxd::bus::Watching,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.feed.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

struct State_ {
    feed: Arc<Feed>,
    last: u64,
    rx: watch::Receiver<u64>,
    stopping: CancellationToken,
    timing: bool,
    format: Format,
    _client: Client,
}

/// Most event-stream clients at once (each holds a connection and a task).
pub const MAX_CLIENTS: usize = 256;

fn start(s: &Arc<Shared>, after: Option<u64>, timing: bool, format: Format) -> Response {
    let feed = s.feed.clone();
    if feed.clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
        feed.clients.fetch_sub(1, Ordering::Relaxed);
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("more than {MAX_CLIENTS} event streams are open\n"),
        )
            .into_response();
    }
    let client = Client {
        feed: feed.clone(),
        _conn: s.door.connection(),
        _watching: vxd::bus::global().watching(),
    };
    let newest = feed.last_id();
    // A position past the newest event is from an earlier daemon: start
    // over from what the ring holds.
    let last = match after {
        Some(a) if a <= newest => a,
        Some(_) => 0,
        None => newest,
    };
    let st = State_ {
        rx: feed.watch(),
        feed,
        last,
        stopping: s.door.stopping(),
        timing,
        format,
        _client: client,
    };
    let first = Bytes::from_static(match format {
        // The retry hint and an empty comment open the stream at once.
        Format::Sse => b"retry: 1000\n: vx events\n\n",
        Format::Ndjson => b"",
    });
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures_util::stream::unfold(st, |mut st| async move {
            let b = next(&mut st).await?;
            Some((Ok::<_, std::io::Error>(b), st))
        }),
    );
    let ctype = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

use futures_util::StreamExt as _;

/// The next chunk for a client: a batch of events, a heartbeat, or `None`
/// when the daemon stops.
async fn next(st: &mut State_) -> Option<Bytes> {
    loop {
        let batch = st.feed.after(st.last, BATCH);
        if batch.missed > 0 || !batch.entries.is_empty() {
            return Some(render(st, batch));
        }
        st.rx.borrow_and_update();
        // Re-check: an event may have come between `after` and the borrow.
        if st.feed.last_id() > st.last {
            continue;
        }
        tokio::select! {
            r = st.rx.changed() => if r.is_err() { return None },
            _ = st.stopping.cancelled() => return None,
            _ = tokio::time::sleep(HEARTBEAT) => {
                return Some(Bytes::from_static(match st.format {
                    Format::Sse => b": heartbeat\n\n",
                    Format::Ndjson => b"\n",
                }));
            }
        }
    }
}

fn render(st: &mut State_, batch: Batch) -> Bytes {
    let mut out = Vec::with_capacity(batch.entries.iter().map(|e| e.line.len() + 48).sum());
    if batch.missed > 0 {
        let notice = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "events.resync",
            "params": {
                "subscription": null,
                "reason": format!("{} events fell off the replay buffer before this client read them; call runs.active", batch.missed),
            }
        });
        match st.format {
            Format::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(notice.to_string().as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            Format::Ndjson => {
                out.extend_from_slice(notice.to_string().as_bytes());
                out.push(b'\n');
            }
        }
    }
    for e in &batch.entries {
        match st.format {
            Format::Sse => {
                out.extend_from_slice(format!("id: {}\n", e.id).as_bytes());
                if st.timing {
                    out.extend_from_slice(format!(": t={}\n", e.at_us).as_bytes());
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&e.line);
                out.extend_from_slice(b"\n\n");
            }
            Format::Ndjson => {
                // `{"event_id":N,` then the notification's members.
                out.extend_from_slice(format!("{{\"event_id\":{},", e.id).as_bytes());
                out.extend_from_slice(e.line.get(1..).unwrap_or_default());
                out.push(b'\n');
            }
        }
        st.last = e.id;
    }
    if batch.entries.is_empty() {
        // Only missed events: carry on from the oldest held.
        st.last = st.last.max(
            st.feed
                .after(st.last, 1)
                .entries
                .first()
                .map(|e| e.id - 1)
                .unwrap_or(st.last),
        );
    }
    Bytes::from(out)
}
