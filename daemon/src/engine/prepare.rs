//! `engine::prepare` — everything a run or a plan needs before its first task.
//!
//! Owns: loading (or, under the daemon, syncing) the model, the selection,
//! compiled patterns, opening the store (through [`super::store`]), the file
//! walk and warming the file index for the projects involved; the run's
//! shared context [`Shared`] with each task's process environment and
//! command line and the cache policy per task; `plan` (every selected task
//! with its key and predicted cache status).
//! Never: starts a process, restores or saves outputs, or orders tasks.

use super::store::{open_cold, uncached};
use crate::cache::{self, Store};
use crate::error::{EngineError, ErrorKind};
use crate::exec;
use crate::globs::Patterns;
use crate::graph::{self, SelectArgs, Selection};
use crate::hash::{self, FileIndex, FileMeta, TaskPatterns};
use crate::history;
use crate::hooks::HookTask;
use crate::model::{Model, Snapshot, cache_dir};
use crate::sink::Events;
use crate::state::{Hot, wrong_workspace};
use crate::workspace::{self, Project};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use vx_proto::history::Fingerprint;
use vx_proto::knobs;
use vx_proto::{Plan, PlannedTask, Prediction, RunEvent, RunParams};

/// Env names every task gets from the client's environment.
const ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "HOME",
    "SHELL",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "COLORTERM",
    "FORCE_COLOR",
    "NO_COLOR",
    "CI",
    "NODE_OPTIONS",
    "COREPACK_HOME",
    "PNPM_HOME",
];

/// Everything a run shares between its tasks.
pub(super) struct Shared {
    pub(super) model: Arc<Model>,
    pub(super) store: Arc<Store>,
    pub(super) index: Arc<FileIndex>,
    pub(super) snapshot: RwLock<Snapshot>,
    /// Projects written to since the snapshot (their files must be re-walked).
    pub(super) dirty: Mutex<HashSet<usize>>,
    /// Output bases (project-relative) restored into since the snapshot,
    /// per project not re-walked since: re-walked only before a task whose
    /// inputs reach one is keyed (see `Shared::mark_restored`).
    pub(super) restored: Mutex<HashMap<usize, Vec<String>>>,
    /// Whether the store belongs to this run (closed at its end) or to the daemon.
    pub(super) owns_store: bool,
    /// This run's hold on the cache directory (`cache clean` waits for it).
    pub(super) _lease: Option<crate::cache::RunLease>,
    /// The daemon's state, when this run is served by a daemon.
    pub(super) hot: Option<Arc<Hot>>,
    /// Under the daemon: the mark of the snapshot the run started from
    /// (`Hot::sync_marked`) and the store's `removals` right after it was
    /// refreshed for the run (what `replay::TaskMemo` compares).
    pub(super) started_at: Option<(u64, u64)>,
    /// Compiled patterns per graph node (selected nodes only).
    pub(super) patterns: HashMap<usize, Arc<TaskPatterns>>,
    pub(super) global_inputs: Patterns,
    pub(super) keys: Mutex<HashMap<usize, String>>,
    pub(super) params: RunParams,
    pub(super) requested: HashSet<usize>,
    pub(super) events: Option<Events>,
    pub(super) cache_skip: Vec<PathBuf>,
    /// CPU time and memory of executed tasks, by graph node.
    pub(super) usage: Mutex<HashMap<usize, exec::Usage>>,
    /// Without the daemon: the input files each project's input patterns
    /// pick, per project (see [`Shared::inputs_from_run_memo`]).
    pub(super) inputs_memo: Mutex<HashMap<usize, Vec<super::keys::RunInputs>>>,
    /// Fingerprints of executed tasks (for the run history).
    pub(super) fingerprints: Mutex<Vec<Fingerprint>>,
    /// Nodes whose outputs may overlap another selected task's of the same
    /// project (turbo lets `build` and `typecheck` both write
    /// `.cache/tsbuildinfo.json`), by the lock slot their group shares: such
    /// tasks restore and execute one at a time, in any run of any process.
    pub(super) shared_outputs: HashMap<usize, String>,
    /// The run's trace context, when an exporter traces it.
    pub(super) trace: Option<crate::telemetry::RunTrace>,
    /// The run's remote cache, when one is configured and usable.
    pub(super) remote: Option<Arc<crate::cache::remote::RunRemote>>,
    /// Which caches the run reads and writes (`--cache`).
    pub(super) policy: crate::cache::remote::CachePolicy,
    /// Uploads to the remote cache in flight (drained before the answer).
    pub(super) uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What the hook plugins said about this run's tasks.
    pub(super) plugins: PluginParts,
}

