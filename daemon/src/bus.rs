//! `bus` — the engine process's event bus: every run's events, whoever
//! started it, to every subscriber.
//!
//! Owns: the runs in progress ([`Tee`], one per `run.start` / `watch.start`
//! request; a watch session's cycles are its runs) and what `runs.active`
//! reports about them (state, start time and concurrency slot per task, as
//! the events tell them); the subscribers (`events.subscribe`) with their
//! filters; the `run.started` / `events.event` / `run.finished` /
//! `events.resync` notifications. A tee sits where the server hands the
//! engine its [`crate::engine::Events`] sink: [`Tee::publish`] is called
//! synchronously for each event, in the engine's order, and only takes this
//! run's lock and, per matching subscriber, its queue's lock.
//!
//! Every subscriber has a bounded queue (its connection's outbox, through
//! [`Queue`]): an event that does not fit under [`SUBSCRIBER_LIMIT`] ends
//! the subscription with one `events.resync` notice. So a subscriber never
//! slows or stalls a run, and never grows the engine's memory past that
//! bound.
//!
//! Never: blocks or waits in [`Tee::publish`], keeps a run's events (only
//! its in-flight tasks), knows sockets or the outbox type (the server
//! implements [`Queue`]), or decides anything about a run.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use vx_proto::live::{
    ActiveCounts, ActiveRun, ActiveState, ActiveTask, EVENTS_EVENT, EVENTS_RESYNC,
    EVENTS_SUBSCRIBED, RUN_FINISHED, RUN_STARTED, ResyncParams, RunFinishedParams, RunKind,
    RunStartedParams, SubscribeParams, SubscribedParams, SubscriptionEnd,
};
use vx_proto::{
    CacheSource, Detail, Id, Message, RunCounts, RunEvent, RunParams, RunSummary, TaskResult,
    TaskStatus,
};

/// Queued bytes (in the subscriber's connection) past which a subscriber
/// is judged behind: it gets one `events.resync` and its subscription ends.
pub const SUBSCRIBER_LIMIT: usize = 2 << 20;
/// Events a run emits before its `run_started` (warnings of `prepare`, a
/// watch cycle's header) kept to publish after `run.started`; later ones
/// are not published.
const PENDING_MAX: usize = 32;

/// A subscriber's outgoing queue (the server's per-connection outbox).
pub trait Queue: Send + Sync {
    /// Queues `line` if the queue then holds at most `limit` bytes.
    fn offer(&self, line: Vec<u8>, limit: usize) -> bool;
    /// Queues `line` whatever the queue holds (a notice that must arrive).
    fn force(&self, line: Vec<u8>);
}

/// A subscriber's queue inside the daemon (the plugin host, the
/// exporter): lines in order, bounded in bytes by the bus's `limit`, with a
/// wake-up for the task that drains it.
#[derive(Default)]
pub struct LineQueue {
    q: Mutex<(std::collections::VecDeque<Vec<u8>>, usize)>,
    notify: tokio::sync::Notify,
}

impl LineQueue {
    /// Queues `line` if the queue then holds at most `limit` bytes, and
    /// wakes the drainer.
    pub fn push(&self, line: Vec<u8>, limit: usize) -> bool {
        let Ok(mut g) = self.q.lock() else {
            return false;
        };
        if g.1.saturating_add(line.len()) > limit {
            return false;
        }
        g.1 += line.len();
        g.0.push_back(line);
        drop(g);
        self.notify.notify_one();
        true
    }

    /// The oldest line.
    pub fn pop(&self) -> Option<Vec<u8>> {
        let mut g = self.q.lock().ok()?;
        let line = g.0.pop_front()?;
        g.1 -= line.len();
        Some(line)
    }

    /// Empties the queue; how many lines it held.
    pub fn clear(&self) -> usize {
        self.q
            .lock()
            .map(|mut g| {
                let n = g.0.len();
                *g = Default::default();
                n
            })
            .unwrap_or(0)
    }

    /// Resolves when a line was queued since the last wake-up.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Queue for LineQueue {
    fn offer(&self, line: Vec<u8>, limit: usize) -> bool {
        self.push(line, limit)
    }

