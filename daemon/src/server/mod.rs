//! `server` — the JSON-RPC 2.0 edge of the engine.
//!
//! Owns: reading NDJSON requests from a byte stream, the `daemon.hello`
//! handshake, dispatching methods to the engine, forwarding run events as
//! `run.event` notifications, cancellation (`run.cancel`, a signal, or the
//! peer going away) and converting engine errors to stable error codes.
//! Only this module knows JSON-RPC; a panic in a handler fails that request,
//! not the server. `daemon` (the submodule) owns the long-lived daemon's
//! lifecycle: socket, locks, idle exit, guard.

pub mod daemon;

use crate::engine;
use crate::inspect;
use crate::state::Hot;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::{
    CacheParams, HelloParams, HelloResult, Id, Message, PROTOCOL_VERSION, RpcError,
    RunCancelParams, RunParams, codes, methods,
};

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
}

/// Everything a connection's handlers can reach.
pub struct Ctx {
    pub mode: Mode,
    pub hot: Option<Arc<Hot>>,
    pub daemon: Option<Arc<DaemonInfo>>,
}

impl Ctx {
    pub fn stdio() -> Arc<Ctx> {
        Arc::new(Ctx {
            mode: Mode::Stdio,
            hot: None,
            daemon: None,
        })
    }

    fn version(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.version.clone())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    }
}

#[derive(Default)]
struct State {
    hello: bool,
    cancels: Vec<watch::Sender<Option<i32>>>,
}

fn parse<T: serde::de::DeserializeOwned>(params: serde_json::Value) -> Result<T, RpcError> {
    serde_json::from_value(params)
        .map_err(|e| RpcError::new(codes::INVALID_PARAMS, format!("invalid params: {e}")))
}

fn engine_err(e: engine::EngineError) -> RpcError {
    let mut r = RpcError::new(e.code, e.message);
    r.data = e.data;
    r
}

