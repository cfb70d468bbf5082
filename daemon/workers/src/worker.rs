//! `worker` — the `vxd worker` process: one checkout lending its CPUs to a
//! coordinating daemon.
//!
//! Owns: the command line (`--connect URL`, `--token` or
//! `VX_WORKER_TOKEN`, `--capacity N`, `--label L`…, `--name`), the link's
//! life (connect, Hello with this checkout's commit, `Ready`, reconnect
//! with backoff when the coordinator goes away, exit 2 on a refusal),
//! heartbeats on their own timer every `lease_ms / 3` (so a long upload
//! never starves them: they jump the queue ahead of log lines and reports),
//! running each assignment through
//! [`vxd::engine::distribute::execute_assigned`] with this process's own
//! environment, forwarding its lines as they come, then `Done` and
//! `Ready { free }` (the idle slots now: it replaces the previous credit)
//! — in that order, after the lines —, and killing a
//! task on `Revoke`, when the link is lost (the coordinator no longer owns
//! it) and on SIGTERM/SIGINT.
//!
//! Never: runs a task the coordinator did not assign, keeps running tasks
//! after its link is gone, or puts its token in a log line.

use crate::{MAX_MESSAGE, pb, wire};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use vxd::engine::distribute::{FromWorker, Hello, PROTOCOL, ToWorker};

/// The exit status of a refused worker (bad token, another commit).
pub const EXIT_REFUSED: i32 = 2;

/// Heartbeats before the first assignment says how long leases are (a
/// third of the default lease).
const FIRST_HEARTBEAT: Duration = Duration::from_millis(3_000);
/// Reconnect delays: from the first, doubling up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long killed tasks get to end before the worker stops waiting.
const KILL_WAIT: Duration = Duration::from_secs(15);

/// `vxd worker`'s command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "vxd worker",
    about = "Run tasks for a coordinating vx daemon (`vx run --distribute`); see docs/distributed.md"
)]
pub struct Args {
    /// The coordinator's worker URL (`worker_url` in `vx daemon status --json`).
    #[arg(long, value_name = "URL")]
    pub connect: String,
    /// The link token (default: $VX_WORKER_TOKEN; prefer the variable: a
    /// command line is visible in `ps`).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// How many tasks to run at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,
    /// A label tasks may require (`[A-Za-z0-9_.-]+`; repeatable).
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// A name for messages and the `worker` field of events (default:
    /// HOST:PID).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// What a worker runs with, checked.
struct Config {
    url: String,
    token: String,
    hello: Hello,
    root: PathBuf,
}

/// This host's name.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it on success (we also stop at its end).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!s.is_empty()).then_some(s)
}

fn config(args: Args) -> Result<Config, String> {
    let url = args.connect.trim().to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "--connect {url:?}: expected the coordinator's worker URL, such as http://127.0.0.1:40123 (`worker_url` in `vx daemon status --json`)"
        ));
    }
    Endpoint::from_shared(url.clone()).map_err(|e| format!("--connect {url:?}: {e}"))?;
    let token = match args.token {
        Some(t) => t,
        None => vx_proto::knobs::WORKER_TOKEN.get_process().ok_or_else(|| {
            format!(
                "no token: pass --token or set {} (the coordinator's `[workers] token`, else its HTTP token)",
                vx_proto::knobs::WORKER_TOKEN.name
            )
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token is empty or not printable ASCII".into());
    }
    let capacity = match args.capacity {
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    };
    if capacity == 0 || capacity > wire::MAX_CAPACITY {
        return Err(format!(
            "--capacity {capacity}: expected 1 to {}",
            wire::MAX_CAPACITY
        ));
    }
    if let Some(bad) = args.labels.iter().find(|l| !wire::valid_label(l)) {
        return Err(format!(
            "--label {bad:?}: a label is letters, digits, `_`, `.` and `-` (at most {} characters)",
            wire::MAX_LABEL
        ));
    }
    if args.labels.len() > wire::MAX_LABELS {
        return Err(format!("at most {} labels", wire::MAX_LABELS));
    }
    let name = match args.name {
        Some(n) => n.trim().to_string(),
        None => format!(
            "{}:{}",
            hostname().unwrap_or_else(|| "worker".into()),
            std::process::id()
        ),
    };
    if name.is_empty() || name.len() > wire::MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "--name: 1 to {} printable characters",
            wire::MAX_NAME
        ));
    }
    let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
    let root = vxd::workspace::find_root(&cwd)
        .map_err(|e| format!("not in a vx workspace ({}): {e}", cwd.display()))?;
    let commit = vxd::engine::distribute::head_commit(&root);
    let mut labels = args.labels;
    labels.sort();
    labels.dedup();
    Ok(Config {
        url,
        token,
        root,
        hello: Hello {
            name,
            commit,
            capacity,
            labels,
            protocol: PROTOCOL,
        },
    })
}

