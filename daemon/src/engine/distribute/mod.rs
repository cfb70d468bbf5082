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

mod lease;
pub(super) mod offer;
mod worker;

use crate::sink::Events;
pub(in crate::engine) use lease::Job;
use lease::{Effect, Pool, RunKey, WorkerId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vx_proto::RunEvent;

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
    /// never assigns beyond what was asked for). It replaces the previous
    /// `Ready`'s credit (send the idle slots you have now, any time), and
    /// never counts beyond the capacity less the leases still live.
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

struct LinkInner {
    coord: &'static Coordinator,
    worker: WorkerId,
}

impl Link {
    /// Hands one message from the worker to the coordinator.
    pub fn from_worker(&self, msg: FromWorker) {
        self.inner.coord.handle(self.inner.worker, msg);
    }
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        self.coord.lost(self.worker, "its link closed");
    }
}

/// The protocol version a worker's [`Hello`] must carry.
pub const PROTOCOL: u32 = 1;

/// How many messages a link may have queued for its worker; beyond, the
/// worker is too slow to keep up and is dropped (its leases reassigned).
pub const LINK_QUEUE: usize = 256;

/// The most labels a worker may have.
pub const MAX_LABELS: usize = 64;

/// The longest log line a worker may send; longer ones are cut.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// The coordinator of this process (one per daemon): worker links attach
/// here; a `--distribute` run offers its tasks here.
pub struct Coordinator {
    state: Mutex<State>,
    /// The daemon's workspace root (its checkout's commit is compared with
    /// each worker's).
    root: Mutex<Option<PathBuf>>,
    epoch: Instant,
}

struct State {
    pool: Pool,
    links: HashMap<WorkerId, mpsc::Sender<ToWorker>>,
    runs: HashMap<RunKey, RunPort>,
    next_run: RunKey,
    timer: bool,
}

