//! `state` — the daemon's hot state for one workspace.
//!
//! Owns: the workspace model and task graph (rebuilt only when a config or
//! manifest changes), the file snapshot (every non-ignored file with its
//! stat, per project), the file index, the open cache store, and the
//! `notify` watcher that keeps them current. The watcher is a hint; the
//! truth is a rescan: before answering, [`Hot::sync`] writes a cookie file
//! and waits for its event, so every write made before the request is seen;
//! a queue overflow, a watcher error or a missed cookie triggers a full
//! rescan, never a guess. Projects whose files changed are re-walked with
//! the same walk the no-daemon path uses, so hot and cold snapshots agree.
//!
//! Never: executes tasks or speaks JSON-RPC. Every client of the daemon
//! (socket RPC now; HTTP, MCP and worker links later) goes through this one
//! copy of the state.
//!
//! Locks. Every `Mutex` of [`Hot`] is a leaf — held for a short section that
//! takes no other lock — with one exception: `inner`, which [`Hot::sync`]
//! holds while it reloads and re-walks, and under which it takes leaf locks
//! one at a time. No code takes `inner` while holding another lock, so no
//! cycle can form. The watcher and the set of watched directories are one
//! lock ([`Watches`]): two locks taken in opposite orders by `watch_dir` and
//! `unwatch_tree` once deadlocked the daemon (issue 9, item 8).

use crate::cache::Store;
use crate::engine::{EngineError, Model, Snapshot};
use crate::hash::{self, FileIndex};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use vx_proto::codes;

/// File names whose change means the workspace model must be reloaded.
const CONFIG_NAMES: &[&str] = &[
    "vx.toml",
    "package.json",
    "turbo.json",
    "pnpm-workspace.yaml",
    ".gitignore",
];

/// More changed paths than this between two requests: rescan everything.
const MAX_DIRTY_PATHS: usize = 20_000;

/// How long a request waits for its cookie before falling back to a rescan.
const COOKIE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Dirty {
    /// Rescan every file (overflow, watcher error, missed cookie, start).
    all: bool,
    /// Reload the workspace model (a config or manifest changed).
    model: bool,
    paths: HashSet<PathBuf>,
}

/// A project reached through a symlinked directory (see `Hot::linked`).
struct LinkedProject {
    project: usize,
    dir: String,
    real: Option<String>,
}

/// `rel` moved from under `from` to under `to` (root-relative, `/`-separated).
fn rebase(rel: &str, from: &str, to: &str) -> Option<String> {
    if rel == from {
        return Some(to.to_string());
    }
    let rest = rel.strip_prefix(from)?.strip_prefix('/')?;
    Some(format!("{to}/{rest}"))
}

/// Whether one of two root-relative paths is the other or under it.
fn overlaps(a: &str, b: &str) -> bool {
    Path::new(a).starts_with(b) || Path::new(b).starts_with(a)
}

/// The `notify` watcher and the directories it watches, behind one lock.
#[derive(Default)]
struct Watches {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
}

#[derive(Default)]
struct Inner {
    model: Option<Arc<Model>>,
    snapshot: Option<Snapshot>,
}

/// A finished execution, handed to every run that joined it.
pub struct Finished {
    pub result: vx_proto::TaskResult,
    pub log: Vec<u8>,
}

/// One task execution in flight, shared by every run that needs its key.
pub struct Inflight {
    done: tokio::sync::watch::Sender<Option<Arc<Finished>>>,
    cancel: tokio::sync::watch::Sender<Option<i32>>,
    attached: AtomicUsize,
}

impl Inflight {
    pub fn done_receiver(&self) -> tokio::sync::watch::Receiver<Option<Arc<Finished>>> {
        self.done.subscribe()
    }

    /// What the execution listens to: fires only when every attached run
    /// has been cancelled.
    pub fn cancel_receiver(&self) -> tokio::sync::watch::Receiver<Option<i32>> {
        self.cancel.subscribe()
    }

    /// Whether another run is waiting for this execution.
    pub fn has_joiners(&self) -> bool {
        self.attached.load(Ordering::Acquire) > 1
    }