    fn force(&self, line: Vec<u8>) {
        self.push(line, usize::MAX);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The process's bus (one per engine process: the daemon serves one
/// workspace; the stdio engine one client).
pub fn global() -> &'static Arc<Bus> {
    static BUS: OnceLock<Arc<Bus>> = OnceLock::new();
    BUS.get_or_init(|| Arc::new(Bus::new(SUBSCRIBER_LIMIT)))
}

/// See the module doc.
pub struct Bus {
    limit: usize,
    next: AtomicU64,
    /// Runs in progress, by tee number (oldest first).
    runs: Mutex<BTreeMap<u64, Arc<Mutex<RunState>>>>,
    /// The subscribers; replaced (never mutated in place) on change, so a
    /// publisher takes a cheap snapshot.
    subs: Mutex<Arc<Vec<Arc<Sub>>>>,
    nsubs: AtomicUsize,
    /// Watchers that want every task's lifecycle, also what a run's own
    /// client did not ask for ([`Bus::watching`]).
    watchers: AtomicUsize,
}

/// A hold on the bus's interest in every task's lifecycle: while one
/// exists, a run publishes the events its client did not ask for (the
/// cache hits of a changes-only run). Dropping it releases the interest.
pub struct Watching(Arc<Bus>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One subscriber.
struct Sub {
    id: Id,
    /// The subscription id as JSON.
    id_json: String,
    filter: SubscribeParams,
    queue: Arc<dyn Queue>,
    ended: watch::Sender<Option<SubscriptionEnd>>,
    delivered: AtomicU64,
}

impl Sub {
    fn live(&self) -> bool {
        self.ended.borrow().is_none()
    }

    fn end(&self, why: SubscriptionEnd) {
        self.ended.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Queues one line; a subscriber whose queue is full gets its resync
    /// notice and is ended.
    fn deliver(&self, line: Vec<u8>, limit: usize) {
        if !self.live() {
            return;
        }
        if self.queue.offer(line, limit) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tracing::info!(
            "a subscriber fell behind (more than {limit} bytes unread): resync notice, subscription ended"
        );
        self.queue.force(
            Message::notification(
                EVENTS_RESYNC,
                ResyncParams {
                    subscription: self.id.clone(),
                    reason: format!(
                        "the subscriber's queue was full ({limit} bytes unread); call runs.active and subscribe again"
                    ),
                },
            )
            .encode(),
        );
        self.end(SubscriptionEnd::Resync);
    }

    fn wants_run(&self, run_id: &str) -> bool {
        self.filter.run_id.as_deref().is_none_or(|r| r == run_id)
    }

    fn wants(&self, run_id: &str, e: &RunEvent) -> bool {
        self.wants_run(run_id)
            && match &self.filter.task {
                None => true,
                Some(t) => task_of(e) == Some(t.as_str()),
            }
    }
}

/// The task an event is about, if any.
fn task_of(e: &RunEvent) -> Option<&str> {
    match e {
        RunEvent::TaskStarted { id, .. }
        | RunEvent::TaskOutput { id, .. }
        | RunEvent::TaskCacheHit { id, .. }
        | RunEvent::TaskRetry { id, .. }
        | RunEvent::TaskReady { id } => Some(id),
        RunEvent::TaskFinished { result } => Some(&result.id),
        _ => None,
    }
}

/// A subscription, held by the `events.subscribe` request; dropping it
/// removes the subscriber.
pub struct Subscription {
    bus: Arc<Bus>,
    sub: Arc<Sub>,
    ended: watch::Receiver<Option<SubscriptionEnd>>,
}

impl Subscription {
    /// Resolves when the subscriber falls behind (its resync was sent).
    pub async fn ended(&mut self) -> SubscriptionEnd {
        match self.ended.wait_for(|e| e.is_some()).await {
            Ok(e) => e.unwrap_or(SubscriptionEnd::Disconnected),
            Err(_) => SubscriptionEnd::Disconnected,
        }
    }

    /// Notifications queued so far.
    pub fn delivered(&self) -> u64 {
        self.sub.delivered.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.sub.end(SubscriptionEnd::Disconnected);
        self.bus.retain_subs(|s| !Arc::ptr_eq(s, &self.sub));
    }
}

/// Where a run is: before its `run_started` (or between watch cycles),
/// live, or ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Before,
    Live,
    /// A watch cycle that settled: listed (its persistent tasks live on)
    /// until the next cycle or the session's end.
    Settled,
}

struct Task {
    state: ActiveState,
    started_at: u64,
    slot: Option<u32>,
    key: Option<String>,
    command: String,
}

/// What the bus knows of one tee's current run.
struct RunState {
    kind: RunKind,
    detail: Detail,
    argv: Vec<String>,
    phase: Phase,
    /// Listed in `runs.active` (since its first `run_started`).
    listed: bool,
    run_id: String,
    run_id_json: String,
    root: String,
    started_at: u64,
    concurrency: usize,
    total: usize,
    seq: u64,
    /// The run said every task that will finish has finished.
    settled: bool,
    counts: RunCounts,
    done: usize,
    tasks: HashMap<String, Task>,
    free: BinaryHeap<std::cmp::Reverse<u32>>,
    pending: Vec<RunEvent>,
}

impl RunState {
    fn take_slot(&mut self) -> Option<u32> {
        self.free.pop().map(|std::cmp::Reverse(s)| s)
    }

    fn release(&mut self, id: &str, ready: bool) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let slot = t.slot.take();
        if ready {
            t.state = ActiveState::Ready;
        } else {
            self.tasks.remove(id);
        }
        if let Some(s) = slot {
            self.free.push(std::cmp::Reverse(s));
        }
    }

    fn count(&mut self, r: &TaskResult) {
        let c = &mut self.counts;
        match r.status {
            TaskStatus::Success => c.executed += 1,
            TaskStatus::Cached => c.cached += 1,
            TaskStatus::Failed => {
                c.executed += 1;
                c.failed += 1
            }
            TaskStatus::Skipped => c.skipped += 1,
            TaskStatus::Aborted => c.aborted += 1,
            TaskStatus::Running => c.running += 1,
        }
        if r.status != TaskStatus::Running {
            self.done += 1;
        }
    }

    fn active(&self) -> ActiveRun {
        let mut tasks: Vec<ActiveTask> = self
            .tasks
            .iter()
            .map(|(id, t)| ActiveTask {
                id: id.clone(),
                state: t.state,
                started_at: t.started_at,
                slot: t.slot,
                key: t.key.clone(),
                command: t.command.clone(),
            })
            .collect();
        // Tasks holding a slot first, by slot; then the ready ones, by id.
        tasks.sort_by(|a, b| {
            (a.slot.is_none(), a.slot, &a.id).cmp(&(b.slot.is_none(), b.slot, &b.id))
        });
        let running = tasks
            .iter()
            .filter(|t| t.state == ActiveState::Running)
            .count();
        let ready = tasks.len() - running;
        ActiveRun {
            run_id: self.run_id.clone(),
            kind: self.kind,
            argv: self.argv.clone(),
            root: self.root.clone(),
            started_at: self.started_at,
            concurrency: self.concurrency,
            settled: self.settled,
            counts: ActiveCounts {
                total: self.total,
                done: self.done,
                running,
                ready,
                queued: self.total.saturating_sub(self.done + running + ready),
            },
            tasks,
        }
    }
}

impl Bus {
    pub fn new(limit: usize) -> Bus {
        Bus {
            limit,
            next: AtomicU64::new(1),
            runs: Mutex::new(BTreeMap::new()),
            subs: Mutex::new(Arc::new(Vec::new())),
            nsubs: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
        }
    }

