//! `server` — the JSON-RPC 2.0 edge of the engine.
//!
//! Owns: the NDJSON transport (reading requests from a byte stream — the
//! Unix socket or stdio — and writing answers and `run.event`
//! notifications), and the submodules that serve it: [`router`] (the one
//! path every request of every transport takes: hello-first, scope check,
//! params decoding, per-request cancellation, panic isolation, the idle
//! timer, a tracing span, engine errors → stable codes, events tagged with
//! their request id), `handlers` (one handler per catalogue method) and
//! [`outbox`] (each connection's bounded outgoing queue: a peer that does
//! not read never stalls a run or grows memory). Only this module knows
//! JSON-RPC. The stdio engine never outlives its client: it ends when its
//! stdin closes or on a signal, within a bounded time.
//! `daemon` (the submodule) owns the long-lived daemon's lifecycle: socket,
//! locks, idle exit, guard; [`attach`] the seam where transports that live
//! in their own crates (HTTP, MCP, gRPC, OpenTelemetry) attach to it;
//! [`upgrade`] the registry a connection switched with `daemon.upgrade` is
//! handed to (`serve` passes its byte stream on after the answer line).
//!
//! Never: knows a method by name outside `handlers`, or runs blocking work
//! on an async thread.

pub mod attach;
pub mod daemon;
mod error_codes;
mod handlers;
mod live;
pub mod outbox;
pub mod router;
pub mod upgrade;

use crate::state::Hot;
use outbox::Outbox;
use router::{Cancel, Principal, Router};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::{Id, Message, RpcError, RunEvent, codes};

/// How this server was started (reported by `daemon.hello`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Stdio,
    Daemon,
}

/// What a long-lived daemon reports about itself.
pub struct DaemonInfo {
    pub socket: PathBuf,
    pub log_file: PathBuf,
    pub idle_timeout: Duration,
    pub connections: AtomicUsize,
    /// The version `daemon.hello` reports (overridable for tests with
    /// `VX_DAEMON_VERSION_OVERRIDE`, to exercise the replace path).
    pub version: String,
    /// Endpoints attachments advertise (`http` → URL), for `daemon.status`.
    pub endpoints: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// Everything a connection's handlers can reach.
pub struct Ctx {
    pub mode: Mode,
    pub hot: Option<Arc<Hot>>,
    pub daemon: Option<Arc<DaemonInfo>>,
    /// The engine's cancellation scope: every connection's is its child, so
    /// a stopping daemon cancels every request.
    pub cancel: Cancel,
}

impl Ctx {
    pub fn stdio() -> Arc<Ctx> {
        // Hook plugins are started per run by the no-daemon engine.
        crate::plugins::install_hooks();
        Arc::new(Ctx {
            mode: Mode::Stdio,
            hot: None,
            daemon: None,
            cancel: Cancel::new(),
        })
    }

    fn version(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.version.clone())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    }
}

/// How long past its runs' kill grace the stdio engine lets cancelled runs
/// wind down (their tasks get SIGTERM, then SIGKILL after the grace) once
/// its client is gone or it got a signal, before it drops them (which
/// SIGKILLs their process groups).
const STDIO_WIND_DOWN: Duration = Duration::from_secs(1);

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The connection's outbox is the router's event sink: each event becomes a
/// `run.event` notification tagged with its request's id.
impl router::Sink for Outbox {
    fn event(&self, request: &Id, e: RunEvent) {
        self.send_event(Some(request), e);
    }
    fn queue(self: Arc<Self>) -> Option<Arc<dyn crate::bus::Queue>> {
        Some(self)
    }
}

/// The router every connection of this process uses, whatever its
/// transport: an adapter makes a connection with [`Router::connect`] (its
/// principal and event sink) and calls [`Router::call`] (or
/// [`Router::start`]) per request, knowing no method.
pub fn the_router() -> &'static Router<Ctx> {
    static ROUTER: OnceLock<Router<Ctx>> = OnceLock::new();
    ROUTER.get_or_init(handlers::router)
}

/// Serves an upgraded connection with its protocol's handler until it
/// ends; a signal (the stdio engine's, or a stopping daemon's) cancels it,
/// and a handler that has not ended [`STDIO_WIND_DOWN`] past the kill
/// grace after that is dropped.
async fn hand_off<R, W>(
    protocol: String,
    params: serde_json::Value,
    reader: R,
    writer: W,
    ctx: Arc<Ctx>,
    conn: &router::Conn<Ctx>,
    mut signals: mpsc::UnboundedReceiver<i32>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Some(handler) = upgrade::handler(&protocol) else {
        return;
    };
    tracing::debug!(protocol, "connection upgraded");
    let cancel = ctx.cancel.child();
    let fut = handler(upgrade::Upgraded {
        reader: Box::new(reader),
        writer: Box::new(writer),
        ctx: ctx.clone(),
        principal: conn.principal().clone(),
        params,
        cancel: cancel.clone(),
    });
    tokio::pin!(fut);
    let limit = STDIO_WIND_DOWN + crate::exec::DEFAULT_KILL_GRACE;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut fut => break,
            Some(sig) = signals.recv() => {
                cancel.cancel(sig);
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
            }
            _ = cancel.cancelled(), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + limit);
            }
            _ = wait => {
                tracing::warn!(protocol, "the upgraded connection did not stop within {limit:?}: dropping it");
                break;
            }
        }
    }
}