    /// A run attached to this execution was cancelled.
    pub fn detach(&self, sig: i32) {
        if self.attached.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.cancel.send_replace(Some(sig));
        }
    }
}

type FileList = Arc<Vec<crate::hash::FileMeta>>;
type InputList = Arc<Vec<(String, String)>>;

#[derive(Default)]
struct InputsMemo {
    /// The model the entries belong to (held, so its address is not reused).
    model: Option<Arc<Model>>,
    /// Graph node → (the project file list it was computed from, the inputs).
    by_node: HashMap<usize, (FileList, InputList)>,
    /// Project → the file list whose hashes were last warmed.
    warmed: HashMap<usize, FileList>,
    /// Graph node → the key whose outputs were verified on disk since the
    /// last change the watcher reported in the node's project.
    outputs_ok: HashMap<usize, String>,
    /// Graph node → the parts its last key was folded from, and the key.
    keys: HashMap<usize, (crate::hash::KeyParts, String)>,
}

impl InputsMemo {
    fn for_model(&mut self, model: &Arc<Model>) {
        if !self.model.as_ref().is_some_and(|m| Arc::ptr_eq(m, model)) {
            self.model = Some(model.clone());
            self.by_node.clear();
            self.warmed.clear();
            self.outputs_ok.clear();
            self.keys.clear();
        }
    }
}

/// The hot state of one workspace.
pub struct Hot {
    pub root: PathBuf,
    pub started: Instant,
    pub runs_served: AtomicU64,
    pub rescans: AtomicU64,
    pub watches: AtomicUsize,
    pub root_gone: AtomicBool,
    pub index: Arc<FileIndex>,
    /// Projects, tasks and files as of the last sync (for `daemon.status`).
    counts: [AtomicUsize; 3],
    last_activity: Mutex<Instant>,
    /// The store, opened on first use and kept open (its index is cached in
    /// memory); closed for `cache clean` and at exit.
    store: Mutex<Option<Arc<Store>>>,
    inner: Mutex<Inner>,
    dirty: Arc<Mutex<Dirty>>,
    cookies: Arc<Mutex<HashMap<PathBuf, mpsc::Sender<()>>>>,
    cookie_seq: AtomicU64,
    /// The watcher and the directories currently watched (one leaf lock).
    watches_lock: Mutex<Watches>,
    /// Absolute project directories of the current model (to notice a
    /// project directory being removed or moved away).
    project_dirs: Mutex<Vec<PathBuf>>,
    /// Projects reached through a symlinked directory: (project, its
    /// root-relative dir, the root-relative real dir if inside the
    /// workspace). Their watches are added through the link, and a change
    /// reported under either path re-walks both owners.
    linked: Mutex<Vec<LinkedProject>>,
    /// Executions in flight, by task key (joined by concurrent runs).
    inflight: Mutex<HashMap<String, Arc<Inflight>>>,
    /// Memoised input lists per graph node of the current model: valid while
    /// the model and the project's file list are the very same objects.
    inputs_memo: Mutex<InputsMemo>,
    /// One lock per task id: runs that would write the same outputs with
    /// different keys take turns.
    task_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A counter bumped on every batch of changes the watcher reports
    /// (never for vx's own `.vx` files or `.git`): what watch loops wait on.
    changes: tokio::sync::watch::Sender<u64>,
    /// The most recent changed paths with the counter value they came with.
    change_log: Mutex<std::collections::VecDeque<(u64, PathBuf)>>,
}

/// How many changed paths [`Hot`] remembers for watch clients.
const CHANGE_LOG: usize = 256;

/// The cache directory the workspace's config names (validated: a refused
/// directory is never opened, so never created). `None` while the config does
/// not load; the daemon then opens no store until it does.
fn cache_dir_of(root: &Path) -> Option<PathBuf> {
    crate::workspace::load(root)
        .ok()
        .map(|ws| crate::engine::cache_dir(&ws))
}

