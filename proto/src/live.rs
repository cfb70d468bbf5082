//! The live methods: what editors, dashboards and agents ask a running
//! engine — `events.subscribe` (every run's events, whoever started it),
//! `runs.active`, `graph.get`, `task.explain` and `task.log` — and the
//! notifications a subscription streams (`run.started`, `events.event`,
//! `run.finished`, `events.resync`).
//!
//! Plain data with serde derives; field names are the wire names.
//! `docs/protocol.md` ("Live methods") documents each one. Values that may
//! be secret (env values) only ever appear hashed.

use crate::history::Change;
use crate::{CacheSource, Id, Prediction, RunCounts, RunEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `events.subscribe` — stream every run's events (filtered by run and/or
/// task) until `$/cancel` (or `run.cancel`), the connection closing, or a
/// `resync`.
pub const EVENTS_SUBSCRIBE: &str = "events.subscribe";
/// `events.subscribed` — notification: the subscription is in place (the
/// first notification of every subscription); every run event published
/// after it reaches the subscriber.
pub const EVENTS_SUBSCRIBED: &str = "events.subscribed";
/// `events.event` — notification: one event of a run, tagged.
pub const EVENTS_EVENT: &str = "events.event";
/// `run.started` — notification: a run (or a watch cycle) began.
pub const RUN_STARTED: &str = "run.started";
/// `run.finished` — notification: a run (or a watch cycle) ended.
pub const RUN_FINISHED: &str = "run.finished";
/// `events.resync` — notification: the subscriber fell behind; its
/// subscription ends (call `runs.active` and subscribe again).
pub const EVENTS_RESYNC: &str = "events.resync";
/// `runs.active` — what is running now, per run and per task.
pub const RUNS_ACTIVE: &str = "runs.active";
/// `graph.get` — projects, tasks and edges of a selection.
pub const GRAPH_GET: &str = "graph.get";
/// `task.explain` — a task's current key, part by part, and its predicted cache status.
pub const TASK_EXPLAIN: &str = "task.explain";
/// `task.log` — a task's stored log (from the cache), bounded.
pub const TASK_LOG: &str = "task.log";

/// Parameters of `events.subscribe`. Both filters are optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubscribeParams {
    /// Only this run (its `run_id`, as in `run.started`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Only events about this task (`project#task`); `run.started` and
    /// `run.finished` still come for every (matching) run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// A passive subscriber (the daemon's own HTTP feed, plugin host and
    /// exporter) gets the events the runs publish but does not, by itself,
    /// make the engine publish the events a run's own client did not ask
    /// for (the cache hits of a changes-only run): those are published
    /// while at least one subscriber is not passive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passive: bool,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum SubscriptionEnd {
    /// `$/cancel` with its request id (or `run.cancel`), or the engine
    /// shutting down.
    Cancelled,
    /// The subscriber fell behind: it got one `events.resync` and was dropped.
    Resync,
    /// The connection closed (no response is sent then).
    Disconnected,
}

/// The result of `events.subscribe`, sent when the subscription ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubscribeResult {
    pub ended: SubscriptionEnd,
    /// Notifications queued for this subscriber.
    pub delivered: u64,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// `run.start` (`vx run`).
    Run,
    /// One cycle of `watch.start` (`vx watch`).
    Watch,
}

/// The params of a `run.started` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunStartedParams {
    /// The `events.subscribe` request this belongs to.
    pub subscription: Id,
    pub run_id: String,
    pub kind: RunKind,
    /// The command line of the client that started it, redacted as the
    /// history redacts it (arguments after `--` replaced).
    pub argv: Vec<String>,
    pub root: String,
    /// Tasks with a command in the run.
    pub tasks: usize,
    pub concurrency: usize,
    /// Unix milliseconds.
    pub started_at: u64,
    /// The run's span (W3C `traceparent`), when the run is traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The span the run is a child of (its client's `TRACEPARENT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
}

/// The params of a `run.finished` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunFinishedParams {
    pub subscription: Id,
    pub run_id: String,
    pub kind: RunKind,
    /// As in `run.started`.
    pub argv: Vec<String>,
    pub ok: bool,
    /// The exit code the client of the run got (absent when the run ended
    /// without a summary: an error, or its client went away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub counts: RunCounts,
    /// Unix milliseconds.
    pub ended_at: u64,
    pub duration_ms: u64,
    /// Why the run ended without a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The params of an `events.event` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BusEventParams {
    pub subscription: Id,
    pub run_id: String,
    /// Position of the event in its run (1, 2, ...; `run.started` is 0):
    /// a subscriber sees each run's events in this order, without gaps
    /// unless a filter is set.
    pub seq: u64,
    pub event: RunEvent,
}

/// The params of an `events.subscribed` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubscribedParams {
    pub subscription: Id,
    /// The runs in progress at that moment (their earlier events are not
    /// replayed; `runs.active` tells their state).
    pub runs: Vec<String>,
}

/// The params of an `events.resync` notification (the last one of its
/// subscription).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResyncParams {
    pub subscription: Id,
    /// Why (e.g. the subscriber's queue was full).
    pub reason: String,
}

