//! `server` — the JSON-RPC 2.0 edge of the engine.
//!
//! Owns: reading NDJSON requests from a byte stream, the `daemon.hello`
//! handshake, dispatching methods to the engine, forwarding run events as
//! `run.event` notifications, cancellation (`run.cancel`, a signal, or the
//! peer going away) and converting engine errors to stable error codes.
//! Only this module knows JSON-RPC; a panic in a handler fails that request,
//! not the server. Every connection's outgoing messages go through a bounded
//! [`outbox::Outbox`]: a peer that does not read never stalls a run or grows
//! memory. Requests are checked at this edge before any engine work: a
//! relative `cwd` and a concurrency above [`vx_proto::MAX_CONCURRENCY`] are
//! refused. The stdio engine never outlives its client: it ends when its
//! stdin closes or on a signal, within a bounded time.
//! `daemon` (the submodule) owns the long-lived daemon's lifecycle: socket,
//! locks, idle exit, guard.

pub mod daemon;
pub mod outbox;

use crate::engine;
use crate::inspect;
use crate::state::Hot;
use outbox::Outbox;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, watch};
use vx_proto::framing::{Frame, LineFramer};
use vx_proto::{
    CacheParams, HelloParams, HelloResult, Id, Message, PROTOCOL_VERSION, RpcError,
    RunCancelParams, RunParams, codes, live, live::RunKind, methods,
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
    /// The longest SIGTERM→SIGKILL grace a run of this connection asked for.
    grace: Duration,
}

impl State {
    fn add_run(&mut self, cancel: watch::Sender<Option<i32>>, env: &BTreeMap<String, String>) {
        self.cancels.push(cancel);
        self.grace = self.grace.max(crate::exec::kill_grace_in(env));
    }
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

/// How long past its runs' kill grace the stdio engine lets cancelled runs
/// wind down (their tasks get SIGTERM, then SIGKILL after the grace) once
/// its client is gone or it got a signal, before it drops them (which
/// SIGKILLs their process groups).
const STDIO_WIND_DOWN: Duration = Duration::from_secs(1);

/// Runs in flight in this process, to give memory back when none is left.
static ACTIVE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Counts one run; when the last run of the process ends, returns freed
/// heap pages to the system (a large run's buffers otherwise stay resident).
struct ActiveRun;

impl ActiveRun {
    fn start() -> ActiveRun {
        ACTIVE_RUNS.fetch_add(1, Ordering::SeqCst);
        ActiveRun
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        if ACTIVE_RUNS.fetch_sub(1, Ordering::SeqCst) == 1 {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(give_memory_back);
                }
                Err(_) => give_memory_back(),
            }
        }
    }
}

