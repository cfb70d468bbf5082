//! `hash` — the file index and task keys.
//!
//! Owns: walking the workspace (honouring git's ignore files from the
//! repository holding the workspace down, see [`ignore_boundary`]; never
//! `.git`, `.vx` or `node_modules`), the file index (path → size, mtime, inode, blake3 of
//! the content) that lets a run skip re-reading unchanged files, resolving a
//! task's input set, and folding a task key. The key fold is specified in
//! `docs/caching.md`; change both together and bump [`CACHE_VERSION`].
//! Also what a symlink found by the walk stands for ([`Link`]: hashed by
//! its target's content when the target is inside the workspace, by its
//! link text otherwise) and the one rule for file names that are not UTF-8
//! ([`utf8_rel`]: vx refuses them, naming the path escaped).
//!
//! Never: decides what runs (`graph`), writes outside memory (the index is
//! persisted by the caller through `cache`), spawns a process, or applies
//! an ignore file from above the boundary (a `~/.gitignore` of `*` would
//! hide every input).

use crate::globs::Patterns;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Folded first into every key; bump on any change to the fold, the
/// artifact layout or the meaning of a config field.
pub const CACHE_VERSION: &str = "vx-cache-v1";

/// A file is "racy" while its mtime is this close to now: its hash is
/// recomputed on every look-up and never persisted (git's racy-clean rule).
const RACY_NS: i64 = 2_000_000_000;

/// Directory names never walked.
pub const ALWAYS_SKIPPED: &[&str] = &[".git", ".vx", "node_modules"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub mode: u32,
}

impl FileStat {
    pub fn of(md: &fs::Metadata) -> Self {
        FileStat {
            size: md.len(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ino: md.ino(),
            mode: md.mode(),
        }
    }
}

/// What a symlink found by a walk points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not a symlink.
    No,
    /// A symlink to a file inside the workspace (root-relative real path):
    /// hashed by that file's content; [`FileMeta::stat`] is the target's.
    File(String),
    /// A symlink to a directory inside the workspace (root-relative real
    /// path): hashed by the tree under it.
    Dir(String),
    /// A symlink to a path outside the workspace: hashed by its link text,
    /// so an edit of the target is not seen (`--dry` flags it).
    Outside,
    /// A symlink whose target does not exist: hashed by its link text. With
    /// the root-relative path it names, if that lies inside the workspace
    /// (the daemon re-walks the link's owner when something appears there).
    Dangling(Option<String>),
}

/// One file found by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Root-relative, `/`-separated. For a name that is not valid UTF-8
    /// (see `non_utf8`), the path with every invalid byte escaped as `\xNN`.
    pub path: String,
    pub stat: FileStat,
    pub link: Link,
    /// The path is not valid UTF-8: vx refuses it as an input.
    pub non_utf8: bool,
}

/// A root-relative path that is not valid UTF-8 (shown escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "file name is not valid UTF-8: {escaped} — vx refuses such names; rename it or add it to .gitignore"
)]
pub struct NonUtf8 {
    /// The path with each invalid byte written as `\xNN`.
    pub escaped: String,
}

/// `path` as text, or the error naming it escaped. The one rule for file
/// names in keys, manifests and archives: vx handles UTF-8 names only and
/// refuses the others loudly (never a lossy conversion, which would merge
/// distinct names).
pub fn utf8_rel(path: &Path) -> Result<&str, NonUtf8> {
    path.to_str().ok_or_else(|| NonUtf8 {
        escaped: escape_path(path),
    })
}

/// `path` with every byte that is not part of valid UTF-8 written as `\xNN`
/// (and a literal backslash doubled, so the escape is unambiguous).
pub fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Whether the project directory `dir` (root-relative) is reached through
/// a symlink: some component of it, below the root, is a link. Such a
/// project is not entered by the walk of the root (it never follows links)
/// and is walked on its own, through the link.
pub fn through_link(root: &Path, dir: &str) -> bool {
    if dir == "." {
        return false;
    }
    let mut cur = root.to_path_buf();
    for comp in dir.split('/') {
        cur.push(comp);
        if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// Threads of a walk: `VX_WALK_THREADS`, else the cores (at most 8).
pub(crate) fn walk_threads() -> usize {
    vx_proto::knobs::WALK_THREADS
        .get_process()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(8)
        })
}

/// Walks `dir` (absolute, inside `root`), returning root-relative files.
/// `fence` holds root-relative directories not to enter (nested projects).
pub fn walk(
    root: &Path,
    dir: &Path,
    fence: &HashSet<String>,
    skip: &[std::path::PathBuf],
) -> Vec<FileMeta> {
    walk_with(root, dir, fence, skip, false)
}

/// A walk on the calling thread only: for one small project, starting
/// walker threads costs more than the walk.
pub fn walk_serial(
    root: &Path,
    dir: &Path,
    fence: &HashSet<String>,
    skip: &[std::path::PathBuf],
) -> Vec<FileMeta> {
    walk_with(root, dir, fence, skip, true)
}

