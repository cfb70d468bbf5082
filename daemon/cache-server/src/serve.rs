//! `serve` — the cache server's own accept loop (instead of `axum::serve`,
//! which sets no timer and so no header timeout): HTTP/1.1 and h2c on one
//! port through hyper-util's auto builder, with the limits a hostile peer
//! meets.
//!
//! - A connection must deliver its first request (HTTP/1.1 headers, or the
//!   h2 preface and a HEADERS frame) within the header timeout, or it is
//!   closed: this also bounds the protocol sniff, which hyper-util does not
//!   time.
//! - Later HTTP/1.1 requests on a kept-alive connection are bounded by
//!   hyper's `header_read_timeout` (it runs while a connection waits for a
//!   request's head, so an idle keep-alive connection is closed too).
//! - HTTP/2 connections are pinged (keep-alive) and closed when a ping goes
//!   unanswered; at most [`H2_STREAMS`] streams each.
//! - At most `max_connections` connections at once: past that, accepting
//!   waits (the kernel's backlog holds newcomers) until one closes.
//! - Stop: accepting ends, connections in flight are asked to finish
//!   (HTTP/1.1 after the response in progress, HTTP/2 by GOAWAY) and are
//!   given [`DRAIN`] to do so.
//!
//! Never: lets a connection that has not sent a request live past the
//! header timeout, or spawns a task per connection beyond the cap.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Streams one HTTP/2 connection may have open.
pub const H2_STREAMS: u32 = 256;
/// How long connections in flight get to finish at a stop.
pub const DRAIN: Duration = Duration::from_secs(30);
/// The HTTP/2 keep-alive ping interval and how long an answer may take.
const H2_PING: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request's head may take (and the first request).
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_STREAMS)
        .max_header_list_size(64 << 10);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: pause, not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let seen = Arc::new(AtomicBool::new(false));
        let svc = {
            let seen = seen.clone();
            let app = app.clone();
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            })
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let first = async {
                tokio::time::sleep(header_timeout).await;
                if seen.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = first => {
                    tracing::debug!(%peer, "no request within the header timeout: connection closed");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}: closed");
    }
    Ok(())
}