/// The result of `runs.active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunsActive {
    /// Oldest first.
    pub runs: Vec<ActiveRun>,
}

/// One run in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ActiveRun {
    pub run_id: String,
    pub kind: RunKind,
    pub argv: Vec<String>,
    pub root: String,
    /// Unix milliseconds.
    pub started_at: u64,
    pub concurrency: usize,
    /// Every task that will finish has finished; only persistent tasks
    /// (state `ready`) keep the run going.
    pub settled: bool,
    pub counts: ActiveCounts,
    /// The tasks started and not finished, by slot.
    pub tasks: Vec<ActiveTask>,
}

/// Task counts of a run in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ActiveCounts {
    /// Tasks with a command in the run.
    pub total: usize,
    /// Reported finished (executed, served from the cache, failed, skipped).
    pub done: usize,
    pub running: usize,
    /// Persistent tasks that are ready and still running.
    pub ready: usize,
    /// Not started and not reported finished (`total - done - running - ready`).
    pub queued: usize,
}

/// The state of a task in `runs.active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ActiveState {
    /// Its process runs (or it waits for a persistent task's readiness).
    Running,
    /// A persistent task that is ready (its dependents may start).
    Ready,
}

/// One task of a run in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ActiveTask {
    /// `project#task`.
    pub id: String,
    pub state: ActiveState,
    /// Unix milliseconds.
    pub started_at: u64,
    /// The concurrency slot it holds (0-based, below the run's
    /// `concurrency`); `None` once a persistent task is ready (it holds
    /// none then, as in the scheduler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub command: String,
}

/// The result of `graph.get` (params: the selection fields of `run.start`:
/// `cwd`, `tasks`, `filters`, `all`, `affected`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Graph {
    pub root: String,
    /// The projects that own a selected task, by name.
    pub projects: Vec<GraphProject>,
    /// The selected tasks, dependencies before their dependents.
    pub tasks: Vec<GraphTask>,
    /// `from` depends on `to` (both selected), sorted.
    pub edges: Vec<GraphEdge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GraphProject {
    pub name: String,
    /// Relative to the workspace root (`.` for the root project).
    pub dir: String,
    /// Projects it depends on.
    pub deps: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GraphTask {
    /// `project#task`.
    pub id: String,
    pub project: String,
    pub task: String,
    /// `None` for a group task.
    pub command: Option<String>,
    /// Whether the user asked for it (as opposed to pulled in as a dependency).
    pub requested: bool,
    pub persistent: bool,
    /// Whether its results are cached.
    pub cache: bool,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
}

/// Parameters of `task.explain`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplainParams {
    /// The client's working directory (absolute).
    pub cwd: String,
    /// `project#task`, or a task of the project at `cwd` (as `vx run`).
    pub task: String,
    /// Arguments after `--`, as `vx run` would forward them (they are keyed).
    #[serde(default)]
    pub args: Vec<String>,
    /// The client's environment (keyed env values come from it).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The result of `task.explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Explain {
    pub root: String,
    /// The requested task(s) (a bare name may select one per project).
    pub tasks: Vec<TaskExplain>,
}

/// One task's key, part by part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskExplain {
    /// `project#task`.
    pub id: String,
    /// The key a run would use now (the one `run.plan` reports).
    pub key: String,
    /// The command line (without forwarded args).
    pub command: String,
    /// Input files (workspace-relative) with the blake3 of their content, sorted.
    pub inputs: Vec<InputFile>,
    /// Keyed env names with the blake3 of `NAME=value` (`unset` when
    /// unset): values are never shown.
    pub env: Vec<EnvEntry>,
    /// blake3 of the task's resolved configuration.
    pub config: String,
    /// The upstream tasks whose keys are folded in, sorted.
    pub upstream: Vec<UpstreamKey>,
    /// The forwarded args that are keyed (empty unless requested with args).
    pub args: Vec<String>,
    /// Key material from plugins: the component `plugin:<name>` with the
    /// blake3 of its material (`docs/plugins.md`), sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<EnvEntry>,
    pub prediction: Prediction,
    /// For a predicted hit: `local` (would be restored) or `up-to-date`
    /// (its outputs are already on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CacheSource>,
    /// The task's newest key in the run history (when one is recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<String>,
    /// What differs from `last_key`'s recorded parts (files, env names,
    /// config, command, upstream, args); empty when the key is the same or
    /// nothing is recorded (see `compared`).
    pub changes: Vec<Change>,
    /// Whether `last_key`'s parts were found and compared.
    pub compared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InputFile {
    pub path: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnvEntry {
    pub name: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UpstreamKey {
    pub id: String,
    pub key: String,
}

/// Default of `task.log`'s `max_bytes`.
pub const LOG_DEFAULT_BYTES: u64 = 256 << 10;
/// The largest `max_bytes` `task.log` honours (a larger one is lowered).
pub const LOG_MAX_BYTES: u64 = 4 << 20;

/// Parameters of `task.log`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskLogParams {
    pub cwd: String,
    /// `project#task`, or a task of the project at `cwd`.
    pub task: String,
    /// The log of the task in this recorded run (a unique prefix of its id)
    /// instead of the one for its current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// At most this many bytes of the log (its end); default
    /// [`LOG_DEFAULT_BYTES`], at most [`LOG_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// As in `task.explain` (they decide the current key).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Where `task.log` found the key whose log it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum LogSource {
    /// The task's current key (as `task.explain` reports it).
    Current,
    /// The key the task had in the given recorded run.
    History,
}

/// The result of `task.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskLog {
    /// `project#task`.
    pub task: String,
    pub key: String,
    pub source: LogSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The stored log's full size.
    pub size: u64,
    /// Whether `log` is only its end (the last `max_bytes`, cut at a line
    /// start when one is near).
    pub truncated: bool,
    /// The log (stdout and stderr interleaved, as stored; invalid UTF-8
    /// replaced).
    pub log: String,
}