/// A walker of `dir` (absolute, lexically inside the workspace `root`).
///
/// Ignore files are git's, bounded by [`ignore_boundary`]: the walker reads
/// `.gitignore` (and a `.git`'s `info/exclude`) in `dir` and below itself;
/// those of the directories between `dir` and the boundary are added here,
/// each anchored at its own directory. Nothing above the boundary applies
/// (a `~/.gitignore` of `*` in a dotfiles repo must not hide a workspace's
/// files: git would not apply it to another repository either).
fn builder(root: &Path, dir: &Path) -> ignore::WalkBuilder {
    let mut b = ignore::WalkBuilder::new(dir);
    b.hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .parents(false)
        .ignore(false)
        .follow_links(false);
    for (anchor, file) in ancestor_ignores(root, dir) {
        // `add_ignore` anchors the file's patterns at the builder's current
        // directory when it is called (a pinned behaviour of the `ignore`
        // crate, covered by `ancestor_ignore_files_stop_at_the_boundary`).
        b.current_dir(&anchor);
        if let Some(e) = b.add_ignore(&file) {
            tracing::debug!("ignore file {}: {e}", file.display());
        }
    }
    b
}

/// The directory above which no ignore file applies to the workspace at
/// `root` (absolute, as loaded: canonical), with the git directory whose
/// `info/exclude` applies: the root of the git repository holding `root`
/// (the nearest ancestor-or-self with a `.git` directory or file), or
/// `root` itself when it is in no repository.
fn ignore_boundary(root: &Path) -> (std::path::PathBuf, Option<std::path::PathBuf>) {
    for d in root.ancestors() {
        let dot_git = d.join(".git");
        match fs::metadata(&dot_git) {
            Ok(md) if md.is_dir() => return (d.to_path_buf(), Some(dot_git)),
            Ok(md) if md.is_file() => return (d.to_path_buf(), git_common_dir(&dot_git)),
            _ => {}
        }
    }
    (root.to_path_buf(), None)
}

/// The common git directory named by a `.git` file (a linked worktree's or
/// a submodule's `gitdir: <path>`, then its `commondir` if any): where
/// `info/exclude` lives.
fn git_common_dir(dot_git: &Path) -> Option<std::path::PathBuf> {
    let text = fs::read_to_string(dot_git).ok()?;
    let gitdir = text.lines().next()?.strip_prefix("gitdir: ")?.trim_end();
    let gitdir = dot_git.parent()?.join(gitdir);
    match fs::read_to_string(gitdir.join("commondir")) {
        Ok(c) => Some(gitdir.join(c.lines().next()?.trim_end())),
        Err(_) => Some(gitdir),
    }
}

/// The ignore files a walk of `dir` must add itself, lowest precedence
/// first, each with the directory its patterns are anchored at: the
/// repository's `info/exclude`, then the `.gitignore` of each directory
/// from the boundary down to `dir`'s parent (a nearer file wins, as in
/// git). The exclude is added even when `dir` is the repository root,
/// where the walker reads it too (the same rules twice match alike): the
/// walker resolves a `.git` file's relative `gitdir:` against the process's
/// working directory and skips a submodule's; [`git_common_dir`] does not.
/// Directories are taken lexically (a member reached through a symlinked
/// directory sees the ignore files of the directories it is reached
/// through, as git sees the workspace).
fn ancestor_ignores(root: &Path, dir: &Path) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    if !dir.starts_with(root) {
        return Vec::new();
    }
    let (boundary, git_dir) = ignore_boundary(root);
    let mut out = Vec::new();
    if let Some(g) = git_dir {
        let exclude = g.join("info/exclude");
        if exclude.is_file() {
            out.push((boundary.clone(), exclude));
        }
    }
    // `dir`'s ancestors up to the boundary, nearest first.
    let above: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(&boundary))
        .collect();
    for a in above.into_iter().rev() {
        let gi = a.join(".gitignore");
        if gi.is_file() {
            out.push((a.to_path_buf(), gi));
        }
    }
    out
}

enum Visit {
    Skip,
    Continue,
    File(FileMeta),
}

/// The workspace root as the walk sees it and resolved (for link targets).
#[derive(Clone)]
struct Roots {
    root: std::path::PathBuf,
    real: std::path::PathBuf,
}

impl Roots {
    fn new(root: &Path) -> Self {
        Roots {
            root: root.to_path_buf(),
            real: fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
        }
    }
}

/// What the symlink at `path` stands for (see [`Link`]).
fn classify_link(path: &Path, roots: &Roots) -> (Link, Option<fs::Metadata>) {
    let Ok(real) = fs::canonicalize(path) else {
        return (Link::Dangling(lexical_target(path, roots)), None);
    };
    let Ok(rel) = real.strip_prefix(&roots.real) else {
        return (Link::Outside, None);
    };
    let Some(rel) = rel.to_str() else {
        // A target with a name vx cannot key: treat it like a far target.
        return (Link::Outside, None);
    };
    let rel = if rel.is_empty() { "." } else { rel }.to_string();
    match fs::metadata(&real) {
        Ok(md) if md.is_dir() => (Link::Dir(rel), None),
        Ok(md) => (Link::File(rel), Some(md)),
        Err(_) => (Link::Dangling(lexical_target(path, roots)), None),
    }
}

