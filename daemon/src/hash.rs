//! `hash` — the file index and task keys.
//!
//! Owns: walking the workspace (honouring `.gitignore`, never `.git`, `.vx`
//! or `node_modules`), the file index (path → size, mtime, inode, blake3 of
//! the content) that lets a run skip re-reading unchanged files, resolving a
//! task's input set, and folding a task key. The key fold is specified in
//! `docs/caching.md`; change both together and bump [`CACHE_VERSION`].
//!
//! Never: decides what runs (`graph`), writes outside memory (the index is
//! persisted by the caller through `cache`), or spawns a process.

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

/// One file found by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Root-relative, `/`-separated.
    pub path: String,
    pub stat: FileStat,
    pub symlink: bool,
}

fn walk_threads() -> usize {
    std::env::var("VX_WALK_THREADS")
        .ok()
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

fn builder(dir: &Path) -> ignore::WalkBuilder {
    let mut b = ignore::WalkBuilder::new(dir);
    b.hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .parents(true)
        .ignore(false)
        .follow_links(false);
    b
}

enum Visit {
    Skip,
    Continue,
    File(FileMeta),
}

fn visit(
    entry: Result<ignore::DirEntry, ignore::Error>,
    root: &Path,
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
    let rel = match path.strip_prefix(root) {
        Ok(r) => r.to_string_lossy().replace('\\', "/"),
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
    let symlink = ft.is_symlink();
    let md = if symlink {
        fs::symlink_metadata(path)
    } else {
        entry.metadata().map_err(std::io::Error::other)
    };
    match md {
        Ok(md) => Visit::File(FileMeta {
            path: rel,
            stat: FileStat::of(&md),
            symlink,
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
    if serial {
        let (root2, fence2, skip2) = (root.to_path_buf(), fence.clone(), skip.to_vec());
        let walker = builder(dir)
            .filter_entry(move |e| {
                !(e.file_type().is_some_and(|t| t.is_dir())
                    && matches!(visit(Ok(e.clone()), &root2, &fence2, &skip2), Visit::Skip))
            })
            .build();
        for entry in walker {
            if let Visit::File(f) = visit(entry, root, fence, skip) {
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
        builder(dir)
            .threads(walk_threads())
            .build_parallel()
            .run(|| {
                let mut flush = Flush(&out, Vec::new());
                Box::new(move |entry| match visit(entry, root, fence, skip) {
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

/// Every directory under `dir` (inclusive) that a walk would enter: not
/// ignored, not `.git`/`.vx`/`node_modules`. The daemon watches these.
pub fn walk_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let walker = builder(dir)
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
pub fn walk_files_named(dir: &Path, names: &[&str]) -> bool {
    builder(dir)
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
pub fn is_walked_dir(dir: &Path) -> bool {
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
    builder(parent)
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
    /// that a permission change still changes the key.
    pub fn hash(&self, root: &Path, f: &FileMeta) -> [u8; 32] {
        if let Ok(map) = self.records.read()
            && let Some(r) = map.get(&f.path)
            && r.stat == f.stat
        {
            return r.hash;
        }
        let abs = root.join(&f.path);
        let hash = if f.symlink {
            match fs::read_link(&abs) {
                Ok(t) => {
                    let mut h = blake3::Hasher::new();
                    h.update(b"symlink\0");
                    h.update(t.to_string_lossy().as_bytes());
                    *h.finalize().as_bytes()
                }
                Err(e) => *blake3::hash(format!("unreadable: {e}").as_bytes()).as_bytes(),
            }
        } else {
            match hash_file(&abs) {
                Ok(h) => h,
                Err(e) => *blake3::hash(format!("unreadable: {}", e.kind()).as_bytes()).as_bytes(),
            }
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
            let rel = if project_dir == "." {
                Some(f.path.as_str())
            } else {
                f.path
                    .strip_prefix(project_dir)
                    .and_then(|r| r.strip_prefix('/'))
            };
            rel.is_some_and(|rel| pats.inputs.matches(rel) && !pats.outputs.matches(rel))
        })
        .collect()
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
        }
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
}