/// What the hook plugins (`docs/plugins.md`) said about a run's tasks:
/// nothing, without plugins declaring `hooks`.
#[derive(Default)]
pub(super) struct PluginParts {
    /// Key material per graph node: (plugin name, material), by name.
    pub(super) material: HashMap<usize, Vec<(String, String)>>,
    /// A key plugin gave no (valid) answer: no task of the run reads or
    /// writes the cache, so none can get a wrong hit.
    pub(super) uncached: bool,
    /// Expected cost (ms) per graph node, from the weights plugins (the
    /// largest when several answer).
    pub(super) weights: HashMap<usize, u64>,
}

/// Asks the workspace's hook plugins about the selected tasks (one
/// batched question per run); each failure is one warning. A key plugin
/// that fails makes the run uncached; a weights plugin that fails is
/// ignored.
fn ask_plugins(model: &Model, nodes: &[usize], events: &Option<Events>) -> PluginParts {
    let mut out = PluginParts::default();
    if !model.ws.defaults.plugin_hooks {
        return out;
    }
    let warn = |message: String| {
        if let Some(tx) = events {
            let _ = tx.send(RunEvent::Warning { message });
        }
    };
    let graph = &model.graph;
    let nodes: Vec<usize> = nodes
        .iter()
        .copied()
        .filter(|&n| graph.nodes[n].def.command.is_some())
        .collect();
    let tasks: Vec<HookTask> = nodes
        .iter()
        .map(|&n| {
            let node = &graph.nodes[n];
            let project = &model.ws.projects[node.project];
            HookTask {
                id: node.id.clone(),
                project: project.name.clone(),
                task: node.name.clone(),
                dir: project.dir.clone(),
                command: node.def.command.clone().unwrap_or_default(),
            }
        })
        .collect();
    let Some(hooks) = crate::hooks::installed() else {
        out.uncached = true;
        warn("plugins declare hooks, but this engine cannot ask them: the run's tasks are not cached (neither restored nor saved)".into());
        return out;
    };
    let answers = hooks.ask(&model.ws.root, &tasks);
    for (name, answer) in answers.keys {
        match answer {
            Ok(m) => {
                for (&n, t) in nodes.iter().zip(&tasks) {
                    if let Some(v) = m.get(&t.id) {
                        out.material
                            .entry(n)
                            .or_default()
                            .push((name.clone(), v.clone()));
                    }
                }
            }
            Err(why) => {
                out.uncached = true;
                warn(format!(
                    "plugin {name} {why}; without its key material this run's tasks are not cached (neither restored nor saved)"
                ));
            }
        }
    }
    for (name, answer) in answers.weights {
        match answer {
            Ok(m) => {
                for (&n, t) in nodes.iter().zip(&tasks) {
                    if let Some(&w) = m.get(&t.id) {
                        let e = out.weights.entry(n).or_insert(w);
                        *e = (*e).max(w);
                    }
                }
            }
            Err(why) => warn(format!(
                "plugin {name} {why}; its scheduling weights are ignored this run"
            )),
        }
    }
    out
}