/// The root-relative path a dangling link names, resolved lexically from
/// its directory, if it stays inside the workspace.
fn lexical_target(path: &Path, roots: &Roots) -> Option<String> {
    let text = fs::read_link(path).ok()?;
    let base = path.parent()?.strip_prefix(&roots.root).ok()?;
    let mut out: Vec<&str> = base
        .to_str()?
        .split('/')
        .filter(|c| !c.is_empty())
        .collect();
    if text.is_absolute() {
        let rel = text.strip_prefix(&roots.real).ok()?;
        return rel.to_str().map(str::to_string);
    }
    for comp in text.to_str()?.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn visit(
    entry: Result<ignore::DirEntry, ignore::Error>,
    roots: &Roots,
    fence: &HashSet<String>,
    skip: &[std::path::PathBuf],
) -> Visit {
    let Ok(entry) = entry else {
        return Visit::Continue;
    };
    let Some(ft) = entry.file_type() else {
        return Visit::Continue;
    };
    let path = entry.path();
    let (rel, non_utf8) = match path.strip_prefix(&roots.root) {
        Ok(r) => match utf8_rel(r) {
            Ok(r) => (r.to_string(), false),
            Err(e) => (e.escaped, true),
        },
        Err(_) => return Visit::Continue,
    };
    if ft.is_dir() {
        let name = entry.file_name().to_string_lossy();
        if entry.depth() > 0
            && (ALWAYS_SKIPPED.contains(&name.as_ref())
                || fence.contains(&rel)
                || skip.iter().any(|s| s == path))
        {
            return Visit::Skip;
        }
        return Visit::Continue;
    }
    // A `.git` file (a linked worktree's or a submodule's pointer to its
    // git directory) is git's, never content.
    if entry.file_name() == ".git" {
        return Visit::Continue;
    }
    let (link, md) = if ft.is_symlink() {
        // The walk's own start, reached through a link (a linked project):
        // the walker descends into it; it is not a file.
        if entry.depth() == 0 {
            return Visit::Continue;
        }
        // A link to a nested project's directory is that project (walked
        // on its own, through the link), not a file of this walk.
        if fence.contains(&rel) {
            return Visit::Continue;
        }
        let (link, target_md) = classify_link(path, roots);
        // A link to a file is keyed on its target's stat (so an edit of the
        // target is seen); any other link on its own.
        let md = match target_md {
            Some(md) => Ok(md),
            None => fs::symlink_metadata(path),
        };
        (link, md)
    } else {
        (Link::No, entry.metadata().map_err(std::io::Error::other))
    };
    match md {
        Ok(md) => Visit::File(FileMeta {
            path: rel,
            stat: FileStat::of(&md),
            link,
            non_utf8,
        }),
        Err(_) => Visit::Continue,
    }
}

fn walk_with(
    root: &Path,
    dir: &Path,
    fence: &HashSet<String>,
    skip: &[std::path::PathBuf],
    serial: bool,
) -> Vec<FileMeta> {
    let mut files = Vec::new();
    let roots = Roots::new(root);
    if serial {
        let (roots2, fence2, skip2) = (roots.clone(), fence.clone(), skip.to_vec());
        let walker = builder(root, dir)
            .filter_entry(move |e| {
                !(e.file_type().is_some_and(|t| t.is_dir())
                    && matches!(visit(Ok(e.clone()), &roots2, &fence2, &skip2), Visit::Skip))
            })
            .build();
        for entry in walker {
            if let Visit::File(f) = visit(entry, &roots, fence, skip) {
                files.push(f);
            }
        }
    } else {
        struct Flush<'a>(&'a Mutex<Vec<FileMeta>>, Vec<FileMeta>);
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                if let Ok(mut g) = self.0.lock() {
                    g.append(&mut self.1);
                }
            }
        }
        let out = Mutex::new(Vec::new());
        builder(root, dir)
            .threads(walk_threads())
            .build_parallel()
            .run(|| {
                let mut flush = Flush(&out, Vec::new());
                let roots = &roots;
                Box::new(move |entry| match visit(entry, roots, fence, skip) {
                    Visit::Skip => ignore::WalkState::Skip,
                    Visit::Continue => ignore::WalkState::Continue,
                    Visit::File(f) => {
                        flush.1.push(f);
                        ignore::WalkState::Continue
                    }
                })
            });
        files = out.into_inner().unwrap_or_default();
    }
    files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The files under `dir` that git ignores and `keep` selects (by their
/// root-relative path), and every directory the walk entered: turbo keys a
/// gitignored file its `globalDependencies` name (`**/.env.*local`), which
/// [`walk`] never lists, and the daemon watches the directories such a file
/// may appear in. Walks what git ignores too (not `.git`, `.vx`,
/// `node_modules`, the fence or `skip`), on the calling thread.
pub fn walk_ignored(
    root: &Path,
    dir: &Path,
    fence: &HashSet<String>,
    skip: &[std::path::PathBuf],
    keep: &dyn Fn(&str) -> bool,
) -> (Vec<FileMeta>, Vec<std::path::PathBuf>) {
    let roots = Roots::new(root);
    let (roots2, fence2, skip2) = (roots.clone(), fence.clone(), skip.to_vec());
    let mut b = ignore::WalkBuilder::new(dir);
    b.hidden(false)
        .git_ignore(false)
        .git_exclude(false)
        .git_global(false)
        .require_git(false)
        .parents(false)
        .ignore(false)
        .follow_links(false)
        .filter_entry(move |e| {
            !(e.file_type().is_some_and(|t| t.is_dir())
                && matches!(visit(Ok(e.clone()), &roots2, &fence2, &skip2), Visit::Skip))
        });
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for entry in b.build() {
        if let Ok(e) = &entry
            && e.file_type().is_some_and(|t| t.is_dir())
        {
            dirs.push(e.path().to_path_buf());
        }
        if let Visit::File(f) = visit(entry, &roots, fence, skip)
            && keep(&f.path)
        {
            files.push(f);
        }
    }
    files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    (files, dirs)
}

/// `list` (sorted by path) with the files of `extra` it lacks, sorted.
pub fn merged(list: Vec<FileMeta>, extra: Vec<FileMeta>) -> Vec<FileMeta> {
    if extra.is_empty() {
        return list;
    }
    let have: HashSet<String> = list.iter().map(|f| f.path.clone()).collect();
    let mut out = list;
    out.extend(extra.into_iter().filter(|f| !have.contains(&f.path)));
    out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Every directory under `dir` (inclusive) that a walk would enter: not
/// ignored, not `.git`/`.vx`/`node_modules`. The daemon watches these.
/// `root` is the workspace root (see [`builder`] for the ignore files).
pub fn walk_dirs(root: &Path, dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let walker = builder(root, dir)
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            !(e.depth() > 0
                && e.file_type().is_some_and(|t| t.is_dir())
                && ALWAYS_SKIPPED.contains(&name.as_ref()))
        })
        .build();
    for e in walker.flatten() {
        if e.file_type().is_some_and(|t| t.is_dir()) {
            out.push(e.into_path());
        }
    }
    out
}