/// Serves one connection until the peer closes it and every run it started
/// has finished. `signals` delivers SIGINT/SIGTERM/SIGHUP numbers. Returns
/// whether the peer asked the server to shut down.
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
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer_task = tokio::spawn(async move {
        let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, writer);
        while let Some(m) = out_rx.recv().await {
            if w.write_all(&m.encode()).await.is_err() {
                break;
            }
            while let Ok(m) = out_rx.try_recv() {
                if w.write_all(&m.encode()).await.is_err() {
                    return;
                }
            }
            if w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.flush().await;
    });
    let state = Arc::new(Mutex::new(State::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut framer = LineFramer::new();
    let mut reader = reader;
    let mut buf = vec![0u8; 64 * 1024];
    let cancel_all = |state: &Arc<Mutex<State>>, sig: i32| {
        if let Ok(s) = state.lock() {
            for c in &s.cancels {
                let _ = c.send(Some(sig));
            }
        }
    };
    let mut shutdown = false;
    loop {
        tokio::select! {
            n = reader.read(&mut buf) => {
                let n: usize = n.unwrap_or_default();
                if n == 0 {
                    // The peer is gone: stop its runs (process groups are killed).
                    cancel_all(&state, libc::SIGTERM);
                    break;
                }
                for frame in framer.push(&buf[..n]) {
                    let line = match frame {
                        Frame::Line(l) => l,
                        Frame::Oversized => {
                            let _ = out_tx.send(Message::err(None, RpcError::new(codes::INVALID_REQUEST, "message too large")));
                            continue;
                        }
                    };
                    match Message::decode(&line) {
                        Err(e) => { let _ = out_tx.send(Message::err(None, e)); }
                        Ok(Message::Response { .. }) => {}
                        Ok(Message::Notification { method, params }) => {
                            if method == methods::RUN_CANCEL {
                                let p: RunCancelParams = parse(params).unwrap_or_default();
                                cancel_all(&state, if p.signal > 0 { p.signal } else { libc::SIGTERM });
                            }
                        }
                        Ok(Message::Request { id, method, params }) => {
                            if method == methods::SHUTDOWN {
                                let _ = out_tx.send(Message::ok(id, serde_json::json!({})));
                                shutdown = true;
                                continue;
                            }
                            if let Some(hot) = &ctx.hot {
                                hot.touch();
                            }
                            dispatch(&mut tasks, &state, &out_tx, &ctx, id, method, params);
                        }
                    }
                }
                if shutdown { break; }
            }
            Some(sig) = signals.recv() => cancel_all(&state, sig),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Let running requests finish (cancelled runs stop their processes).
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            Some(sig) = signals.recv() => cancel_all(&state, sig),
        }
    }
    drop(out_tx);
    let _ = writer_task.await;
    Ok(shutdown)
}

fn dispatch(
    tasks: &mut tokio::task::JoinSet<()>,
    state: &Arc<Mutex<State>>,
    out: &mpsc::UnboundedSender<Message>,
    ctx: &Arc<Ctx>,
    id: Id,
    method: String,
    params: serde_json::Value,
) {
    let hello_done = state.lock().map(|s| s.hello).unwrap_or(false);
    if method == methods::HELLO {
        let reply = match parse::<HelloParams>(params) {
            Err(e) => Message::err(Some(id), e),
            Ok(p) if p.protocol != PROTOCOL_VERSION => Message::err(
                Some(id),
                RpcError::new(
                    codes::PROTOCOL_MISMATCH,
                    format!("protocol {} is not supported (this vxd speaks {PROTOCOL_VERSION})", p.protocol),
                )
                .with_data(serde_json::json!({"protocol": PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION")})),
            ),
            Ok(_) => {
                if let Ok(mut s) = state.lock() {
                    s.hello = true;
                }
                Message::ok(
                    id,
                    HelloResult {
                        protocol: PROTOCOL_VERSION,
                        version: ctx.version(),
                        pid: std::process::id(),
                        mode: match ctx.mode {
                            Mode::Stdio => "stdio".into(),
                            Mode::Daemon => "daemon".into(),
                        },
                        root: ctx.hot.as_ref().map(|h| h.root.to_string_lossy().into_owned()),
                    },
                )
            }
        };
        let _ = out.send(reply);
        return;
    }
    if !hello_done {
        let _ = out.send(Message::err(
            Some(id),
            RpcError::new(
                codes::PROTOCOL_MISMATCH,
                "daemon.hello must be the first request",
            ),
        ));
        return;
    }
    let out = out.clone();
    let state = state.clone();
    let ctx = ctx.clone();
    tasks.spawn(async move {
        let id2 = id.clone();
        let out2 = out.clone();
        // The handler runs in its own task so that a panic fails this
        // request only.
        let handle =
            tokio::spawn(async move { handle(&ctx, &state, &out2, &method, params).await });
        let reply = match handle.await {
            Ok(Ok(v)) => Message::ok(id2, v),
            Ok(Err(e)) => Message::err(Some(id2), e),
            Err(e) => Message::err(
                Some(id2),
                RpcError::new(
                    codes::INTERNAL_ERROR,
                    format!("internal error: the handler failed: {e}"),
                ),
            ),
        };
        let _ = out.send(reply);
    });
}

async fn handle(
    ctx: &Arc<Ctx>,
    state: &Arc<Mutex<State>>,
    out: &mpsc::UnboundedSender<Message>,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, RpcError> {
    let to_value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
    };
    match method {
        methods::RUN_START => {
            let p: RunParams = parse(params)?;
            let (cancel_tx, cancel_rx) = watch::channel(None);
            if let Ok(mut s) = state.lock() {
                s.cancels.push(cancel_tx);
            }
            let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
            let out2 = out.clone();
            let forward = tokio::spawn(async move {
                while let Some(e) = ev_rx.recv().await {
                    let _ = out2.send(Message::notification(methods::RUN_EVENT, e));
                }
            });
            let r = engine::run(p, ev_tx, cancel_rx, ctx.hot.clone()).await;
            let _ = forward.await;
            to_value(serde_json::to_value(r.map_err(engine_err)?))
        }
        methods::WATCH_START => {
            let p: vx_proto::WatchParams = parse(params)?;
            let (cancel_tx, cancel_rx) = watch::channel(None);
            if let Ok(mut s) = state.lock() {
                s.cancels.push(cancel_tx);
            }
            // The daemon's watcher serves every watch client; the no-daemon
            // engine starts a private one for this loop.
            let hot = match &ctx.hot {
                Some(h) => h.clone(),
                None => {
                    let cwd = PathBuf::from(&p.run.cwd);
                    let root =
                        tokio::task::spawn_blocking(move || crate::workspace::find_root(&cwd))
                            .await
                            .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?
                            .map_err(|e| engine_err(e.into()))?;
                    Hot::start(&root).map_err(|e| {
                        RpcError::new(
                            codes::INTERNAL_ERROR,
                            format!("cannot watch {}: {e:#}", root.display()),
                        )
                    })?
                }
            };
            let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
            let out2 = out.clone();
            let forward = tokio::spawn(async move {
                while let Some(e) = ev_rx.recv().await {
                    let _ = out2.send(Message::notification(methods::RUN_EVENT, e));
                }
            });
            let r = crate::watch::run(p, ev_tx, cancel_rx, hot).await;
            let _ = forward.await;
            to_value(serde_json::to_value(r.map_err(engine_err)?))
        }
        methods::RUN_PLAN => {
            let p: RunParams = parse(params)?;
            to_value(serde_json::to_value(
                engine::plan(p, ctx.hot.clone()).await.map_err(engine_err)?,
            ))
        }
        methods::CACHE_STATS | methods::CACHE_CLEAN => {
            let p: CacheParams = parse(params)?;
            let cwd = PathBuf::from(p.cwd);
            let stats = method == methods::CACHE_STATS;
            let hot = ctx.hot.clone();
            let r = tokio::task::spawn_blocking(move || {
                if stats {
                    engine::cache_stats(&cwd, hot.as_deref()).map(serde_json::to_value)
                } else {
                    engine::cache_clean(&cwd, hot.as_deref()).map(serde_json::to_value)
                }
            })
            .await
            .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
            to_value(r.map_err(engine_err)?)
        }
        methods::CACHE_PRUNE => {
            let p: vx_proto::CachePruneParams = parse(params)?;
            let hot = ctx.hot.clone();
            let r = tokio::task::spawn_blocking(move || engine::cache_prune(&p, hot.as_deref()))
                .await
                .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
            to_value(serde_json::to_value(r.map_err(engine_err)?))
        }
        methods::HISTORY_RUNS
        | methods::HISTORY_RUN
        | methods::HISTORY_TASK
        | methods::HISTORY_WHY
        | methods::WORKSPACE_INFO => {
            let hot = ctx.hot.clone();
            let daemon = ctx.daemon.clone();
            let method = method.to_string();
            tokio::task::spawn_blocking(move || -> Result<serde_json::Value, RpcError> {
                let hot = hot.as_deref();
                let r = match method.as_str() {
                    methods::HISTORY_RUNS => {
                        inspect::runs(parse(params)?, hot).map(serde_json::to_value)
                    }
                    methods::HISTORY_RUN => {
                        inspect::run(parse(params)?, hot).map(serde_json::to_value)
                    }
                    methods::HISTORY_TASK => {
                        inspect::task(parse(params)?, hot).map(serde_json::to_value)
                    }
                    methods::HISTORY_WHY => {
                        inspect::why(parse(params)?, hot).map(serde_json::to_value)
                    }
                    _ => inspect::info(parse(params)?, hot, daemon.as_deref())
                        .map(serde_json::to_value),
                };
                r.map_err(engine_err)?
                    .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
            })
            .await
            .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?
        }
        methods::RUN_CANCEL => {
            let p: RunCancelParams = parse(params)?;
            if let Ok(s) = state.lock() {
                for c in &s.cancels {
                    let _ = c.send(Some(if p.signal > 0 {
                        p.signal
                    } else {
                        libc::SIGTERM
                    }));
                }
            }
            Ok(serde_json::json!({}))
        }
        methods::STATUS => match (&ctx.hot, &ctx.daemon) {
            (Some(hot), Some(d)) => to_value(serde_json::to_value(daemon::status(hot, d))),
            _ => Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                "daemon.status is only served by a daemon (this is the no-daemon engine)",
            )),
        },
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("unknown method `{other}`"),
        )),
    }
}
