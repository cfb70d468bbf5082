//! `engine::distribute` — worker links, seen from the engine: the coordinator's
//! bookkeeping of remote workers and their leases, and the worker's side
//! of executing one assigned task.
//!
//! Owns: which connected worker may take which task (capacity, labels),
//! each assignment's **lease** (a deadline that heartbeats extend; an
//! upload does not eat into it, because heartbeats flow on their own
//! timer), idempotent completion (a late or duplicate report is ignored),
//! reassignment of a lost worker's tasks against a per-task retry budget,
//! failing fast when no connected worker has a label a task needs,
//! revocation of work the coordinator no longer owns, and — on a worker —
//! executing an [`Assignment`] in its own checkout with its dependencies'
//! outputs restored from the remote cache.
//!
//! The transport (gRPC, in the `vxd-workers` crate) is a dumb pipe: it
//! turns its wire messages into [`FromWorker`] and [`ToWorker`] values and
//! calls [`Coordinator::attach`] / [`Link`]. Never: links tonic or any
//! transport, reads a socket, or trusts a worker's report beyond the lease
//! it names (a report for a lease that is no longer live changes nothing).
//!
//! INTERFACE CONTRACT (shared by the engine and transport helpers; the
//! bodies are the engine's): change a signature only by agreement.

use std::sync::Arc;
use tokio::sync::mpsc;

/// A worker's introduction, first on every link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// A name for messages and the `worker` field of events (host:pid
    /// unless given).
    pub name: String,
    /// `git rev-parse HEAD` of the worker's checkout (`None`: not a git
    /// checkout).
    pub commit: Option<String>,
    /// How many tasks it runs at once (≥ 1).
    pub capacity: u32,
    /// Its labels (`--label`), each `[A-Za-z0-9_.-]+`.
    pub labels: Vec<String>,
    /// `vxd`'s version; a different protocol version is refused.
    pub protocol: u32,
}

/// Why a worker was refused (its message names both sides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// One task leased to one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Unique per coordinator process; never reused.
    pub lease: u64,
    pub run_id: String,
    /// `project#task`.
    pub task_id: String,
    /// The coordinator's key for it; the worker refuses to execute when
    /// its own key differs (the checkouts differ), naming both.
    pub key: String,
    /// Every task it depends on (transitively) that has a command:
    /// `(task id, key)`; their outputs are in the remote cache.
    pub deps: Vec<(String, String)>,
    /// The values of the env vars the task's key folds in, from the run's
    /// request (nothing else of the client's environment travels).
    pub env: Vec<(String, String)>,
    /// The task's extra arguments (`vx run build -- --x`).
    pub args: Vec<String>,
    /// Heartbeats must arrive within this many ms or the lease is lost.
    pub lease_ms: u64,
}

/// What the coordinator sends down a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    Assign(Assignment),
    /// Stop that task now (kill it): the coordinator no longer owns it
    /// (its lease expired, the run was cancelled or already failed).
    Revoke {
        lease: u64,
        reason: String,
    },
}

/// An output stream of a task.
pub use vx_proto::Stream;

/// What a worker reports when a leased task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Success` or `Failed` (`Aborted` when revoked/cancelled).
    pub status: vx_proto::TaskStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// A one-line reason (key mismatch, spawn error, upload failed, …).
    pub error: Option<String>,
    /// The outputs (and log) are in the remote cache under the key.
    pub uploaded: bool,
    pub cpu_ms: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// What a worker sends up a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    /// This many more tasks may be assigned (pull-based: the coordinator
    /// never assigns beyond what was asked for).
    Ready { free: u32 },
    /// The worker is alive and still working on these leases.
    Heartbeat { leases: Vec<u64> },
    /// One line of a leased task's output, live.
    Log {
        lease: u64,
        stream: Stream,
        line: String,
    },
    /// The leased task ended (idempotent: only the first report for a
    /// live lease counts).
    Done { lease: u64, report: Report },
}

/// One attached worker, as the transport holds it. Dropping it means the
/// worker is lost (connection closed): its live leases are reassigned.
pub struct Link {
    /// What to send to the worker, in order. Bounded; the coordinator
    /// never blocks on a slow link (it drops the link instead).
    pub to_worker: mpsc::Receiver<ToWorker>,
    inner: Arc<LinkInner>,
}

struct LinkInner {}

impl Link {
    /// Hands one message from the worker to the coordinator.
    pub fn from_worker(&self, msg: FromWorker) {
        let _ = (&self.inner, msg);
        todo!("engine helper")
    }
}

/// The coordinator of this process (one per daemon): worker links attach
/// here; a `--distribute` run offers its tasks here.
pub struct Coordinator {}

impl Coordinator {
    /// The process's coordinator.
    pub fn global() -> &'static Coordinator {
        todo!("engine helper")
    }

    /// Admits a worker whose token the transport has checked. Refused
    /// (with both SHAs named) when its commit differs from the daemon's
    /// checkout, or its protocol differs.
    pub fn attach(&self, hello: Hello) -> Result<Link, Refusal> {
        let _ = hello;
        todo!("engine helper")
    }

    /// Names and capacities of the attached workers (for `daemon.status`).
    pub fn workers(&self) -> Vec<(String, u32, Vec<String>)> {
        todo!("engine helper")
    }
}

/// The worker's side: executes `a` in the checkout at `root` (restoring
/// the dependencies' outputs from the remote cache first, refusing when
/// its own key differs from `a.key`), uploads the outputs to the remote
/// cache, and reports. Each output line goes to `log` as it is printed.
/// A `Some(signal)` on `cancel` kills the task (a revocation).
pub async fn execute_assigned(
    root: std::path::PathBuf,
    a: Assignment,
    env: std::collections::BTreeMap<String, String>,
    log: mpsc::Sender<(Stream, String)>,
    cancel: tokio::sync::watch::Receiver<Option<i32>>,
) -> Report {
    let _ = (root, a, env, log, cancel);
    todo!("engine helper")
}

/// The root `vx.toml`'s `[workers]` section (defaults when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the worker door listens (`host:port`); default
    /// `127.0.0.1:0` (loopback, a free port).
    pub listen: Option<String>,
    /// The link token; `None`: the daemon's HTTP token.
    pub token: Option<String>,
    /// A lease's deadline without a heartbeat, in ms (default 10,000).
    pub lease_ms: u64,
    /// How many times a task may lose its worker before it fails
    /// (default 2).
    pub retries: u32,
}

/// Reads `[workers]` from the root `vx.toml` at `root`; a bad section is
/// an error naming the file, the line and what was expected.
pub fn settings(root: &std::path::Path) -> Result<Settings, String> {
    let _ = root;
    todo!("engine helper")
}