impl Hot {
    /// Creates the state and starts the watcher. The first [`Hot::sync`]
    /// does the initial load and walk.
    pub fn start(root: &Path) -> anyhow::Result<Arc<Hot>> {
        let cookie_dir = root.join(".vx").join("cookies");
        std::fs::create_dir_all(&cookie_dir)?;
        // Open the store and load the persisted file index, so a restarted
        // daemon re-reads only files whose stat changed. A store that cannot
        // be opened now is retried on first use.
        let index = cache_dir_of(root)
            .and_then(|dir| Store::open(&dir, Duration::from_secs(5), &mut || {}).ok())
            .and_then(|s| s.load_file_index().ok())
            .map(FileIndex::from_records)
            .unwrap_or_default();
        let hot = Arc::new(Hot {
            root: root.to_path_buf(),
            started: Instant::now(),
            runs_served: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
            watches: AtomicUsize::new(0),
            root_gone: AtomicBool::new(false),
            index: Arc::new(index),
            counts: Default::default(),
            last_activity: Mutex::new(Instant::now()),
            store: Mutex::new(None),
            inner: Mutex::new(Inner::default()),
            dirty: Arc::new(Mutex::new(Dirty {
                all: true,
                model: true,
                paths: HashSet::new(),
            })),
            cookies: Arc::new(Mutex::new(HashMap::new())),
            cookie_seq: AtomicU64::new(0),
            watches_lock: Mutex::new(Watches::default()),
            project_dirs: Mutex::new(Vec::new()),
            linked: Mutex::new(Vec::new()),
            inflight: Mutex::new(HashMap::new()),
            inputs_memo: Mutex::new(InputsMemo::default()),
            task_locks: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::channel(0).0,
            change_log: Mutex::new(std::collections::VecDeque::new()),
        });
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })?;
        if let Ok(mut w) = hot.watches_lock.lock() {
            w.watcher = Some(watcher);
        }
        hot.watch_dir(root);
        hot.watch_dir(&cookie_dir);
        let weak = Arc::downgrade(&hot);
        std::thread::Builder::new()
            .name("vx-watch".into())
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    let Some(hot) = weak.upgrade() else { break };
                    hot.on_event(ev);
                }
            })?;
        Ok(hot)
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    pub fn idle_for(&self) -> Duration {
        self.last_activity
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// The cache store, opened on first use and kept open.
    pub fn store(&self) -> Result<Arc<Store>, EngineError> {
        let mut g = self
            .store
            .lock()
            .map_err(|_| EngineError::new(codes::INTERNAL_ERROR, "store lock poisoned"))?;
        if let Some(s) = g.as_ref() {
            // Another process may have changed the index since (a
            // foreground run, a prune, a clean): memoised entries go.
            s.refresh();
            return Ok(s.clone());
        }
        let dir = self.cache_dir();
        let s = Arc::new(Store::open(&dir, Duration::from_secs(600), &mut || {
            tracing::warn!(
                "waiting for another process using the cache at {}",
                dir.display()
            );
        })?);
        *g = Some(s.clone());
        Ok(s)
    }

    /// Closes the store now if it is open (before `cache clean`, and at exit).
    pub fn close_store(&self) {
        let s = self.store.lock().ok().and_then(|mut g| g.take());
        if let Some(s) = s {
            let _ = s.close();
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.model.as_ref().map(|m| crate::engine::cache_dir(&m.ws)))
            .or_else(|| cache_dir_of(&self.root))
            .unwrap_or_else(|| self.root.join(".vx").join("cache"))
    }

    /// Counts for `daemon.status`, as of the last [`Hot::sync`]. Never
    /// takes `inner`: status answers even while a long rescan holds it.
    pub fn counts(&self) -> (usize, usize, usize) {
        let c = &self.counts;
        (
            c[0].load(Ordering::Relaxed),
            c[1].load(Ordering::Relaxed),
            c[2].load(Ordering::Relaxed),
        )
    }

    fn set_counts(&self, inner: &Inner) {
        let (projects, tasks) = inner
            .model
            .as_ref()
            .map(|m| (m.ws.projects.len(), m.graph.nodes.len()))
            .unwrap_or((0, 0));
        let files = inner.snapshot.as_ref().map_or(0, |s| s.file_count());
        for (c, v) in self.counts.iter().zip([projects, tasks, files]) {
            c.store(v, Ordering::Relaxed);
        }
    }

    pub fn watch_dir(&self, dir: &Path) {
        let failed = {
            let Ok(mut guard) = self.watches_lock.lock() else {
                return;
            };
            let w = &mut *guard;
            let Some(watcher) = w.watcher.as_mut() else {
                return;
            };
            if w.dirs.contains(dir) {
                return;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    w.dirs.insert(dir.to_path_buf());
                    self.watches.store(w.dirs.len(), Ordering::Relaxed);
                    None
                }
                Err(e) => Some(e),
            }
        };
        // Reported with the watch lock released: leaf locks never nest.
        if let Some(e) = failed {
            tracing::warn!(
                "cannot watch {}: {e}; falling back to a rescan",
                dir.display()
            );
            if let Ok(mut d) = self.dirty.lock() {
                d.all = true;
            }
        }
    }

    /// Drops the watches of `dir` and everything under it.
    fn unwatch_tree(&self, dir: &Path) {
        let Ok(mut guard) = self.watches_lock.lock() else {
            return;
        };
        let w = &mut *guard;
        // Every watched tree's root is watched itself: a path that is not
        // (a deleted file) has nothing under it to drop.
        if !w.dirs.contains(dir) {
            return;
        }
        let gone: Vec<PathBuf> = w
            .dirs
            .iter()
            .filter(|d| d.starts_with(dir))
            .cloned()
            .collect();
        for g in gone {
            if let Some(watcher) = w.watcher.as_mut() {
                let _ = watcher.unwatch(&g);
            }
            w.dirs.remove(&g);
        }
        self.watches.store(w.dirs.len(), Ordering::Relaxed);
    }

    /// Watches every non-ignored directory under `dir` (inclusive). A
    /// directory that is itself ignored (a new `dist/`) is not watched.
    fn watch_tree(&self, dir: &Path) {
        if dir != self.root && !hash::is_walked_dir(&self.root, dir) {
            return;
        }
        for d in hash::walk_dirs(&self.root, dir) {
            self.watch_dir(&d);
        }
    }

    fn on_event(&self, ev: notify::Result<notify::Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("watcher error ({e}); the next request rescans");
                if let Ok(mut d) = self.dirty.lock() {
                    d.all = true;
                    d.model = true;
                }
                return;
            }
        };
        if ev.need_rescan() {
            tracing::info!("watcher queue overflow; the next request rescans");
            if let Ok(mut d) = self.dirty.lock() {
                d.all = true;
                d.model = true;
            }
        }
        // Reads (ours included: hashing opens files) change nothing.
        if let EventKind::Access(kind) = ev.kind
            && !matches!(
                kind,
                notify::event::AccessKind::Close(notify::event::AccessMode::Write)
            )
        {
            return;
        }
        let dotvx = self.root.join(".vx");
        let dotgit = self.root.join(".git");
        let mut changed = false;
        for p in &ev.paths {
            if p.starts_with(&dotvx) {
                if let Ok(mut c) = self.cookies.lock()
                    && let Some(tx) = c.remove(p)
                {
                    let _ = tx.send(());
                }
                continue;
            }
            if p.starts_with(&dotgit) {
                continue;
            }
            let seq = *self.changes.borrow() + 1;
            if let Ok(mut log) = self.change_log.lock() {
                if log.len() >= CHANGE_LOG {
                    log.pop_front();
                }
                log.push_back((seq, p.clone()));
                changed = true;
            }
            if p == &self.root && matches!(ev.kind, EventKind::Remove(_)) {
                self.root_gone.store(true, Ordering::Relaxed);
            }
            let structural = matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let mut model_changed = false;
            if structural {
                if p.is_dir() {
                    // A directory appeared (created or moved in): watch it,
                    // and reload the model if it brings a project config.
                    // A symlink to one is not watched through the link here
                    // (that would re-label its target's watches): the next
                    // sync watches link targets and linked members.
                    if !std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
                        self.watch_tree(p);
                    }
                    model_changed = hash::walk_files_named(&self.root, p, CONFIG_NAMES);
                } else if !p.exists() {
                    // Something went away (deleted, or moved: its watches now
                    // follow the moved inode and would report wrong paths).
                    self.unwatch_tree(p);
                    if let Ok(dirs) = self.project_dirs.lock() {
                        // If a project lived there, reload.
                        model_changed = dirs.iter().any(|d| d.starts_with(p));
                    }
                }
            }
            if let Ok(mut d) = self.dirty.lock() {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if model_changed || CONFIG_NAMES.contains(&name) {
                    tracing::debug!("config change: {} ({:?})", p.display(), ev.kind);
                    d.model = true;
                }
                if d.paths.len() < MAX_DIRTY_PATHS {
                    d.paths.insert(p.clone());
                } else {
                    d.all = true;
                }
            }
        }
        if !self.root.exists() {
            self.root_gone.store(true, Ordering::Relaxed);
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// A receiver whose value changes whenever the watcher reports changes.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The changed paths reported after counter value `seen` (oldest first,
    /// deduplicated, workspace-relative, at most `limit`).
    pub fn changes_since(&self, seen: u64, limit: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Ok(log) = self.change_log.lock() {
            for (seq, p) in log.iter() {
                if *seq <= seen {
                    continue;
                }
                let rel = p
                    .strip_prefix(&self.root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| p.to_string_lossy().into_owned());
                if !out.contains(&rel) {
                    out.push(rel);
                }
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    /// Waits until the watcher has delivered every event caused before now.
    fn cookie_barrier(&self) {
        let n = self.cookie_seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(".vx")
            .join("cookies")
            .join(format!("{}-{n}", std::process::id()));
        let (tx, rx) = mpsc::channel();
        if let Ok(mut c) = self.cookies.lock() {
            c.insert(path.clone(), tx);
        }
        let ok = std::fs::write(&path, b"").is_ok() && rx.recv_timeout(COOKIE_TIMEOUT).is_ok();
        if let Ok(mut c) = self.cookies.lock() {
            c.remove(&path);
        }
        let _ = std::fs::remove_file(&path);
        if !ok {
            tracing::warn!("the watcher did not deliver a cookie in time; rescanning");
            if let Ok(mut d) = self.dirty.lock() {
                // Events may be lost, a config change among them: reload too.
                d.all = true;
                d.model = true;
            }
        }
    }

    /// Brings the model and the snapshot up to date with the disk and
    /// returns them. Blocking; call from a blocking thread.
    pub fn sync(&self) -> Result<(Arc<Model>, Snapshot), EngineError> {
        self.touch();
        self.cookie_barrier();
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| EngineError::new(codes::INTERNAL_ERROR, "state lock poisoned"))?;
        let dirty = {
            let mut d = self
                .dirty
                .lock()
                .map_err(|_| EngineError::new(codes::INTERNAL_ERROR, "dirty lock poisoned"))?;
            std::mem::take(&mut *d)
        };
        let mut rescan = dirty.all || inner.snapshot.is_none();
        if inner.snapshot.is_some() && (dirty.all || dirty.model) {
            tracing::info!(
                overflow_or_error = dirty.all,
                config_changed = dirty.model,
                "full rescan"
            );
        }
        if rescan || dirty.model || inner.model.is_none() {
            // Watch first, then load and scan: a change made meanwhile (a
            // new project's config, say) is then either in the load and the
            // scan or reported for the next request. (Loading first left a
            // window in which a new directory was neither loaded nor
            // watched.)
            self.watch_tree(&self.root.clone());
        }
        if dirty.model || inner.model.is_none() {
            // A config changed: reload. An error leaves no model, so the
            // next request tries again (and reports the same error).
            inner.model = None;
            let model = match Model::load(&self.root) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    // Keep the dirty state for the next attempt.
                    if let Ok(mut d) = self.dirty.lock() {
                        d.model = true;
                        d.all = true;
                    }
                    return Err(e);
                }
            };
            if let Ok(mut dirs) = self.project_dirs.lock() {
                *dirs = model
                    .ws
                    .projects
                    .iter()
                    .map(|p| model.ws.abs_dir(p))
                    .collect();
            }
            let real_root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
            let linked: Vec<LinkedProject> = model
                .ws
                .projects
                .iter()
                .enumerate()
                .filter(|(_, p)| hash::through_link(&self.root, &p.dir))
                .map(|(i, p)| LinkedProject {
                    project: i,
                    dir: p.dir.clone(),
                    real: std::fs::canonicalize(model.ws.abs_dir(p))
                        .ok()
                        .and_then(|r| {
                            r.strip_prefix(&real_root)
                                .ok()
                                .and_then(|r| r.to_str())
                                .map(str::to_string)
                        }),
                })
                .collect();
            if let Ok(mut l) = self.linked.lock() {
                *l = linked;
            }
            inner.model = Some(model);
            rescan = true;
        }
        let model = inner
            .model
            .clone()
            .ok_or_else(|| EngineError::new(codes::INTERNAL_ERROR, "no model"))?;
        let cache_skip = vec![crate::engine::cache_dir(&model.ws)];
        if rescan {
            if inner.snapshot.is_some() {
                self.rescans.fetch_add(1, Ordering::Relaxed);
            }
            // (The tree was watched above, before the load.)
            // Linked members are watched through their link (inotify
            // follows it), so their events carry their workspace paths.
            for dir in self.linked_dirs() {
                for d in hash::walk_dirs(&self.root, &self.root.join(&dir)) {
                    self.watch_dir(&d);
                }
            }
            let snap = Snapshot::scan(&model, &cache_skip);
            self.watch_link_targets(&snap);
            inner.snapshot = Some(snap.clone());
            self.set_counts(&inner);
            if let Ok(mut m) = self.inputs_memo.lock() {
                m.outputs_ok.clear();
            }
            return Ok((model, snap));
        }
        if let Some(snap) = inner.snapshot.as_mut() {
            let mut projects: HashSet<Option<usize>> = HashSet::new();
            let rels: Vec<String> = dirty
                .paths
                .iter()
                .filter_map(|p| p.strip_prefix(&self.root).ok())
                .map(|rel| rel.to_string_lossy().replace('\\', "/"))
                .collect();
            let linked: Vec<(usize, String, Option<String>)> = self
                .linked
                .lock()
                .map(|l| {
                    l.iter()
                        .map(|l| (l.project, l.dir.clone(), l.real.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let targets: Vec<(Option<usize>, String)> = if rels.is_empty() {
                Vec::new()
            } else {
                snap.link_targets()
                    .into_iter()
                    .map(|(p, t)| (p, t.to_string()))
                    .collect()
            };
            for rel in &rels {
                projects.insert(model.owner_of(rel));
                // A symlink into the workspace is hashed by its target: a
                // change at or above the target re-walks the link's owner.
                for (owner, t) in &targets {
                    if overlaps(rel, t) {
                        projects.insert(*owner);
                    }
                }
                // One inode watched under two paths reports under one of
                // them: a linked member and its real directory are the same
                // files, so either path re-walks both owners.
                for (p, dir, real) in &linked {
                    let Some(real) = real else { continue };
                    if let Some(r) = rebase(rel, real, dir) {
                        projects.insert(Some(*p));
                        projects.insert(model.owner_of(&r));
                    }
                    if let Some(r) = rebase(rel, dir, real) {
                        projects.insert(model.owner_of(&r));
                    }
                }
            }
            if let Ok(mut m) = self.inputs_memo.lock() {
                let nodes = &model.graph.nodes;
                m.outputs_ok
                    .retain(|n, _| !projects.contains(&Some(nodes[*n].project)));
            }
            let refreshed = !projects.is_empty();
            for p in projects {
                snap.refresh(&model, p, &cache_skip);
            }
            if refreshed {
                self.watch_link_targets(snap);
            }
        }
        let snap = inner
            .snapshot
            .clone()
            .ok_or_else(|| EngineError::new(codes::INTERNAL_ERROR, "no snapshot"))?;
        self.set_counts(&inner);
        Ok((model, snap))
    }

    /// Root-relative dirs of the members reached through a symlink.
    fn linked_dirs(&self) -> Vec<String> {
        self.linked
            .lock()
            .map(|l| l.iter().map(|l| l.dir.clone()).collect())
            .unwrap_or_default()
    }

    fn is_watched(&self, dir: &Path) -> bool {
        self.watches_lock.lock().is_ok_and(|w| w.dirs.contains(dir))
    }

    /// Watches what symlinks into the workspace point at (possibly an
    /// ignored directory, not watched otherwise): a file's directory, a
    /// directory's whole tree. An edit of a target then re-walks the
    /// link's owner (see [`Hot::sync`]).
    fn watch_link_targets(&self, snap: &Snapshot) {
        for (_, t) in snap.link_targets() {
            let abs = self.root.join(t);
            if abs.is_dir() {
                if !self.is_watched(&abs) {
                    for d in hash::walk_dirs(&self.root, &abs) {
                        self.watch_dir(&d);
                    }
                }
            } else if let Some(parent) = abs.parent()
                && parent.is_dir()
            {
                // (A dangling link's missing parent: its creation is seen
                // by the watch above it, when that is watched.)
                self.watch_dir(parent);
            }
        }
    }

    /// Attaches a run to the execution of `key`: returns the entry and
    /// whether this run must execute it (`true`) or join it (`false`).
    pub fn attach(&self, key: &str) -> (Arc<Inflight>, bool) {
        let mut m = match self.inflight.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = m.get(key) {
            e.attached.fetch_add(1, Ordering::AcqRel);
            return (e.clone(), false);
        }
        let e = Arc::new(Inflight {
            done: tokio::sync::watch::channel(None).0,
            cancel: tokio::sync::watch::channel(None).0,
            attached: AtomicUsize::new(1),
        });
        m.insert(key.to_string(), e.clone());
        (e, true)
    }

    /// Publishes an execution's outcome and retires the entry.
    pub fn finish(&self, key: &str, entry: &Arc<Inflight>, finished: Arc<Finished>) {
        if let Ok(mut m) = self.inflight.lock()
            && m.get(key).is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            m.remove(key);
        }
        entry.done.send_replace(Some(finished));
    }

    pub fn task_lock(&self, task_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = match self.task_locks.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(task_id.to_string()).or_default().clone()
    }

    /// The memoised inputs of node `n`, if `files` is the list they were computed from.
    pub fn inputs_memo(&self, model: &Arc<Model>, n: usize, files: &FileList) -> Option<InputList> {
        let m = self.inputs_memo.lock().ok()?;
        if !m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model)) {
            return None;
        }
        let (f, inputs) = m.by_node.get(&n)?;
        Arc::ptr_eq(f, files).then(|| inputs.clone())
    }

    pub fn set_inputs_memo(
        &self,
        model: &Arc<Model>,
        n: usize,
        files: FileList,
        inputs: InputList,
    ) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.by_node.insert(n, (files, inputs));
    }

    /// Whether project `p`'s file list is the one whose hashes were last warmed.
    pub fn warmed(&self, model: &Arc<Model>, p: usize, files: &FileList) -> bool {
        let Ok(m) = self.inputs_memo.lock() else {
            return false;
        };
        m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model))
            && m.warmed.get(&p).is_some_and(|f| Arc::ptr_eq(f, files))
    }

    pub fn set_warmed(&self, model: &Arc<Model>, lists: Vec<(usize, FileList)>) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.warmed.extend(lists);
    }

    /// The memoised key of node `n`, if every varying part equals the parts
    /// it was folded from (the input list compared by identity).
    pub fn key_memo(
        &self,
        model: &Arc<Model>,
        n: usize,
        inputs: &InputList,
        upstream: &[String],
        env: &[(String, Option<String>)],
        args: &[String],
    ) -> Option<String> {
        let m = self.inputs_memo.lock().ok()?;
        if !m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model)) {
            return None;
        }
        let (p, key) = m.keys.get(&n)?;
        (Arc::ptr_eq(&p.inputs, inputs) && p.upstream == upstream && p.env == env && p.args == args)
            .then(|| key.clone())
    }

    pub fn set_key_memo(
        &self,
        model: &Arc<Model>,
        n: usize,
        parts: crate::hash::KeyParts,
        key: &str,
    ) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.keys.insert(n, (parts, key.to_string()));
    }

    /// Whether node `n`'s outputs for `key` were verified and nothing in its
    /// project changed since.
    pub fn outputs_known_ok(&self, model: &Arc<Model>, n: usize, key: &str) -> bool {
        let Ok(m) = self.inputs_memo.lock() else {
            return false;
        };
        m.model.as_ref().is_some_and(|mm| Arc::ptr_eq(mm, model))
            && m.outputs_ok.get(&n).is_some_and(|k| k == key)
    }

    /// Records that node `n`'s outputs match `key` on disk. Call only after
    /// [`Hot::watch_outputs`] and then the check, so no change can slip between.
    pub fn set_outputs_ok(&self, model: &Arc<Model>, n: usize, key: &str) {
        let Ok(mut m) = self.inputs_memo.lock() else {
            return;
        };
        m.for_model(model);
        m.outputs_ok.insert(n, key.to_string());
    }

    /// Watches the directories that hold a task's outputs (they are usually
    /// ignored, so not watched otherwise): every directory from the project
    /// down to each output base, and everything below the bases.
    pub fn watch_outputs(&self, project_dir: &Path, bases: &[String]) {
        for base in bases {
            let mut cur = project_dir.to_path_buf();
            for comp in base.split('/') {
                if !cur.is_dir() {
                    break;
                }
                self.watch_dir(&cur);
                cur.push(comp);
            }
            let mut stack = vec![cur];
            while let Some(d) = stack.pop() {
                if !d.is_dir() {
                    continue;
                }
                self.watch_dir(&d);
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
        }
    }

    /// Persists what the file index learned (after a run).
    pub fn persist_index(&self) {
        if let Ok(store) = self.store() {
            store.save_file_index(self.index.take_updates());
        }
    }
}