impl Shared {
    pub(super) fn emit(&self, e: RunEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    pub(super) fn project_abs(&self, p: usize) -> PathBuf {
        self.model.ws.abs_dir(&self.model.ws.projects[p])
    }

    /// Project-relative fence for output walks.
    pub(super) fn rel_fence(&self, p: usize) -> HashSet<String> {
        self.model.rel_fences[p].clone()
    }

    /// The environment of a task's process.
    /// Which task logs node `n` shows: the run's choice, or the task's own
    /// `outputLogs` when the run left it at the default.
    pub(super) fn logs_of(&self, n: usize) -> vx_proto::OutputLogs {
        match self.model.graph.nodes[n].def.output_logs {
            Some(own) if self.params.output_logs_from_tasks => own,
            _ => self.params.output_logs,
        }
    }

    /// The run's env mode: `--env-mode`, else the workspace's, else strict.
    pub(super) fn env_mode(&self) -> vx_proto::EnvMode {
        self.params
            .env_mode
            .or(self.model.ws.defaults.env_mode)
            .unwrap_or_default()
    }

    pub(super) fn task_env(&self, n: usize) -> Vec<(String, String)> {
        let node = &self.model.graph.nodes[n];
        let project = &self.model.ws.projects[node.project];
        let client = &self.params.env;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if self.env_mode() == vx_proto::EnvMode::Loose {
            env.extend(client.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for k in ENV_ALLOWLIST {
            if let Some(v) = client.get(*k) {
                env.insert(k.to_string(), v.clone());
            }
        }
        let mut pass = self.model.ws.global.pass_env.clone();
        pass.extend(node.def.pass_env.iter().cloned());
        for (k, v) in hash::keyed_env(&pass, client) {
            if let Some(v) = v {
                env.insert(k, v);
            }
        }
        let mut keyed = self.model.ws.global.env.clone();
        keyed.extend(node.def.env.iter().cloned());
        if self.params.framework_inference != Some(false) {
            keyed.extend(node.def.framework_env.iter().cloned());
        }
        for (k, v) in hash::keyed_env(&keyed, client) {
            if let Some(v) = v {
                env.insert(k, v);
            }
        }
        for (k, v) in &node.def.define {
            env.insert(k.clone(), v.clone());
        }
        let proj_bin = self.model.ws.abs_dir(project).join("node_modules/.bin");
        let root_bin = self.model.ws.root.join("node_modules/.bin");
        let path = env
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let mut prefix = Vec::new();
        if project.dir != "." {
            prefix.push(proj_bin.to_string_lossy().into_owned());
        }
        prefix.push(root_bin.to_string_lossy().into_owned());
        env.insert("PATH".into(), format!("{}:{path}", prefix.join(":")));
        if node.def.npm_script {
            env.insert("npm_package_name".into(), project.name.clone());
            if let Some(v) = &project.version {
                env.insert("npm_package_version".into(), v.clone());
            }
            env.insert("npm_lifecycle_event".into(), node.name.clone());
        }
        env.insert(knobs::RUN_TASK.name.into(), node.id.clone());
        env.insert(
            knobs::RUN_WORKSPACE.name.into(),
            self.model.ws.root.to_string_lossy().into_owned(),
        );
        env.into_iter().collect()
    }

    pub(super) fn command_line(&self, n: usize) -> String {
        let node = &self.model.graph.nodes[n];
        let mut cmd = node.def.command.clone().unwrap_or_default();
        if self.requested.contains(&n) && !self.params.args.is_empty() {
            for a in &self.params.args {
                cmd.push(' ');
                cmd.push_str(&shell_quote(a));
            }
        }
        cmd
    }

    /// End of a run: the no-daemon path closes its store; the daemon's
    /// stays open (its writes are flushed).
    pub(super) fn finish_store(&self) -> Result<(), EngineError> {
        self.store.save_file_index(self.index.take_updates());
        if self.owns_store {
            self.store.close()?;
        } else {
            self.store.flush()?;
        }
        Ok(())
    }

    /// Whether node `n` is an interactive task that gets the client's
    /// terminal: the client has one and the task is the only one requested
    /// (everything else in the run is its dependencies, finished first).
    pub(super) fn gets_terminal(&self, n: usize) -> bool {
        self.params.tty
            && self.model.graph.nodes[n].def.interactive
            && self.requested.len() == 1
            && self.requested.contains(&n)
    }

    pub(super) fn cache_read(&self, n: usize) -> bool {
        self.cache_enabled(n) && !self.params.force
    }

    pub(super) fn cache_enabled(&self, n: usize) -> bool {
        let d = &self.model.graph.nodes[n].def;
        d.cache
            && d.command.is_some()
            && !d.persistent
            && !d.interactive
            && !self.params.no_cache
            && !self.plugins.uncached
    }
}

/// Quotes an argument for `sh` unless it is plainly safe.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=./:,@%+".contains(&b))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Stage timings on stderr when `VX_TIMING` is set (for profiling).
pub(super) struct Timing {
    on: bool,
    last: Instant,
}

impl Timing {
    pub(super) fn new(env: &BTreeMap<String, String>) -> Self {
        Timing {
            on: knobs::TIMING.on(env),
            last: Instant::now(),
        }
    }
    pub(super) fn stage(&mut self, name: &str) {
        if self.on {
            let ms = self.last.elapsed().as_secs_f64() * 1000.0;
            // The no-daemon engine's stderr is the user's terminal; a
            // daemon's goes to its log.
            eprintln!("vx timing: {name:<14} {ms:>8.2} ms");
            tracing::info!("timing: {name:<14} {ms:>8.2} ms");
        }
        self.last = Instant::now();
    }
}

/// Loads, selects and prepares everything a run or a plan needs.
pub(super) fn prepare(
    mut params: RunParams,
    events: Option<Events>,
    hot_arc: Option<Arc<Hot>>,
) -> Result<(Arc<Shared>, Selection), EngineError> {
    let hot = hot_arc.as_deref();
    let mut timing = Timing::new(&params.env);
    let cwd = PathBuf::from(&params.cwd);
    if !cwd.is_absolute() {
        return Err(EngineError::new(
            ErrorKind::InvalidParams,
            "cwd must be absolute",
        ));
    }
    let root = workspace::find_root(&cwd)?;
    let mut started_at = None;
    let (model, hot_parts) = match hot {
        Some(hot) => {
            if root != hot.root {
                return Err(wrong_workspace(&cwd, &root, hot));
            }
            let (model, snapshot, mark) = hot.sync_marked()?;
            timing.stage("sync");
            let store = match hot.store() {
                Ok(s) => s,
                Err(e) => uncached(&cache_dir(&model.ws), &e.message, params.no_cache, &events)?,
            };
            started_at = Some((mark, store.removals()));
            (model, Some((store, hot.index.clone(), snapshot)))
        }
        None => {
            let model = Arc::new(Model::load(&root)?);
            timing.stage("load");
            (model, None)
        }
    };
    let owns_store = hot.is_none();
    let ws = &model.ws;
    let graph = &model.graph;
    // Selection errors (unknown task, bad filter) come before the cache is
    // opened: bad input changes nothing.
    let selection = graph::select(
        ws,
        graph,
        &SelectArgs {
            cwd: &cwd,
            tasks: &params.tasks,
            filters: &params.filters,
            all: params.all,
            affected: params.affected.as_deref(),
        },
    )?;
    timing.stage("select");
    let cfg = |e: crate::globs::GlobError| EngineError::new(ErrorKind::Config, e.to_string());
    let mut patterns = HashMap::with_capacity(selection.nodes.len());
    for &n in &selection.nodes {
        patterns.insert(n, model.patterns_of(n)?);
    }
    let global_inputs = Patterns::new(&ws.global.keyed_inputs()).map_err(cfg)?;
    timing.stage("patterns");
    let (store, index, snapshot) = match hot_parts {
        Some((store, index, snapshot)) => (store, index, Some(snapshot)),
        None => {
            let (store, index) = open_cold(&model, &params, &events)?;
            timing.stage("cache open");
            (store, index, None)
        }
    };
    let lease = store.run_lease();
    // A damaged index moved aside, or a cache that cannot be used: said
    // once, and the run goes on (cold, or uncached).
    for message in ws
        .warnings
        .iter()
        .cloned()
        .chain(cache::take_notice(&cache_dir(ws)))
    {
        if let Some(tx) = &events {
            let _ = tx.send(RunEvent::Warning { message });
        }
    }
    if store.is_ephemeral() {
        params.no_cache = true;
    }
    let cache_skip = vec![cache_dir(ws)];
    let snapshot = match snapshot {
        Some(s) => s,
        None => {
            let s = Snapshot::scan(&model, &cache_skip);
            timing.stage("walk");
            s
        }
    };
    // Warm the index for the projects this run touches, on all cores.
    {
        let involved: HashSet<usize> = selection
            .nodes
            .iter()
            .map(|&n| graph.nodes[n].project)
            .collect();
        let mut to_hash: Vec<&FileMeta> = Vec::new();
        let mut warmed = Vec::new();
        for &p in &involved {
            // The daemon re-warms only lists that changed since it last did.
            if let Some(hot) = hot {
                if hot.warmed(&model, p, &snapshot.by_project[p]) {
                    continue;
                }
                warmed.push((p, snapshot.by_project[p].clone()));
            }
            to_hash.extend(snapshot.by_project[p].iter());
        }
        if !global_inputs.is_empty() {
            to_hash.extend(
                snapshot
                    .loose
                    .iter()
                    .filter(|f| global_inputs.matches(&f.path)),
            );
        }
        index.hash_all(&ws.root, &to_hash);
        if let Some(hot) = hot {
            hot.set_warmed(&model, warmed);
        }
    }
    timing.stage("hash");
    let requested = selection.requested.clone();
    // A daemon has no terminal to give an interactive task: the client
    // runs such a run with the foreground engine instead.
    if hot.is_some()
        && params.tty
        && requested.len() == 1
        && requested.iter().all(|&n| graph.nodes[n].def.interactive)
    {
        // Let the foreground engine open the cache (reopened on next use).
        if let Some(h) = hot {
            h.close_store();
            history::release(&h.cache_dir());
        }
        return Err(EngineError::new(
            ErrorKind::NeedsTerminal,
            "an interactive task needs the terminal; run it with the no-daemon engine",
        ));
    }
    let (remote, policy, remote_warning) =
        super::remote::open(&model, &params).map_err(|e| EngineError::new(ErrorKind::User, e))?;
    if let (Some(w), Some(tx)) = (remote_warning, &events) {
        let _ = tx.send(RunEvent::Warning { message: w });
    }
    let trace = events
        .as_ref()
        .and_then(|_| crate::telemetry::begin(&params.env));
    let plugins = ask_plugins(&model, &selection.nodes, &events);
    if model.ws.defaults.plugin_hooks {
        timing.stage("plugins");
    }
    let shared = Shared {
        plugins,
        trace,
        remote,
        policy,
        uploads: Mutex::new(Vec::new()),
        model: model.clone(),
        store,
        index,
        snapshot: RwLock::new(snapshot),
        dirty: Mutex::new(HashSet::new()),
        restored: Mutex::new(HashMap::new()),
        owns_store,
        _lease: lease,
        hot: hot_arc,
        started_at,
        patterns,
        global_inputs,
        keys: Mutex::new(HashMap::new()),
        requested,
        params,
        events,
        cache_skip,
        usage: Mutex::new(HashMap::new()),
        inputs_memo: Mutex::new(HashMap::new()),
        fingerprints: Mutex::new(Vec::new()),
        shared_outputs: HashMap::new(),
    };
    let mut shared = shared;
    shared.shared_outputs = output_groups(&shared);
    Ok((Arc::new(shared), selection))
}

/// Whether two output pattern sets may select a common path: either can
/// match anywhere, or a base directory of one lies within (or is) one of
/// the other's. Conservative: a false overlap only serialises two tasks.
fn outputs_overlap(a: &Patterns, b: &Patterns) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (Some(x), Some(y)) = (a.bases(), b.bases()) else {
        return true;
    };
    let within = |p: &str, q: &str| {
        p.is_empty() || q.is_empty() || p == q || q.starts_with(&format!("{p}/"))
    };
    x.iter()
        .any(|p| y.iter().any(|q| within(p, q) || within(q, p)))
}

/// The groups of selected tasks of one project whose outputs may overlap
/// (see [`Shared::shared_outputs`]); tasks alone are left out.
fn output_groups(sh: &Shared) -> HashMap<usize, String> {
    let mut by_project: HashMap<usize, Vec<usize>> = HashMap::new();
    for (&n, pats) in &sh.patterns {
        if !pats.outputs.is_empty() && sh.model.graph.nodes[n].def.command.is_some() {
            by_project
                .entry(sh.model.graph.nodes[n].project)
                .or_default()
                .push(n);
        }
    }
    let mut out = HashMap::new();
    for (p, mut nodes) in by_project {
        if nodes.len() < 2 {
            continue;
        }
        nodes.sort_unstable();
        // Union-find over the overlapping pairs.
        let mut parent: Vec<usize> = (0..nodes.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for i in 0..nodes.len() {
            for j in i + 1..nodes.len() {
                if outputs_overlap(
                    &sh.patterns[&nodes[i]].outputs,
                    &sh.patterns[&nodes[j]].outputs,
                ) {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[b] = a;
                }
            }
        }
        let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, &n) in nodes.iter().enumerate() {
            let r = root(&mut parent, i);
            members.entry(r).or_default().push(n);
        }
        for group in members.into_values().filter(|g| g.len() > 1) {
            let first = group
                .iter()
                .map(|&n| sh.model.graph.nodes[n].id.as_str())
                .min()
                .unwrap_or_default();
            let slot = format!("{}\0outputs of {first}", sh.project_abs(p).display());
            for n in group {
                out.insert(n, slot.clone());
            }
        }
    }
    out
}

pub(super) fn plan_blocking(params: RunParams, hot: Option<Arc<Hot>>) -> Result<Plan, EngineError> {
    let (sh, sel) = prepare(params, None, hot)?;
    let mut tasks = Vec::with_capacity(sel.nodes.len());
    for &n in &sel.nodes {
        let key = sh.key_of(n)?;
        let node = &sh.model.graph.nodes[n];
        let project: &Project = &sh.model.ws.projects[node.project];
        let prediction = if node.def.command.is_none() {
            Prediction::Group
        } else if !sh.cache_enabled(n) {
            Prediction::Uncached
        } else if sh.cache_read(n) && matches!(sh.store.get(&key), Ok(Some(_))) {
            Prediction::Hit
        } else {
            Prediction::Miss
        };
        let mut deps: Vec<String> = sh
            .model
            .graph
            .deps(n)
            .map(|d| sh.model.graph.nodes[d].id.clone())
            .collect();
        deps.sort();
        tasks.push(PlannedTask {
            id: node.id.clone(),
            project: project.name.clone(),
            task: node.name.clone(),
            dir: project.dir.clone(),
            command: node.def.command.as_ref().map(|_| sh.command_line(n)),
            key: Some(key),
            prediction,
            deps,
            requested: sel.requested.contains(&n),
            inputs: node.def.inputs.clone(),
            outputs: node.def.outputs.clone(),
            warnings: sh.input_warnings(n)?,
            runs_on: sh.planned_placement(n),
        });
    }
    sh.finish_store()?;
    Ok(Plan {
        root: sh.model.ws.root.to_string_lossy().into_owned(),
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--watch"), "--watch");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

#[cfg(test)]
mod output_overlap_tests {
    use super::outputs_overlap;
    use crate::globs::Patterns;

    #[test]
    fn overlapping_output_sets() {
        let cases: &[(&[&str], &[&str], bool)] = &[
            (
                &[".cache/tsbuildinfo.json"],
                &[".cache/tsbuildinfo.json"],
                true,
            ),
            (&["dist/**"], &["dist/types/**"], true),
            (&["dist/**"], &[".cache/x.json"], false),
            (&["dist/**", ".cache/a"], &["build/**", ".cache/a"], true),
            (&["**/*.js"], &["dist/**"], true),
            (&["dist/**"], &[], false),
            (&["distro/**"], &["dist/**"], false),
        ];
        for (a, b, want) in cases {
            let (pa, pb) = (Patterns::new(a).unwrap(), Patterns::new(b).unwrap());
            assert_eq!(outputs_overlap(&pa, &pb), *want, "{a:?} vs {b:?}");
            assert_eq!(outputs_overlap(&pb, &pa), *want, "{b:?} vs {a:?}");
        }
    }
}
