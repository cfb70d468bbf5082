//! `engine` — one run, end to end: load → select → key → cache → execute.
//!
//! Owns: orchestrating a run or a plan over the pipeline modules, the
//! scheduler (ready tasks ordered by their number of transitive dependents,
//! bounded by the concurrency), `--continue` policy, cancellation, per-task
//! environments, output-log policy and the run summary. It emits
//! [`RunEvent`]s into a channel; it never knows about JSON-RPC or sockets
//! (that is `server`).

use crate::cache::{self, CacheError, Manifest, Store};
use crate::exec::{self, Outcome, Spawn};
use crate::globs::Patterns;
use crate::graph::{self, SelectArgs, Selection, TaskGraph};
use crate::hash::{self, FileIndex, FileMeta, KeyParts, TaskPatterns};
use crate::history::{self, History};
use crate::persist;
use crate::state::Hot;
use crate::workspace::{self, Project, Workspace};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use vx_proto::history::{Fingerprint, RunRecord, TaskRun};
use vx_proto::knobs;
use vx_proto::{
    CacheSource, ContinueMode, OutputLogs, Plan, PlannedTask, Prediction, RunCounts, RunEvent,
    RunParams, RunSummary, Stream, TaskResult, TaskStatus, codes,
};

/// An error that ends a request, with its stable protocol code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub code: i64,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl EngineError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }
}

impl From<workspace::ConfigError> for EngineError {
    fn from(e: workspace::ConfigError) -> Self {
        EngineError::new(codes::CONFIG_ERROR, e.to_string())
    }
}

impl From<graph::GraphError> for EngineError {
    fn from(e: graph::GraphError) -> Self {
        EngineError::new(e.code, e.message)
    }
}

impl From<CacheError> for EngineError {
    fn from(e: CacheError) -> Self {
        EngineError::new(codes::CACHE_ERROR, e.to_string())
    }
}

/// Where a run's events go: called synchronously, in order, for each event.
/// The server hands in its connection's bounded outbox, so an event is
/// queued (or, for output lines a slow client cannot take, counted) the
/// moment it happens: nothing piles up between the engine and the client.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(RunEvent) + Send + Sync>);

impl Events {
    pub fn new(f: impl Fn(RunEvent) + Send + Sync + 'static) -> Events {
        Events(Arc::new(f))
    }

    /// Delivers one event (never fails; the `Result` keeps channel-style
    /// call sites).
    pub fn send(&self, e: RunEvent) -> Result<(), std::convert::Infallible> {
        (self.0)(e);
        Ok(())
    }
}

impl From<mpsc::UnboundedSender<RunEvent>> for Events {
    fn from(tx: mpsc::UnboundedSender<RunEvent>) -> Events {
        Events::new(move |e| {
            let _ = tx.send(e);
        })
    }
}

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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The cache directory of a workspace.
/// (`VX_CACHE_DIR` is resolved and vetted by `workspace::load`, as here.)
pub fn cache_dir(ws: &Workspace) -> PathBuf {
    ws.defaults.cache_dir.clone().unwrap_or_else(|| {
        knobs::CACHE_DIR
            .inherited_os()
            .and_then(|d| {
                let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
                workspace::resolve_cache_dir(
                    &ws.root,
                    Path::new(&d),
                    home.as_deref().map(Path::new),
                )
                .ok()
            })
            .unwrap_or_else(|| ws.root.join(".vx").join("cache"))
    })
}

/// Loads the workspace that contains `cwd`.
pub fn load_workspace(cwd: &Path) -> Result<Workspace, EngineError> {
    let root = workspace::find_root(cwd)?;
    Ok(workspace::load(&root)?)
}

type PatternLists = (Vec<String>, Vec<String>, Vec<String>);

/// The workspace model and its task graph, with the per-project lookups
/// walks need. Built once per config state (the daemon keeps it).
pub struct Model {
    pub ws: Workspace,
    pub graph: TaskGraph,
    /// Canonical JSON of each task's resolved config (folded into its key),
    /// with the key fold's state after its per-task constant parts.
    config_json: Vec<std::sync::OnceLock<(Arc<str>, blake3::Hasher)>>,
    /// Compiled patterns by (inputs, root inputs, outputs) lists.
    patterns: Mutex<HashMap<PatternLists, Arc<TaskPatterns>>>,
    /// The same, per graph node.
    node_patterns: Vec<std::sync::OnceLock<Arc<TaskPatterns>>>,
    by_dir: HashMap<String, usize>,
    /// Root-relative dirs of nested projects, per project (walk fences).
    fences: Vec<HashSet<String>>,
    /// The same, project-relative (for output walks).
    rel_fences: Vec<HashSet<String>>,
}

impl Model {
    /// Loads the workspace at `root` and builds its task graph.
    pub fn load(root: &Path) -> Result<Model, EngineError> {
        let ws = workspace::load(root)?;
        let graph = TaskGraph::build(&ws)?;
        Ok(Model::new(ws, graph))
    }

    fn new(ws: Workspace, graph: TaskGraph) -> Model {
        let by_dir: HashMap<String, usize> = ws
            .projects
            .iter()
            .enumerate()
            .map(|(i, p)| (p.dir.clone(), i))
            .collect();
        // Each project's dir fences every ancestor project (and the root project).
        let mut fences: Vec<HashSet<String>> = vec![HashSet::new(); ws.projects.len()];
        for q in &ws.projects {
            if q.dir == "." {
                continue;
            }
            let mut cur = q.dir.as_str();
            while let Some(i) = cur.rfind('/') {
                cur = &cur[..i];
                if let Some(&p) = by_dir.get(cur) {
                    fences[p].insert(q.dir.clone());
                }
            }
            if let Some(&p) = by_dir.get(".") {
                fences[p].insert(q.dir.clone());
            }
        }
        let rel_fences = ws
            .projects
            .iter()
            .zip(&fences)
            .map(|(p, fs)| {
                fs.iter()
                    .filter_map(|f| {
                        if p.dir == "." {
                            Some(f.clone())
                        } else {
                            f.strip_prefix(p.dir.as_str())
                                .and_then(|r| r.strip_prefix('/'))
                                .map(str::to_string)
                        }
                    })
                    .collect()
            })
            .collect();
        Model {
            config_json: (0..graph.nodes.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            patterns: Mutex::new(HashMap::new()),
            node_patterns: (0..graph.nodes.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            ws,
            graph,
            by_dir,
            fences,
            rel_fences,
        }
    }

    /// The canonical JSON of node `n`'s resolved config and the global
    /// config, and the key fold's prefix state for the node.
    pub fn config_json(&self, n: usize) -> &(Arc<str>, blake3::Hasher) {
        self.config_json[n].get_or_init(|| {
            #[derive(serde::Serialize)]
            struct ConfigView<'a> {
                task: &'a crate::workspace::TaskDef,
                global: &'a crate::workspace::GlobalConfig,
            }
            let node = &self.graph.nodes[n];
            let json: Arc<str> = serde_json::to_string(&ConfigView {
                task: &node.def,
                global: &self.ws.global,
            })
            .unwrap_or_default()
            .into();
            let prefix =
                KeyParts::prefix(&node.id, &json, node.def.command.as_deref().unwrap_or(""));
            (json, prefix)
        })
    }

    /// The compiled patterns of node `n` (compiled once per distinct list).
    fn patterns_of(&self, n: usize) -> Result<Arc<TaskPatterns>, EngineError> {
        if let Some(tp) = self.node_patterns[n].get() {
            return Ok(tp.clone());
        }
        let d = &self.graph.nodes[n].def;
        let k = (d.inputs.clone(), d.root_inputs.clone(), d.outputs.clone());
        let cached = self.patterns.lock().ok().and_then(|m| m.get(&k).cloned());
        let tp = match cached {
            Some(tp) => tp,
            None => {
                let cfg = |e: crate::globs::GlobError| {
                    EngineError::new(codes::CONFIG_ERROR, e.to_string())
                };
                let tp = Arc::new(TaskPatterns {
                    inputs: Patterns::new(&d.inputs).map_err(cfg)?,
                    root_inputs: Patterns::new(&d.root_inputs).map_err(cfg)?,
                    outputs: Patterns::new(&d.outputs).map_err(cfg)?,
                });
                if let Ok(mut m) = self.patterns.lock() {
                    m.insert(k, tp.clone());
                }
                tp
            }
        };
        Ok(self.node_patterns[n].get_or_init(|| tp).clone())
    }

    /// The project owning a root-relative path (`None`: no project, a loose file).
    pub fn owner_of(&self, rel: &str) -> Option<usize> {
        let mut cur = rel;
        if let Some(&p) = self.by_dir.get(cur) {
            return Some(p);
        }
        while let Some(i) = cur.rfind('/') {
            cur = &cur[..i];
            if let Some(&p) = self.by_dir.get(cur) {
                return Some(p);
            }
        }
        self.by_dir.get(".").copied()
    }

    /// All project dirs except the root project's: the fence of a loose walk.
    fn all_project_dirs(&self) -> HashSet<String> {
        self.ws
            .projects
            .iter()
            .filter(|p| p.dir != ".")
            .map(|p| p.dir.clone())
            .collect()
    }
}

/// The files of the workspace, partitioned by owning project. Cheap to
/// clone: each project's list is shared until it is re-walked.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// Files per project (same order as `Workspace::projects`).
    by_project: Vec<Arc<Vec<FileMeta>>>,
    /// Files that belong to no project.
    loose: Arc<Vec<FileMeta>>,
    /// The in-workspace targets of the symlinks among them, per project
    /// (same order) and for the loose files: kept beside the lists so
    /// finding a link's owner never scans every file.
    links: Vec<Arc<Vec<String>>>,
    loose_links: Arc<Vec<String>>,
}