impl Coordinator {
    /// The process's coordinator.
    pub fn global() -> &'static Coordinator {
        static GLOBAL: OnceLock<Coordinator> = OnceLock::new();
        GLOBAL.get_or_init(Coordinator::new)
    }

    fn new() -> Coordinator {
        let d = Settings::default();
        Coordinator {
            state: Mutex::new(State {
                pool: Pool::new(d.lease_ms, d.retries),
                links: HashMap::new(),
                runs: HashMap::new(),
                next_run: 1,
                timer: false,
            }),
            root: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    /// Sets the checkout this coordinator serves (the daemon does, at
    /// start-up) and takes its `[workers]` lease and retry settings.
    pub fn set_root(&self, root: &std::path::Path) {
        if let Ok(mut r) = self.root.lock() {
            *r = Some(root.to_path_buf());
        }
        match settings(root) {
            Ok(s) => self.lock().pool.configure(s.lease_ms, s.retries),
            // A distributed run reports it; until then, the defaults.
            Err(e) => tracing::warn!("[workers]: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Admits a worker whose token the transport has checked. Refused
    /// (with both SHAs named) when its commit differs from the daemon's
    /// checkout, or its protocol differs (send [`PROTOCOL`]), or its labels
    /// or capacity are invalid, or no root was set ([`Coordinator::set_root`]).
    /// `&'static`: the [`Link`] refers back to it (use [`Coordinator::global`]).
    pub fn attach(&'static self, hello: Hello) -> Result<Link, Refusal> {
        if hello.protocol != PROTOCOL {
            return Err(Refusal(format!(
                "worker {} speaks protocol {}, the coordinator {PROTOCOL}: use the same vx version on both",
                hello.name, hello.protocol
            )));
        }
        let root = self.root.lock().ok().and_then(|r| r.clone());
        let Some(root) = root else {
            return Err(Refusal(
                "this process coordinates no workspace (it is not a workspace daemon)".into(),
            ));
        };
        let ours = head_commit(&root);
        if ours != hello.commit {
            let show = |c: &Option<String>| match c {
                Some(c) => c.clone(),
                None => "not a git checkout".to_string(),
            };
            return Err(Refusal(format!(
                "worker {} is at {}, the coordinator at {} ({}): check out the same commit on both",
                hello.name,
                show(&hello.commit),
                show(&ours),
                root.display()
            )));
        }
        if hello.labels.len() > MAX_LABELS {
            return Err(Refusal(format!(
                "worker {}: {} labels, at most {MAX_LABELS}",
                hello.name,
                hello.labels.len()
            )));
        }
        if let Some(bad) = hello.labels.iter().find(|l| !valid_label(l)) {
            return Err(Refusal(format!(
                "worker {}: invalid label `{bad}` (labels are 1 to 64 of `A-Z a-z 0-9 _ . -`)",
                hello.name
            )));
        }
        if hello.capacity == 0 || hello.capacity as usize > vx_proto::MAX_CONCURRENCY {
            return Err(Refusal(format!(
                "worker {}: capacity {} is not between 1 and {}",
                hello.name,
                hello.capacity,
                vx_proto::MAX_CONCURRENCY
            )));
        }
        let name: String = hello
            .name
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let worker = {
            let mut st = self.lock();
            let w = st.pool.attach(&name, hello.capacity, &hello.labels);
            st.links.insert(w, tx);
            w
        };
        self.start_timer();
        tracing::info!(worker = %name, capacity = hello.capacity, labels = ?hello.labels, "worker attached");
        Ok(Link {
            to_worker: rx,
            inner: Arc::new(LinkInner {
                coord: self,
                worker,
            }),
        })
    }

    /// Names and capacities of the attached workers (for `daemon.status`).
    pub fn workers(&self) -> Vec<(String, u32, Vec<String>)> {
        self.lock().pool.workers()
    }

    /// Starts the lease timer (once, on the current runtime).
    fn start_timer(&'static self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut st = self.lock();
            if st.timer {
                return;
            }
            st.timer = true;
        }
        rt.spawn(async move {
            loop {
                let period = (self.lock().pool.lease_ms() / 10).clamp(10, 1000);
                tokio::time::sleep(Duration::from_millis(period)).await;
                self.tick();
            }
        });
    }

    /// Expires overdue leases.
    fn tick(&self) {
        let now = self.now();
        let mut st = self.lock();
        if st.pool.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let effects = st.pool.tick(now);
        let emits = st.apply(effects, now);
        drop(st);
        emit_all(emits);
    }

    fn handle(&self, w: WorkerId, msg: FromWorker) {
        let now = self.now();
        let mut st = self.lock();
        let effects = match msg {
            FromWorker::Ready { free } => st.pool.ready(w, free, now),
            FromWorker::Heartbeat { leases } => {
                st.pool.heartbeat(w, &leases, now);
                Vec::new()
            }
            FromWorker::Log {
                lease,
                stream,
                mut line,
            } => {
                let Some((holder, run, task)) = st.pool.holder(lease) else {
                    return; // a lease no longer live: its lines are not news
                };
                if holder != w {
                    return;
                }
                let (Some(port), Some(name)) = (st.runs.get(&run), st.pool.name(w)) else {
                    return;
                };
                if line.len() > MAX_LOG_LINE {
                    let mut cut = MAX_LOG_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str(" [line cut]");
                }
                let ev = RunEvent::TaskOutput {
                    id: port.id_of(task),
                    stream,
                    line,
                    replay: false,
                    worker: Some(name.to_string()),
                };
                let events = port.events.clone();
                drop(st);
                let _ = events.send(ev);
                return;
            }
            FromWorker::Done { lease, report } => st.pool.report(w, lease, report, now),
        };
        let emits = st.apply(effects, now);
        drop(st);
        emit_all(emits);
    }

    /// The worker is gone (its link was dropped, or the coordinator
    /// dropped it).
    fn lost(&self, w: WorkerId, why: &str) {
        let now = self.now();
        let mut st = self.lock();
        st.links.remove(&w);
        let name = st.pool.name(w).map(str::to_string);
        let effects = st.pool.detach(w, why, now);
        let emits = st.apply(effects, now);
        drop(st);
        if let Some(name) = name {
            tracing::info!(worker = %name, "worker detached: {why}");
        }
        emit_all(emits);
    }

    /// A distributed run begins: its tasks are offered through the
    /// returned port; outcomes arrive on the receiver.
    pub(super) fn open_run(
        &'static self,
        events: Events,
        ids: Arc<Vec<String>>,
        local: bool,
        settings: Option<&Settings>,
    ) -> (RunGuard, mpsc::UnboundedReceiver<Outcome>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        if let Some(s) = settings {
            st.pool.configure(s.lease_ms, s.retries);
        }
        let run = st.next_run;
        st.next_run += 1;
        st.pool.open_run(run, local);
        st.runs.insert(
            run,
            RunPort {
                tx,
                events,
                ids,
                specs: HashMap::new(),
            },
        );
        drop(st);
        self.start_timer();
        (RunGuard { coord: self, run }, rx)
    }

    /// Offers a task of run `run` to the pool.
    pub(super) fn offer(&self, run: RunKey, job: Job, spec: Spec) {
        let now = self.now();
        let mut st = self.lock();
        let Some(port) = st.runs.get_mut(&run) else {
            return;
        };
        port.specs.insert(job.task, spec);
        let effects = st.pool.offer(job, now);
        let emits = st.apply(effects, now);
        drop(st);
        emit_all(emits);
    }

    /// A pending task may go to workers now (`ok`), or never (`!ok`).
    pub(super) fn set_remote(&self, run: RunKey, task: usize, ok: bool) {
        let now = self.now();
        let mut st = self.lock();
        let effects = st.pool.set_remote(run, task, ok, now);
        let emits = st.apply(effects, now);
        drop(st);
        emit_all(emits);
    }

    /// The run's local lanes take up to `n` of its pending tasks.
    pub(super) fn take_local(&self, run: RunKey, n: usize) -> Vec<usize> {
        let mut st = self.lock();
        let tasks = st.pool.take_local(run, n);
        if let Some(port) = st.runs.get_mut(&run) {
            for t in &tasks {
                port.specs.remove(t);
            }
        }
        tasks
    }

    /// Withdraws the run's pending tasks and revokes its leases; returns
    /// the tasks that were pending and those that were leased. Nothing of
    /// the run is offered or reported any more.
    pub(super) fn withdraw(&self, run: RunKey, reason: &str) -> (Vec<usize>, Vec<usize>) {
        let now = self.now();
        let mut st = self.lock();
        let (pending, leased, effects) = st.pool.close_run(run, reason);
        let emits = st.apply(effects, now);
        drop(st);
        emit_all(emits);
        (pending, leased)
    }

    fn close(&self, run: RunKey) {
        let now = self.now();
        let mut st = self.lock();
        let (_, _, effects) = st.pool.close_run(run, "the run is over");
        st.runs.remove(&run);
        let emits = st.apply(effects, now);
        drop(st);
        emit_all(emits);
    }
}

/// A run's registration with the coordinator; dropping it ends the run's
/// part (pending tasks withdrawn, leases revoked).
pub(super) struct RunGuard {
    coord: &'static Coordinator,
    pub(super) run: RunKey,
}

impl RunGuard {
    pub(super) fn coord(&self) -> &'static Coordinator {
        self.coord
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.coord.close(self.run);
    }
}

/// What an offered task needs to become an [`Assignment`].
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) key: String,
    pub(super) deps: Vec<(String, String)>,
    pub(super) env: Vec<(String, String)>,
    pub(super) args: Vec<String>,
    /// For the `TaskStarted` event.
    pub(super) command: String,
}

