//! `serve` — the HTTP door's accept loop (instead of `axum::serve`, which
//! sets no timer and so no header timeout): HTTP/1.1 with upgrades
//! (WebSocket) on the loopback listener, where a connection that trickles
//! its request head, or sends none, is closed after [`HEADER_TIMEOUT`]
//! (hyper's `header_read_timeout`, which runs from the moment a connection
//! waits for a request: a new one, or an idle keep-alive one). Response
//! bodies (SSE, NDJSON streams) and upgraded sockets are not timed: only
//! the request head is. At most [`MAX_CONNECTIONS`] connections at once;
//! past that, accepting waits until one closes. On stop, accepting ends
//! and connections are asked to finish (and dropped after [`DRAIN`]).
//!
//! Never: touches the token or the routes (see [`crate::auth`], [`crate::app`]).

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a request's head may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long connections get to finish at a stop.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Events go out as they come: no Nagle delay on small writes.
        let _ = tcp.set_nodelay(true);
        let svc = {
            let app = app.clone();
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            })
        };
        let conn = builder
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.changed() => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    // Stopping: finish the response in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(DRAIN, conn).await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it ends (or is dropped
    // after DRAIN).
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), slots.acquire_many(all)).await;
}