/// Whether the (non-ignored) tree under `dir` holds a file with one of `names`.
pub fn walk_files_named(root: &Path, dir: &Path, names: &[&str]) -> bool {
    builder(root, dir)
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            !(e.depth() > 0 && ALWAYS_SKIPPED.contains(&name.as_ref()))
        })
        .build()
        .flatten()
        .any(|e| {
            e.file_type().is_some_and(|t| t.is_file())
                && names.contains(&e.file_name().to_string_lossy().as_ref())
        })
}

/// Whether a walk of the parent directory would enter `dir` (it is not
/// ignored and not one of the always-skipped names).
pub fn is_walked_dir(root: &Path, dir: &Path) -> bool {
    let Some(parent) = dir.parent() else {
        return true;
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if ALWAYS_SKIPPED.contains(&name.as_str()) {
        return false;
    }
    builder(root, parent)
        .max_depth(Some(1))
        .build()
        .flatten()
        .any(|e| e.depth() == 1 && e.path() == dir)
}

/// A persisted file-index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub stat: FileStat,
    pub hash: [u8; 32],
}

impl Record {
    pub const LEN: usize = 8 + 8 + 8 + 4 + 32;
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.stat.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.stat.mtime_ns.to_le_bytes());
        b[16..24].copy_from_slice(&self.stat.ino.to_le_bytes());
        b[24..28].copy_from_slice(&self.stat.mode.to_le_bytes());
        b[28..60].copy_from_slice(&self.hash);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[28..60]);
        Some(Record {
            stat: FileStat {
                size: u64_at(0),
                mtime_ns: u64_at(8) as i64,
                ino: u64_at(16),
                mode: u32::from_le_bytes(b[24..28].try_into().unwrap_or([0; 4])),
            },
            hash,
        })
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The file index: content hashes memoised on stat.
#[derive(Debug, Default)]
pub struct FileIndex {
    records: RwLock<HashMap<String, Record>>,
    updates: Mutex<Vec<(String, Record)>>,
}

impl FileIndex {
    pub fn from_records(records: impl IntoIterator<Item = (String, Record)>) -> Self {
        FileIndex {
            records: RwLock::new(records.into_iter().collect()),
            updates: Mutex::new(Vec::new()),
        }
    }

    /// Records learned since the last call (to persist).
    pub fn take_updates(&self) -> Vec<(String, Record)> {
        self.updates
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }

    /// The content hash of `f`, read from disk unless the index already
    /// knows this exact stat. Unreadable files hash as their error text, so
    /// that a permission change still changes the key. A symlink into the
    /// workspace hashes as its target's content (a directory: its tree); any
    /// other symlink as its link text.
    pub fn hash(&self, root: &Path, f: &FileMeta) -> [u8; 32] {
        if f.non_utf8 {
            // Never read: its name is refused as an input (see `utf8_rel`).
            return *blake3::hash(b"non-utf8 name").as_bytes();
        }
        if let Link::Dir(target) = &f.link {
            // No stat covers a tree: hashed from its files each time (each
            // of those memoised on its own stat).
            return self.tree_hash(root, target);
        }
        if let Ok(map) = self.records.read()
            && let Some(r) = map.get(&f.path)
            && r.stat == f.stat
        {
            return r.hash;
        }
        let abs = root.join(&f.path);
        let hash = match &f.link {
            Link::Outside | Link::Dangling(_) => link_text_hash(&abs),
            // `File` reads through the link: its target's content.
            _ => match hash_file(&abs) {
                Ok(h) => h,
                Err(e) => *blake3::hash(format!("unreadable: {}", e.kind()).as_bytes()).as_bytes(),
            },
        };
        if now_ns() - f.stat.mtime_ns > RACY_NS {
            let rec = Record { stat: f.stat, hash };
            if let Ok(mut map) = self.records.write() {
                map.insert(f.path.clone(), rec);
            }
            if let Ok(mut u) = self.updates.lock() {
                u.push((f.path.clone(), rec));
            }
        }
        hash
    }

    /// The hash of the tree under `target` (a root-relative directory): its
    /// walked files in path order, each as (path under `target`, hash).
    /// Directory links inside it hash by their link text (no recursion, so
    /// a link cycle cannot loop).
    fn tree_hash(&self, root: &Path, target: &str) -> [u8; 32] {
        let dir = if target == "." {
            root.to_path_buf()
        } else {
            root.join(target)
        };
        let mut h = blake3::Hasher::new();
        h.update(b"symlink-dir\0");
        for f in walk_serial(root, &dir, &HashSet::new(), &[]) {
            let rel = if target == "." {
                f.path.as_str()
            } else {
                f.path
                    .strip_prefix(target)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(&f.path)
            };
            let fh = match f.link {
                Link::Dir(_) => link_text_hash(&root.join(&f.path)),
                _ => self.hash(root, &f),
            };
            put(&mut h, rel.as_bytes());
            put(&mut h, &fh);
        }
        *h.finalize().as_bytes()
    }