impl Drop for Hot {
    fn drop(&mut self) {
        self.close_store();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_moves_paths_between_a_link_and_its_target() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                "vendor/b/src/x",
                "vendor/b",
                "packages/b",
                Some("packages/b/src/x"),
            ),
            ("vendor/b", "vendor/b", "packages/b", Some("packages/b")),
            ("vendor/bc/x", "vendor/b", "packages/b", None),
            ("other/x", "vendor/b", "packages/b", None),
        ];
        for (rel, from, to, want) in cases {
            assert_eq!(rebase(rel, from, to).as_deref(), *want, "{rel} {from} {to}");
        }
    }

    #[test]
    fn overlaps_is_component_wise_both_ways() {
        let cases = [
            ("shared/lib/x.txt", "shared/lib", true),
            ("shared", "shared/lib", true),
            ("shared/lib", "shared/lib", true),
            ("shared/library", "shared/lib", false),
            ("other", "shared/lib", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(a, b), want, "{a} {b}");
        }
    }

    /// The watcher and its watched set are one lock: adding and dropping
    /// watches from many threads at once (the daemon's watch thread drops a
    /// removed tree while runs watch output dirs) cannot deadlock.
    #[test]
    fn concurrent_watch_and_unwatch_finish() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        for i in 0..20 {
            std::fs::create_dir_all(root.join(format!("t/d{i}/e"))).unwrap();
        }
        let hot = Hot::start(&root).unwrap();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let (hot, root, tx) = (hot.clone(), root.clone(), tx.clone());
                std::thread::spawn(move || {
                    for round in 0..50 {
                        for i in 0..20 {
                            let dir = root.join(format!("t/d{i}"));
                            if (round + k) % 2 == 0 {
                                hot.watch_dir(&dir);
                                hot.watch_dir(&dir.join("e"));
                            } else {
                                hot.unwatch_tree(&dir);
                            }
                        }
                    }
                    let _ = tx.send(());
                })
            })
            .collect();
        for _ in 0..4 {
            assert!(
                rx.recv_timeout(Duration::from_secs(60)).is_ok(),
                "watch/unwatch deadlocked"
            );
        }
        for t in threads {
            t.join().unwrap();
        }
    }
}