/// What the pool tells a run about one of its tasks.
#[derive(Debug)]
pub(super) enum Outcome {
    /// It ended on a worker (the first report of a live lease).
    Done {
        task: usize,
        worker: String,
        report: Report,
    },
    /// It cannot run (no worker can take it; its retries are spent).
    Failed { task: usize, message: String },
}

struct RunPort {
    tx: mpsc::UnboundedSender<Outcome>,
    events: Events,
    ids: Arc<Vec<String>>,
    specs: HashMap<usize, Spec>,
}

impl RunPort {
    fn id_of(&self, task: usize) -> String {
        self.ids.get(task).cloned().unwrap_or_default()
    }
}

type Emits = Vec<(Events, RunEvent)>;

fn emit_all(emits: Emits) {
    for (events, ev) in emits {
        let _ = events.send(ev);
    }
}

impl State {
    /// Carries out the pool's effects (a link that cannot take a message
    /// is dropped: its worker is lost, which may have effects in turn).
    /// Returns the run events to emit once the lock is released.
    fn apply(&mut self, effects: Vec<Effect>, now: u64) -> Emits {
        let mut emits = Vec::new();
        let mut work: std::collections::VecDeque<Effect> = effects.into();
        while let Some(e) = work.pop_front() {
            match e {
                Effect::Assign {
                    worker,
                    lease,
                    run,
                    task,
                } => {
                    let (Some(port), Some(name)) = (self.runs.get(&run), self.pool.name(worker))
                    else {
                        continue;
                    };
                    let Some(spec) = port.specs.get(&task) else {
                        continue;
                    };
                    let a = Assignment {
                        lease,
                        run_id: run.to_string(),
                        task_id: port.id_of(task),
                        key: spec.key.clone(),
                        deps: spec.deps.clone(),
                        env: spec.env.clone(),
                        args: spec.args.clone(),
                        lease_ms: self.pool.lease_ms(),
                    };
                    emits.push((
                        port.events.clone(),
                        RunEvent::TaskStarted {
                            id: a.task_id.clone(),
                            key: Some(a.key.clone()),
                            command: spec.command.clone(),
                            uncached: false,
                            traceparent: None,
                            worker: Some(name.to_string()),
                        },
                    ));
                    if !self.send(worker, ToWorker::Assign(a)) {
                        work.extend(self.pool.detach(worker, "its link could not keep up", now));
                    }
                }
                Effect::Revoke {
                    worker,
                    lease,
                    reason,
                } => {
                    if self.links.contains_key(&worker)
                        && !self.send(worker, ToWorker::Revoke { lease, reason })
                    {
                        work.extend(self.pool.detach(worker, "its link could not keep up", now));
                    }
                }
                Effect::Requeued { run, message, .. } => {
                    if let Some(port) = self.runs.get(&run) {
                        emits.push((port.events.clone(), RunEvent::Warning { message }));
                    }
                }
                Effect::Done {
                    run,
                    task,
                    worker,
                    report,
                } => {
                    let name = self
                        .pool
                        .name(worker)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("worker {worker}"));
                    if let Some(port) = self.runs.get_mut(&run) {
                        port.specs.remove(&task);
                        let _ = port.tx.send(Outcome::Done {
                            task,
                            worker: name,
                            report,
                        });
                    }
                }
                Effect::Fail { run, task, message } => {
                    if let Some(port) = self.runs.get_mut(&run) {
                        port.specs.remove(&task);
                        let _ = port.tx.send(Outcome::Failed { task, message });
                    }
                }
            }
        }
        emits
    }

    /// Queues a message for a worker; `false` when its link is full or
    /// closed (then the link is dropped here).
    fn send(&mut self, worker: WorkerId, msg: ToWorker) -> bool {
        let Some(tx) = self.links.get(&worker) else {
            return false;
        };
        if tx.try_send(msg).is_ok() {
            return true;
        }
        tracing::warn!(worker, "dropping a worker link that cannot keep up");
        self.links.remove(&worker);
        false
    }
}

