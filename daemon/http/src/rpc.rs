//! `rpc` — `POST /rpc`: a JSON-RPC 2.0 request or batch, through the
//! router.
//!
//! Owns: one router connection per HTTP request (the token holder's
//! principal; the `daemon.hello` handshake is implied, as HTTP has no
//! connection to say it on), batches (answered in order, at most
//! [`MAX_BATCH`] members), and the two ways a streaming method answers:
//! only its response (events are dropped), or — with
//! `Accept: application/x-ndjson` on a single request — every notification
//! then the response as NDJSON, through the connection's bounded outbox (a
//! client that goes away cancels its run).
//!
//! Never: answers before the router did, or keeps a request alive after
//! its client left.

use crate::Shared;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;
use vx_proto::{Id, Message, RpcError, RunEvent, codes};
use vxd::server::Ctx;
use vxd::server::outbox::Outbox;
use vxd::server::router::{Conn, Sink, Started};

/// Most members of one batch.
pub const MAX_BATCH: usize = 64;

/// A sink that drops a streaming method's events (the plain JSON answer).
pub struct Discard;

impl Sink for Discard {
    fn event(&self, _request: &Id, _e: RunEvent) {}
}

/// Cancels the connection's requests when dropped (the client left).
struct CancelOnDrop(Arc<Conn<Ctx>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel_all(libc::SIGTERM);
    }
}

fn json(status: StatusCode, v: &Message) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.encode(),
    )
        .into_response()
}

/// One member's answer, or `None` for a notification.
async fn one(s: &Shared, conn: &Arc<Conn<Ctx>>, m: Value) -> Option<Message> {
    let line = serde_json::to_vec(&m).unwrap_or_default();
    let router = s.door.router();
    match Message::decode(&line) {
        Err(e) => Some(Message::err(None, e)),
        Ok(Message::Response { .. }) => None,
        Ok(Message::Notification { method, params }) => {
            router.notify(conn, &method, params);
            None
        }
        Ok(Message::Request { id, method, params }) => {
            let r = match router.start(conn, id.clone(), &method, params) {
                Started::Done(r) => r,
                Started::Running(f) => f.await,
            };
            Some(match r {
                Ok(v) => Message::ok(id, v),
                Err(e) => Message::err(Some(id), e),
            })
        }
    }
}

pub async fn post(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let m = Message::err(
                None,
                RpcError::new(codes::PARSE_ERROR, format!("parse error: {e}")),
            );
            return json(StatusCode::OK, &m);
        }
    };
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let ctx = s.door.ctx().clone();
    let cancel = ctx.cancel.clone();
    let router = s.door.router();
    if wants_ndjson && v.is_object() {
        return ndjson(s.clone(), v).await;
    }
    let conn = router.connect(ctx, s.principal(), Arc::new(Discard), Some(&cancel), false);
    let _guard = CancelOnDrop(conn.clone());
    let answer = match v {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                let m = Message::err(
                    None,
                    RpcError::new(
                        codes::INVALID_REQUEST,
                        format!("a batch has 1 to {MAX_BATCH} members"),
                    ),
                );
                return json(StatusCode::OK, &m);
            }
            let answers =
                futures_util::future::join_all(items.into_iter().map(|m| one(&s, &conn, m))).await;
            let answers: Vec<Value> = answers
                .into_iter()
                .flatten()
                .filter_map(|m| serde_json::from_slice(&m.encode()).ok())
                .collect();
            if answers.is_empty() {
                StatusCode::NO_CONTENT.into_response()
            } else {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    serde_json::to_vec(&answers).unwrap_or_default(),
                )
                    .into_response()
            }
        }
        m => match one(&s, &conn, m).await {
            Some(m) => json(StatusCode::OK, &m),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    };
    if conn.shutdown_requested() {
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            crate::stop_daemon();
        });
    }
    answer
}

/// A single request answered as NDJSON: its notifications, then its
/// response (see the module doc).
async fn ndjson(s: Arc<Shared>, v: Value) -> Response {
    let out = Arc::new(Outbox::default());
    let ctx = s.door.ctx().clone();
    let cancel = ctx.cancel.clone();
    let conn = s
        .door
        .router()
        .connect(ctx, s.principal(), out.clone(), Some(&cancel), false);
    let (reader, writer) = tokio::io::duplex(64 << 10);
    let writing = {
        let out = out.clone();
        tokio::spawn(async move { out.write_to(writer).await })
    };
    let guard = s.door.connection();
    tokio::spawn(async move {
        let _guard = guard;
        let mut dead = out.dead();
        let run = one(&s, &conn, v);
        tokio::pin!(run);
        let mut writing = writing;
        let answer = tokio::select! {
            a = &mut run => a,
            _ = &mut writing => {
                // The client stopped reading (its body was dropped).
                conn.cancel_all(libc::SIGTERM);
                run.await
            }
            _ = dead.changed() => {
                conn.cancel_all(libc::SIGTERM);
                run.await
            }
        };
        if let Some(m) = answer {
            out.send(&m);
        }
        out.close();
        if conn.shutdown_requested() {
            crate::stop_daemon();
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response()
}