    /// Hashes many files on all cores (warming the index).
    pub fn hash_all(&self, root: &Path, files: &[&FileMeta]) {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let chunk = files.len().div_ceil(threads).max(64);
        std::thread::scope(|s| {
            for part in files.chunks(chunk) {
                s.spawn(move || {
                    for f in part {
                        self.hash(root, f);
                    }
                });
            }
        });
    }
}

/// A symlink hashed by its link text: `blake3("symlink\0" + target)`.
fn link_text_hash(abs: &Path) -> [u8; 32] {
    use std::os::unix::ffi::OsStrExt;
    match fs::read_link(abs) {
        Ok(t) => {
            let mut h = blake3::Hasher::new();
            h.update(b"symlink\0");
            h.update(t.as_os_str().as_bytes());
            *h.finalize().as_bytes()
        }
        Err(e) => *blake3::hash(format!("unreadable: {e}").as_bytes()).as_bytes(),
    }
}

/// blake3 of a file's bytes (streamed).
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

/// Everything folded into a key, in fold order. Also the fingerprint shown
/// by `--dry=json` and kept for explaining misses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyParts {
    pub task: String,
    /// Canonical JSON of the resolved task config and the global config.
    pub config: std::sync::Arc<str>,
    pub command: String,
    pub args: Vec<String>,
    /// Keyed env names with their values (`None` = unset), sorted by name.
    pub env: Vec<(String, Option<String>)>,
    /// Keys of the direct upstream tasks, sorted.
    pub upstream: Vec<String>,
    /// (root-relative path, blake3 hex of its content), sorted by path.
    pub inputs: std::sync::Arc<Vec<(String, String)>>,
    /// Key material from plugins: (plugin name, material), sorted by name.
    /// Folded only when not empty, so keys without plugins are unchanged.
    pub plugins: Vec<(String, String)>,
}

fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn label(h: &mut blake3::Hasher, name: &str, count: usize) {
    put(h, name.as_bytes());
    h.update(&(count as u64).to_le_bytes());
}

impl KeyParts {
    /// The task key: 64 hex digits of blake3 over the labelled,
    /// length-prefixed fold documented in `docs/caching.md`.
    pub fn fold(&self) -> String {
        self.fold_from(&Self::prefix(&self.task, &self.config, &self.command))
    }

    /// The fold's state after its per-task constant parts (version, task,
    /// config, command): computed once per task and reused by [`KeyParts::fold_from`].
    pub fn prefix(task: &str, config: &str, command: &str) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        label(&mut h, "version", 1);
        put(&mut h, CACHE_VERSION.as_bytes());
        label(&mut h, "task", 1);
        put(&mut h, task.as_bytes());
        label(&mut h, "config", 1);
        put(&mut h, config.as_bytes());
        label(&mut h, "command", 1);
        put(&mut h, command.as_bytes());
        h
    }

    /// The key, continuing from `prefix` (which must be
    /// `KeyParts::prefix(&self.task, &self.config, &self.command)`).
    pub fn fold_from(&self, prefix: &blake3::Hasher) -> String {
        let mut h = prefix.clone();
        label(&mut h, "args", self.args.len());
        for a in &self.args {
            put(&mut h, a.as_bytes());
        }
        label(&mut h, "env", self.env.len());
        for (name, value) in &self.env {
            put(&mut h, name.as_bytes());
            match value {
                None => {
                    h.update(&[0]);
                }
                Some(v) => {
                    h.update(&[1]);
                    put(&mut h, v.as_bytes());
                }
            }
        }
        label(&mut h, "upstream", self.upstream.len());
        for k in &self.upstream {
            put(&mut h, k.as_bytes());
        }
        label(&mut h, "inputs", self.inputs.len());
        for (p, d) in self.inputs.iter() {
            put(&mut h, p.as_bytes());
            put(&mut h, d.as_bytes());
        }
        if !self.plugins.is_empty() {
            label(&mut h, "plugins", self.plugins.len());
            for (name, material) in &self.plugins {
                put(&mut h, name.as_bytes());
                put(&mut h, material.as_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }
}

/// Resolves keyed env patterns against an environment: exact names give
/// `(name, value-or-unset)`, `*` patterns give every matching set name, and
/// `!pattern` removes names.
pub fn keyed_env(
    patterns: &[String],
    env: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>)> {
    let mut out: BTreeMap<String, Option<String>> = BTreeMap::new();
    for p in patterns {
        let (neg, body) = match p.strip_prefix('!') {
            Some(b) => (true, b),
            None => (false, p.as_str()),
        };
        if body.contains('*') {
            let Ok(g) = globset::Glob::new(body) else {
                continue;
            };
            let m = g.compile_matcher();
            if neg {
                out.retain(|k, _| !m.is_match(k));
            } else {
                for (k, v) in env {
                    if m.is_match(k) {
                        out.insert(k.clone(), Some(v.clone()));
                    }
                }
            }
        } else if neg {
            out.remove(body);
        } else {
            out.insert(body.to_string(), env.get(body).cloned());
        }
    }
    out.into_iter().collect()
}

/// Compiled input/output patterns of one task.
#[derive(Debug, Clone)]
pub struct TaskPatterns {
    pub inputs: Patterns,
    pub root_inputs: Patterns,
    pub outputs: Patterns,
}

/// Picks a task's input files among its project's files: those matching
/// `inputs` and not its own `outputs`. (Root-relative inputs and the global
/// inputs are added by the caller, which holds the whole snapshot.)
pub fn select_inputs<'a>(
    project_dir: &str,
    project_files: impl Iterator<Item = &'a FileMeta>,
    pats: &TaskPatterns,
) -> Vec<&'a FileMeta> {
    project_files
        .filter(|f| {
            project_rel(project_dir, &f.path)
                .is_some_and(|rel| pats.inputs.matches(rel) && !pats.outputs.matches(rel))
        })
        .collect()
}