/// Returns free heap memory to the system (glibc keeps it otherwise).
pub fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Aborts a spawned task when dropped (a handler dies with its request).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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
        tokio::spawn(async move { out.write_to(writer).await })
    };
    let mut dead = out.dead();
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
    let stdio = ctx.mode == Mode::Stdio;
    let mut shutdown = false;
    // Whether the client is gone (or the stdio engine was told to stop):
    // runs get a bounded time to wind down.
    let mut client_gone = false;
    loop {
        tokio::select! {
            n = reader.read(&mut buf) => {
                let n: usize = n.unwrap_or_default();
                if n == 0 {
                    // The peer is gone: stop its runs (process groups are killed).
                    cancel_all(&state, libc::SIGTERM);
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
                    match Message::decode(&line) {
                        Err(e) => out.send(&Message::err(None, e)),
                        Ok(Message::Response { .. }) => {}
                        Ok(Message::Notification { method, params }) => {
                            if method == methods::RUN_CANCEL {
                                let p: RunCancelParams = parse(params).unwrap_or_default();
                                cancel_all(&state, if p.signal > 0 { p.signal } else { libc::SIGTERM });
                            }
                        }
                        Ok(Message::Request { id, method, params }) => {
                            if method == methods::SHUTDOWN {
                                out.send(&Message::ok(id, serde_json::json!({})));
                                shutdown = true;
                                continue;
                            }
                            if let Some(hot) = &ctx.hot {
                                hot.touch();
                            }
                            dispatch(&mut tasks, &state, &out, &ctx, id, method, params);
                        }
                    }
                }
                if shutdown { break; }
            }
            Some(sig) = signals.recv() => {
                cancel_all(&state, sig);
                if stdio {
                    // The stdio engine belongs to one client: a signal (its
                    // client's Ctrl-C, a SIGTERM, the client dying) ends it.
                    client_gone = true;
                    break;
                }
            }
            Ok(()) = dead.changed() => {
                cancel_all(&state, libc::SIGTERM);
                client_gone = true;
                break;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // This connection's subscriptions end (their requests answer).
    crate::bus::global().drop_connection(conn_of(&out));
    // Let running requests finish (cancelled runs stop their processes);
    // the stdio engine waits a bounded time for a client that is gone.
    let limit = STDIO_WIND_DOWN
        + state
            .lock()
            .map(|s| s.grace)
            .unwrap_or_default()
            .max(crate::exec::DEFAULT_KILL_GRACE);
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
            Some(sig) = signals.recv() => cancel_all(&state, sig),
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
    Ok(shutdown)
}

fn dispatch(
    tasks: &mut tokio::task::JoinSet<()>,
    state: &Arc<Mutex<State>>,
    out: &Arc<Outbox>,
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
        out.send(&reply);
        return;
    }
    if !hello_done {
        out.send(&Message::err(
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
        // request only; it is aborted if this request's task is.
        let id = id.clone();
        let mut handle = AbortOnDrop(tokio::spawn(async move {
            handle(&ctx, &state, &out2, &id, &method, params).await
        }));
        let reply = match (&mut handle.0).await {
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
        out.send(&reply);
    });
}

/// A connection's number on the bus: its outbox's address.
fn conn_of(out: &Arc<Outbox>) -> usize {
    Arc::as_ptr(out) as usize
}

/// `cwd` (or watch.start's `run.cwd`) must be absolute: a relative one would
/// be resolved against the engine's own directory (`/` for a daemon).
fn check_cwd(params: &serde_json::Value) -> Result<(), RpcError> {
    let (field, cwd) = match (
        params.get("cwd"),
        params.get("run").and_then(|r| r.get("cwd")),
    ) {
        (Some(c), _) => ("cwd", c),
        (None, Some(c)) => ("run.cwd", c),
        (None, None) => return Ok(()),
    };
    match cwd.as_str() {
        Some(c) if !Path::new(c).is_absolute() => Err(RpcError::new(
            codes::INVALID_PARAMS,
            format!("invalid params: `{field}` must be an absolute path, got {c:?}"),
        )
        .with_data(serde_json::json!({ "field": field }))),
        _ => Ok(()),
    }
}

/// A concurrency the engine refuses, before it allocates anything for it.
fn check_concurrency(n: Option<usize>) -> Result<(), RpcError> {
    match n {
        Some(n) if n > vx_proto::MAX_CONCURRENCY => Err(engine_err(engine::concurrency_error(n))),
        _ => Ok(()),
    }
}

/// Under a daemon: the client's `VX_CACHE_DIR` (from the request's env,
/// never the daemon's own) names another cache than the daemon's store, so
/// the request must be served by the no-daemon engine. A `cache_dir` in the
/// config wins over the variable, as everywhere.
async fn check_cache_env(
    hot: Option<&Arc<Hot>>,
    cwd: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), RpcError> {
    let (Some(hot), Some(dir)) = (hot, vx_proto::knobs::CACHE_DIR.get(env)) else {
        return Ok(());
    };
    let (hot, cwd, dir) = (hot.clone(), PathBuf::from(cwd), dir.to_owned());
    let foreign = tokio::task::spawn_blocking(move || {
        // A config that does not load is reported by the request itself.
        let ws = engine::load_workspace(&cwd).ok()?;
        if ws.defaults.cache_dir.is_some() || ws.root != hot.root {
            return None;
        }
        let wanted = ws.root.join(&dir);
        let mine = hot.cache_dir();
        (wanted != mine).then_some((wanted, mine))
    })
    .await
    .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
    match foreign {
        None => Ok(()),
        Some((wanted, mine)) => Err(RpcError::new(
            codes::NEEDS_NO_DAEMON,
            format!(
                "{} names the cache {} but this daemon serves {}: use the no-daemon engine",
                vx_proto::knobs::CACHE_DIR.name,
                wanted.display(),
                mine.display()
            ),
        )),
    }
}

async fn handle(
    ctx: &Arc<Ctx>,
    state: &Arc<Mutex<State>>,
    out: &Arc<Outbox>,
    id: &Id,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, RpcError> {
    let to_value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
    };
    check_cwd(&params)?;
    match method {
        methods::RUN_START => {
            let p: RunParams = parse(params)?;
            check_concurrency(p.concurrency)?;
            check_cache_env(ctx.hot.as_ref(), &p.cwd, &p.env).await?;
            let _active = ActiveRun::start();
            let (cancel_tx, cancel_rx) = watch::channel(None);
            if let Ok(mut s) = state.lock() {
                s.add_run(cancel_tx, &p.env);
            }
            // Each event goes to the bus, then straight into the bounded outbox.
            let tee = Arc::new(crate::bus::global().tee(RunKind::Run, &p));
            let (out2, tee2) = (out.clone(), tee.clone());
            let events = engine::Events::new(move |e| {
                tee2.publish(&e);
                out2.send_event(e)
            });
            let r = engine::run(p, events, cancel_rx, ctx.hot.clone()).await;
            tee.finish(r.as_ref().map(Some).map_err(|e| e.message.as_str()));
            to_value(serde_json::to_value(r.map_err(engine_err)?))
        }
        methods::WATCH_START => {
            let p: vx_proto::WatchParams = parse(params)?;
            check_concurrency(p.run.concurrency)?;
            check_cache_env(ctx.hot.as_ref(), &p.run.cwd, &p.run.env).await?;
            let _active = ActiveRun::start();
            let (cancel_tx, cancel_rx) = watch::channel(None);
            if let Ok(mut s) = state.lock() {
                s.add_run(cancel_tx, &p.run.env);
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
            let tee = Arc::new(crate::bus::global().tee(RunKind::Watch, &p.run));
            let (out2, tee2) = (out.clone(), tee.clone());
            let events = engine::Events::new(move |e| {
                tee2.publish(&e);
                out2.send_event(e)
            });
            let r = crate::watch::run(p, events, cancel_rx, hot).await;
            tee.finish(r.as_ref().map(|_| None).map_err(|e| e.message.as_str()));
            to_value(serde_json::to_value(r.map_err(engine_err)?))
        }
        methods::RUN_PLAN => {
            let p: RunParams = parse(params)?;
            check_concurrency(p.concurrency)?;
            check_cache_env(ctx.hot.as_ref(), &p.cwd, &p.env).await?;
            to_value(serde_json::to_value(
                engine::plan(p, ctx.hot.clone()).await.map_err(engine_err)?,
            ))
        }
        methods::CACHE_STATS | methods::CACHE_CLEAN => {
            let p: CacheParams = parse(params)?;
            check_cache_env(ctx.hot.as_ref(), &p.cwd, &p.env).await?;
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
            check_cache_env(ctx.hot.as_ref(), &p.cwd, &p.env).await?;
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
        live::EVENTS_SUBSCRIBE => {
            let p: live::SubscribeParams = parse(params)?;
            let queue: Arc<dyn crate::bus::Queue> = out.clone();
            let mut sub = crate::bus::global().subscribe(id.clone(), conn_of(out), p, queue);
            let ended = sub.ended().await;
            to_value(serde_json::to_value(live::SubscribeResult {
                ended,
                delivered: sub.delivered(),
            }))
        }
        live::EVENTS_UNSUBSCRIBE => {
            let p: live::UnsubscribeParams = parse(params)?;
            let found = crate::bus::global().unsubscribe(conn_of(out), &p.subscription);
            to_value(serde_json::to_value(live::UnsubscribeResult { found }))
        }
        live::RUNS_ACTIVE => {
            let _: live::RunsActiveParams = parse(params)?;
            to_value(serde_json::to_value(crate::query::runs_active()))
        }
        live::GRAPH_GET | live::TASK_EXPLAIN | live::TASK_LOG => {
            let hot = ctx.hot.clone();
            let method = method.to_string();
            tokio::task::spawn_blocking(move || -> Result<serde_json::Value, RpcError> {
                let r = match method.as_str() {
                    live::GRAPH_GET => {
                        let p: RunParams = parse(params)?;
                        crate::query::graph::get(&p, hot.as_deref()).map(serde_json::to_value)
                    }
                    live::TASK_EXPLAIN => {
                        crate::query::task::explain(parse(params)?, hot).map(serde_json::to_value)
                    }
                    _ => crate::query::task::log(parse(params)?, hot).map(serde_json::to_value),
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
        // Lets the end-to-end tests check that a panic reaches the log
        // (only when the engine was started with VX_TEST_HOOKS=1).
        "test.panic" if vx_proto::knobs::TEST_HOOKS.get_process().as_deref() == Some("1") => {
            panic!("test.panic requested")
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("unknown method `{other}`"),
        )),
    }
}
