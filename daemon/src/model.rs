//! `model` — the loaded workspace and its files: what every stage reads.
//!
//! Owns: [`Model`] (the workspace, its task graph and the per-project
//! lookups walks need: owners, fences, compiled patterns, each task's
//! canonical config), [`Snapshot`] (every non-ignored file with its stat,
//! per project, and the symlinks among them), where a workspace's cache
//! lives ([`cache_dir`]) and loading a workspace from a `cwd`.
//! Never: hashes file contents, opens the cache, runs anything, or holds
//! state between requests (the daemon's `state` keeps a model; the
//! foreground engine builds one per run).

use crate::error::{EngineError, ErrorKind};
use crate::globs::Patterns;
use crate::graph::TaskGraph;
use crate::hash::{self, FileMeta, KeyParts, TaskPatterns};
use crate::workspace::{self, Workspace};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vx_proto::knobs;

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
    /// Canonical JSON of each task's resolved config (folded into its key).
    /// Only the text: a key fold's prefix state ([`Model::key_prefix`]) is
    /// ~1.9 KB (a blake3 hasher), which kept per node was 5.7 MiB of a
    /// daemon's memory at 3,000 tasks; it is re-derived per fold instead.
    config_json: Vec<std::sync::OnceLock<Arc<str>>>,
    /// Compiled patterns by (inputs, root inputs, outputs) lists.
    patterns: Mutex<HashMap<PatternLists, Arc<TaskPatterns>>>,
    /// The same, per graph node.
    node_patterns: Vec<std::sync::OnceLock<Arc<TaskPatterns>>>,
    by_dir: HashMap<String, usize>,
    /// Root-relative dirs of nested projects, per project (walk fences).
    fences: Vec<HashSet<String>>,
    /// The same, project-relative (for output walks).
    pub(crate) rel_fences: Vec<HashSet<String>>,
    /// The workspace's declared global inputs (`globalDependencies`,
    /// `global_inputs`), which select gitignored files too, as turbo's do.
    global: Option<crate::globs::Patterns>,
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
        let global = (!ws.global.inputs.is_empty())
            .then(|| crate::globs::Patterns::new(&ws.global.inputs).ok())
            .flatten();
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
            global,
        }
    }

    /// The declared global input patterns, when there are any (see
    /// [`Snapshot::scan`]: they select gitignored files too).
    pub fn global_patterns(&self) -> Option<&crate::globs::Patterns> {
        self.global.as_ref()
    }

    /// The canonical JSON of node `n`'s resolved config and the global
    /// config.
    pub fn config_json(&self, n: usize) -> &Arc<str> {
        self.config_json[n].get_or_init(|| {
            #[derive(serde::Serialize)]
            struct ConfigView<'a> {
                task: &'a crate::workspace::TaskDef,
                global: &'a crate::workspace::GlobalConfig,
            }
            let node = &self.graph.nodes[n];
            serde_json::to_string(&ConfigView {
                task: &node.def,
                global: &self.ws.global,
            })
            .unwrap_or_default()
            .into()
        })
    }

    /// The key fold's state after node `n`'s constant parts (its id, config
    /// and command): what [`KeyParts::fold_from`] continues from.
    pub fn key_prefix(&self, n: usize) -> blake3::Hasher {
        let node = &self.graph.nodes[n];
        KeyParts::prefix(
            &node.id,
            self.config_json(n),
            node.def.command.as_deref().unwrap_or(""),
        )
    }

    /// The compiled patterns of node `n` (compiled once per distinct list).
    pub(crate) fn patterns_of(&self, n: usize) -> Result<Arc<TaskPatterns>, EngineError> {
        if let Some(tp) = self.node_patterns[n].get() {
            return Ok(tp.clone());
        }
        let d = &self.graph.nodes[n].def;
        let k = (d.inputs.clone(), d.root_inputs.clone(), d.outputs.clone());
        let cached = self.patterns.lock().ok().and_then(|m| m.get(&k).cloned());
        let tp = match cached {
            Some(tp) => tp,
            None => {
                let cfg =
                    |e: crate::globs::GlobError| EngineError::new(ErrorKind::Config, e.to_string());
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
    pub(crate) fn all_project_dirs(&self) -> HashSet<String> {
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
    pub(crate) by_project: Vec<Arc<Vec<FileMeta>>>,
    /// Files that belong to no project.
    pub(crate) loose: Arc<Vec<FileMeta>>,
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

/// Whether the walk of the root listed a file below the member directory
/// `dir` (root-relative): then it descended into `dir` through real
/// directories only (a link to a directory is listed as a file and never
/// entered), so `dir` is not reached through a link.
fn walked_into(files: &[FileMeta], dir: &str) -> bool {
    dir != "."
        && files
            .iter()
            .any(|f| f.path.strip_prefix(dir).is_some_and(|r| r.starts_with('/')))
}

impl Snapshot {
    /// One parallel walk of the whole workspace.
    pub fn scan(model: &Model, skip: &[PathBuf]) -> Snapshot {
        Snapshot::scan_with_ignored(model, skip).0
    }

    /// [`Snapshot::scan`], and the ignored directories the walk for global
    /// inputs entered (none when the workspace declares none): the daemon
    /// watches them.
    pub fn scan_with_ignored(model: &Model, skip: &[PathBuf]) -> (Snapshot, Vec<PathBuf>) {
        let root = &model.ws.root;
        let mut files = hash::walk(root, root, &HashSet::new(), skip);
        let mut ignored_dirs = Vec::new();
        if let Some(global) = model.global_patterns() {
            let (extra, dirs) =
                hash::walk_ignored(root, root, &HashSet::new(), skip, &|p| global.matches(p));
            files = hash::merged(files, extra);
            ignored_dirs = dirs;
        }
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
        // A file the walk found below a member's directory proves every
        // component of it a real directory (the walk follows no link), so
        // only the members it found nothing in are looked at (one `lstat`
        // per component each).
        for (p, proj) in model.ws.projects.iter().enumerate() {
            if !walked_into(&by_project[p], &proj.dir) && hash::through_link(root, &proj.dir) {
                let dir = model.ws.abs_dir(proj);
                by_project[p] = hash::walk(root, &dir, &model.fences[p], skip);
            }
        }
        let snap = Snapshot {
            links: by_project.iter().map(|v| links_of(v)).collect(),
            loose_links: links_of(&loose),
            by_project: by_project.into_iter().map(Arc::new).collect(),
            loose: Arc::new(loose),
        };
        (snap, ignored_dirs)
    }

    /// Re-walks one project (or, for `None`, the files outside every
    /// project). Returns the ignored directories the walk for global inputs
    /// entered (none when the workspace declares none).
    pub fn refresh(
        &mut self,
        model: &Model,
        project: Option<usize>,
        skip: &[PathBuf],
    ) -> Vec<PathBuf> {
        let (files, ignored) = Snapshot::walk_part(model, project, skip);
        self.set_part(project, files);
        ignored
    }

    /// [`Snapshot::refresh`] of many projects, their walks spread over the
    /// walk threads (`VX_WALK_THREADS`): after `rm -rf packages/*/dist` a
    /// daemon re-walks a thousand small projects, one walk each, and one
    /// thread left the cores idle. Returns every walk's ignored directories.
    pub fn refresh_many(
        &mut self,
        model: &Model,
        projects: &[Option<usize>],
        skip: &[PathBuf],
    ) -> Vec<PathBuf> {
        let threads = hash::walk_threads().max(1);
        if projects.len() < 2 || threads == 1 {
            return projects
                .iter()
                .flat_map(|p| self.refresh(model, *p, skip))
                .collect();
        }
        let chunk = projects.len().div_ceil(threads);
        let walked: Vec<(Option<usize>, Vec<FileMeta>, Vec<PathBuf>)> = std::thread::scope(|s| {
            let parts: Vec<_> = projects
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|p| {
                                let (files, ignored) = Snapshot::walk_part(model, *p, skip);
                                (*p, files, ignored)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                // A walk does not panic on a bad file (it skips it); a
                // panic here is a bug, and re-walking serially is right.
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut ignored_dirs = Vec::new();
        let mut done = HashSet::new();
        for (p, files, ignored) in walked {
            done.insert(p);
            self.set_part(p, files);
            ignored_dirs.extend(ignored);
        }
        for p in projects {
            if !done.contains(p) {
                ignored_dirs.extend(self.refresh(model, *p, skip));
            }
        }
        ignored_dirs
    }

    /// The walk [`Snapshot::refresh`] does, without applying it: the files
    /// of `project` (or of no project) and the ignored directories entered.
    fn walk_part(
        model: &Model,
        project: Option<usize>,
        skip: &[PathBuf],
    ) -> (Vec<FileMeta>, Vec<PathBuf>) {
        let root = &model.ws.root;
        let all;
        let (dir, fence, serial) = match project {
            Some(p) => (
                model.ws.abs_dir(&model.ws.projects[p]),
                &model.fences[p],
                true,
            ),
            None => {
                all = model.all_project_dirs();
                (root.to_path_buf(), &all, false)
            }
        };
        let mut files = if serial {
            hash::walk_serial(root, &dir, fence, skip)
        } else {
            hash::walk(root, &dir, fence, skip)
        };
        let mut ignored_dirs = Vec::new();
        if let Some(global) = model.global_patterns() {
            let (extra, dirs) = hash::walk_ignored(root, &dir, fence, skip, &|f| global.matches(f));
            files = hash::merged(files, extra);
            ignored_dirs = dirs;
        }
        (files, ignored_dirs)
    }

    /// Replaces the files of `project` (or of no project) with a walk's.
    fn set_part(&mut self, project: Option<usize>, files: Vec<FileMeta>) {
        match project {
            Some(p) => {
                if p >= self.by_project.len() {
                    return;
                }
                self.by_project[p] = Arc::new(files);
                if let Some(l) = self.links.get_mut(p) {
                    *l = links_of(&self.by_project[p]);
                }
            }
            None => {
                self.loose = Arc::new(files);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_known_entered_by_a_file_below_its_directory() {
        let file = |path: &str, link: hash::Link| FileMeta {
            path: path.into(),
            stat: hash::FileStat {
                size: 0,
                mtime_ns: 0,
                ino: 0,
                mode: 0,
            },
            link,
            non_utf8: false,
        };
        type Listed<'a> = &'a [(&'a str, hash::Link)];
        let cases: &[(Listed, &str, bool)] = &[
            (
                &[("packages/a/src/x.js", hash::Link::No)],
                "packages/a",
                true,
            ),
            (
                &[("packages/a/package.json", hash::Link::No)],
                "packages/a",
                true,
            ),
            // The member's directory itself listed: a link, never entered.
            (
                &[("packages/a", hash::Link::Dir("real/a".into()))],
                "packages/a",
                false,
            ),
            (&[("packages/ab/x.js", hash::Link::No)], "packages/a", false),
            (&[], "packages/a", false),
            // The root is never reached through a link (and never asked).
            (&[("x.js", hash::Link::No)], ".", false),
        ];
        for (files, dir, want) in cases {
            let files: Vec<FileMeta> = files.iter().map(|(p, l)| file(p, l.clone())).collect();
            assert_eq!(walked_into(&files, dir), *want, "{dir} {files:?}");
        }
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// (path, size) of every file of the snapshot, per project and loose.
    fn listing(s: &Snapshot) -> Vec<Vec<(String, u64)>> {
        s.by_project
            .iter()
            .chain(std::iter::once(&s.loose))
            .map(|v| v.iter().map(|f| (f.path.clone(), f.stat.size)).collect())
            .collect()
    }

    // After files change in many projects (and outside every project), the
    // parallel re-walk of those projects leaves the same snapshot as a
    // fresh scan, and as re-walking them one by one.
    #[test]
    fn refresh_many_equals_a_fresh_scan() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let n = 24;
        let members: Vec<String> = (0..n).map(|i| format!("\"p{i}\"")).collect();
        write(
            root,
            "vx.toml",
            &format!("[workspace]\nmembers = [{}]\n", members.join(", ")),
        );
        for i in 0..n {
            write(
                root,
                &format!("p{i}/vx.toml"),
                &format!("[project]\nname = \"p{i}\"\n\n[tasks.build]\ncommand = \"true\"\n"),
            );
            write(root, &format!("p{i}/src/a.txt"), "a\n");
            write(root, &format!("p{i}/dist/out.txt"), "out\n");
        }
        write(root, "README.md", "hi\n");
        let model = Model::load(root).unwrap();
        let skip = vec![cache_dir(&model.ws)];
        let mut many = Snapshot::scan(&model, &skip);
        let mut one_by_one = many.clone();
        // Every other project loses its dist/, every third gains a file,
        // and a loose file appears.
        for i in (0..n).step_by(2) {
            std::fs::remove_dir_all(root.join(format!("p{i}/dist"))).unwrap();
        }
        for i in (0..n).step_by(3) {
            write(root, &format!("p{i}/src/new.txt"), "new file\n");
        }
        write(root, "NOTES.md", "notes\n");
        let mut dirty: Vec<Option<usize>> = (0..n)
            .filter(|i| i % 2 == 0 || i % 3 == 0)
            .map(|i| model.owner_of(&format!("p{i}/src/a.txt")))
            .collect();
        dirty.push(None);
        many.refresh_many(&model, &dirty, &skip);
        for p in &dirty {
            one_by_one.refresh(&model, *p, &skip);
        }
        let fresh = Snapshot::scan(&model, &skip);
        assert_eq!(listing(&many), listing(&fresh));
        assert_eq!(listing(&one_by_one), listing(&fresh));
        assert_eq!(many.file_count(), fresh.file_count());
    }
}