/// `path` (root-relative) relative to the project at `project_dir`
/// (root-relative, `.` for the root project); `None` when it is not below it.
pub fn project_rel<'a>(project_dir: &str, path: &'a str) -> Option<&'a str> {
    if project_dir == "." {
        Some(path)
    } else {
        path.strip_prefix(project_dir)
            .and_then(|r| r.strip_prefix('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            task: "a#build".into(),
            config: "{}".into(),
            command: "make".into(),
            args: vec![],
            env: vec![("X".into(), None)],
            upstream: vec![],
            inputs: std::sync::Arc::new(vec![("a/src/x".into(), "00".into())]),
            plugins: vec![],
        }
    }

    #[test]
    fn plugin_material_is_keyed_and_named() {
        let base = parts().fold();
        let mut a = parts();
        a.plugins = vec![("p".into(), "v1".into())];
        let mut b = parts();
        b.plugins = vec![("p".into(), "v2".into())];
        let mut c = parts();
        c.plugins = vec![("q".into(), "v1".into())];
        assert_ne!(a.fold(), base);
        assert_ne!(a.fold(), b.fold());
        assert_ne!(a.fold(), c.fold());
        // No plugins: the key is the one vx computed before plugins existed.
        assert_eq!(parts().fold(), base);
    }

    #[test]
    fn unset_and_empty_env_differ() {
        let a = parts();
        let mut b = parts();
        b.env = vec![("X".into(), Some(String::new()))];
        assert_ne!(a.fold(), b.fold());
    }

    #[test]
    fn fields_do_not_alias() {
        // Moving bytes between adjacent fields must change the key.
        let mut a = parts();
        a.args = vec!["ab".into()];
        let mut b = parts();
        b.args = vec!["a".into(), "b".into()];
        assert_ne!(a.fold(), b.fold());
        let mut c = parts();
        c.command = "makeX".into();
        assert_ne!(parts().fold(), c.fold());
        assert_eq!(parts().fold(), parts().fold());
        assert_eq!(parts().fold().len(), 64);
    }

    #[test]
    fn keyed_env_patterns() {
        let env: BTreeMap<String, String> = [
            ("NEXT_PUBLIC_A", "1"),
            ("NEXT_PUBLIC_B", "2"),
            ("OTHER", "3"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let got = keyed_env(
            &[
                "NEXT_PUBLIC_*".into(),
                "!NEXT_PUBLIC_B".into(),
                "MISSING".into(),
            ],
            &env,
        );
        assert_eq!(
            got,
            vec![
                ("MISSING".into(), None),
                ("NEXT_PUBLIC_A".into(), Some("1".into()))
            ]
        );
    }

    #[test]
    fn record_round_trip() {
        let r = Record {
            stat: FileStat {
                size: 5,
                mtime_ns: -3,
                ino: 9,
                mode: 0o100644,
            },
            hash: [7; 32],
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[1, 2]), None);
    }

    #[test]
    fn walk_honours_gitignore_and_skips() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("a/src")).unwrap();
        fs::create_dir_all(root.join("a/dist")).unwrap();
        fs::create_dir_all(root.join("a/node_modules/x")).unwrap();
        fs::create_dir_all(root.join(".vx")).unwrap();
        fs::write(root.join(".gitignore"), "dist\n").unwrap();
        fs::write(root.join("a/src/x.js"), "x").unwrap();
        fs::write(root.join("a/dist/o.js"), "o").unwrap();
        fs::write(root.join("a/node_modules/x/i.js"), "i").unwrap();
        fs::write(root.join(".vx/c"), "c").unwrap();
        let files: Vec<String> = walk(root, root, &HashSet::new(), &[])
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(files, vec![".gitignore", "a/src/x.js"]);
    }

    fn paths(files: &[FileMeta]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    /// Which ignore files a walk reads: git's, up to the boundary (the
    /// repository holding the workspace, else the workspace root).
    #[test]
    fn ancestor_ignore_files_stop_at_the_boundary() {
        struct Case {
            name: &'static str,
            /// Files under the temp dir (`@link` content: a symlink to it).
            files: &'static [(&'static str, &'static str)],
            /// The workspace root and the walked directory, temp-relative.
            root: &'static str,
            dir: &'static str,
            /// Root-relative files the walk of `dir` finds.
            want: &'static [&'static str],
        }
        const HEAD: &str = "ref: refs/heads/main\n";
        let cases = [
            Case {
                name: "an ignore-all file above a git root does not apply",
                files: &[
                    (".gitignore", "*\n"),
                    ("ws/.git/HEAD", HEAD),
                    ("ws/a/src/x.js", "x"),
                ],
                root: "ws",
                dir: "ws/a",
                want: &["a/src/x.js"],
            },
            Case {
                name: "... nor one above a workspace in no repository",
                files: &[(".gitignore", "*\n"), ("ws/a/src/x.js", "x")],
                root: "ws",
                dir: "ws/a",
                want: &["a/src/x.js"],
            },
            Case {
                name: "... nor one above a workspace walked from its root",
                files: &[(".gitignore", "*\n"), ("ws/a/src/x.js", "x")],
                root: "ws",
                dir: "ws",
                want: &["a/src/x.js"],
            },
            Case {
                name: "one in the repository above the workspace applies, anchored there",
                files: &[
                    (".git/HEAD", HEAD),
                    (".gitignore", "*.gen\n/ws/a/top.txt\n/a/src/x.js\n"),
                    ("ws/a/src/x.js", "x"),
                    ("ws/a/src/y.gen", "y"),
                    ("ws/a/top.txt", "t"),
                ],
                root: "ws",
                dir: "ws/a",
                want: &["a/src/x.js"],
            },
            Case {
                name: "an anchored pattern in packages/ is anchored at packages/",
                files: &[
                    ("ws/.git/HEAD", HEAD),
                    ("ws/packages/.gitignore", "/dist\n/a/gen\n*.log\n"),
                    ("ws/packages/a/dist/o.js", "o"),
                    ("ws/packages/a/gen/g.js", "g"),
                    ("ws/packages/a/src/x.js", "x"),
                    ("ws/packages/a/x.log", "l"),
                ],
                root: "ws",
                dir: "ws/packages/a",
                want: &["packages/a/dist/o.js", "packages/a/src/x.js"],
            },
            Case {
                name: "a nearer file wins over a farther one",
                files: &[
                    ("ws/.git/HEAD", HEAD),
                    ("ws/.gitignore", "*.gen\n"),
                    ("ws/packages/.gitignore", "!keep.gen\n"),
                    ("ws/packages/a/.gitignore", "!also.gen\n"),
                    ("ws/packages/a/keep.gen", "k"),
                    ("ws/packages/a/also.gen", "a"),
                    ("ws/packages/a/drop.gen", "d"),
                ],
                root: "ws",
                dir: "ws/packages/a",
                want: &[
                    "packages/a/.gitignore",
                    "packages/a/also.gen",
                    "packages/a/keep.gen",
                ],
            },
            Case {
                name: "the repository's info/exclude applies below its root",
                files: &[
                    ("ws/.git/info/exclude", "*.tmp\n"),
                    ("ws/a/src/x.js", "x"),
                    ("ws/a/src/t.tmp", "t"),
                ],
                root: "ws",
                dir: "ws/a",
                want: &["a/src/x.js"],
            },
            Case {
                name: "... and at its root",
                files: &[
                    ("ws/.git/info/exclude", "*.tmp\n"),
                    ("ws/a/src/x.js", "x"),
                    ("ws/a/src/t.tmp", "t"),
                ],
                root: "ws",
                dir: "ws",
                want: &["a/src/x.js"],
            },
            Case {
                name: "... and above the workspace",
                files: &[
                    (".git/info/exclude", "/ws/a/src/t.tmp\n"),
                    ("ws/a/src/x.js", "x"),
                    ("ws/a/src/t.tmp", "t"),
                ],
                root: "ws",
                dir: "ws/a",
                want: &["a/src/x.js"],
            },
            Case {
                name: "a linked worktree's exclude is its common dir's",
                files: &[
                    ("ws/.git", "gitdir: ../gd/worktrees/wt\n"),
                    ("gd/worktrees/wt/commondir", "../..\n"),
                    ("gd/info/exclude", "*.tmp\n"),
                    ("ws/a/src/x.js", "x"),
                    ("ws/a/src/t.tmp", "t"),
                ],
                root: "ws",
                dir: "ws/a",
                want: &["a/src/x.js"],
            },
            Case {
                name: "a submodule's exclude is in its superproject's git dir",
                files: &[
                    ("ws/.git", "gitdir: ../gd/modules/ws\n"),
                    ("gd/modules/ws/info/exclude", "*.tmp\n"),
                    ("ws/a/src/x.js", "x"),
                    ("ws/a/src/t.tmp", "t"),
                ],
                root: "ws",
                dir: "ws",
                want: &["a/src/x.js"],
            },
            Case {
                name: "a linked member sees the workspace's files, not its target's parents'",
                files: &[
                    ("ws/.git/HEAD", HEAD),
                    ("ws/.gitignore", "*.gen\n"),
                    ("ws/packages/b", "@../../other/b"),
                    ("other/.gitignore", "*\n"),
                    ("other/b/src/x.js", "x"),
                    ("other/b/src/y.gen", "y"),
                ],
                root: "ws",
                dir: "ws/packages/b",
                want: &["packages/b/src/x.js"],
            },
        ];
        for c in cases {
            let t = tempfile::tempdir().unwrap();
            let t = t.path();
            for (p, content) in c.files {
                let p = t.join(p);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                match content.strip_prefix('@') {
                    Some(target) => std::os::unix::fs::symlink(target, &p).unwrap(),
                    None => fs::write(&p, content).unwrap(),
                }
            }
            let (root, dir) = (t.join(c.root), t.join(c.dir));
            let none = HashSet::new();
            assert_eq!(paths(&walk(&root, &dir, &none, &[])), c.want, "{}", c.name);
            assert_eq!(
                paths(&walk_serial(&root, &dir, &none, &[])),
                c.want,
                "{} (serial)",
                c.name
            );
            // The daemon's watches follow the same rules.
            let dirs = walk_dirs(&root, &dir);
            for f in c.want {
                let parent = root.join(f);
                let parent = parent.parent().unwrap();
                assert!(dirs.iter().any(|d| d == parent), "{}: {dirs:?}", c.name);
                assert!(is_walked_dir(&root, parent), "{}: {f}", c.name);
            }
            if !through_link(&root, c.dir.strip_prefix("ws/").unwrap_or(".")) {
                // A project's walk agrees with the walk of the root.
                let prefix = c.dir.strip_prefix("ws/").map(|d| format!("{d}/"));
                let whole = walk(&root, &root, &none, &[]);
                let under: Vec<&str> = paths(&whole)
                    .into_iter()
                    .filter(|p| prefix.as_deref().is_none_or(|d| p.starts_with(d)))
                    .collect();
                assert_eq!(under, c.want, "{} (walk of the root)", c.name);
            }
        }
    }

    #[test]
    fn a_project_reached_through_a_symlink_is_walked_through_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ws");
        fs::create_dir_all(root.join("packages")).unwrap();
        fs::create_dir_all(d.path().join("other/b/src")).unwrap();
        fs::write(d.path().join("other/b/src/x.js"), "x").unwrap();
        std::os::unix::fs::symlink("../../other/b", root.join("packages/b")).unwrap();
        assert!(through_link(&root, "packages/b"));
        assert!(!through_link(&root, "packages"));
        assert!(!through_link(&root, "."));
        let dir = root.join("packages/b");
        let none = HashSet::new();
        assert_eq!(
            paths(&walk_serial(&root, &dir, &none, &[])),
            vec!["packages/b/src/x.js"]
        );
        assert_eq!(
            paths(&walk(&root, &dir, &none, &[])),
            vec!["packages/b/src/x.js"]
        );
        // The walk of the root does not enter it; fenced, the link itself
        // is not a file either.
        let fence: HashSet<String> = ["packages/b".to_string()].into();
        assert!(walk(&root, &root, &fence, &[]).is_empty());
    }

    #[test]
    fn symlinks_hash_by_target_content_inside_and_link_text_outside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ws");
        fs::create_dir_all(root.join("a/src")).unwrap();
        fs::create_dir_all(root.join("shared/lib")).unwrap();
        fs::write(root.join("shared/t.txt"), "one").unwrap();
        fs::write(root.join("shared/lib/l.txt"), "lib").unwrap();
        fs::write(d.path().join("far.txt"), "far").unwrap();
        let ln = |t: &str, l: &str| std::os::unix::fs::symlink(t, root.join(l)).unwrap();
        ln("../../shared/t.txt", "a/src/file");
        ln("../../shared/lib", "a/src/dir");
        ln("../../../far.txt", "a/src/outside");
        ln("../../nope", "a/src/dangling");
        let walk_a = || walk(&root, &root.join("a"), &HashSet::new(), &[]);
        let files = walk_a();
        let by = |p: &str| files.iter().find(|f| f.path == p).unwrap().clone();
        assert_eq!(by("a/src/file").link, Link::File("shared/t.txt".into()));
        assert_eq!(by("a/src/dir").link, Link::Dir("shared/lib".into()));
        assert_eq!(by("a/src/outside").link, Link::Outside);
        assert_eq!(
            by("a/src/dangling").link,
            Link::Dangling(Some("nope".into()))
        );
        let idx = FileIndex::default();
        assert_eq!(
            idx.hash(&root, &by("a/src/file")),
            *blake3::hash(b"one").as_bytes()
        );
        let dir_before = idx.hash(&root, &by("a/src/dir"));
        let outside_before = idx.hash(&root, &by("a/src/outside"));
        // Edit both targets (a size change, so the stat differs).
        fs::write(root.join("shared/t.txt"), "two!").unwrap();
        fs::write(root.join("shared/lib/l.txt"), "lib2").unwrap();
        fs::write(d.path().join("far.txt"), "far, edited").unwrap();
        let files = walk_a();
        let by = |p: &str| files.iter().find(|f| f.path == p).unwrap().clone();
        assert_eq!(
            idx.hash(&root, &by("a/src/file")),
            *blake3::hash(b"two!").as_bytes()
        );
        assert_ne!(idx.hash(&root, &by("a/src/dir")), dir_before);
        // Outside the workspace: the link text only (the risk `--dry` flags).
        assert_eq!(idx.hash(&root, &by("a/src/outside")), outside_before);
    }

    #[test]
    fn non_utf8_names_are_flagged_and_escaped() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("src")).unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"\xff.js");
        fs::write(root.join("src").join(bad), "x").unwrap();
        fs::write(root.join("src/ok.js"), "x").unwrap();
        let files = walk(root, root, &HashSet::new(), &[]);
        let flagged: Vec<(&str, bool)> = files
            .iter()
            .map(|f| (f.path.as_str(), f.non_utf8))
            .collect();
        assert_eq!(flagged, vec![("src/\\xff.js", true), ("src/ok.js", false)]);
        let e = utf8_rel(Path::new(std::ffi::OsStr::from_bytes(b"a/\xff\xfe.js"))).unwrap_err();
        assert!(e.to_string().contains("a/\\xff\\xfe.js"), "{e}");
    }

    #[test]
    fn escape_path_cases() {
        use std::os::unix::ffi::OsStrExt;
        let cases: &[(&[u8], &str)] = &[
            (b"plain/ok.js", "plain/ok.js"),
            (b"caf\xc3\xa9", "caf\u{e9}"),
            (b"\xff", "\\xff"),
            (b"a\\xff", "a\\\\xff"),
            (b"x\xc3", "x\\xc3"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                escape_path(Path::new(std::ffi::OsStr::from_bytes(raw))),
                *want,
                "{raw:?}"
            );
        }
    }
}