    /// Registers an interest in every task's lifecycle (see [`Watching`]).
    pub fn watching(self: &Arc<Self>) -> Watching {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        Watching(self.clone())
    }

    /// Whether anyone wants every task's lifecycle (one atomic load).
    pub fn watched(&self) -> bool {
        self.watchers.load(Ordering::Acquire) > 0
    }

    fn snapshot(&self) -> Option<Arc<Vec<Arc<Sub>>>> {
        if self.nsubs.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.subs.lock().ok().map(|s| s.clone())
    }

    fn retain_subs(&self, keep: impl Fn(&Arc<Sub>) -> bool) {
        if let Ok(mut s) = self.subs.lock() {
            let v: Vec<Arc<Sub>> = s.iter().filter(|x| keep(x)).cloned().collect();
            self.nsubs.store(v.len(), Ordering::Release);
            *s = Arc::new(v);
        }
    }

    /// A tee for one `run.start` or `watch.start` request with these
    /// params (its argv is published redacted).
    pub fn tee(self: &Arc<Self>, kind: RunKind, params: &RunParams) -> Tee {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let state = RunState {
            kind,
            detail: params.detail,
            argv: crate::engine::redacted_argv(&params.argv, &params.args),
            phase: Phase::Before,
            listed: false,
            run_id: String::new(),
            run_id_json: String::new(),
            root: String::new(),
            started_at: 0,
            concurrency: 0,
            total: 0,
            seq: 0,
            settled: false,
            counts: RunCounts::default(),
            done: 0,
            tasks: HashMap::new(),
            free: BinaryHeap::new(),
            pending: Vec::new(),
        };
        Tee {
            bus: self.clone(),
            n,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Adds a subscriber whose notifications go to `queue` (its
    /// connection's); `id` is its request's id. It ends when the returned
    /// [`Subscription`] is dropped, or when it falls behind.
    pub fn subscribe(
        self: &Arc<Self>,
        id: Id,
        filter: SubscribeParams,
        queue: Arc<dyn Queue>,
    ) -> Subscription {
        let (tx, rx) = watch::channel(None);
        let sub = Arc::new(Sub {
            id_json: serde_json::to_string(&id).unwrap_or_else(|_| "null".into()),
            id,
            filter,
            queue,
            ended: tx,
            delivered: AtomicU64::new(0),
        });
        // The acknowledgement is queued before the subscriber is listed, so
        // it comes before any event.
        let runs = self.active().into_iter().map(|r| r.run_id).collect();
        sub.queue.force(
            Message::notification(
                EVENTS_SUBSCRIBED,
                SubscribedParams {
                    subscription: sub.id.clone(),
                    runs,
                },
            )
            .encode(),
        );
        if let Ok(mut s) = self.subs.lock() {
            let mut v: Vec<Arc<Sub>> = s.iter().cloned().collect();
            v.push(sub.clone());
            self.nsubs.store(v.len(), Ordering::Release);
            *s = Arc::new(v);
        }
        Subscription {
            bus: self.clone(),
            sub,
            ended: rx,
        }
    }

    /// The runs in progress, oldest first (`runs.active`).
    pub fn active(&self) -> Vec<ActiveRun> {
        let runs: Vec<Arc<Mutex<RunState>>> = self
            .runs
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        runs.iter()
            .filter_map(|r| r.lock().ok().map(|st| st.active()))
            .collect()
    }

    /// Publishes a notice (`run.started`, `run.finished`) of run `run_id`
    /// to its subscribers.
    fn notify_run<P: serde::Serialize>(
        &self,
        method: &str,
        run_id: &str,
        params: impl Fn(Id) -> P,
    ) {
        let Some(subs) = self.snapshot() else { return };
        for s in subs.iter().filter(|s| s.wants_run(run_id)) {
            s.deliver(
                Message::notification(method, params(s.id.clone())).encode(),
                self.limit,
            );
        }
    }

    /// Publishes one event of a live run to its subscribers: the event is
    /// encoded once, then framed per subscriber.
    fn fan_out(&self, st: &RunState, e: &RunEvent) {
        let Some(subs) = self.snapshot() else { return };
        let mut encoded: Option<Vec<u8>> = None;
        for s in subs.iter().filter(|s| s.live() && s.wants(&st.run_id, e)) {
            let ev = match &encoded {
                Some(b) => b,
                None => match serde_json::to_vec(e) {
                    Ok(b) => encoded.insert(b),
                    Err(_) => return,
                },
            };
            let mut line = Vec::with_capacity(ev.len() + 128);
            line.extend_from_slice(br#"{"jsonrpc":"2.0","method":""#);
            line.extend_from_slice(EVENTS_EVENT.as_bytes());
            line.extend_from_slice(br#"","params":{"subscription":"#);
            line.extend_from_slice(s.id_json.as_bytes());
            line.extend_from_slice(br#","run_id":"#);
            line.extend_from_slice(st.run_id_json.as_bytes());
            line.extend_from_slice(format!(r#","seq":{},"event":"#, st.seq).as_bytes());
            line.extend_from_slice(ev);
            line.extend_from_slice(b"}}\n");
            s.deliver(line, self.limit);
        }
    }
}

/// One request's runs on the bus (see the module doc). Shared by the
/// request's event sink; dropping the last handle ends a run still in
/// progress (its request was aborted).
pub struct Tee {
    bus: Arc<Bus>,
    n: u64,
    state: Arc<Mutex<RunState>>,
}

impl crate::engine::Observer for Tee {
    fn watched(&self) -> bool {
        self.bus.watched()
    }

    /// An event the run's client did not ask for: fanned out to the
    /// subscribers only (the run's counts for `runs.active` come from the
    /// events the client gets, and from its summary).
    fn observe(&self, e: &RunEvent) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.phase != Phase::Live {
            return;
        }
        st.seq += 1;
        self.bus.fan_out(&st, e);
    }
}

impl Tee {
    /// Takes one event of this request's run (called by the engine's sink,
    /// before the event goes to the request's own client).
    pub fn publish(&self, e: &RunEvent) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match e {
            RunEvent::RunStarted {
                run_id,
                root,
                tasks,
                concurrency,
                traceparent,
                parent_span_id,
            } => {
                let trace = (traceparent.clone(), parent_span_id.clone());
                self.start(&mut st, run_id, root, (*tasks, *concurrency), trace);
                return;
            }
            RunEvent::WatchCycle { .. } if st.phase == Phase::Live => {
                // The previous cycle ended without a summary (an error).
                self.end(&mut st, None, Some("the cycle ended without a summary"));
                st.phase = Phase::Before;
            }
            RunEvent::WatchCycle { .. } => st.phase = Phase::Before,
            _ => {}
        }
        // Between watch cycles (`Settled`), the session's persistent tasks
        // keep printing: published under the last cycle's id.
        if st.phase == Phase::Before {
            if matches!(e, RunEvent::WatchCycle { .. }) {
                st.pending.clear();
            }
            if st.pending.len() < PENDING_MAX {
                st.pending.push(e.clone());
            }
            return;
        }
        self.live_event(&mut st, e);
    }

    fn live_event(&self, st: &mut RunState, e: &RunEvent) {
        match e {
            RunEvent::TaskStarted {
                id, key, command, ..
            } => {
                let slot = st.take_slot();
                // A persistent task restarted in a watch cycle frees its old one.
                st.release(id, false);
                st.tasks.insert(
                    id.clone(),
                    Task {
                        state: ActiveState::Running,
                        started_at: now_ms(),
                        slot,
                        key: key.clone(),
                        command: command.clone(),
                    },
                );
            }
            RunEvent::TaskReady { id } => st.release(id, true),
            RunEvent::TaskFinished { result } => {
                let ready = result.status == TaskStatus::Running;
                st.release(&result.id, ready);
                st.count(result);
            }
            // A run that reports only changes reports its hits this way.
            RunEvent::TaskCacheHit { source, .. } if st.detail == Detail::Changes => {
                st.done += 1;
                if matches!(
                    source,
                    CacheSource::Local | CacheSource::UpToDate | CacheSource::Remote
                ) {
                    st.counts.cached += 1;
                }
            }
            RunEvent::Settled { summary } => {
                st.settled = true;
                st.counts = summary.counts;
                st.done = summary.counts.total.saturating_sub(summary.counts.running);
            }
            _ => {}
        }
        st.seq += 1;
        self.bus.fan_out(st, e);
        if let RunEvent::Settled { summary } = e
            && st.kind == RunKind::Watch
        {
            self.end(st, Some(summary), None);
            st.phase = Phase::Settled;
        }
    }

    fn start(
        &self,
        st: &mut RunState,
        run_id: &str,
        root: &str,
        (tasks, conc): (usize, usize),
        (traceparent, parent_span_id): (Option<String>, Option<String>),
    ) {
        if st.phase == Phase::Live {
            self.end(st, None, Some("a new cycle started"));
        }
        st.phase = Phase::Live;
        st.run_id = run_id.to_string();
        st.run_id_json = serde_json::to_string(run_id).unwrap_or_else(|_| "\"\"".into());
        st.root = root.to_string();
        st.started_at = now_ms();
        st.concurrency = conc;
        st.total = tasks;
        st.seq = 0;
        st.settled = false;
        st.counts = RunCounts::default();
        st.done = 0;
        st.free = (0..conc.min(vx_proto::MAX_CONCURRENCY) as u32)
            .map(std::cmp::Reverse)
            .collect();
        // A watch session's persistent tasks live on, ready, into the next
        // cycle (they hold no slot); everything else is gone.
        st.tasks.retain(|_, t| t.state == ActiveState::Ready);
        if !st.listed {
            st.listed = true;
            if let Ok(mut runs) = self.bus.runs.lock() {
                runs.insert(self.n, self.state.clone());
            }
        }
        let p = |subscription| RunStartedParams {
            subscription,
            run_id: st.run_id.clone(),
            kind: st.kind,
            argv: st.argv.clone(),
            root: st.root.clone(),
            tasks,
            concurrency: conc,
            started_at: st.started_at,
            traceparent: traceparent.clone(),
            parent_span_id: parent_span_id.clone(),
        };
        self.bus.notify_run(RUN_STARTED, run_id, p);
        for e in std::mem::take(&mut st.pending) {
            self.live_event(st, &e);
        }
    }

    /// Publishes `run.finished` for the live run.
    fn end(&self, st: &mut RunState, summary: Option<&RunSummary>, error: Option<&str>) {
        if st.phase != Phase::Live {
            return;
        }
        let ended_at = now_ms();
        let p = |subscription| RunFinishedParams {
            subscription,
            run_id: st.run_id.clone(),
            kind: st.kind,
            argv: st.argv.clone(),
            ok: summary.is_some_and(|s| s.ok),
            exit_code: summary.map(|s| s.exit_code),
            counts: summary.map(|s| s.counts).unwrap_or(RunCounts {
                total: st.total,
                ..st.counts
            }),
            ended_at,
            duration_ms: summary
                .map(|s| s.duration_ms)
                .unwrap_or(ended_at.saturating_sub(st.started_at)),
            error: error.map(str::to_string),
        };
        self.bus.notify_run(RUN_FINISHED, &st.run_id, p);
        st.phase = Phase::Before;
    }

    /// The request ended: its run (or watch session) is over. `Err` carries
    /// why a run ended without a summary.
    pub fn finish(&self, outcome: Result<Option<&RunSummary>, &str>) {
        if let Ok(mut st) = self.state.lock() {
            match outcome {
                Ok(Some(s)) => self.end(&mut st, Some(s), None),
                // A watch session that stopped during a cycle.
                Ok(None) => self.end(&mut st, None, Some("stopped during the cycle")),
                Err(e) => self.end(&mut st, None, Some(e)),
            }
            st.phase = Phase::Before;
            st.tasks.clear();
        }
        if let Ok(mut runs) = self.bus.runs.lock() {
            runs.remove(&self.n);
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.finish(Err("the request ended"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines {
        lines: Mutex<Vec<Vec<u8>>>,
        bytes: AtomicUsize,
    }

    impl Queue for Lines {
        fn offer(&self, line: Vec<u8>, limit: usize) -> bool {
            if self.bytes.load(Ordering::Relaxed) + line.len() > limit {
                return false;
            }
            self.force(line);
            true
        }
        fn force(&self, line: Vec<u8>) {
            self.bytes.fetch_add(line.len(), Ordering::Relaxed);
            self.lines.lock().unwrap().push(line);
        }
    }

    impl Lines {
        /// Every message after the `events.subscribed` acknowledgement.
        fn messages(&self) -> Vec<serde_json::Value> {
            let all: Vec<serde_json::Value> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            assert_eq!(all[0]["method"], EVENTS_SUBSCRIBED, "acknowledged first");
            all[1..].to_vec()
        }
    }

    fn params() -> RunParams {
        RunParams {
            argv: vec![
                "vx".into(),
                "run".into(),
                "build".into(),
                "--".into(),
                "s3cret".into(),
            ],
            args: vec!["s3cret".into()],
            ..Default::default()
        }
    }

    fn started(run: &str, conc: usize) -> RunEvent {
        RunEvent::RunStarted {
            run_id: run.into(),
            root: "/w".into(),
            tasks: 3,
            concurrency: conc,
            traceparent: None,
            parent_span_id: None,
        }
    }

    fn task_started(id: &str) -> RunEvent {
        RunEvent::TaskStarted {
            id: id.into(),
            key: Some("k".into()),
            command: "true".into(),
            uncached: false,
            traceparent: None,
            worker: None,
        }
    }

    fn finished(id: &str, status: TaskStatus) -> RunEvent {
        RunEvent::TaskFinished {
            result: TaskResult {
                id: id.into(),
                project: "p".into(),
                task: "t".into(),
                status,
                cache: CacheSource::Miss,
                key: None,
                exit_code: Some(0),
                duration_ms: 1,
                attempts: 1,
                blocked_by: None,
                error: None,
                cpu_ms: None,
                peak_rss_bytes: None,
                worker: None,
            },
        }
    }

    fn summary(run: &str) -> RunSummary {
        RunSummary {
            run_id: run.into(),
            ok: true,
            exit_code: 0,
            started_at: 0,
            ended_at: 0,
            duration_ms: 5,
            counts: RunCounts {
                total: 3,
                executed: 3,
                ..Default::default()
            },
            tasks: vec![],
            root: "/w".into(),
        }
    }

    #[test]
    fn events_are_tagged_in_order_and_filtered() {
        let bus = Arc::new(Bus::new(1 << 20));
        let all = Arc::new(Lines::default());
        let one = Arc::new(Lines::default());
        let other_run = Arc::new(Lines::default());
        let _a = bus.subscribe(Id::Num(1), SubscribeParams::default(), all.clone());
        let _b = bus.subscribe(
            Id::Num(2),
            SubscribeParams {
                task: Some("p#b".into()),
                run_id: None,
                passive: false,
            },
            one.clone(),
        );
        let _c = bus.subscribe(
            Id::Str("x".into()),
            SubscribeParams {
                run_id: Some("other".into()),
                task: None,
                passive: false,
            },
            other_run.clone(),
        );
        let tee = bus.tee(RunKind::Run, &params());
        tee.publish(&RunEvent::Warning {
            message: "before the start".into(),
        });
        tee.publish(&started("r1", 2));
        for e in [
            task_started("p#a"),
            task_started("p#b"),
            finished("p#a", TaskStatus::Success),
            finished("p#b", TaskStatus::Success),
        ] {
            tee.publish(&e);
        }
        tee.finish(Ok(Some(&summary("r1"))));
        let m = all.messages();
        let methods: Vec<&str> = m.iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(methods[0], RUN_STARTED);
        assert_eq!(*methods.last().unwrap(), RUN_FINISHED);
        assert!(
            !m[0].to_string().contains("s3cret"),
            "argv is redacted: {}",
            m[0]
        );
        let seqs: Vec<u64> = m[1..m.len() - 1]
            .iter()
            .map(|m| m["params"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            vec![1, 2, 3, 4, 5],
            "in order, the early warning first"
        );
        assert!(
            m[1..m.len() - 1]
                .iter()
                .all(|m| m["params"]["run_id"] == "r1" && m["params"]["subscription"] == 1)
        );
        assert_eq!(m[1]["params"]["event"]["type"], "warning");
        // The hand-framed lines are the documented params type.
        let p: vx_proto::live::BusEventParams =
            serde_json::from_value(m[2]["params"].clone()).unwrap();
        assert_eq!((p.run_id.as_str(), p.seq), ("r1", 2));
        assert!(matches!(p.event, RunEvent::TaskStarted { .. }));
        let b = one.messages();
        let types: Vec<String> = b
            .iter()
            .map(|m| {
                m["params"]["event"]["type"]
                    .as_str()
                    .unwrap_or(m["method"].as_str().unwrap())
                    .to_string()
            })
            .collect();
        assert_eq!(
            types,
            [
                "run.started",
                "task_started",
                "task_finished",
                "run.finished"
            ]
        );
        assert!(other_run.messages().is_empty());
    }

    #[test]
    fn a_full_subscriber_gets_one_resync_and_is_dropped() {
        let bus = Arc::new(Bus::new(4096));
        let q = Arc::new(Lines::default());
        let mut sub = bus.subscribe(Id::Num(7), SubscribeParams::default(), q.clone());
        let tee = bus.tee(RunKind::Run, &params());
        tee.publish(&started("r1", 1));
        for i in 0..1000 {
            tee.publish(&RunEvent::TaskOutput {
                id: "p#a".into(),
                stream: vx_proto::Stream::Stdout,
                line: format!("line {i}"),
                replay: false,
                worker: None,
            });
        }
        let m = q.messages();
        let resyncs = m.iter().filter(|m| m["method"] == EVENTS_RESYNC).count();
        assert_eq!(resyncs, 1);
        assert_eq!(m.last().unwrap()["method"], EVENTS_RESYNC);
        assert!(q.bytes.load(Ordering::Relaxed) < 4096 + 512);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(sub.ended()), SubscriptionEnd::Resync);
        drop(sub);
        assert_eq!(bus.nsubs.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn active_runs_show_running_tasks_with_slots_and_persistent_ones_ready() {
        let bus = Arc::new(Bus::new(1 << 20));
        let tee = bus.tee(RunKind::Run, &params());
        assert!(bus.active().is_empty(), "not listed before it starts");
        tee.publish(&started("r1", 2));
        tee.publish(&task_started("p#a"));
        tee.publish(&task_started("p#srv"));
        let a = &bus.active()[0];
        assert_eq!(a.run_id, "r1");
        let slots: Vec<(String, Option<u32>)> =
            a.tasks.iter().map(|t| (t.id.clone(), t.slot)).collect();
        assert_eq!(
            slots,
            [("p#a".to_string(), Some(0)), ("p#srv".to_string(), Some(1))]
        );
        assert_eq!(a.counts.queued, 1);
        tee.publish(&RunEvent::TaskReady { id: "p#srv".into() });
        tee.publish(&finished("p#srv", TaskStatus::Running));
        tee.publish(&finished("p#a", TaskStatus::Success));
        tee.publish(&task_started("p#c"));
        let a = &bus.active()[0];
        let states: Vec<(String, ActiveState, Option<u32>)> = a
            .tasks
            .iter()
            .map(|t| (t.id.clone(), t.state, t.slot))
            .collect();
        assert_eq!(
            states,
            [
                ("p#c".to_string(), ActiveState::Running, Some(0)),
                ("p#srv".to_string(), ActiveState::Ready, None)
            ]
        );
        assert_eq!(a.counts.done, 1);
        drop(tee);
        assert!(bus.active().is_empty(), "a dropped tee ends its run");
    }

    #[test]
    fn watch_cycles_are_runs() {
        let bus = Arc::new(Bus::new(1 << 20));
        let q = Arc::new(Lines::default());
        let _s = bus.subscribe(Id::Num(1), SubscribeParams::default(), q.clone());
        let tee = bus.tee(RunKind::Watch, &params());
        for cycle in 1..=2 {
            tee.publish(&RunEvent::WatchCycle {
                cycle,
                changes: vec![],
            });
            tee.publish(&started(&format!("c{cycle}"), 1));
            tee.publish(&RunEvent::Settled {
                summary: summary(&format!("c{cycle}")),
            });
            assert_eq!(bus.active().len(), 1, "a settled watch is still listed");
            // A persistent task's output between cycles.
            tee.publish(&RunEvent::TaskOutput {
                id: "p#srv".into(),
                stream: vx_proto::Stream::Stdout,
                line: "listening".into(),
                replay: false,
                worker: None,
            });
        }
        tee.finish(Ok(None));
        assert!(bus.active().is_empty());
        let m = q.messages();
        let methods: Vec<String> = m
            .iter()
            .map(|m| {
                format!(
                    "{} {}",
                    m["method"].as_str().unwrap(),
                    m["params"]["run_id"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            methods,
            [
                "run.started c1",
                "events.event c1",
                "events.event c1",
                "run.finished c1",
                "events.event c1",
                "run.started c2",
                "events.event c2",
                "events.event c2",
                "run.finished c2",
                "events.event c2"
            ]
        );
    }
}