/// `git rev-parse HEAD` at `root` (`None`: not a git checkout): the commit
/// a coordinator and a worker compare.
pub fn head_commit(root: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "HEAD"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 64
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
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
    worker::execute(root, a, env, log, cancel).await
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
    let c = crate::workspace::workers_config(root)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    Ok(Settings {
        listen: c.listen,
        token: c.token,
        lease_ms: c.lease_ms,
        retries: c.retries,
    })
}

impl Default for Settings {
    fn default() -> Self {
        let c = crate::workspace::WorkersConfig::default();
        Settings {
            listen: c.listen,
            token: c.token,
            lease_ms: c.lease_ms,
            retries: c.retries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vx_proto::TaskStatus;

    /// Each task of a run's summary: id, status and the worker that ran it.
    fn rows(summary: &vx_proto::RunSummary) -> Vec<(&str, TaskStatus, Option<&str>)> {
        summary
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.status, t.worker.as_deref()))
            .collect()
    }

    fn hello(name: &str, commit: Option<&str>) -> Hello {
        Hello {
            name: name.into(),
            commit: commit.map(str::to_string),
            capacity: 1,
            labels: Vec::new(),
            protocol: PROTOCOL,
        }
    }

    fn ok() -> Report {
        Report {
            status: TaskStatus::Success,
            exit_code: Some(0),
            duration_ms: 1,
            error: None,
            uploaded: true,
            cpu_ms: None,
            peak_rss_bytes: None,
        }
    }