/// `vxd worker ARGS…` (`args` without the program and `worker`); returns
/// the exit status: 0 when stopped by a signal, [`EXIT_REFUSED`] when the
/// coordinator refused it or the arguments are wrong.
pub fn worker_main(args: Vec<String>) -> i32 {
    use clap::Parser as _;
    let args = match Args::try_parse_from(std::iter::once("vxd worker".to_string()).chain(args)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_REFUSED } else { 0 };
        }
    };
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vxd worker: {e}");
            return EXIT_REFUSED;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(vx_proto::knobs::LOG.name)
                .unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    // Threads enough that tasks busy with blocking work (hashing, an
    // upload) never starve the link and its heartbeats.
    let threads = (cfg.hello.capacity as usize + 2).clamp(2, 64);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxd worker: starting the runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(run(cfg));
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// How a link ended.
enum Ended {
    /// SIGTERM/SIGINT: the worker exits.
    Stopped,
    /// Refused (token, commit, protocol): the worker exits.
    Refused(String),
    /// The coordinator went away (or never answered): reconnect. `true`
    /// when the link had been up.
    Lost(String, bool),
}

async fn run(cfg: Config) -> i32 {
    let stop = CancellationToken::new();
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::interrupt(),
    ] {
        match tokio::signal::unix::signal(kind) {
            Ok(mut s) => {
                let stop = stop.clone();
                tokio::spawn(async move {
                    if s.recv().await.is_some() {
                        stop.cancel();
                    }
                });
            }
            Err(e) => {
                eprintln!("vxd worker: cannot handle signals: {e}");
                return 1;
            }
        }
    }
    let cfg = Arc::new(cfg);
    let mut backoff = BACKOFF_FIRST;
    loop {
        match session(&cfg, &stop).await {
            Ended::Stopped => {
                eprintln!("vxd worker {}: stopped", cfg.hello.name);
                return 0;
            }
            Ended::Refused(why) => {
                eprintln!(
                    "vxd worker {}: refused by {}: {why}",
                    cfg.hello.name, cfg.url
                );
                return EXIT_REFUSED;
            }
            Ended::Lost(why, was_up) => {
                if was_up {
                    backoff = BACKOFF_FIRST;
                }
                eprintln!(
                    "vxd worker {}: {why}; connecting again in {} ms",
                    cfg.hello.name,
                    backoff.as_millis()
                );
                tokio::select! {
                    _ = stop.cancelled() => return 0,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The link's outbound messages: heartbeats (and the Hello) first, then
/// lines, reports and `Ready`s in the order they were queued; it ends (the
/// link closes: the coordinator takes the leases back) when `gone` is
/// cancelled.
struct Outbound {
    gone: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    urgent: mpsc::Receiver<pb::FromWorker>,
    urgent_open: bool,
    data: mpsc::Receiver<pb::FromWorker>,
    data_open: bool,
}

impl tokio_stream::Stream for Outbound {
    type Item = pb::FromWorker;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::FromWorker>> {
        if self.gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if self.urgent_open {
            match self.urgent.poll_recv(cx) {
                Poll::Ready(Some(m)) => return Poll::Ready(Some(m)),
                Poll::Ready(None) => self.urgent_open = false,
                Poll::Pending => {}
            }
        }
        if self.data_open {
            match self.data.poll_recv(cx) {
                Poll::Ready(Some(m)) => return Poll::Ready(Some(m)),
                Poll::Ready(None) => self.data_open = false,
                Poll::Pending => {}
            }
        }
        if !self.urgent_open && !self.data_open {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

type Running = Arc<Mutex<HashMap<u64, watch::Sender<Option<i32>>>>>;

/// One connection to the coordinator, until it ends.
async fn session(cfg: &Arc<Config>, stop: &CancellationToken) -> Ended {
    let endpoint = match Endpoint::from_shared(cfg.url.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(crate::door::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::door::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true),
        Err(e) => return Ended::Refused(format!("bad URL: {e}")),
    };
    let channel = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return Ended::Lost(format!("cannot reach {}: {}", cfg.url, source_chain(&e)), false),
        },
    };
    let mut client = pb::worker_link_client::WorkerLinkClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (urgent_tx, urgent_rx) = mpsc::channel::<pb::FromWorker>(16);
    let (data_tx, data_rx) = mpsc::channel::<pb::FromWorker>(256);
    let _ = urgent_tx.try_send(wire::hello_to_wire(&cfg.hello));
    // Cancelled when this session ends: the link closes then, before any
    // task this worker kills reports (a report of our own kill would read
    // as the task's outcome; a closed link hands the leases back).
    let gone = CancellationToken::new();
    let _closing = gone.clone().drop_guard();
    let mut req = tonic::Request::new(Outbound {
        gone: Box::pin(gone.clone().cancelled_owned()),
        urgent: urgent_rx,
        urgent_open: true,
        data: data_rx,
        data_open: true,
    });
    match format!("Bearer {}", cfg.token).parse() {
        Ok(v) => {
            req.metadata_mut().insert("authorization", v);
        }
        Err(_) => return Ended::Refused("the token is not a valid header value".into()),
    }
    let answered = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        r = client.connect(req) => r,
    };
    let mut inbound = match answered {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return match s.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::FailedPrecondition
                | tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied => Ended::Refused(s.message().to_string()),
                _ => Ended::Lost(format!("the link failed: {}", s.message()), false),
            };
        }
    };
    eprintln!(
        "vxd worker {}: connected to {} (capacity {}, labels [{}], commit {})",
        cfg.hello.name,
        cfg.url,
        cfg.hello.capacity,
        cfg.hello.labels.join(", "),
        cfg.hello.commit.as_deref().unwrap_or("none")
    );
    let _ = data_tx
        .send(wire::from_worker_to_wire(FromWorker::Ready {
            free: cfg.hello.capacity,
        }))
        .await;
    let running: Running = Default::default();
    let (heartbeat_ms, every) = watch::channel(FIRST_HEARTBEAT.as_millis() as u64);
    let heartbeats = tokio::spawn(heartbeat(urgent_tx.clone(), running.clone(), every));
    let env: Arc<BTreeMap<String, String>> = Arc::new(std::env::vars().collect());
    let mut tasks = JoinSet::new();
    let session = Session {
        cfg: cfg.clone(),
        env,
        data: data_tx.clone(),
        running: running.clone(),
        gone: gone.clone(),
        reporting: Arc::new(tokio::sync::Mutex::new(())),
    };
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ended::Stopped,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            m = inbound.message() => match m {
                Ok(Some(m)) => match wire::to_worker_from_wire(m) {
                    Ok(Some(ToWorker::Assign(a))) => {
                        let lease = a.lease;
                        let lease_ms = a.lease_ms;
                        let (cancel_tx, cancel_rx) = watch::channel(None);
                        {
                            let Ok(mut r) = running.lock() else { break Ended::Stopped };
                            if r.contains_key(&lease) {
                                continue;
                            }
                            r.insert(lease, cancel_tx);
                        }
                        // The beat follows the lease (a third of it), and a
                        // change wakes it at once (not after the old
                        // interval).
                        let beat = (lease_ms / 3).max(50);
                        heartbeat_ms.send_if_modified(|ms| {
                            let changed = *ms != beat;
                            *ms = beat;
                            changed
                        });
                        tracing::info!(lease, task = %a.task_id, "assigned");
                        tasks.spawn(execute(session.clone(), a, cancel_rx));
                    }
                    Ok(Some(ToWorker::Revoke { lease, reason })) => {
                        let cancel = running.lock().ok().and_then(|r| r.get(&lease).cloned());
                        if let Some(c) = cancel {
                            eprintln!("vxd worker {}: lease {lease} revoked ({reason}): killing its task", cfg.hello.name);
                            let _ = c.send(Some(libc::SIGTERM));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break Ended::Lost(format!("the coordinator sent a bad message ({e})"), true),
                },
                Ok(None) => break Ended::Lost("the coordinator closed the link".into(), true),
                Err(s) => {
                    // A refusal can also come after the call was accepted.
                    if s.code() == tonic::Code::FailedPrecondition || s.code() == tonic::Code::Unauthenticated {
                        break Ended::Refused(s.message().to_string());
                    }
                    break Ended::Lost(format!("the link was lost: {}", s.message()), true);
                }
            },
        }
    };
    heartbeats.abort();
    // Close the link first (the coordinator reassigns the leases), then
    // kill the tasks: it no longer owns them (or we are stopping).
    gone.cancel();
    drop(inbound);
    let live: Vec<_> = running
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default();
    if !live.is_empty() {
        eprintln!(
            "vxd worker {}: killing {} running task(s)",
            cfg.hello.name,
            live.len()
        );
    }
    for c in live {
        let _ = c.send(Some(libc::SIGTERM));
    }
    let waited = tokio::time::timeout(KILL_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if waited.is_err() {
        // Dropping the futures kills their process groups.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    ended
}

/// Sends a heartbeat naming the live leases every `every` ms, on its own
/// timer (never queued behind lines or reports), and at once when the
/// interval changes.
async fn heartbeat(
    tx: mpsc::Sender<pb::FromWorker>,
    running: Running,
    mut every: watch::Receiver<u64>,
) {
    loop {
        let ms = (*every.borrow_and_update()).max(50);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            changed = every.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let mut leases: Vec<u64> = running
            .lock()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        leases.sort_unstable();
        let beat = wire::from_worker_to_wire(FromWorker::Heartbeat { leases });
        if tx.send(beat).await.is_err() {
            return;
        }
    }
}

/// Runs one assignment: lines as they come, then `Done`, then `Ready`.
/// What every task of one session shares.
#[derive(Clone)]
struct Session {
    cfg: Arc<Config>,
    /// This process's environment, the tasks' base environment.
    env: Arc<BTreeMap<String, String>>,
    /// Lines, reports and `Ready`s, in order.
    data: mpsc::Sender<pb::FromWorker>,
    running: Running,
    /// Cancelled when the link is closed.
    gone: CancellationToken,
    /// One report at a time (see [`execute`]).
    reporting: Arc<tokio::sync::Mutex<()>>,
}

async fn execute(
    s: Session,
    a: vxd::engine::distribute::Assignment,
    cancel: watch::Receiver<Option<i32>>,
) {
    let Session {
        cfg,
        env,
        data,
        running,
        gone,
        reporting,
    } = s;
    let lease = a.lease;
    let task = a.task_id.clone();
    let (line_tx, mut line_rx) = mpsc::channel(256);
    let lines = {
        let data = data.clone();
        tokio::spawn(async move {
            while let Some((stream, line)) = line_rx.recv().await {
                let m = wire::from_worker_to_wire(FromWorker::Log {
                    lease,
                    stream,
                    line,
                });
                if data.send(m).await.is_err() {
                    // The link is gone: keep draining so the task never
                    // blocks on its output.
                    while line_rx.recv().await.is_some() {}
                    return;
                }
            }
        })
    };
    let report = vxd::engine::distribute::execute_assigned(
        cfg.root.clone(),
        a,
        (*env).clone(),
        line_tx,
        cancel,
    )
    .await;
    let _ = lines.await;
    tracing::info!(lease, %task, status = ?report.status, "done");
    // One report at a time, so each `Ready` (which replaces the credit)
    // counts the idle slots as of its turn: two tasks ending together
    // cannot leave a stale, smaller count last.
    let _turn = reporting.lock().await;
    let free = match running.lock() {
        Ok(mut r) => {
            r.remove(&lease);
            cfg.hello.capacity.saturating_sub(r.len() as u32)
        }
        Err(_) => 0,
    };
    if gone.is_cancelled() {
        // The link is closed: no report (the coordinator reassigned it).
        return;
    }
    let _ = data
        .send(wire::from_worker_to_wire(FromWorker::Done {
            lease,
            report,
        }))
        .await;
    let _ = data
        .send(wire::from_worker_to_wire(FromWorker::Ready { free }))
        .await;
}

/// An error with its causes (`a: b: c`).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