/// The method and notification types of the catalogue
/// (`vx_proto::catalogue::visit` lists them).
pub mod method {
    use super::*;
    use crate::RunParams;
    use crate::catalogue::{Empty, Notification, method};

    method! {
        /// Every run's events, whoever started it (optionally one run's, or
        /// one task's): `events.subscribed` first, then per run
        /// `run.started`, its `events.event`s in order and `run.finished`,
        /// until `$/cancel` (or `run.cancel`) or the connection closes. A
        /// subscriber that falls behind (2 MiB unread) gets one
        /// `events.resync` and its subscription ends: it never slows a run.
        EventsSubscribe = EVENTS_SUBSCRIBE; SubscribeParams => SubscribeResult; Stream, Read,
        events: [EVENTS_SUBSCRIBED, RUN_STARTED, EVENTS_EVENT, RUN_FINISHED, EVENTS_RESYNC]
    }
    method! {
        /// The runs of this engine process in progress (a daemon: every
        /// client's), per task: state, start time, concurrency slot.
        RunsActive = RUNS_ACTIVE; Empty => super::RunsActive; Query, Read
    }
    method! {
        /// The projects, tasks and edges of a selection (`run.plan`'s
        /// params), without computing keys.
        GraphGet = GRAPH_GET; RunParams => Graph; Query, Read
    }
    method! {
        /// A task's current key part by part (input files with hashes, env
        /// names with hashed values, config, upstream keys, args), whether it
        /// would hit and from where, and what changed since its last recorded key.
        TaskExplain = TASK_EXPLAIN; ExplainParams => Explain; Query, Read
    }
    method! {
        /// A task's stored log (its current key's, or the key it had in a
        /// recorded run), at most `max_bytes` of its end.
        TaskLog = TASK_LOG; TaskLogParams => super::TaskLog; Query, Read
    }

    /// Lists the live methods and notifications (called by
    /// `catalogue::visit`, so they are part of the one catalogue).
    pub(crate) fn visit(v: &mut impl crate::catalogue::Visit) {
        v.method::<EventsSubscribe>();
        v.method::<RunsActive>();
        v.method::<GraphGet>();
        v.method::<TaskExplain>();
        v.method::<TaskLog>();
        v.notification::<EventsSubscribed>();
        v.notification::<RunStarted>();
        v.notification::<EventsEvent>();
        v.notification::<RunFinished>();
        v.notification::<EventsResync>();
    }

    /// The `events.subscribed` notification.
    #[derive(Debug, Clone, Copy)]
    pub struct EventsSubscribed;
    impl Notification for EventsSubscribed {
        const NAME: &'static str = EVENTS_SUBSCRIBED;
        type Params = SubscribedParams;
        const DOC: &'static str = "The subscription is in place: every event published after it reaches the subscriber; `runs` are the runs already in progress.";
    }
    /// The `run.started` notification.
    #[derive(Debug, Clone, Copy)]
    pub struct RunStarted;
    impl Notification for RunStarted {
        const NAME: &'static str = RUN_STARTED;
        type Params = RunStartedParams;
        const DOC: &'static str = "A run (or a watch cycle) began: its id, kind, redacted argv, task count and concurrency.";
    }
    /// The `events.event` notification.
    #[derive(Debug, Clone, Copy)]
    pub struct EventsEvent;
    impl Notification for EventsEvent {
        const NAME: &'static str = EVENTS_EVENT;
        type Params = BusEventParams;
        const DOC: &'static str = "One event of a run (a `run.event` event), tagged with its run id and its position `seq` in the run.";
    }
    /// The `run.finished` notification.
    #[derive(Debug, Clone, Copy)]
    pub struct RunFinished;
    impl Notification for RunFinished {
        const NAME: &'static str = RUN_FINISHED;
        type Params = RunFinishedParams;
        const DOC: &'static str = "A run (or a watch cycle) ended: ok, exit code, counts, or why it ended without a summary.";
    }
    /// The `events.resync` notification.
    #[derive(Debug, Clone, Copy)]
    pub struct EventsResync;
    impl Notification for EventsResync {
        const NAME: &'static str = EVENTS_RESYNC;
        type Params = ResyncParams;
        const DOC: &'static str = "The subscriber fell behind: its subscription ends after this (call `runs.active`, subscribe again).";
    }
}