    async fn next(link: &mut Link) -> ToWorker {
        tokio::time::timeout(Duration::from_secs(20), link.to_worker.recv())
            .await
            .expect("a message in time")
            .expect("link open")
    }

    #[test]
    fn attach_refuses_other_commits_and_protocols() {
        let dir = tempfile::tempdir().unwrap();
        let coord: &'static Coordinator = Box::leak(Box::new(Coordinator::new()));
        // No root: refused.
        assert!(coord.attach(hello("w", None)).is_err());
        coord.set_root(dir.path());
        // The root is not a git checkout: a worker claiming a commit is
        // refused, both sides named.
        let Err(Refusal(m)) = coord.attach(hello("w", Some("abc123"))) else {
            panic!("admitted")
        };
        assert!(m.contains("worker w is at abc123"), "{m}");
        assert!(m.contains("the coordinator at not a git checkout"), "{m}");
        let mut h = hello("w", None);
        h.protocol = PROTOCOL + 1;
        let Err(Refusal(m)) = coord.attach(h) else {
            panic!("admitted")
        };
        assert!(m.contains("protocol"), "{m}");
        let mut h = hello("w", None);
        h.labels = vec!["bad label".into()];
        assert!(coord.attach(h).is_err());
        let link = coord.attach(hello("w", None)).expect("admitted");
        assert_eq!(coord.workers(), vec![("w".to_string(), 1, Vec::new())]);
        drop(link);
        assert!(coord.workers().is_empty());
    }

