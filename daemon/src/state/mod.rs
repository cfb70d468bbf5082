//! `state` — the daemon's hot state for one workspace.
//!
//! Owns ([`Hot`]): the workspace model and task graph (rebuilt only when a
//! config or manifest changes), the file snapshot (every non-ignored file
//! with its stat, per project), the file index, the open cache store, and
//! bringing them up to date ([`Hot::sync`]); which workspace a request may
//! touch ([`request_workspace`]). Its parts, each a submodule: `watcher`
//! (the `notify` watcher, the cookie barrier and the change feed), `memo`
//! (what is remembered between runs to skip work) and `inflight`
//! (executions shared between concurrent runs). The watcher is a hint; the
//! truth is a rescan: before answering, [`Hot::sync`] writes a cookie file
//! and waits for its event, so every write made before the request is seen;
//! a queue overflow, a watcher error or a missed cookie triggers a full
//! rescan, never a guess. Projects whose files changed are re-walked with
//! the same walk the no-daemon path uses, so hot and cold snapshots agree.
//!
//! Never: executes tasks, uses the engine (it sits below it: the model it
//! keeps is `crate::model`'s), or speaks JSON-RPC. Every client of the
//! daemon (socket RPC now; HTTP, MCP and worker links later) goes through
//! this one copy of the state.
//!
//! Locks. Every `Mutex` of [`Hot`] is a leaf — held for a short section that
//! takes no other lock — with one exception: `inner`, which [`Hot::sync`]
//! holds while it reloads and re-walks, and under which it takes leaf locks
//! one at a time. No code takes `inner` while holding another lock, so no
//! cycle can form. The watcher and the set of watched directories are one
//! lock (`watcher::Watches`): two locks taken in opposite orders by
//! `watch_dir` and `unwatch_tree` once deadlocked the daemon (issue 9,
//! item 8).

mod inflight;
mod memo;
mod watcher;

pub use inflight::{Finished, Inflight};
pub use memo::RunAnswer;

use crate::cache::Store;
use crate::error::{EngineError, ErrorKind};
use crate::hash::{self, FileIndex};
use crate::model::{Model, Snapshot, cache_dir, load_workspace};
use crate::workspace::Workspace;
use memo::InputsMemo;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use watcher::{Dirty, LinkedProject, Watches, overlaps, rebase};

#[derive(Default)]
struct Inner {
    model: Option<Arc<Model>>,
    snapshot: Option<Snapshot>,
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
    /// Bumped after every change to the dirty set (see [`Hot::generation`]).
    generation: AtomicU64,
    /// Runs answered by replaying a kept answer (for `daemon.status`).
    pub runs_replayed: AtomicU64,
    /// Whole-run answers kept to be replayed, by request.
    answers: Mutex<memo::Answers>,
}

/// The cache directory the workspace's config names (validated: a refused
/// directory is never opened, so never created). `None` while the config does
/// not load; the daemon then opens no store until it does.
fn cache_dir_of(root: &Path) -> Option<PathBuf> {
    crate::workspace::load(root).ok().map(|ws| cache_dir(&ws))
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
            .and_then(|dir| Store::open_kept(&dir, Duration::from_secs(5), &mut || {}).ok())
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
            generation: AtomicU64::new(0),
            runs_replayed: AtomicU64::new(0),
            answers: Mutex::new(memo::Answers::default()),
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

    /// Changes the dirty set, then bumps the generation — in this order, so
    /// that whoever reads a generation before a [`Hot::sync`] takes the
    /// dirty set either finds the change in that set or a newer generation
    /// afterwards. Every change to the dirty set goes through here.
    fn mark_dirty(&self, f: impl FnOnce(&mut Dirty)) {
        if let Ok(mut d) = self.dirty.lock() {
            f(&mut d);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The hot state's generation: it moves whenever the watcher reports
    /// anything that can make [`Hot::sync`] see the workspace differently
    /// (a changed path, a watched output directory's change, an overflow,
    /// a watcher error, a directory it could not watch, a missed cookie).
    /// Equal generations read at two moments, each after a cookie barrier
    /// (see [`Hot::settled_generation`]), mean the model and the snapshot a
    /// sync returns did not change in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// [`Hot::generation`] once every event caused before this call has
    /// been delivered (the cookie barrier). Blocking.
    pub fn settled_generation(&self) -> u64 {
        self.touch();
        self.cookie_barrier();
        self.generation()
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
            .map_err(|_| EngineError::new(ErrorKind::Internal, "store lock poisoned"))?;
        if let Some(s) = g.as_ref() {
            // Another process may have changed the index since (a
            // foreground run, a prune, a clean): memoised entries go.
            s.refresh();
            return Ok(s.clone());
        }
        let dir = self.cache_dir();
        let s = Arc::new(Store::open_kept(
            &dir,
            Duration::from_secs(600),
            &mut || {
                tracing::warn!(
                    "waiting for another process using the cache at {}",
                    dir.display()
                );
            },
        )?);
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
            .and_then(|i| i.model.as_ref().map(|m| cache_dir(&m.ws)))
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

    /// Brings the model and the snapshot up to date with the disk and
    /// returns them. Blocking; call from a blocking thread.
    pub fn sync(&self) -> Result<(Arc<Model>, Snapshot), EngineError> {
        self.touch();
        self.cookie_barrier();
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| EngineError::new(ErrorKind::Internal, "state lock poisoned"))?;
        let dirty = {
            let mut d = self
                .dirty
                .lock()
                .map_err(|_| EngineError::new(ErrorKind::Internal, "dirty lock poisoned"))?;
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
                    self.mark_dirty(|d| {
                        d.model = true;
                        d.all = true;
                    });
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
            .ok_or_else(|| EngineError::new(ErrorKind::Internal, "no model"))?;
        let cache_skip = vec![cache_dir(&model.ws)];
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
            let (snap, ignored) = Snapshot::scan_with_ignored(&model, &cache_skip);
            self.watch_link_targets(&snap);
            self.watch_new_dirs(&ignored);
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
            // Sorted, so the walks' order does not depend on the hash set.
            let mut projects: Vec<Option<usize>> = projects.into_iter().collect();
            projects.sort_unstable();
            // A new ignored directory there may hold global inputs.
            let ignored = snap.refresh_many(&model, &projects, &cache_skip);
            self.watch_new_dirs(&ignored);
            if refreshed {
                self.watch_link_targets(snap);
            }
        }
        let snap = inner
            .snapshot
            .clone()
            .ok_or_else(|| EngineError::new(ErrorKind::Internal, "no snapshot"))?;
        self.set_counts(&inner);
        Ok((model, snap))
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

pub fn wrong_workspace(cwd: &Path, root: &Path, hot: &Hot) -> EngineError {
    EngineError::new(
        ErrorKind::WrongWorkspace,
        format!(
            "{} belongs to the workspace at {}, not this daemon's ({})",
            cwd.display(),
            root.display(),
            hot.root.display()
        ),
    )
    .with_data(serde_json::json!({ "root": root }))
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
