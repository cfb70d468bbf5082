//! `ws` — `GET /ws`: the full socket protocol over a WebSocket.
//!
//! Owns: one router connection per WebSocket (the token holder's principal,
//! hello-first like the socket), one text frame per JSON-RPC message each
//! way (the same lines as NDJSON on the socket), the connection's bounded
//! [`Outbox`] (a peer that stops reading is dropped and its runs cancelled,
//! as on the socket), and cancelling the connection's runs when it closes.
//!
//! Never: frames more than one message per WebSocket message, or accepts a
//! message larger than [`MAX_MESSAGE`].

use crate::Shared;
use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse as _, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::{Message, RpcError};
use vxd::server::outbox::Outbox;
use vxd::server::router::Started;

/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Most WebSockets at once (each has an outbox of up to 64 MiB).
pub const MAX_SOCKETS: usize = 64;

/// Counts an open WebSocket.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn upgrade(State(s): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    if s.websockets.fetch_add(1, Ordering::Relaxed) >= MAX_SOCKETS {
        s.websockets.fetch_sub(1, Ordering::Relaxed);
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("more than {MAX_SOCKETS} WebSockets are open\n"),
        )
            .into_response();
    }
    let open = Open(s.clone());
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _open = open;
            serve(s, socket).await
        })
}

async fn serve(s: Arc<Shared>, socket: WebSocket) {
    let _guard = s.door.connection();
    let (mut tx, mut rx) = socket.split();
    let out = Arc::new(Outbox::default());
    let ctx = s.door.ctx().clone();
    let cancel = ctx.cancel.clone();
    let router = s.door.router();
    let conn = router.connect(ctx, s.principal(), out.clone(), Some(&cancel), true);
    // The outbox writes NDJSON into a pipe; each line becomes a text frame.
    let (mut lines, pipe) = tokio::io::duplex(256 << 10);
    let writer = {
        let out = out.clone();
        tokio::spawn(async move { out.write_to(pipe).await })
    };
    let mut sender = tokio::spawn(async move {
        let mut framer = LineFramer::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match lines.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for f in framer.push(&buf[..n]) {
                if let Frame::Line(l) = f {
                    let text = String::from_utf8_lossy(&l).into_owned();
                    if tx.send(WsMessage::Text(text.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(WsMessage::Close(None)).await;
    });
    let mut dead = out.dead();
    let stopping = s.door.stopping();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            m = rx.next() => {
                let bytes = match m {
                    Some(Ok(WsMessage::Text(t))) => t.as_str().as_bytes().to_vec(),
                    Some(Ok(WsMessage::Binary(b))) => b.to_vec(),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                };
                match Message::decode(&bytes) {
                    Err(e) => out.send(&Message::err(None, e)),
                    Ok(Message::Response { .. }) => {}
                    Ok(Message::Notification { method, params }) => router.notify(&conn, &method, params),
                    Ok(Message::Request { id, method, params }) => {
                        match router.start(&conn, id.clone(), &method, params) {
                            Started::Done(r) => out.send(&reply(id, r)),
                            Started::Running(fut) => {
                                let out = out.clone();
                                tasks.spawn(async move {
                                    let r = fut.await;
                                    out.send(&reply(id, r));
                                });
                            }
                        }
                    }
                }
                if conn.shutdown_requested() {
                    crate::stop_daemon();
                }
            }
            Ok(()) = dead.changed() => break,
            _ = stopping.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // The peer is gone (or the daemon stops): its runs are cancelled and
    // get their grace to stop their processes.
    conn.cancel_all(libc::SIGTERM);
    let limit = conn.grace().max(Duration::from_secs(2)) + Duration::from_secs(1);
    let _ = tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    out.close();
    // The last answers go out (a peer that does not read gets 2 s).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = writer.await;
        let _ = (&mut sender).await;
    })
    .await;
    sender.abort();
}

fn reply(id: vx_proto::Id, r: Result<serde_json::Value, RpcError>) -> Message {
    match r {
        Ok(v) => Message::ok(id, v),
        Err(e) => Message::err(Some(id), e),
    }
}