    /// A fake worker stalls past its lease: the task goes to another, the
    /// stalled one is told to stop, and its late report changes nothing.
    #[tokio::test]
    async fn an_expired_lease_is_reassigned_and_its_late_report_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let coord: &'static Coordinator = Box::leak(Box::new(Coordinator::new()));
        coord.set_root(dir.path());
        let seen = Arc::new(Mutex::new(Vec::<RunEvent>::new()));
        let s2 = seen.clone();
        let events = Events::new(move |e| s2.lock().unwrap().push(e));
        let settings = Settings {
            lease_ms: 300,
            retries: 2,
            ..Settings::default()
        };
        let (guard, mut rx) = coord.open_run(
            events,
            Arc::new(vec!["p#build".to_string()]),
            false,
            Some(&settings),
        );
        let mut a = coord.attach(hello("a", None)).unwrap();
        let mut b = coord.attach(hello("b", None)).unwrap();
        coord.offer(
            guard.run,
            Job {
                run: guard.run,
                task: 0,
                id: "p#build".into(),
                priority: 1,
                labels: Vec::new(),
                remote_ok: true,
                remote_possible: true,
            },
            Spec {
                key: "k".repeat(64),
                deps: vec![("p#gen".into(), "g".repeat(64))],
                env: vec![("MODE".into(), "x".into())],
                args: Vec::new(),
                command: "make".into(),
            },
        );
        a.from_worker(FromWorker::Ready { free: 1 });
        let ToWorker::Assign(first) = next(&mut a).await else {
            panic!("not an assignment")
        };
        assert_eq!(first.task_id, "p#build");
        assert_eq!(first.deps, vec![("p#gen".to_string(), "g".repeat(64))]);
        assert_eq!(first.lease_ms, 300);
        // b is ready; a never heartbeats.
        b.from_worker(FromWorker::Ready { free: 1 });
        let ToWorker::Assign(second) = next(&mut b).await else {
            panic!("not an assignment")
        };
        assert_eq!(second.task_id, "p#build");
        assert_ne!(second.lease, first.lease);
        match next(&mut a).await {
            ToWorker::Revoke { lease, reason } => {
                assert_eq!(lease, first.lease);
                assert!(reason.contains("expired"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // a's late lines and report: ignored.
        a.from_worker(FromWorker::Log {
            lease: first.lease,
            stream: Stream::Stdout,
            line: "late".into(),
        });
        a.from_worker(FromWorker::Done {
            lease: first.lease,
            report: ok(),
        });
        assert!(rx.try_recv().is_err());
        // b's lines reach the run's events, with its name.
        b.from_worker(FromWorker::Heartbeat {
            leases: vec![second.lease],
        });
        b.from_worker(FromWorker::Log {
            lease: second.lease,
            stream: Stream::Stdout,
            line: "built".into(),
        });
        b.from_worker(FromWorker::Done {
            lease: second.lease,
            report: ok(),
        });
        match rx.recv().await {
            Some(Outcome::Done {
                task,
                worker,
                report,
            }) => {
                assert_eq!((task, worker.as_str()), (0, "b"));
                assert!(report.uploaded);
            }
            other => panic!("{other:?}"),
        }
        // A duplicate changes nothing.
        b.from_worker(FromWorker::Done {
            lease: second.lease,
            report: ok(),
        });
        assert!(rx.try_recv().is_err());
        let seen = seen.lock().unwrap();
        let lines: Vec<(&str, Option<&str>)> = seen
            .iter()
            .filter_map(|e| match e {
                RunEvent::TaskOutput { line, worker, .. } => {
                    Some((line.as_str(), worker.as_deref()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(lines, vec![("built", Some("b"))]);
        let started: Vec<Option<&str>> = seen
            .iter()
            .filter_map(|e| match e {
                RunEvent::TaskStarted { worker, .. } => Some(worker.as_deref()),
                _ => None,
            })
            .collect();
        assert_eq!(started, vec![Some("a"), Some("b")]);
        assert!(seen.iter().any(
            |e| matches!(e, RunEvent::Warning { message } if message.contains("lost its worker"))
        ));
    }

    mod mem {
        use crate::cache::remote::{Artifact, ArtifactId, Remote, RemoteError};
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};

        /// An in-memory remote cache, shared by every run of this process.
        #[derive(Default)]
        pub struct Mem(pub Mutex<HashMap<String, Artifact>>);

        struct Client(Arc<Mem>);

        impl Remote for Client {
            fn describe(&self) -> String {
                "memory".into()
            }
            fn get(&self, id: &ArtifactId) -> Result<Option<Artifact>, RemoteError> {
                Ok(self.0.0.lock().unwrap().get(id.key).cloned())
            }
            fn put(&self, id: &ArtifactId, a: &Artifact) -> Result<(), RemoteError> {
                self.0
                    .0
                    .lock()
                    .unwrap()
                    .entry(id.key.to_string())
                    .or_insert_with(|| a.clone());
                Ok(())
            }
        }

        /// The process's in-memory remote, registered as the remote
        /// cache client.
        pub fn install() -> Arc<Mem> {
            static MEM: OnceLock<Arc<Mem>> = OnceLock::new();
            MEM.get_or_init(|| {
                let m = Arc::new(Mem::default());
                let m2 = m.clone();
                crate::cache::remote::set_factory(move |_| {
                    Ok(Arc::new(Client(m2.clone())) as Arc<dyn Remote>)
                });
                m
            })
            .clone()
        }
    }

    fn fixture(dir: &std::path::Path) {
        let w = |p: &str, t: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w(
            "vx.toml",
            "[workspace]\nmembers = [\"app\"]\n\n[remote_cache]\nurl = \"http://memory.invalid\"\n",
        );
        w(
            "app/vx.toml",
            r#"[project]
name = "app"

[tasks.gen]
command = "mkdir -p gen && cat src/a.txt > gen/out.txt && echo gen-line"
inputs = ["src/**"]
outputs = ["gen/**"]

[tasks.build]
command = "mkdir -p dist && cat gen/out.txt > dist/app.txt && echo built >> dist/app.txt && echo build-line"
depends_on = ["gen"]
inputs = ["src/**"]
outputs = ["dist/**"]

[tasks.cuda]
command = "echo cuda"
inputs = ["src/**"]
outputs = ["cuda/**"]
labels = ["gpu"]
"#,
        );
        w("app/src/a.txt", "hello\n");
    }

    /// A worker in its own checkout, in process: executes what it is
    /// assigned with [`execute_assigned`], one at a time.
    async fn fake_worker(mut link: Link, root: PathBuf) {
        let mut rx = std::mem::replace(&mut link.to_worker, mpsc::channel(1).1);
        let link = Arc::new(link);
        link.from_worker(FromWorker::Ready { free: 1 });
        while let Some(msg) = rx.recv().await {
            let ToWorker::Assign(a) = msg else {
                continue;
            };
            let lease = a.lease;
            let (ltx, mut lrx) = mpsc::channel(64);
            let (_cancel, crx) = tokio::sync::watch::channel(None);
            let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
            let l2 = link.clone();
            let fwd = tokio::spawn(async move {
                while let Some((stream, line)) = lrx.recv().await {
                    l2.from_worker(FromWorker::Log {
                        lease,
                        stream,
                        line,
                    });
                }
            });
            let report = execute_assigned(root.clone(), a, env, ltx, crx).await;
            let _ = fwd.await;
            link.from_worker(FromWorker::Done { lease, report });
            link.from_worker(FromWorker::Ready { free: 1 });
        }
    }

    /// `--distribute --no-local` end to end in process: a worker in its
    /// own checkout executes both tasks (the dependent after its
    /// dependency's outputs were restored there from the remote cache);
    /// the coordinator's checkout gets both tasks' outputs from the remote
    /// cache, and the worker's lines arrive as the run's events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_distributed_run_executes_on_a_worker_and_restores_here() {
        let mem = mem::install();
        let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fixture(here.path());
        fixture(there.path());
        let root = here.path().canonicalize().unwrap();
        let hot = crate::state::Hot::start(&root).unwrap();
        let coord = Coordinator::global();
        coord.set_root(&root);
        let link = coord.attach(hello("fake", None)).unwrap();
        let worker = tokio::spawn(fake_worker(link, there.path().canonicalize().unwrap()));
        let seen = Arc::new(Mutex::new(Vec::<RunEvent>::new()));
        let s2 = seen.clone();
        let events = Events::new(move |e| s2.lock().unwrap().push(e));
        let params = vx_proto::RunParams {
            cwd: root.to_string_lossy().into_owned(),
            tasks: vec!["build".into()],
            env: std::env::vars().collect(),
            distribute: true,
            distribute_local: false,
            detail: vx_proto::Detail::All,
            ..Default::default()
        };
        let (_tx, cancel) = tokio::sync::watch::channel(None);
        let summary = tokio::time::timeout(
            Duration::from_secs(120),
            crate::engine::run(params, events, cancel, Some(hot)),
        )
        .await
        .expect("the run ends")
        .expect("the run answers");
        worker.abort();
        let _ = worker.await; // its link dropped: the worker is gone
        assert!(coord.workers().is_empty());
        let tasks = rows(&summary);
        assert_eq!(
            tasks,
            vec![
                ("app#build", TaskStatus::Success, Some("fake")),
                ("app#gen", TaskStatus::Success, Some("fake")),
            ],
            "{summary:?}"
        );
        assert!(summary.ok);
        // The outputs came here through the remote cache.
        assert_eq!(
            std::fs::read_to_string(root.join("app/gen/out.txt")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("app/dist/app.txt")).unwrap(),
            "hello\nbuilt\n"
        );
        assert_eq!(mem.0.lock().unwrap().len(), 2);
        {
            let seen = seen.lock().unwrap();
            assert!(seen.iter().any(|e| matches!(e,
                RunEvent::TaskOutput { id, line, worker: Some(w), .. }
                    if id == "app#build" && line == "build-line" && w == "fake")));
        }
        // A worker lost mid-task (its link closes on its first assignment):
        // the task goes to the other worker and the run completes.
        let flaky = coord.attach(hello("flaky", None)).unwrap();
        let flaky = tokio::spawn(async move {
            let mut flaky = flaky;
            flaky.from_worker(FromWorker::Ready { free: 1 });
            let _ = flaky.to_worker.recv().await; // then gone, like a kill -9
        });
        let good = coord.attach(hello("good", None)).unwrap();
        let good = tokio::spawn(fake_worker(good, there.path().canonicalize().unwrap()));
        let seen = Arc::new(Mutex::new(Vec::<RunEvent>::new()));
        let s2 = seen.clone();
        let params = vx_proto::RunParams {
            cwd: root.to_string_lossy().into_owned(),
            tasks: vec!["build".into()],
            env: std::env::vars().collect(),
            distribute: true,
            distribute_local: false,
            force: true,
            detail: vx_proto::Detail::All,
            ..Default::default()
        };
        let (_tx, cancel) = tokio::sync::watch::channel(None);
        let hot = crate::state::Hot::start(&root).unwrap();
        let summary = tokio::time::timeout(
            Duration::from_secs(120),
            crate::engine::run(
                params,
                Events::new(move |e| s2.lock().unwrap().push(e)),
                cancel,
                Some(hot),
            ),
        )
        .await
        .expect("the run ends")
        .expect("the run answers");
        let _ = flaky.await;
        good.abort();
        let _ = good.await;
        let tasks = rows(&summary);
        assert_eq!(
            tasks,
            vec![
                ("app#build", TaskStatus::Success, Some("good")),
                ("app#gen", TaskStatus::Success, Some("good")),
            ],
            "{summary:?}"
        );
        {
            let seen = seen.lock().unwrap();
            assert!(
                seen.iter()
                    .any(|e| matches!(e, RunEvent::Warning { message }
                    if message.contains("app#gen lost its worker (flaky: its link closed)"))),
                "{seen:?}"
            );
        }
        assert!(coord.workers().is_empty());
        // A task needing a label no connected worker has fails at once,
        // naming it (the run's own lanes have no labels).
        let params = vx_proto::RunParams {
            cwd: root.to_string_lossy().into_owned(),
            tasks: vec!["cuda".into()],
            env: std::env::vars().collect(),
            distribute: true,
            ..Default::default()
        };
        let (_tx, cancel) = tokio::sync::watch::channel(None);
        let hot = crate::state::Hot::start(&root).unwrap();
        let summary = crate::engine::run(
            params.clone(),
            Events::new(|_| {}),
            cancel,
            Some(hot.clone()),
        )
        .await
        .unwrap();
        let t = &summary.tasks[0];
        assert_eq!(t.status, TaskStatus::Failed);
        let e = t.error.as_deref().unwrap_or("");
        assert!(
            e.contains("needs the label gpu") && e.contains("no worker is connected"),
            "{e}"
        );
        // Without a remote cache it may write: refused, saying how to set one.
        let mut p2 = params;
        p2.cache = Some("local:rw,remote:r".into());
        let (_tx, cancel) = tokio::sync::watch::channel(None);
        let e = crate::engine::run(p2, Events::new(|_| {}), cancel, Some(hot))
            .await
            .unwrap_err();
        assert!(
            e.message.contains("needs a remote cache") && e.message.contains("[remote_cache] url"),
            "{}",
            e.message
        );
        // The foreground engine refuses --distribute.
        let params = vx_proto::RunParams {
            cwd: root.to_string_lossy().into_owned(),
            tasks: vec!["build".into()],
            distribute: true,
            ..Default::default()
        };
        let (_tx, cancel) = tokio::sync::watch::channel(None);
        let e = crate::engine::run(params, Events::new(|_| {}), cancel, None)
            .await
            .unwrap_err();
        assert!(
            e.message.contains("--distribute needs the daemon"),
            "{}",
            e.message
        );
    }
}