/// The root-relative targets of the symlinks into the workspace in `files`.
fn links_of(files: &[FileMeta]) -> Arc<Vec<String>> {
    Arc::new(
        files
            .iter()
            .filter_map(|f| match &f.link {
                hash::Link::File(t) | hash::Link::Dir(t) | hash::Link::Dangling(Some(t)) => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect(),
    )
}

impl Snapshot {
    /// One parallel walk of the whole workspace.
    pub fn scan(model: &Model, skip: &[PathBuf]) -> Snapshot {
        let root = &model.ws.root;
        let files = hash::walk(root, root, &HashSet::new(), skip);
        let mut by_project = vec![Vec::new(); model.ws.projects.len()];
        let mut loose = Vec::new();
        for f in files {
            match model.owner_of(&f.path) {
                Some(p) => by_project[p].push(f),
                None => loose.push(f),
            }
        }
        // A member reached through a symlinked directory: the walk above
        // does not follow links, so walk it on its own, through the link
        // (its paths stay under the member's workspace path).
        for (p, proj) in model.ws.projects.iter().enumerate() {
            if hash::through_link(root, &proj.dir) {
                let dir = model.ws.abs_dir(proj);
                by_project[p] = hash::walk(root, &dir, &model.fences[p], skip);
            }
        }
        Snapshot {
            links: by_project.iter().map(|v| links_of(v)).collect(),
            loose_links: links_of(&loose),
            by_project: by_project.into_iter().map(Arc::new).collect(),
            loose: Arc::new(loose),
        }
    }

    /// Re-walks one project (or, for `None`, the files outside every project).
    pub fn refresh(&mut self, model: &Model, project: Option<usize>, skip: &[PathBuf]) {
        let root = &model.ws.root;
        match project {
            Some(p) => {
                let dir = model.ws.abs_dir(&model.ws.projects[p]);
                self.by_project[p] =
                    Arc::new(hash::walk_serial(root, &dir, &model.fences[p], skip));
                if let Some(l) = self.links.get_mut(p) {
                    *l = links_of(&self.by_project[p]);
                }
            }
            None => {
                self.loose = Arc::new(hash::walk(root, root, &model.all_project_dirs(), skip));
                self.loose_links = links_of(&self.loose);
            }
        }
    }

    pub fn file_count(&self) -> usize {
        self.by_project.iter().map(|v| v.len()).sum::<usize>() + self.loose.len()
    }

    /// Every symlink into the workspace: (owning project, root-relative
    /// target). A change at or under a target must re-walk the owner.
    pub fn link_targets(&self) -> Vec<(Option<usize>, &str)> {
        self.links
            .iter()
            .enumerate()
            .flat_map(|(p, v)| v.iter().map(move |t| (Some(p), t.as_str())))
            .chain(self.loose_links.iter().map(|t| (None, t.as_str())))
            .collect()
    }
}

/// Everything a run shares between its tasks.
struct Shared {
    model: Arc<Model>,
    store: Arc<Store>,
    index: Arc<FileIndex>,
    snapshot: RwLock<Snapshot>,
    /// Projects written to since the snapshot (their files must be re-walked).
    dirty: Mutex<HashSet<usize>>,
    /// Whether the store belongs to this run (closed at its end) or to the daemon.
    owns_store: bool,
    /// This run's hold on the cache directory (`cache clean` waits for it).
    _lease: Option<cache::RunLease>,
    /// The daemon's state, when this run is served by a daemon.
    hot: Option<Arc<Hot>>,
    /// Compiled patterns per graph node (selected nodes only).
    patterns: HashMap<usize, Arc<TaskPatterns>>,
    global_inputs: Patterns,
    keys: Mutex<HashMap<usize, String>>,
    params: RunParams,
    requested: HashSet<usize>,
    events: Option<Events>,
    cache_skip: Vec<PathBuf>,
    /// CPU time and memory of executed tasks, by graph node.
    usage: Mutex<HashMap<usize, exec::Usage>>,
    /// Fingerprints of executed tasks (for the run history).
    fingerprints: Mutex<Vec<Fingerprint>>,
}

impl Shared {
    fn emit(&self, e: RunEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn project_abs(&self, p: usize) -> PathBuf {
        self.model.ws.abs_dir(&self.model.ws.projects[p])
    }

    /// Project-relative fence for output walks.
    fn rel_fence(&self, p: usize) -> HashSet<String> {
        self.model.rel_fences[p].clone()
    }

    fn refresh_if_dirty(&self, p: usize) {
        let was_dirty = self.dirty.lock().map(|mut d| d.remove(&p)).unwrap_or(false);
        if !was_dirty {
            return;
        }
        if let Ok(mut s) = self.snapshot.write() {
            s.refresh(&self.model, Some(p), &self.cache_skip);
        }
    }

    fn mark_dirty(&self, p: usize) {
        // A symlink into project `p` is keyed by its target: its owner must
        // be re-walked too (the target may be new, or have a new stat).
        let dir = self.model.ws.projects[p].dir.as_str();
        let owners: Vec<usize> = self
            .snapshot
            .read()
            .map(|s| {
                s.link_targets()
                    .into_iter()
                    .filter(|(_, t)| {
                        dir == "." || Path::new(t).starts_with(dir) || Path::new(dir).starts_with(t)
                    })
                    .filter_map(|(o, _)| o)
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(p);
            d.extend(owners);
        }
    }

    /// Computes (and memoises) the key of graph node `n`. Its dependencies'
    /// keys must already be known.
    fn key_of(&self, n: usize) -> Result<String, EngineError> {
        let node = &self.model.graph.nodes[n];
        self.refresh_if_dirty(node.project);
        let mut upstream = Vec::new();
        {
            let keys = self
                .keys
                .lock()
                .map_err(|_| EngineError::new(codes::INTERNAL_ERROR, "key map poisoned"))?;
            for d in self.model.graph.deps(n) {
                match keys.get(&d) {
                    Some(k) => upstream.push(k.clone()),
                    None => {
                        return Err(EngineError::new(
                            codes::INTERNAL_ERROR,
                            format!(
                                "key of {} needed before it was computed",
                                self.model.graph.nodes[d].id
                            ),
                        ));
                    }
                }
            }
        }
        upstream.sort();
        let args = if self.requested.contains(&n) {
            self.params.args.clone()
        } else {
            Vec::new()
        };
        // A task without a command (a group task, a turbo transit node) is
        // keyed by its project's inputs too, so its dependents see them.
        let inputs = self.inputs_of(n)?;
        let env = self.keyed_env(n);
        // Under the daemon, a key whose every varying part is unchanged (the
        // same input list object, upstream keys, env values and args) is reused.
        let memo = self
            .hot
            .as_ref()
            .and_then(|h| h.key_memo(&self.model, n, &inputs, &upstream, &env, &args));
        let key = match memo {
            Some(k) => k,
            None => {
                let parts = KeyParts {
                    task: node.id.clone(),
                    config: self.model.config_json(n).0.clone(),
                    command: node.def.command.clone().unwrap_or_default(),
                    args,
                    env,
                    upstream,
                    inputs,
                };
                let key = parts.fold_from(&self.model.config_json(n).1);
                if let Some(h) = &self.hot {
                    h.set_key_memo(&self.model, n, parts, &key);
                }
                key
            }
        };
        if let Ok(mut k) = self.keys.lock() {
            k.insert(n, key.clone());
        }
        Ok(key)
    }

    /// Node `n`'s keyed env (the workspace's names, then the task's) with
    /// the client's values.
    fn keyed_env(&self, n: usize) -> Vec<(String, Option<String>)> {
        let node = &self.model.graph.nodes[n];
        if self.model.ws.global.env.is_empty() {
            hash::keyed_env(&node.def.env, &self.params.env)
        } else {
            let mut env_pats = self.model.ws.global.env.clone();
            env_pats.extend(node.def.env.iter().cloned());
            hash::keyed_env(&env_pats, &self.params.env)
        }
    }

    /// The parts behind node `n`'s key, for the run history: file hashes,
    /// hashed env values, the config hash, upstream ids with their keys and
    /// the hashed args. Values that may be secret are never stored plain.
    fn fingerprint(&self, n: usize, key: &str) -> Fingerprint {
        let node = &self.model.graph.nodes[n];
        let hash_str = |s: &str| blake3::hash(s.as_bytes()).to_hex().to_string();
        let files = self.inputs_of(n).map(|i| (*i).clone()).unwrap_or_default();
        let env = self
            .keyed_env(n)
            .into_iter()
            .map(|(k, v)| {
                let h = match v {
                    Some(v) => hash_str(&format!("{k}={v}")),
                    None => "unset".to_string(),
                };
                (k, h)
            })
            .collect();
        let mut upstream: Vec<(String, String)> = {
            let keys = self.keys.lock().ok();
            self.model
                .graph
                .deps(n)
                .map(|d| {
                    let k = keys
                        .as_ref()
                        .and_then(|k| k.get(&d).cloned())
                        .unwrap_or_default();
                    (self.model.graph.nodes[d].id.clone(), k)
                })
                .collect()
        };
        upstream.sort();
        let args: &[String] = if self.requested.contains(&n) {
            &self.params.args
        } else {
            &[]
        };
        Fingerprint {
            key: key.to_string(),
            task: node.id.clone(),
            files,
            env,
            config: hash_str(&self.model.config_json(n).0),
            command: node.def.command.clone().unwrap_or_default(),
            upstream,
            args: hash_str(&serde_json::to_string(args).unwrap_or_default()),
        }
    }

    /// A task's input files with their content hashes. Under the daemon the
    /// list is memoised for as long as the snapshot lists it was computed
    /// from are unchanged (they are replaced whenever a file in them changes).
    fn inputs_of(&self, n: usize) -> Result<Arc<Vec<(String, String)>>, EngineError> {
        let node = &self.model.graph.nodes[n];
        let project = &self.model.ws.projects[node.project];
        let pats = self
            .patterns
            .get(&n)
            .ok_or_else(|| EngineError::new(codes::INTERNAL_ERROR, "patterns missing"))?;
        let snap = self
            .snapshot
            .read()
            .map_err(|_| EngineError::new(codes::INTERNAL_ERROR, "snapshot poisoned"))?;
        let global = !pats.root_inputs.is_empty() || !self.global_inputs.is_empty();
        let files_list = snap.by_project[node.project].clone();
        if let Some(hot) = &self.hot
            && !global
            && let Some(memo) = hot.inputs_memo(&self.model, n, &files_list)
        {
            return Ok(memo);
        }
        let mut files: Vec<&FileMeta> = hash::select_inputs(&project.dir, files_list.iter(), pats);
        if global {
            let mut seen: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            for f in snap
                .by_project
                .iter()
                .flat_map(|v| v.iter())
                .chain(snap.loose.iter())
            {
                if (pats.root_inputs.matches(&f.path) || self.global_inputs.matches(&f.path))
                    && seen.insert(f.path.as_str())
                {
                    files.push(f);
                }
            }
            files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        }
        // A name vx cannot key is refused, never dropped or merged.
        if let Some(f) = files.iter().find(|f| f.non_utf8) {
            return Err(EngineError::new(
                codes::CONFIG_ERROR,
                format!(
                    "{}: {}",
                    node.id,
                    hash::NonUtf8 {
                        escaped: f.path.clone()
                    }
                ),
            ));
        }
        let inputs: Arc<Vec<(String, String)>> = Arc::new(
            files
                .into_iter()
                .map(|f| {
                    let h = self.index.hash(&self.model.ws.root, f);
                    (
                        f.path.clone(),
                        blake3::Hash::from_bytes(h).to_hex().to_string(),
                    )
                })
                .collect(),
        );
        if let Some(hot) = &self.hot
            && !global
        {
            hot.set_inputs_memo(&self.model, n, files_list, inputs.clone());
        }
        Ok(inputs)
    }

    /// What `--dry` flags about node `n`'s inputs: each symlink to a path
    /// outside the workspace (hashed by its link text, so an edit of its
    /// target is not seen).
    fn input_warnings(&self, n: usize) -> Result<Vec<String>, EngineError> {
        let inputs = self.inputs_of(n)?;
        let snap = self
            .snapshot
            .read()
            .map_err(|_| EngineError::new(codes::INTERNAL_ERROR, "snapshot poisoned"))?;
        let names: HashSet<&str> = inputs.iter().map(|(p, _)| p.as_str()).collect();
        let root = &self.model.ws.root;
        let mut out: Vec<String> = snap
            .by_project
            .iter()
            .flat_map(|v| v.iter())
            .chain(snap.loose.iter())
            .filter(|f| f.link == hash::Link::Outside && names.contains(f.path.as_str()))
            .map(|f| {
                let target = std::fs::read_link(root.join(&f.path))
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                format!(
                    "input {} is a symlink to {target}, outside the workspace: it is keyed by its link text, so edits of its target do not invalidate the cache",
                    f.path
                )
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The environment of a task's process.
    fn task_env(&self, n: usize) -> Vec<(String, String)> {
        let node = &self.model.graph.nodes[n];
        let project = &self.model.ws.projects[node.project];
        let client = &self.params.env;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
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

    fn command_line(&self, n: usize) -> String {
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
    fn finish_store(&self) -> Result<(), EngineError> {
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
    fn gets_terminal(&self, n: usize) -> bool {
        self.params.tty
            && self.model.graph.nodes[n].def.interactive
            && self.requested.len() == 1
            && self.requested.contains(&n)
    }

    fn cache_read(&self, n: usize) -> bool {
        self.cache_enabled(n) && !self.params.force
    }

    fn cache_enabled(&self, n: usize) -> bool {
        let d = &self.model.graph.nodes[n].def;
        d.cache && d.command.is_some() && !d.persistent && !d.interactive && !self.params.no_cache
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

/// Loads, selects and prepares everything a run or a plan needs.
/// Stage timings on stderr when `VX_TIMING` is set (for profiling).
struct Timing {
    on: bool,
    last: Instant,
}

impl Timing {
    fn new(env: &BTreeMap<String, String>) -> Self {
        Timing {
            on: knobs::TIMING.on(env),
            last: Instant::now(),
        }
    }
    fn stage(&mut self, name: &str) {
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

fn prepare(
    mut params: RunParams,
    events: Option<Events>,
    hot_arc: Option<Arc<Hot>>,
) -> Result<(Arc<Shared>, Selection), EngineError> {
    let hot = hot_arc.as_deref();
    let mut timing = Timing::new(&params.env);
    let cwd = PathBuf::from(&params.cwd);
    if !cwd.is_absolute() {
        return Err(EngineError::new(
            codes::INVALID_PARAMS,
            "cwd must be absolute",
        ));
    }
    let root = workspace::find_root(&cwd)?;
    let (model, hot_parts) = match hot {
        Some(hot) => {
            if root != hot.root {
                return Err(wrong_workspace(&cwd, &root, hot));
            }
            let (model, snapshot) = hot.sync()?;
            timing.stage("sync");
            let store = match hot.store() {
                Ok(s) => s,
                Err(e) => uncached(&cache_dir(&model.ws), &e.message, params.no_cache, &events)?,
            };
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
    let cfg = |e: crate::globs::GlobError| EngineError::new(codes::CONFIG_ERROR, e.to_string());
    let mut patterns = HashMap::with_capacity(selection.nodes.len());
    for &n in &selection.nodes {
        patterns.insert(n, model.patterns_of(n)?);
    }
    let global_inputs = Patterns::new(&ws.global.inputs).map_err(cfg)?;
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
    for message in cache::take_notice(&cache_dir(ws)) {
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
            codes::NEEDS_TERMINAL,
            "an interactive task needs the terminal; run it with the no-daemon engine",
        ));
    }
    let shared = Shared {
        model: model.clone(),
        store,
        index,
        snapshot: RwLock::new(snapshot),
        dirty: Mutex::new(HashSet::new()),
        owns_store,
        _lease: lease,
        hot: hot_arc,
        patterns,
        global_inputs,
        keys: Mutex::new(HashMap::new()),
        requested,
        params,
        events,
        cache_skip,
        usage: Mutex::new(HashMap::new()),
        fingerprints: Mutex::new(Vec::new()),
    };
    Ok((Arc::new(shared), selection))
}

/// The no-daemon path opens the store and loads the file index per run.
/// The store is shared with every other vx process (a live daemon
/// included), so this never waits for one; a store that cannot be opened
/// (held by a vx that does not share it, unwritable, damaged and open
/// elsewhere) makes an uncached run, with a warning.
fn open_cold(
    model: &Model,
    params: &RunParams,
    events: &Option<Events>,
) -> Result<(Arc<Store>, Arc<FileIndex>), EngineError> {
    let cdir = cache_dir(&model.ws);
    let wait = knobs::CACHE_LOCK_TIMEOUT_MS
        .millis(&params.env)
        .unwrap_or(cache::OPEN_WAIT);
    let (store, files) = match Store::open_loaded(&cdir, wait, &mut || {}) {
        Ok(opened) => opened,
        Err(e) => {
            let store = uncached(&cdir, &e.to_string(), params.no_cache, events)?;
            return Ok((store, Arc::new(FileIndex::default())));
        }
    };
    let index = FileIndex::from_records(files);
    Ok((Arc::new(store), Arc::new(index)))
}

/// The store of a run whose cache cannot be opened (a directory that is not
/// writable, say): one that keeps nothing, so the run goes on uncached, with
/// a warning (none under `--no-cache`, which asked for exactly that).
fn uncached(
    dir: &Path,
    why: &str,
    no_cache: bool,
    events: &Option<Events>,
) -> Result<Arc<Store>, EngineError> {
    if !no_cache && let Some(tx) = events {
        let _ = tx.send(RunEvent::Warning {
            message: format!(
                "the cache at {} cannot be used ({why}): running without it (nothing is restored or saved)",
                dir.display()
            ),
        });
    }
    Ok(Arc::new(Store::ephemeral(dir)?))
}

/// Plans a run: every selected task with its key and predicted cache status.
pub async fn plan(params: RunParams, hot: Option<Arc<Hot>>) -> Result<Plan, EngineError> {
    tokio::task::spawn_blocking(move || plan_blocking(params, hot))
        .await
        .map_err(|e| EngineError::new(codes::INTERNAL_ERROR, format!("plan panicked: {e}")))?
}

fn plan_blocking(params: RunParams, hot: Option<Arc<Hot>>) -> Result<Plan, EngineError> {
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
        });
    }
    sh.finish_store()?;
    Ok(Plan {
        root: sh.model.ws.root.to_string_lossy().into_owned(),
        tasks,
    })
}

/// What one task's future reports to the scheduler.
struct Done {
    local: usize,
    result: Option<TaskResult>,
    failed: bool,
    tainted: bool,
    /// A persistent task that is ready (its dependents may start).
    proc: Option<persist::Proc>,
    /// Nothing happened (a watch cycle found the task unchanged): no events,
    /// and not listed when only changes are reported.
    quiet: bool,
}

impl Done {
    fn new(local: usize, result: Option<TaskResult>, failed: bool, tainted: bool) -> Done {
        Done {
            local,
            result,
            failed,
            tainted,
            proc: None,
            quiet: false,
        }
    }
}

/// Executes a run. Events stream into `events`; `cancel` carrying a signal
/// number stops it. Requested persistent tasks (and the persistent tasks
/// they depend on) keep running after a [`RunEvent::Settled`] event until
/// one of them exits or the run is cancelled.
pub async fn run(
    params: RunParams,
    events: Events,
    cancel: watch::Receiver<Option<i32>>,
    hot: Option<Arc<Hot>>,
) -> Result<RunSummary, EngineError> {
    run_in(params, events, cancel, hot, None).await
}

/// What a watch session carries from one cycle to the next.
#[derive(Default)]
pub struct Session {
    /// Per task id: the key it last ran (or was served) with, and whether
    /// that ended well. A task whose key is unchanged is not run again.
    pub last: Mutex<HashMap<String, (String, bool)>>,
    /// Running persistent tasks by id.
    pub procs: Mutex<HashMap<String, persist::Proc>>,
}

impl Session {
    fn last_of(&self, id: &str) -> Option<(String, bool)> {
        self.last.lock().ok().and_then(|l| l.get(id).cloned())
    }

    fn take_proc(&self, id: &str) -> Option<persist::Proc> {
        self.procs.lock().ok().and_then(|mut p| p.remove(id))
    }

    /// Stops every persistent task of the session.
    pub async fn stop_all(&self) {
        let procs: Vec<persist::Proc> = self
            .procs
            .lock()
            .map(|mut p| p.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        futures_join_all(procs.into_iter().map(|p| p.stop())).await;
    }
}

/// Awaits every future (they run concurrently).
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// [`run`], as one cycle of a watch session when `session` is given:
/// unchanged tasks are not run again and persistent tasks live in the
/// session (restarted only when their key changed).
pub async fn run_in(
    params: RunParams,
    events: Events,
    mut cancel: watch::Receiver<Option<i32>>,
    hot: Option<Arc<Hot>>,
    session: Option<Arc<Session>>,
) -> Result<RunSummary, EngineError> {
    let started_at = now_ms();
    let t0 = Instant::now();
    let run_id = format!("{:x}-{:x}", started_at, std::process::id());
    let concurrency_param = params.concurrency;
    let detail = params.detail;
    let continue_mode = params.continue_mode;
    let ev = events.clone();
    let hot2 = hot.clone();
    let (sh, sel, history) = tokio::task::spawn_blocking(move || {
        let (sh, sel) = prepare(params, Some(ev), hot2)?;
        let history = open_history(&sh);
        Ok::<_, EngineError>((sh, sel, history))
    })
    .await
    .map_err(|e| EngineError::new(codes::INTERNAL_ERROR, format!("prepare panicked: {e}")))??;
    let mut timing = Timing::new(&sh.params.env);
    let concurrency = concurrency_param
        .or(sh.model.ws.defaults.concurrency)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .max(1);
    if concurrency > vx_proto::MAX_CONCURRENCY {
        return Err(concurrency_error(concurrency));
    }
    let root = sh.model.ws.root.to_string_lossy().into_owned();
    if let Some(base) = &sel.nothing_affected {
        let _ = events.send(RunEvent::Warning {
            message: format!("nothing affected since {base}"),
        });
    }
    let nodes = sel.nodes.clone();
    let n = nodes.len();
    let local_of: HashMap<usize, usize> = nodes.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|&g| {
            sh.model
                .graph
                .deps(g)
                .filter_map(|d| local_of.get(&d).copied())
                .collect()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let priority = priorities(&sh, &nodes, &deps, &dependents, history.as_deref());
    let _ = events.send(RunEvent::RunStarted {
        run_id: run_id.clone(),
        root: root.clone(),
        tasks: nodes
            .iter()
            .filter(|&&g| sh.model.graph.nodes[g].def.command.is_some())
            .count(),
        concurrency,
    });

    let mut deps_left: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut failed_root: Vec<Option<String>> = vec![None; n]; // Some(root failure) if failed/skipped
    let mut tainted = vec![false; n];
    let mut results: Vec<TaskResult> = Vec::new();
    let mut ready: BinaryHeap<(usize, std::cmp::Reverse<usize>)> = BinaryHeap::new();
    for i in 0..n {
        if deps_left[i] == 0 {
            ready.push((priority[i], std::cmp::Reverse(i)));
        }
    }
    let mut running = tokio::task::JoinSet::new();
    let mut lanes = Lanes::new(n, concurrency);
    let (task_cancel_tx, task_cancel_rx) = watch::channel::<Option<i32>>(None);
    let mut stopping = false;
    let mut cancelled: Option<i32> = None;
    let mut completed = 0usize;
    let mut error: Option<EngineError> = None;

    // Results ready to be recorded without a spawned task (inline hits).
    let mut immediate: std::collections::VecDeque<Done> = std::collections::VecDeque::new();
    // Persistent tasks that became ready, by local index.
    let mut procs: Vec<(usize, persist::Proc)> = Vec::new();
    // Results that are not news (hits, unchanged in a watch cycle).
    let mut quiet: HashSet<String> = HashSet::new();
    while completed < n {
        // Dispatch.
        while running.len() < concurrency {
            let Some((_, std::cmp::Reverse(i))) = ready.pop() else {
                break;
            };
            let g = nodes[i];
            let node = &sh.model.graph.nodes[g];
            lanes.start[i] = t0.elapsed().as_millis() as u64;
            let blocked = deps[i].iter().find_map(|&d| failed_root[d].clone());
            let skip_reason = if cancelled.is_some() || stopping {
                Some(None)
            } else if continue_mode != ContinueMode::Always {
                blocked.clone().map(Some)
            } else {
                None
            };
            if let Some(by) = skip_reason {
                // Skipped: never started.
                failed_root[i] = Some(by.clone().unwrap_or_else(|| node.id.clone()));
                lanes.end[i] = lanes.start[i];
                if node.def.command.is_some() {
                    results.push(skipped(&sh, g, by));
                }
                completed += 1;
                for &d in &dependents[i] {
                    deps_left[d] -= 1;
                    if deps_left[d] == 0 {
                        ready.push((priority[d], std::cmp::Reverse(d)));
                    }
                }
                continue;
            }
            let is_tainted = deps[i]
                .iter()
                .any(|&d| tainted[d] || failed_root[d].is_some());
            if node.def.command.is_none() {
                // A group task: a key (for its dependents), nothing to run.
                if let Err(e) = sh.key_of(g) {
                    error = Some(e);
                    stopping = true;
                }
                immediate.push_back(Done::new(i, None, false, is_tainted));
                continue;
            }
            if node.def.persistent {
                match sh.key_of(g) {
                    Ok(key) => {
                        let old = session.as_ref().and_then(|s| s.take_proc(&node.id));
                        if let Some(p) = old.as_ref()
                            && p.key == key
                            && p.exited().is_none()
                        {
                            // A watch cycle: still running with the same key.
                            let mut res = base_result(&sh, g);
                            res.status = TaskStatus::Running;
                            res.cache = CacheSource::Disabled;
                            let mut d = Done::new(i, Some(res), false, is_tainted);
                            d.proc = old;
                            d.quiet = true;
                            immediate.push_back(d);
                            continue;
                        }
                        let sh2 = sh.clone();
                        let rx = task_cancel_rx.clone();
                        lanes.take_slot(i);
                        running.spawn(async move {
                            start_persistent(&sh2, i, g, key, old, is_tainted, rx).await
                        });
                    }
                    Err(e) => {
                        let mut res = base_result(&sh, g);
                        res.status = TaskStatus::Failed;
                        res.error = Some(e.message);
                        immediate.push_back(Done::new(i, Some(res), true, is_tainted));
                    }
                }
                continue;
            }
            // A watch cycle does not run again what did not change. A cached
            // task that succeeded goes through the cache instead, so its
            // outputs are restored if they were deleted meanwhile; when they
            // are in place it is not news (its log is not replayed).
            let mut unchanged_key = None;
            if let Some(s) = &session {
                let key = sh.key_of(g);
                if let Ok(key) = &key
                    && let Some((last, ok)) = s.last_of(&node.id)
                    && &last == key
                {
                    if ok && sh.cache_read(g) {
                        match try_hit(&sh, g, key, false) {
                            Ok(Hit::Served(r, _)) => {
                                let mut d = Done::new(i, Some(r), false, is_tainted);
                                d.quiet = true;
                                immediate.push_back(d);
                                continue;
                            }
                            // To restore (or run): the usual way, below.
                            Ok(_) | Err(_) => unchanged_key = Some(key.clone()),
                        }
                    } else {
                        let mut res = base_result(&sh, g);
                        res.key = Some(key.clone());
                        if ok {
                            res.status = TaskStatus::Cached;
                            res.cache = CacheSource::UpToDate;
                        } else {
                            res.status = TaskStatus::Failed;
                            res.error =
                                Some("failed, and nothing it depends on changed since".into());
                        }
                        let mut d = Done::new(i, Some(res), !ok, is_tainted);
                        d.quiet = true;
                        immediate.push_back(d);
                        continue;
                    }
                }
            }
            // The fast path: key and an in-place hit, inline.
            let probed = match unchanged_key {
                Some(key) => Ok((key, None)),
                None => probe(&sh, g),
            };
            let key = match probed {
                Ok((_, Some(r))) => {
                    immediate.push_back(Done::new(i, Some(r), false, is_tainted));
                    continue;
                }
                Ok((key, None)) => key,
                Err(e) => {
                    sh.emit(RunEvent::Warning {
                        message: format!("{}: {}", node.id, e.message),
                    });
                    let mut res = base_result(&sh, g);
                    res.status = TaskStatus::Failed;
                    res.error = Some(e.message);
                    immediate.push_back(Done::new(i, Some(res), true, is_tainted));
                    continue;
                }
            };
            let sh2 = sh.clone();
            let rx = task_cancel_rx.clone();
            lanes.take_slot(i);
            running.spawn(async move {
                let r = run_task(&sh2, g, key, is_tainted, rx).await;
                match r {
                    Ok(result) => {
                        let failed =
                            matches!(result.status, TaskStatus::Failed | TaskStatus::Aborted);
                        Done::new(i, Some(result), failed, is_tainted)
                    }
                    Err(e) => {
                        sh2.emit(RunEvent::Warning {
                            message: format!("{}: {}", sh2.model.graph.nodes[g].id, e.message),
                        });
                        let mut res = base_result(&sh2, g);
                        res.status = TaskStatus::Failed;
                        res.error = Some(e.message);
                        Done::new(i, Some(res), true, is_tainted)
                    }
                }
            });
        }
        let done = match immediate.pop_front() {
            Some(d) => d,
            None => {
                if running.is_empty() {
                    if ready.is_empty() {
                        break; // nothing can progress (cannot happen on a DAG)
                    }
                    continue;
                }
                tokio::select! {
                    joined = running.join_next() => {
                        let Some(joined) = joined else { continue };
                        match joined {
                            Ok(d) => d,
                            Err(e) => {
                                error = Some(EngineError::new(codes::INTERNAL_ERROR, format!("a task panicked: {e}")));
                                stopping = true;
                                continue;
                            }
                        }
                    }
                    r = cancel.changed(), if cancelled.is_none() => {
                        let sig = match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM };
                        cancelled = Some(sig);
                        stopping = true;
                        let _ = task_cancel_tx.send(Some(sig));
                        continue;
                    }
                }
            }
        };
        let i = done.local;
        completed += 1;
        tainted[i] = done.tainted;
        lanes.finish(i, t0.elapsed().as_millis() as u64);
        if let Some(p) = done.proc {
            if !done.quiet {
                let _ = events.send(RunEvent::TaskReady { id: p.id.clone() });
            }
            procs.push((i, p));
        }
        if let Some(r) = done.result {
            if done.failed {
                failed_root[i] = Some(r.id.clone());
                if continue_mode == ContinueMode::Never {
                    stopping = true;
                }
            }
            let shown = !done.quiet && (r.status != TaskStatus::Cached);
            if detail == vx_proto::Detail::All || shown {
                let _ = events.send(RunEvent::TaskFinished { result: r.clone() });
            }
            // Cached results are left out by status; only other quiet ones
            // need naming (no per-hit clone on a repeat run).
            if done.quiet && r.status != TaskStatus::Cached {
                quiet.insert(r.id.clone());
            }
            results.push(r);
        }
        for &d in &dependents[i] {
            deps_left[d] -= 1;
            if deps_left[d] == 0 {
                ready.push((priority[d], std::cmp::Reverse(d)));
            }
        }
        // A cancel that arrives while only inline work remains.
        if cancelled.is_none() && cancel.has_changed().unwrap_or(false) {
            let sig = (*cancel.borrow_and_update()).unwrap_or(libc::SIGTERM);
            cancelled = Some(sig);
            stopping = true;
            let _ = task_cancel_tx.send(Some(sig));
        }
    }
    // Whatever never became ready (cannot happen on a DAG) is reported skipped.
    for i in 0..n {
        if deps_left[i] > 0 && sh.model.graph.nodes[nodes[i]].def.command.is_some() {
            results.push(skipped(&sh, nodes[i], None));
        }
    }
    timing.stage("schedule");
    let sh2 = sh.clone();
    let close = tokio::task::spawn_blocking(move || sh2.finish_store()).await;
    if let Some(hot) = &hot {
        hot.runs_served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hot.touch();
    }
    timing.stage("close");
    if let Ok(Err(e)) = close {
        let _ = events.send(RunEvent::Warning {
            message: format!("the cache index could not be written: {e}"),
        });
    }
    if let Some(e) = error {
        let all: Vec<persist::Proc> = procs.into_iter().map(|(_, p)| p).collect();
        futures_join_all(all.into_iter().map(|p| p.stop())).await;
        return Err(e);
    }
    results.sort_by(|a, b| a.id.cmp(&b.id));
    let mut head = Head {
        run_id,
        started_at,
        t0,
        root,
        detail,
        concurrency,
        history,
        watch_cycle: session.is_some(),
        nodes: nodes.clone(),
    };
    if let Some(s) = &session {
        // The session keeps the persistent tasks and remembers what ran.
        if let Ok(mut last) = s.last.lock() {
            for r in &results {
                if let Some(k) = &r.key {
                    match r.status {
                        TaskStatus::Success | TaskStatus::Cached | TaskStatus::Running => {
                            last.insert(r.id.clone(), (k.clone(), true));
                        }
                        TaskStatus::Failed => {
                            last.insert(r.id.clone(), (k.clone(), false));
                        }
                        TaskStatus::Skipped | TaskStatus::Aborted => {
                            last.remove(&r.id);
                        }
                    }
                }
            }
        }
        if cancelled.is_some() {
            futures_join_all(procs.into_iter().map(|(_, p)| p.stop())).await;
        } else if let Ok(mut map) = s.procs.lock() {
            for (_, p) in procs {
                map.insert(p.id.clone(), p);
            }
        }
        return Ok(head.finish(&sh, results, cancelled, &quiet, &lanes).await);
    }
    if let Some(sig) = cancelled {
        futures_join_all(procs.into_iter().map(|(_, p)| p.stop())).await;
        for r in results.iter_mut() {
            if r.status == TaskStatus::Running {
                r.status = TaskStatus::Aborted;
            }
        }
        return Ok(head.finish(&sh, results, Some(sig), &quiet, &lanes).await);
    }
    // Keep the requested persistent tasks and the persistent tasks they
    // depend on; stop the others.
    let mut keep = vec![false; n];
    let mut stack: Vec<usize> = (0..n)
        .filter(|&i| {
            sh.requested.contains(&nodes[i]) && sh.model.graph.nodes[nodes[i]].def.persistent
        })
        .collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        for &d in &deps[i] {
            if sh.model.graph.nodes[nodes[d]].def.persistent {
                stack.push(d);
            }
        }
    }
    let (kept, others): (Vec<_>, Vec<_>) = procs.into_iter().partition(|(i, _)| keep[*i]);
    let stopped: HashSet<String> = others.iter().map(|(_, p)| p.id.clone()).collect();
    futures_join_all(others.into_iter().map(|(_, p)| p.stop())).await;
    for r in results.iter_mut() {
        if stopped.contains(&r.id) {
            r.status = TaskStatus::Success;
        }
    }
    if kept.is_empty() {
        return Ok(head.finish(&sh, results, None, &quiet, &lanes).await);
    }
    let settled = head.summary(&results, None, &quiet);
    let _ = events.send(RunEvent::Settled { summary: settled });
    // Wait until one kept task exits, or the run is cancelled.
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut kept: Vec<persist::Proc> = kept.into_iter().map(|(_, p)| p).collect();
    let mut waiters = Vec::new();
    for p in kept.iter() {
        let mut rx = p.exit_receiver();
        let tx = exit_tx.clone();
        let id = p.id.clone();
        waiters.push(tokio::spawn(async move {
            if let Ok(o) = rx.wait_for(|o| o.is_some()).await
                && let Some(o) = o.clone()
            {
                let _ = tx.send((id, o));
            }
        }));
    }
    drop(exit_tx);
    let ended = tokio::select! {
        e = exit_rx.recv() => e.map(Ok),
        r = cancel.changed() => {
            let sig = match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM };
            Some(Err(sig))
        }
    };
    for w in waiters {
        w.abort();
    }
    let exited_id = match &ended {
        Some(Ok((id, _))) => Some(id.clone()),
        _ => None,
    };
    let rest: Vec<persist::Proc> = kept
        .drain(..)
        .filter(|p| Some(&p.id) != exited_id.as_ref())
        .collect();
    futures_join_all(rest.into_iter().map(|p| p.stop())).await;
    head.t0 = t0;
    match ended {
        Some(Err(sig)) => {
            for r in results.iter_mut() {
                if r.status == TaskStatus::Running {
                    r.status = TaskStatus::Success;
                }
            }
            Ok(head.finish(&sh, results, Some(sig), &quiet, &lanes).await)
        }
        Some(Ok((id, outcome))) => {
            for r in results.iter_mut() {
                if r.status != TaskStatus::Running {
                    continue;
                }
                r.status = TaskStatus::Success;
                if r.id == id {
                    r.exit_code = outcome.exit_code();
                    if outcome != Outcome::Exited(0) {
                        r.status = TaskStatus::Failed;
                        r.error = Some(match outcome.exit_code() {
                            Some(c) => format!("exited with {c}"),
                            None => "exited".to_string(),
                        });
                    }
                }
            }
            let _ = events.send(RunEvent::Warning {
                message: format!(
                    "{id} exited{}; stopping the other persistent tasks",
                    match outcome.exit_code() {
                        Some(c) => format!(" with {c}"),
                        None => String::new(),
                    }
                ),
            });
            Ok(head.finish(&sh, results, None, &quiet, &lanes).await)
        }
        None => Ok(head.finish(&sh, results, None, &quiet, &lanes).await),
    }
}

/// Per local task: when it started and ended (ms since the run started) and
/// the concurrency lane it held.
struct Lanes {
    start: Vec<u64>,
    end: Vec<u64>,
    slot: Vec<Option<u32>>,
    free: BinaryHeap<std::cmp::Reverse<u32>>,
}

impl Lanes {
    fn new(n: usize, concurrency: usize) -> Lanes {
        Lanes {
            start: vec![0; n],
            end: vec![0; n],
            slot: vec![None; n],
            free: (0..concurrency as u32).map(std::cmp::Reverse).collect(),
        }
    }

    fn take_slot(&mut self, i: usize) {
        self.slot[i] = self.free.pop().map(|std::cmp::Reverse(s)| s);
    }

    fn finish(&mut self, i: usize, now: u64) {
        self.end[i] = now;
        if let Some(s) = self.slot[i] {
            self.free.push(std::cmp::Reverse(s));
        }
    }
}

/// The run history of this workspace, if it can be used. A history that
/// cannot be opened costs a warning, never the run.
fn open_history(sh: &Shared) -> Option<Arc<History>> {
    if knobs::HISTORY.off(&sh.params.env) {
        return None;
    }
    let dir = match &sh.hot {
        Some(h) => h.cache_dir(),
        None => cache_dir(&sh.model.ws),
    };
    // The daemon keeps one handle for its life; the foreground engine opens
    // its own and drops it at the end of the run (redb then closes the file
    // cleanly; a file left open would be repaired — scanned — on next open).
    let opened = match &sh.hot {
        Some(_) => history::shared(&dir),
        None => History::open_for_run(&dir, Duration::from_secs(2)).map(Arc::new),
    };
    match opened {
        Ok(h) => Some(h),
        Err(e) => {
            let what = if e.is_locked() {
                "is in use by another vx process".to_string()
            } else {
                format!("cannot be used ({e})")
            };
            sh.emit(RunEvent::Warning {
                message: format!(
                    "the run history {what}: tasks are scheduled in structural order and this run is not recorded"
                ),
            });
            None
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the daemon's history-recording thread.
fn recorder(job: Job) {
    static TX: std::sync::OnceLock<Mutex<Option<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("vx-history".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // History never fails a run, nor the daemon: a record
                    // that panics (a file damaged after it was opened) is
                    // lost, and this thread goes on with the next one.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(
                            "recording a run in the history panicked; that run is not recorded"
                        );
                    }
                }
            });
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let job = match tx.lock() {
        Ok(g) => match g.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        },
        Err(_) => job,
    };
    // No recording thread: record here.
    job();
}

/// Scheduling priorities of the selected tasks: with history, the expected
/// remaining critical path (own p50 + the longest path through its
/// dependents; unknown durations take the workspace median) with the
/// transitive-dependent count breaking ties; without, that count alone.
/// `VX_SCHEDULE=structural` forces the structural order.
fn priorities(
    sh: &Shared,
    nodes: &[usize],
    deps: &[Vec<usize>],
    dependents: &[Vec<usize>],
    history: Option<&History>,
) -> Vec<usize> {
    let structural = transitive_dependent_counts(deps, dependents);
    let forced = knobs::SCHEDULE.is(&sh.params.env, "structural");
    let Some(h) = history.filter(|_| !forced) else {
        return structural;
    };
    // The same selection under the same durations orders the same: a repeat
    // run under the daemon reuses the last ordering.
    let memo_key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (Arc::as_ptr(&sh.model) as usize).hash(&mut hasher);
        nodes.hash(&mut hasher);
        deps.hash(&mut hasher);
        (hasher.finish(), h.lists_generation())
    };
    type Memo = Option<((u64, u64), Arc<Vec<usize>>)>;
    static MEMO: Mutex<Memo> = Mutex::new(None);
    if sh.hot.is_some()
        && let Ok(m) = MEMO.lock()
        && let Some((k, v)) = m.as_ref()
        && *k == memo_key
    {
        return (**v).clone();
    }
    let graph = &sh.model.graph;
    let ids: Vec<String> = nodes
        .iter()
        .filter(|&&g| graph.nodes[g].def.command.is_some())
        .map(|&g| graph.nodes[g].id.clone())
        .collect();
    let durations = match h.durations(&ids, history::DEFAULT_WINDOW) {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => return structural,
        Err(e) => {
            sh.emit(RunEvent::Warning {
                message: format!(
                    "the run history cannot be read ({e}); tasks are scheduled in structural order"
                ),
            });
            return structural;
        }
    };
    let own: Vec<Option<u64>> = nodes
        .iter()
        .map(|&g| {
            let node = &graph.nodes[g];
            if node.def.command.is_none() {
                Some(0)
            } else {
                durations.get(&node.id).copied()
            }
        })
        .collect();
    let ecp = history::critical_path(deps, dependents, &own);
    const LOW: usize = (1 << 20) - 1;
    let out: Vec<usize> = ecp
        .iter()
        .zip(&structural)
        .map(|(&e, &b)| ((e as usize).min(usize::MAX >> 21) << 20) | b.min(LOW))
        .collect();
    if sh.hot.is_some()
        && let Ok(mut m) = MEMO.lock()
    {
        *m = Some((memo_key, Arc::new(out.clone())));
    }
    out
}

/// What a run's history record is built from (after the answer, under the
/// daemon).
struct RecordInput {
    run_id: String,
    started_at: u64,
    concurrency: usize,
    nodes: Vec<usize>,
    /// Milliseconds since the run started, at its end.
    now_ms: u64,
    results: Vec<TaskResult>,
    start: Vec<u64>,
    end: Vec<u64>,
    slot: Vec<Option<u32>>,
    summary: RunSummary,
    /// Not the run's `Shared`: it holds the event channel, which must close
    /// when the run answers.
    model: Arc<Model>,
    usage: HashMap<usize, exec::Usage>,
    argv: Vec<String>,
    requested: Vec<String>,
}

/// The client's argv as the history keeps it: the args forwarded after
/// `--` (tokens, paths, anything) are replaced by one placeholder naming
/// their hash, the hash the fingerprints hold (`docs/history.md`: args are
/// only ever kept hashed).
fn redacted_argv(argv: &[String], args: &[String]) -> Vec<String> {
    if args.is_empty() {
        return argv.to_vec();
    }
    let hash = blake3::hash(serde_json::to_string(args).unwrap_or_default().as_bytes()).to_hex();
    let placeholder = format!(
        "<{} arg{} hashed {}>",
        args.len(),
        if args.len() == 1 { "" } else { "s" },
        &hash[..12]
    );
    // `vx run TASK -- ARGS…`: the args are the tail after a `--`.
    if let Some(t) = argv.len().checked_sub(args.len())
        && t > 0
        && argv[t - 1] == "--"
        && argv[t..] == *args
    {
        let mut v = argv[..t].to_vec();
        v.push(placeholder);
        return v;
    }
    // Any other shape: nothing after a `--`, and no element equal to an arg.
    let mut v = Vec::with_capacity(argv.len());
    for a in argv {
        if a == "--" {
            v.push(a.clone());
            break;
        }
        if !args.contains(a) {
            v.push(a.clone());
        }
    }
    v.push(placeholder);
    v
}

/// The history record of a run: one row per task with its lane, times and
/// usage.
fn build_record(inp: RecordInput) -> RunRecord {
    let graph = &inp.model.graph;
    let local: HashMap<usize, usize> = inp.nodes.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let usage = &inp.usage;
    let mut tasks: Vec<TaskRun> = inp
        .results
        .into_iter()
        .map(|r| {
            let g = graph.get(&r.id);
            let persistent = g.is_some_and(|g| graph.nodes[g].def.persistent);
            let (start, end, slot) = match g.and_then(|g| local.get(&g).copied()) {
                Some(i) => (
                    inp.start[i],
                    if inp.end[i] < inp.start[i] || persistent {
                        inp.now_ms
                    } else {
                        inp.end[i]
                    },
                    inp.slot[i],
                ),
                None => (0, 0, None),
            };
            let u = g.and_then(|g| usage.get(&g).copied());
            TaskRun {
                id: r.id,
                status: r.status,
                cache: r.cache,
                key: r.key,
                exit_code: r.exit_code,
                attempts: r.attempts,
                duration_ms: r.duration_ms,
                start_ms: start,
                end_ms: end,
                slot,
                cpu_ms: u.and_then(|u| u.cpu_ms),
                peak_rss_bytes: u.and_then(|u| u.peak_rss_bytes),
                blocked_by: r.blocked_by,
                error: r.error,
                persistent,
            }
        })
        .collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let s = inp.summary;
    RunRecord {
        run_id: inp.run_id,
        argv: inp.argv,
        requested: inp.requested,
        started_at: inp.started_at,
        ended_at: s.ended_at,
        duration_ms: s.duration_ms,
        exit_code: s.exit_code,
        ok: s.ok,
        concurrency: inp.concurrency,
        counts: s.counts,
        tasks,
    }
}

/// What a run's summary is made of besides its task results.
struct Head {
    run_id: String,
    started_at: u64,
    t0: Instant,
    root: String,
    detail: vx_proto::Detail,
    concurrency: usize,
    history: Option<Arc<History>>,
    /// A watch cycle: recorded only when something ran.
    watch_cycle: bool,
    /// Graph node of each local task index.
    nodes: Vec<usize>,
}

impl Head {
    /// The final summary: records the run in the history and writes the
    /// requested profile and report.
    async fn finish(
        &mut self,
        sh: &Arc<Shared>,
        results: Vec<TaskResult>,
        cancelled: Option<i32>,
        quiet: &HashSet<String>,
        lanes: &Lanes,
    ) -> RunSummary {
        let summary = self.summary(&results, cancelled, quiet);
        let Some(h) = self.history.clone() else {
            return summary;
        };
        // A watch cycle that ran nothing is not worth a record.
        if self.watch_cycle
            && cancelled.is_none()
            && results
                .iter()
                .all(|r| quiet.contains(&r.id) || r.status == TaskStatus::Cached)
        {
            return summary;
        }
        let graph = &sh.model.graph;
        let executed: Vec<(String, u64)> = results
            .iter()
            .filter(|r| {
                matches!(r.cache, CacheSource::Miss | CacheSource::Disabled)
                    && r.status == TaskStatus::Success
                    && !graph
                        .get(&r.id)
                        .is_some_and(|g| graph.nodes[g].def.persistent)
            })
            .map(|r| (r.id.clone(), r.duration_ms))
            .collect();
        let input = RecordInput {
            run_id: self.run_id.clone(),
            started_at: self.started_at,
            concurrency: self.concurrency,
            nodes: self.nodes.clone(),
            now_ms: self.t0.elapsed().as_millis() as u64,
            results,
            start: lanes.start.clone(),
            end: lanes.end.clone(),
            slot: lanes.slot.clone(),
            summary: summary.clone(),
            model: sh.model.clone(),
            usage: sh
                .usage
                .lock()
                .map(|mut u| std::mem::take(&mut *u))
                .unwrap_or_default(),
            argv: redacted_argv(&sh.params.argv, &sh.params.args),
            requested: sh.params.tasks.clone(),
        };
        let fps: Vec<Fingerprint> = sh
            .fingerprints
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        // The profile and report are written before the client hears the end;
        // otherwise the daemon builds the record after answering.
        let mut input = Some(input);
        let mut built = None;
        if (sh.params.profile.is_some() || sh.params.report.is_some())
            && let Some(inp) = input.take()
        {
            let record = build_record(inp);
            self.write_profile_and_report(sh, &record);
            built = Some(record);
        }
        let daemon = sh.hot.is_some();
        // Under the daemon the record is written after the answer: the job
        // must not hold the run's event channel (the answer waits for it to
        // close), so a failure only reaches the log there.
        let events = if daemon { None } else { sh.events.clone() };
        let pending = h.announce(&executed);
        let keep = history::Retention::from_env(&sh.params.env);
        let idle = sh.hot.as_ref().map(Arc::downgrade);
        let job = move || {
            let _pending = pending;
            let record = match (built, input) {
                (Some(r), _) => r,
                (None, Some(inp)) => build_record(inp),
                (None, None) => return,
            };
            // Under the daemon, write when it has been idle a moment, so that
            // back-to-back runs do not compete with their records (at most
            // 2 s later; readers wait for it).
            if let Some(hot) = idle {
                let t = Instant::now();
                while let Some(h) = hot.upgrade()
                    && h.idle_for() < Duration::from_millis(50)
                    && t.elapsed() < Duration::from_secs(2)
                {
                    drop(h);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let t = Instant::now();
            let r = h.record_kept(&record, &fps, keep);
            tracing::debug!("run {} recorded in {:?}", record.run_id, t.elapsed());
            if let Err(e) = r {
                tracing::warn!("run {} not recorded: {e}", record.run_id);
                if let Some(tx) = events {
                    let _ = tx.send(RunEvent::Warning {
                        message: format!("this run was not recorded in the history: {e}"),
                    });
                }
            }
        };
        if daemon {
            // One long-lived thread: records stay in order; one allocator arena.
            recorder(Box::new(job));
        } else {
            let _ = tokio::task::spawn_blocking(job).await;
        }
        summary
    }

    fn write_profile_and_report(&self, sh: &Shared, record: &RunRecord) {
        if let Some(path) = &sh.params.profile {
            let trace = crate::profile::chrome_trace(record);
            if let Some(dir) = Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(path, serde_json::to_vec(&trace).unwrap_or_default()) {
                sh.emit(RunEvent::Warning {
                    message: format!("cannot write the profile to {path}: {e}"),
                });
            }
        }
        if let Some(path) = &sh.params.report {
            let ids: Vec<String> = record.tasks.iter().map(|t| t.id.clone()).collect();
            let stats = self
                .history
                .as_ref()
                .and_then(|h| h.stats(&ids, history::DEFAULT_WINDOW).ok());
            let md = crate::profile::markdown_report(record, stats.as_ref());
            // A CI job summary file collects every step's report.
            let append = sh.params.env.get("GITHUB_STEP_SUMMARY") == Some(path);
            if let Some(dir) = Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let written = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, md.as_bytes()));
            if let Err(e) = written {
                sh.emit(RunEvent::Warning {
                    message: format!("cannot write the report to {path}: {e}"),
                });
            }
        }
    }
    fn summary(
        &mut self,
        all: &[TaskResult],
        cancelled: Option<i32>,
        quiet: &HashSet<String>,
    ) -> RunSummary {
        let mut results: Vec<TaskResult> = if self.detail == vx_proto::Detail::Changes {
            all.iter()
                .filter(|r| r.status != TaskStatus::Cached && !quiet.contains(&r.id))
                .cloned()
                .collect()
        } else {
            all.to_vec()
        };
        let mut counts = RunCounts {
            total: all.len(),
            ..Default::default()
        };
        for r in all {
            match r.status {
                TaskStatus::Success => counts.executed += 1,
                TaskStatus::Cached => counts.cached += 1,
                TaskStatus::Failed => {
                    counts.executed += 1;
                    counts.failed += 1
                }
                TaskStatus::Skipped => counts.skipped += 1,
                TaskStatus::Aborted => counts.aborted += 1,
                TaskStatus::Running => counts.running += 1,
            }
        }
        let ok =
            counts.failed == 0 && counts.skipped == 0 && counts.aborted == 0 && cancelled.is_none();
        results.shrink_to_fit();
        let exit_code = match cancelled {
            Some(sig) => 128 + sig,
            None if ok => 0,
            None => 1,
        };
        RunSummary {
            run_id: self.run_id.clone(),
            ok,
            exit_code,
            started_at: self.started_at,
            ended_at: now_ms(),
            duration_ms: self.t0.elapsed().as_millis() as u64,
            counts,
            tasks: results,
            root: self.root.clone(),
        }
    }
}

/// Starts a persistent task (stopping the session's previous process of it
/// first) and reports when it is ready, or why it is not.
async fn start_persistent(
    sh: &Arc<Shared>,
    i: usize,
    g: usize,
    key: String,
    old: Option<persist::Proc>,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Done {
    let node = &sh.model.graph.nodes[g];
    let id = node.id.clone();
    if let Some(old) = old {
        if old.exited().is_none() {
            sh.emit(RunEvent::Warning {
                message: format!("restarting {id}: its inputs changed"),
            });
        }
        old.stop().await;
    }
    let command = sh.command_line(g);
    let spec = Spawn {
        command: command.clone(),
        dir: sh.project_abs(node.project),
        env: sh.task_env(g),
        timeout: None,
        keep_stdin: true,
        tty: false,
        kill_grace: Some(exec::kill_grace_in(&sh.params.env)),
    };
    let ready_when = node
        .def
        .ready_when
        .as_deref()
        .and_then(|r| regex::Regex::new(r).ok());
    let ready_timeout = node
        .def
        .timeout_ms
        .or(sh.model.ws.defaults.timeout_ms)
        .map(Duration::from_millis);
    sh.emit(RunEvent::TaskStarted {
        id: id.clone(),
        key: None,
        command,
    });
    let t0 = Instant::now();
    let started = persist::start(
        spec,
        id.clone(),
        key.clone(),
        ready_when,
        ready_timeout,
        knobs::READY_NOTICE_MS
            .millis(&sh.params.env)
            .unwrap_or(persist::DEFAULT_READY_NOTICE),
        sh.events.clone(),
        cancel,
    )
    .await;
    let mut res = base_result(sh, g);
    res.key = Some(key);
    res.cache = CacheSource::Disabled;
    res.attempts = 1;
    res.duration_ms = t0.elapsed().as_millis() as u64;
    match started {
        Ok(p) => {
            res.status = TaskStatus::Running;
            let mut d = Done::new(i, Some(res), false, tainted);
            d.proc = Some(p);
            d
        }
        Err(e) => {
            res.exit_code = e.outcome.as_ref().and_then(|o| o.exit_code());
            if e.cancelled.is_some() {
                res.status = TaskStatus::Aborted;
                res.error = Some("cancelled".into());
            } else {
                res.status = TaskStatus::Failed;
                res.error = Some(e.error);
            }
            Done::new(i, Some(res), true, tainted)
        }
    }
}

/// For each node, how many nodes transitively depend on it.
fn transitive_dependent_counts(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let words = n.div_ceil(64);
    // Process in reverse topological order (dependents before their deps).
    let mut indeg: Vec<usize> = dependents.iter().map(|d| d.len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(i) = stack.pop() {
        order.push(i);
        for &d in &deps[i] {
            indeg[d] -= 1;
            if indeg[d] == 0 {
                stack.push(d);
            }
        }
    }
    let mut sets: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut counts = vec![0; n];
    for &i in &order {
        let mut set = vec![0u64; words];
        for &d in &dependents[i] {
            set[d / 64] |= 1 << (d % 64);
            for (w, o) in set.iter_mut().zip(&sets[d]) {
                *w |= *o;
            }
        }
        counts[i] = set.iter().map(|w| w.count_ones() as usize).sum();
        sets[i] = set;
    }
    counts
}

fn base_result(sh: &Shared, g: usize) -> TaskResult {
    let node = &sh.model.graph.nodes[g];
    TaskResult {
        id: node.id.clone(),
        project: sh.model.ws.projects[node.project].name.clone(),
        task: node.name.clone(),
        status: TaskStatus::Skipped,
        cache: CacheSource::Miss,
        key: sh.keys.lock().ok().and_then(|k| k.get(&g).cloned()),
        exit_code: None,
        duration_ms: 0,
        attempts: 0,
        blocked_by: None,
        error: None,
    }
}

fn skipped(sh: &Shared, g: usize, by: Option<String>) -> TaskResult {
    let mut r = base_result(sh, g);
    r.status = TaskStatus::Skipped;
    r.cache = if sh.cache_enabled(g) {
        CacheSource::Miss
    } else {
        CacheSource::Disabled
    };
    r.blocked_by = by;
    r
}

/// Tries the cache; returns `Some(result)` on a usable hit.
/// What the cache says about a task's key.
enum Hit {
    /// Served: outputs are in place; the log, when it is to be replayed.
    Served(TaskResult, Vec<u8>),
    /// An entry exists but its outputs must be restored (not allowed here).
    NeedsRestore,
    Miss,
}

/// Tries the cache. Restores outputs only when `allow_restore`; reads the
/// log only when it will be replayed. A corrupt blob drops the entry and
/// is a miss.
fn try_hit(sh: &Shared, g: usize, key: &str, allow_restore: bool) -> Result<Hit, EngineError> {
    let t0 = Instant::now();
    let Some(entry) = sh.store.get(key)? else {
        return Ok(Hit::Miss);
    };
    let (m, stamps) = (&entry.0, &entry.1);
    let node = &sh.model.graph.nodes[g];
    let p = node.project;
    let dir = sh.project_abs(p);
    let pats = &sh.patterns[&g];
    let fence = sh.rel_fence(p);
    let corrupt = |what: &str| {
        sh.emit(RunEvent::Warning {
            message: format!(
                "{}: cache entry {} is corrupt ({what}); dropping it and running the task",
                node.id,
                &key[..12]
            ),
        });
        sh.store.drop_entry(key);
    };
    // Under the daemon, outputs verified since the last change in their
    // project need no look at the disk.
    let bases = pats.outputs.bases();
    let known_ok = sh
        .hot
        .as_ref()
        .is_some_and(|h| bases.is_some() && h.outputs_known_ok(&sh.model, g, key));
    let up_to_date = known_ok || {
        if let (Some(hot), Some(bases)) = (&sh.hot, &bases) {
            hot.watch_outputs(&dir, bases);
        }
        let on_disk = cache::collect_outputs(&dir, &pats.outputs, &fence);
        let ok = stamps
            .as_ref()
            .is_some_and(|s| cache::outputs_up_to_date(m, s, &on_disk));
        if ok
            && bases.is_some()
            && let Some(hot) = &sh.hot
        {
            hot.set_outputs_ok(&sh.model, g, key);
        }
        ok
    };
    if !up_to_date && !allow_restore {
        return Ok(Hit::NeedsRestore);
    }
    let log = if sh.params.output_logs == OutputLogs::Full {
        match sh.store.read_verified(&m.log) {
            Ok(l) => l,
            Err(CacheError::Corrupt(_)) => {
                corrupt("log");
                return Ok(Hit::Miss);
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        Vec::new()
    };
    let source = if up_to_date {
        CacheSource::UpToDate
    } else {
        match cache::restore(&sh.store, m, &dir, &pats.outputs, &fence) {
            Ok(st) => {
                sh.store.put_stamps(key, &st);
                sh.mark_dirty(p);
                CacheSource::Local
            }
            Err(CacheError::Corrupt(what)) => {
                corrupt(&format!("blob {}", &what[..what.len().min(12)]));
                return Ok(Hit::Miss);
            }
            Err(CacheError::Refused(why)) => {
                sh.emit(RunEvent::Warning {
                    message: format!(
                        "{}: not restored from the cache: {why}; running the task",
                        node.id
                    ),
                });
                sh.store.drop_entry(key);
                return Ok(Hit::Miss);
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut r = base_result(sh, g);
    r.status = TaskStatus::Cached;
    r.cache = source;
    r.key = Some(key.to_string());
    r.exit_code = Some(m.exit_code);
    r.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(Hit::Served(r, log))
}

/// The scheduler's inline fast path: the key, and a hit whose outputs are
/// already in place, without leaving the scheduler's thread. Anything that
/// writes files or runs a process goes to [`run_task`].
fn probe(sh: &Shared, g: usize) -> Result<(String, Option<TaskResult>), EngineError> {
    let key = sh.key_of(g)?;
    if !sh.cache_read(g) {
        return Ok((key, None));
    }
    match try_hit(sh, g, &key, false)? {
        Hit::Served(r, log) => {
            replay(sh, &r.id, &key, &r, &log);
            Ok((key, Some(r)))
        }
        Hit::NeedsRestore | Hit::Miss => Ok((key, None)),
    }
}

fn wants_live(logs: OutputLogs) -> bool {
    matches!(logs, OutputLogs::Full | OutputLogs::NewOnly)
}

/// Runs one task whose key is known and whose outputs were not already in
/// place: restore from the cache, or execute (joining an execution of the
/// same key in another run, under the daemon).
async fn run_task(
    sh: &Arc<Shared>,
    g: usize,
    key: String,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Result<TaskResult, EngineError> {
    let id = sh.model.graph.nodes[g].id.clone();
    let sh2 = sh.clone();
    let k2 = key.clone();
    let hit = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
        if sh2.cache_read(g) {
            try_hit(&sh2, g, &k2, true)
        } else {
            Ok(Hit::Miss)
        }
    })
    .await
    .map_err(|e| EngineError::new(codes::INTERNAL_ERROR, e.to_string()))??;
    if let Hit::Served(r, log) = hit {
        replay(sh, &id, &key, &r, &log);
        return Ok(r);
    }
    let Some(hot) = sh.hot.clone() else {
        return execute(sh, g, &key, tainted, cancel).await.map(|(r, _)| r);
    };
    // The daemon: a task with this key already executing for another run
    // is joined, not run again.
    let (entry, executor) = hot.attach(&key);
    let detach = {
        let entry = entry.clone();
        let mut my_cancel = cancel.clone();
        tokio::spawn(async move {
            if my_cancel.wait_for(|c| c.is_some()).await.is_ok() {
                let sig = (*my_cancel.borrow()).unwrap_or(libc::SIGTERM);
                entry.detach(sig);
            }
        })
    };
    let result = if executor {
        let lock = hot.task_lock(&id);
        let _serialized = lock.lock().await;
        let r = execute(sh, g, &key, tainted, entry.cancel_receiver()).await;
        // Let joiners see the entry we saved before they look for it.
        if entry.has_joiners() {
            let _ = sh.store.flush();
        }
        let finished = match &r {
            Ok((res, log)) => crate::state::Finished {
                result: res.clone(),
                log: log.clone(),
            },
            Err(e) => {
                let mut res = base_result(sh, g);
                res.status = TaskStatus::Failed;
                res.error = Some(e.message.clone());
                crate::state::Finished {
                    result: res,
                    log: Vec::new(),
                }
            }
        };
        hot.finish(&key, &entry, Arc::new(finished));
        r.map(|(res, _)| res)
    } else {
        join(sh, g, &key, &entry, cancel).await
    };
    detach.abort();
    result
}

/// Waits for another run's execution of the same key and takes its outcome.
async fn join(
    sh: &Arc<Shared>,
    g: usize,
    key: &str,
    entry: &Arc<crate::state::Inflight>,
    mut cancel: watch::Receiver<Option<i32>>,
) -> Result<TaskResult, EngineError> {
    let id = sh.model.graph.nodes[g].id.clone();
    let mut done = entry.done_receiver();
    let finished = tokio::select! {
        r = done.wait_for(|d| d.is_some()) => r.ok().and_then(|v| v.clone()),
        _ = cancel.wait_for(|c| c.is_some()) => None,
    };
    let Some(fin) = finished else {
        let mut r = base_result(sh, g);
        r.key = Some(key.to_string());
        r.status = TaskStatus::Aborted;
        r.error = Some("cancelled while waiting for the same task in another run".into());
        return Ok(r);
    };
    if fin.result.status == TaskStatus::Success && sh.cache_read(g) {
        let sh2 = sh.clone();
        let k2 = key.to_string();
        let hit = tokio::task::spawn_blocking(move || try_hit(&sh2, g, &k2, true))
            .await
            .map_err(|e| EngineError::new(codes::INTERNAL_ERROR, e.to_string()))??;
        if let Hit::Served(r, log) = hit {
            replay(sh, &id, key, &r, &log);
            return Ok(r);
        }
    }
    if wants_live(sh.params.output_logs)
        || (sh.params.output_logs == OutputLogs::ErrorsOnly
            && fin.result.status != TaskStatus::Success)
    {
        for line in String::from_utf8_lossy(&fin.log).lines() {
            sh.emit(RunEvent::TaskOutput {
                id: id.clone(),
                stream: Stream::Stdout,
                line: line.to_string(),
                replay: true,
            });
        }
    }
    let mut r = fin.result.clone();
    r.attempts = 0;
    Ok(r)
}

/// Emits a cache hit's header and stored log.
fn replay(sh: &Shared, id: &str, key: &str, r: &TaskResult, log: &[u8]) {
    if sh.params.output_logs == OutputLogs::Full {
        sh.emit(RunEvent::TaskCacheHit {
            id: id.to_string(),
            key: key.to_string(),
            source: r.cache,
        });
        for line in String::from_utf8_lossy(log).lines() {
            sh.emit(RunEvent::TaskOutput {
                id: id.to_string(),
                stream: Stream::Stdout,
                line: line.to_string(),
                replay: true,
            });
        }
    }
}

/// Executes a task (with retries) and saves a successful result. Returns
/// the result and the task's log.
async fn execute(
    sh: &Arc<Shared>,
    g: usize,
    key: &str,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Result<(TaskResult, Vec<u8>), EngineError> {
    let node = &sh.model.graph.nodes[g];
    let id = node.id.clone();
    let logs = sh.params.output_logs;
    let key = key.to_string();
    let p = node.project;
    let dir = sh.project_abs(p);
    let write = sh.cache_enabled(g) && !tainted;
    let fence = sh.rel_fence(p);
    let command = sh.command_line(g);
    let timeout = node
        .def
        .timeout_ms
        .or(sh.model.ws.defaults.timeout_ms)
        .map(Duration::from_millis);
    let spec = Spawn {
        command: command.clone(),
        dir: dir.clone(),
        env: sh.task_env(g),
        timeout,
        keep_stdin: false,
        tty: sh.gets_terminal(g),
        kill_grace: Some(exec::kill_grace_in(&sh.params.env)),
    };
    if node.def.interactive && !spec.tty {
        sh.emit(RunEvent::Warning {
            message: format!(
                "{id} is interactive but does not run alone on a terminal; its stdin is closed"
            ),
        });
    }
    sh.emit(RunEvent::TaskStarted {
        id: id.clone(),
        key: Some(key.clone()),
        command: command.clone(),
    });
    let attempts_total = node.def.retries + 1;
    let t0 = Instant::now();
    let mut attempt = 0;
    let mut usage = exec::Usage::default();
    let (outcome, log) = loop {
        attempt += 1;
        if write && !sh.patterns[&g].outputs.is_empty() {
            let (d2, pats, f2) = (dir.clone(), sh.patterns[&g].outputs.clone(), fence.clone());
            tokio::task::spawn_blocking(move || cache::wipe_outputs(&d2, &pats, &f2))
                .await
                .map_err(|e| EngineError::new(codes::INTERNAL_ERROR, e.to_string()))??;
        }
        let mut log: Vec<u8> = Vec::new();
        let mut buffered: Vec<(Stream, String)> = Vec::new();
        let (outcome, used) = exec::run_measured(
            &spec,
            |stream, line| {
                log.extend_from_slice(line.as_bytes());
                log.push(b'\n');
                if wants_live(logs) {
                    sh.emit(RunEvent::TaskOutput {
                        id: id.clone(),
                        stream,
                        line,
                        replay: false,
                    });
                } else if logs == OutputLogs::ErrorsOnly {
                    buffered.push((stream, line));
                }
            },
            |_| {},
            cancel.clone(),
        )
        .await;
        usage.cpu_ms = sum_opt(usage.cpu_ms, used.cpu_ms);
        usage.peak_rss_bytes = usage.peak_rss_bytes.max(used.peak_rss_bytes);
        let ok = outcome == Outcome::Exited(0);
        if !ok && logs == OutputLogs::ErrorsOnly {
            for (stream, line) in buffered {
                sh.emit(RunEvent::TaskOutput {
                    id: id.clone(),
                    stream,
                    line,
                    replay: false,
                });
            }
        }
        let retryable =
            !ok && !matches!(outcome, Outcome::Cancelled(_)) && attempt < attempts_total;
        if retryable {
            let reason = match &outcome {
                Outcome::TimedOut => "a timeout".to_string(),
                Outcome::SpawnFailed(e) => e.clone(),
                o => format!("exit {}", o.exit_code().unwrap_or(1)),
            };
            sh.emit(RunEvent::TaskRetry {
                id: id.clone(),
                attempt: attempt + 1,
                of: attempts_total,
                reason,
            });
            continue;
        }
        break (outcome, log);
    };
    let duration_ms = t0.elapsed().as_millis() as u64;
    if let Ok(mut u) = sh.usage.lock() {
        u.insert(g, usage);
    }
    let fp = sh.fingerprint(g, &key);
    if let Ok(mut f) = sh.fingerprints.lock() {
        f.push(fp);
    }
    sh.mark_dirty(p);
    let mut r = base_result(sh, g);
    r.key = Some(key.clone());
    r.attempts = attempt;
    r.duration_ms = duration_ms;
    r.exit_code = outcome.exit_code();
    r.cache = if sh.cache_enabled(g) {
        CacheSource::Miss
    } else {
        CacheSource::Disabled
    };
    match &outcome {
        Outcome::Exited(0) => r.status = TaskStatus::Success,
        Outcome::Cancelled(_) => {
            r.status = TaskStatus::Aborted;
            r.error = Some("cancelled".into());
        }
        Outcome::TimedOut => {
            r.status = TaskStatus::Failed;
            r.error = Some(format!(
                "timed out after {} ms",
                timeout.map(|t| t.as_millis()).unwrap_or(0)
            ));
        }
        Outcome::SpawnFailed(e) => {
            r.status = TaskStatus::Failed;
            r.error = Some(e.clone());
        }
        Outcome::Signalled(s) => {
            r.status = TaskStatus::Failed;
            r.error = Some(format!("killed by signal {s}"));
        }
        Outcome::Exited(c) => {
            r.status = TaskStatus::Failed;
            r.error = Some(match c {
                126 => "exit 126: the command is not executable".into(),
                127 => "exit 127: command not found (is it installed and on PATH?)".into(),
                _ => format!("exit {c}"),
            });
        }
    }
    if r.status == TaskStatus::Success && write {
        let sh2 = sh.clone();
        let k2 = key.clone();
        let log2 = log.clone();
        let saved =
            tokio::task::spawn_blocking(move || save(&sh2, g, &k2, &log2, duration_ms)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => sh.emit(RunEvent::Warning {
                message: format!("{id}: result not cached: {e}"),
            }),
            Err(e) => sh.emit(RunEvent::Warning {
                message: format!("{id}: result not cached: {e}"),
            }),
        }
    }
    Ok((r, log))
}

fn sum_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// Stores a successful execution: output blobs, the log, then the entry.
fn save(sh: &Shared, g: usize, key: &str, log: &[u8], duration_ms: u64) -> Result<(), EngineError> {
    let node = &sh.model.graph.nodes[g];
    let dir = sh.project_abs(node.project);
    let fence = sh.rel_fence(node.project);
    let files = cache::collect_outputs(&dir, &sh.patterns[&g].outputs, &fence);
    let outputs = cache::capture(&sh.store, &dir, &files)?;
    let log = sh.store.put_bytes(log)?;
    let m = Manifest {
        version: cache::MANIFEST_VERSION,
        key: key.to_string(),
        task: node.id.clone(),
        outputs,
        log,
        exit_code: 0,
        duration_ms,
        created_at: now_ms(),
    };
    sh.store.put_entry(&m, &cache::stamps_of(&files));
    Ok(())
}

fn wrong_workspace(cwd: &Path, root: &Path, hot: &Hot) -> EngineError {
    EngineError::new(
        codes::WRONG_WORKSPACE,
        format!(
            "{} belongs to the workspace at {}, not this daemon's ({})",
            cwd.display(),
            root.display(),
            hot.root.display()
        ),
    )
    .with_data(serde_json::json!({ "root": root }))
}

/// A concurrency above [`vx_proto::MAX_CONCURRENCY`] (a flag, a request
/// or a config): refused before anything is allocated for it.
pub fn concurrency_error(n: usize) -> EngineError {
    EngineError::new(
        codes::USER_ERROR,
        format!(
            "concurrency {n} is too large: at most {} tasks can run at once",
            vx_proto::MAX_CONCURRENCY
        ),
    )
}

/// The workspace containing `cwd` for a request; under a daemon it must be
/// the daemon's (else `WRONG_WORKSPACE`, naming the right root).
pub fn request_workspace(cwd: &Path, hot: Option<&Hot>) -> Result<Workspace, EngineError> {
    let ws = load_workspace(cwd)?;
    if let Some(hot) = hot
        && ws.root != hot.root
    {
        return Err(wrong_workspace(cwd, &ws.root, hot));
    }
    Ok(ws)
}

/// `cache.stats` for the workspace containing `cwd`.
pub fn cache_stats(cwd: &Path, hot: Option<&Hot>) -> Result<vx_proto::CacheStats, EngineError> {
    cache_stats_of(&request_workspace(cwd, hot)?, hot)
}

/// `cache.stats` of a workspace already loaded (and checked against `hot`).
pub fn cache_stats_of(
    ws: &Workspace,
    hot: Option<&Hot>,
) -> Result<vx_proto::CacheStats, EngineError> {
    let dir = cache_dir(ws);
    let stats = |store: &Store| -> Result<vx_proto::CacheStats, EngineError> {
        let (entries, blobs, blob_bytes) = store.stats()?;
        Ok(vx_proto::CacheStats {
            dir: dir.to_string_lossy().into_owned(),
            entries,
            blobs,
            blob_bytes,
        })
    };
    if let Some(hot) = hot {
        return stats(hot.store()?.as_ref());
    }
    if !dir.join("index.redb").exists() {
        return Ok(vx_proto::CacheStats {
            dir: dir.to_string_lossy().into_owned(),
            entries: 0,
            blobs: 0,
            blob_bytes: 0,
        });
    }
    let store = Store::open(&dir, Duration::from_secs(30), &mut || {})?;
    let r = stats(&store);
    store.close()?;
    r
}

/// `cache.clean` for the workspace containing `cwd`.
pub fn cache_clean(cwd: &Path, hot: Option<&Hot>) -> Result<vx_proto::CacheCleaned, EngineError> {
    let ws = request_workspace(cwd, hot)?;
    let dir = cache_dir(&ws);
    if let Some(hot) = hot {
        hot.close_store();
        // Its history handle goes too (`clean` deletes the file; the next
        // use opens a new one).
        history::release(&dir);
    }
    let (entries, freed_bytes) = cache::clean(&dir)?;
    Ok(vx_proto::CacheCleaned {
        dir: dir.to_string_lossy().into_owned(),
        entries,
        freed_bytes,
    })
}

/// `cache.prune` for the workspace containing `cwd` (through the daemon's
/// open store when there is one).
pub fn cache_prune(
    p: &vx_proto::CachePruneParams,
    hot: Option<&Hot>,
) -> Result<vx_proto::CachePruned, EngineError> {
    let ws = request_workspace(Path::new(&p.cwd), hot)?;
    let dir = cache_dir(&ws);
    let dir_s = dir.to_string_lossy().into_owned();
    let max_age = p.max_age_ms.map(Duration::from_millis);
    let prune = |store: &Store| -> Result<vx_proto::CachePruned, EngineError> {
        let r = if p.dry_run {
            store.prune_dry_run(p.max_size, max_age)?
        } else {
            store.prune(p.max_size, max_age)?
        };
        Ok(r.into_proto(dir_s.clone(), p.dry_run))
    };
    if let Some(hot) = hot {
        return prune(hot.store()?.as_ref());
    }
    if !dir.join("index.redb").exists() {
        return Ok(cache::Pruned::default().into_proto(dir_s, p.dry_run));
    }
    let store = Store::open(&dir, Duration::from_secs(30), &mut || {})?;
    let r = prune(&store);
    store.close()?;
    r
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

    #[test]
    fn dependent_counts() {
        // 0 <- 1 <- 2, 0 <- 3
        let deps = vec![vec![], vec![0], vec![1], vec![0]];
        let mut dependents = vec![Vec::new(); 4];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        assert_eq!(
            transitive_dependent_counts(&deps, &dependents),
            vec![3, 1, 0, 0]
        );
    }

    #[test]
    fn forwarded_args_never_reach_the_recorded_argv() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (argv, args, what must remain before the placeholder)
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["vx", "run", "test", "--", "--token=secret"],
                &["--token=secret"],
                &["vx", "run", "test", "--"],
            ),
            (
                &["vx", "run", "-F", "a", "test", "--", "x", "secret"],
                &["x", "secret"],
                &["vx", "run", "-F", "a", "test", "--"],
            ),
            // Not the expected tail: cut at `--`, drop any arg seen before it.
            (
                &["vx", "secret", "run", "--", "secret", "more"],
                &["secret"],
                &["vx", "run", "--"],
            ),
            (&["vx", "run", "t"], &["secret"], &["vx", "run", "t"]),
        ];
        for (argv, args, kept) in cases {
            let out = redacted_argv(&v(argv), &v(args));
            assert_eq!(&out[..out.len() - 1], &v(kept)[..], "{argv:?}");
            let last = out.last().map(String::as_str).unwrap_or_default();
            assert!(last.starts_with('<') && last.contains("hashed"), "{out:?}");
            assert!(!out.iter().any(|o| o.contains("secret")), "{out:?}");
        }
        // No args: the argv as it was.
        let argv = v(&["vx", "run", "build"]);
        assert_eq!(redacted_argv(&argv, &[]), argv);
        // The same args give the same placeholder (comparable across runs).
        assert_eq!(
            redacted_argv(&v(&["vx", "--", "a"]), &v(&["a"])),
            redacted_argv(&v(&["vx", "--", "a"]), &v(&["a"]))
        );
    }
}