fn reply(id: Id, r: router::Reply) -> Message {
    match r {
        Ok(v) => Message::ok(id, v),
        Err(e) => Message::err(Some(id), e),
    }
}

/// Serves one connection until the peer closes it and every run it started
/// has finished. `signals` delivers SIGINT/SIGTERM/SIGHUP numbers. Returns
/// whether the peer asked the server to shut down.
///
/// The stdio engine (no daemon) serves exactly one client: when its stdin
/// closes or a signal arrives it cancels every run, lets them wind down for
/// at most [`STDIO_WIND_DOWN`], then drops them (their process groups are
/// killed) and returns, so it never outlives its client. A daemon
/// connection whose peer is judged gone (see [`outbox`]) has its runs
/// cancelled the same way.
pub async fn serve<R, W>(
    reader: R,
    writer: W,
    ctx: Arc<Ctx>,
    mut signals: mpsc::UnboundedReceiver<i32>,
) -> anyhow::Result<bool>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let out = Arc::new(Outbox::default());
    let writer_task = {
        let out = out.clone();
        tokio::spawn(async move {
            let mut writer = writer;
            out.write_to(&mut writer).await;
            writer
        })
    };
    let mut dead = out.dead();
    let router = the_router();
    let conn = router.connect(
        ctx.clone(),
        Principal::local_user(),
        out.clone(),
        Some(&ctx.cancel),
        true,
    );
    let mut tasks = tokio::task::JoinSet::new();
    let mut framer = LineFramer::new();
    let mut reader = reader;
    let mut buf = vec![0u8; 64 * 1024];
    let stdio = ctx.mode == Mode::Stdio;
    // Whether the client is gone (or the stdio engine was told to stop):
    // runs get a bounded time to wind down.
    let mut client_gone = false;
    // A switch to another protocol (`daemon.upgrade`), and the bytes read
    // past its line (they belong to that protocol).
    let mut upgrading: Option<(String, serde_json::Value)> = None;
    let mut leftover = Vec::new();
    loop {
        tokio::select! {
            n = reader.read(&mut buf) => {
                let n: usize = n.unwrap_or_default();
                if n == 0 {
                    // The peer is gone: stop its runs (process groups are killed).
                    conn.cancel_all(libc::SIGTERM);
                    client_gone = true;
                    break;
                }
                for frame in framer.push(&buf[..n]) {
                    let line = match frame {
                        Frame::Line(l) => l,
                        Frame::Oversized => {
                            out.send(&Message::err(None, RpcError::new(codes::INVALID_REQUEST, "message too large")));
                            continue;
                        }
                    };
                    if upgrading.is_some() {
                        leftover.extend_from_slice(&line);
                        leftover.push(b'\n');
                        continue;
                    }
                    match Message::decode(&line) {
                        Err(e) => out.send(&Message::err(None, e)),
                        Ok(Message::Response { .. }) => {}
                        Ok(Message::Notification { method, params }) => {
                            router.notify(&conn, &method, params);
                        }
                        Ok(Message::Request { id, method, params }) => {
                            match router.start(&conn, id.clone(), &method, params) {
                                router::Started::Done(r) => {
                                    out.send(&reply(id, r));
                                    upgrading = conn.take_upgrade();
                                }
                                router::Started::Running(fut) => {
                                    let out = out.clone();
                                    tasks.spawn(async move {
                                        let r = fut.await;
                                        out.send(&reply(id, r));
                                    });
                                }
                            }
                        }
                    }
                }
                if upgrading.is_some() {
                    leftover.extend(framer.take_pending());
                    break;
                }
                if conn.shutdown_requested() { break; }
            }
            Some(sig) = signals.recv() => {
                conn.cancel_all(sig);
                if stdio {
                    // The stdio engine belongs to one client: a signal (its
                    // client's Ctrl-C, a SIGTERM, the client dying) ends it.
                    client_gone = true;
                    break;
                }
            }
            Ok(()) = dead.changed() => {
                conn.cancel_all(libc::SIGTERM);
                client_gone = true;
                break;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    if let Some((protocol, params)) = upgrading {
        // Nothing was in flight when the switch was accepted; answers of
        // requests that just finished go out before the other protocol's.
        while tasks.join_next().await.is_some() {}
        out.close();
        let writer = match tokio::time::timeout(Duration::from_secs(5), writer_task).await {
            Ok(Ok(w)) => w,
            _ => return Ok(false),
        };
        let reader = std::io::Cursor::new(leftover).chain(reader);
        hand_off(protocol, params, reader, writer, ctx, &conn, signals).await;
        return Ok(false);
    }
    // Let running requests finish (cancelled runs stop their processes);
    // the stdio engine waits a bounded time for a client that is gone.
    let limit = STDIO_WIND_DOWN + conn.grace().max(crate::exec::DEFAULT_KILL_GRACE);
    let wind_down = async {
        if stdio && client_gone {
            tokio::time::sleep(limit).await
        } else {
            std::future::pending().await
        }
    };
    tokio::pin!(wind_down);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            Some(sig) = signals.recv() => conn.cancel_all(sig),
            _ = &mut wind_down => {
                tracing::warn!("runs did not stop within {limit:?} of the client going away: killing them");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    out.close();
    // A peer that does not read must not keep this connection alive.
    let writer_task = AbortOnDrop(writer_task);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut w = writer_task;
        let _ = (&mut w.0).await;
    })
    .await;
    Ok(conn.shutdown_requested())
}
