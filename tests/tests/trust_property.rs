//! Trust property test: random workspaces with symlinks (pointing inside and
//! outside the workspace), non-UTF-8 file names and overlapping input/output
//! patterns, run through the real binaries, mutated and run again. After every
//! `vx` invocation:
//!
//! - **`outside-untouched`**: nothing outside the workspace changed. Every case
//!   lives in its own directory holding the workspace and an `outside/`
//!   directory (plus a sentinel file) that symlinks of the workspace point to;
//!   everything there keeps its kind, bytes, link text, mode and mtime, and no
//!   entry appears or disappears.
//! - **`sources-kept`**: nothing but a task's own output area changes: every
//!   file, symlink and directory outside the projects' output directories
//!   (`dist`, `chk`) — sources, config files, `shared/` — is as it was before
//!   the invocation, except what a task changes itself (the in-place
//!   formatter's files). So vx never deletes what it did not create, and never
//!   writes into another project through a symlinked output directory.
//! - **`hit-equals-fresh`**: after a run that reports cache hits, the tree
//!   equals the tree a fresh run (a copy of the workspace taken before the run,
//!   without `.vx`: an empty cache, no daemon) leaves: file kinds, bytes, exec
//!   bits, symlink texts. So a task vx reports as a hit never has outputs that
//!   differ from a fresh run's.
//! - **`refusal-explained`**: vx may refuse a workspace (overlapping patterns,
//!   a symlinked output directory, non-UTF-8 names, an output symlink leaving
//!   the project): a non-zero exit is accepted when it says why, and the other
//!   properties still hold for it.
//!
//! A case: 1–3 projects, each one shape (`inputs`/`outputs` as below; at most
//! one project per case overlaps), sources with symlinks into `shared/` (a
//! file and a directory), out of the workspace, within the project and into
//! another project, sometimes non-UTF-8 names (two of which collide after a
//! lossy conversion), `dist` sometimes a symlink out of the workspace or into
//! another project; tasks that copy their sources (symlinks as symlinks) and
//! make symlink outputs; a group task `topo` (`^topo`) and a `check` task that
//! depends only on it (the transit-node pattern). Between runs: edits, new
//! and deleted sources, edits of symlink targets, deleted outputs, `dist` or
//! `dist/out.txt` replaced by a symlink, or nothing (so runs hit the cache).
//!
//! Task commands are deterministic, read only their declared inputs (and,
//! through `^build`/`^topo`, their dependency's files), always exit 0 and
//! never write through a symlink themselves (`rm -rf dist` first), so every
//! violation is vx's doing.
//!
//! `VX_PROP_CASES` sets the number of cases (default 16), `VX_PROP_STEPS` the
//! runs per case (default 6); `VX_PROP_SEED` replays one case;
//! `VX_PROP_KEEP=1` keeps the case directories; `VX_PROP_ALL=1` goes on after
//! a violation to report every one a case finds. Runs in both modes (in the
//! `::daemon` variant the workspace's runs go through the daemon; the fresh
//! reference runs never do).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use tempfile::TempDir;
use vx_tests::{Rng, Run, Ws, daemon_mode, vx_test};

/// `VX_PROP_KEEP=1` keeps each case's directory (to look at `.vx/daemon.log`).
fn keep() -> bool {
    std::env::var_os("VX_PROP_KEEP").is_some()
}

/// A line of content: a word and a number.
fn line(rng: &mut Rng) -> String {
    format!("{} {}\n", rng.word(), rng.below(1000))
}

/// One entry of a tree, not following symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File { bytes: Vec<u8>, exec: bool },
    Link(Vec<u8>),
    Dir,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    node: Node,
    /// (mode, mtime ns) where the snapshot records them.
    meta: Option<(u32, i128)>,
}

/// Relative path (bytes, `/`-separated) → entry.
type Tree = BTreeMap<Vec<u8>, Entry>;

fn show(p: &[u8]) -> String {
    format!("{:?}", OsStr::from_bytes(p))
}

fn describe(e: Option<&Entry>) -> String {
    match e.map(|e| &e.node) {
        None => "absent".into(),
        Some(Node::File { bytes, exec }) => format!(
            "file{} {:?}",
            if *exec { " (exec)" } else { "" },
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        ),
        Some(Node::Link(t)) => format!("symlink -> {}", show(t)),
        Some(Node::Dir) => "directory".into(),
        Some(Node::Other) => "special file".into(),
    }
}

/// Walks `root` without following symlinks. `skip(rel)` prunes an entry (and
/// what is below it); `meta` records modes and mtimes.
fn snapshot(root: &Path, skip: &dyn Fn(&[u8]) -> bool, meta: bool) -> Tree {
    fn walk(dir: &Path, rel: &[u8], skip: &dyn Fn(&[u8]) -> bool, meta: bool, out: &mut Tree) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(e.file_name().as_bytes());
            if skip(&r) {
                continue;
            }
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = md.file_type();
            let node = if ft.is_symlink() {
                Node::Link(
                    std::fs::read_link(&p)
                        .map(|t| t.as_os_str().as_bytes().to_vec())
                        .unwrap_or_default(),
                )
            } else if ft.is_dir() {
                walk(&p, &r, skip, meta, out);
                Node::Dir
            } else if ft.is_file() {
                Node::File {
                    bytes: std::fs::read(&p).unwrap_or_default(),
                    exec: md.mode() & 0o111 != 0,
                }
            } else {
                Node::Other
            };
            let meta = meta.then(|| {
                (
                    md.mode(),
                    md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
                )
            });
            out.insert(r, Entry { node, meta });
        }
    }
    let mut out = Tree::new();
    walk(root, b"", skip, meta, &mut out);
    out
}

/// Paths whose entries differ (at most 12 described).
fn diff(a: &Tree, b: &Tree, allowed: &dyn Fn(&[u8], &Entry, &Entry) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        if let (Some(x), Some(y)) = (x, y)
            && allowed(k, x, y)
        {
            continue;
        }
        out.push(format!("{}: {} / {}", show(k), describe(x), describe(y)));
    }
    out.sort();
    if out.len() > 12 {
        let n = out.len() - 12;
        out.truncate(12);
        out.push(format!("... and {n} more"));
    }
    out
}

/// Copies a tree (files with their modes, symlinks as symlinks), skipping
/// `.vx` at the top.
fn copy_tree(from: &Path, to: &Path, top: bool) {
    let Ok(rd) = std::fs::read_dir(from) else {
        return;
    };
    for e in rd.flatten() {
        if top && e.file_name() == ".vx" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let Ok(md) = std::fs::symlink_metadata(&src) else {
            continue;
        };
        if md.file_type().is_symlink() {
            symlink(std::fs::read_link(&src).expect("read link"), &dst).expect("copy symlink");
        } else if md.is_dir() {
            std::fs::create_dir(&dst).expect("copy dir");
            copy_tree(&src, &dst, false);
        } else if md.is_file() {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// inputs = ["src/**"], outputs = ["dist/**"].
    Build,
    /// inputs = ["**"] (config included), outputs = ["dist/**"].
    InputsAll,
    /// outputs = ["**"]: overlaps the sources and the project's vx.toml.
    OutputsAll,
    /// An in-place formatter: inputs = outputs = ["src/**"].
    Formatter,
}

struct Proj {
    name: String,
    shape: Shape,
    config: String,
}

/// Source file names (some not UTF-8; `n\xff` and `n\xfe` are the same
/// string after a lossy conversion).
const NAMES: &[&[u8]] = &[
    b"a.txt",
    b"b.txt",
    b"c.md",
    b"n\xff.txt",
    b"n\xfe.txt",
    b"\xe9t\xe9.txt",
    b"sub/s.txt",
    b"sub/\xff\xfe.txt",
];

/// Symlinks in a project's `src/` (relative to it): into the workspace's
/// `shared/` (a file and a directory), out of the workspace, within the
/// project, into another project's sources.
const SRC_LINKS: &[(&str, &str)] = &[
    ("lin.txt", "../../../shared/s.txt"),
    ("ldir", "../../../shared/dir"),
    ("lout.txt", "../../../../outside/x.txt"),
    ("lself.txt", "a.txt"),
    ("lpeer.txt", "../../p0/src/a.txt"),
];

struct Case {
    _dir: TempDir,
    case_root: std::path::PathBuf,
    ws: Ws,
    projs: Vec<Proj>,
    history: Vec<String>,
    non_utf8: bool,
}

fn write_bytes(root: &Path, rel: &[u8], bytes: &[u8]) {
    let p = root.join(OsStr::from_bytes(rel));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).expect("write");
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    let _ = std::fs::remove_file(&p);
    symlink(target, &p).expect("symlink");
}

/// `dist` of a project becomes a symlink: out of the workspace, or into
/// another project (its root or its sources).
fn dist_link_target(rng: &mut Rng, k: usize, n: usize) -> String {
    let others: Vec<usize> = (0..n).filter(|j| *j != k).collect();
    match rng.below(4) {
        0 => "../../../outside".into(),
        1 => "../../../outside/sub".into(),
        _ if others.is_empty() => "../../../outside".into(),
        2 => format!("../p{}/src", others[rng.below(others.len())]),
        _ => format!("../p{}", others[rng.below(others.len())]),
    }
}

impl Case {
    fn new(seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let dir = tempfile::Builder::new()
            .prefix("vx-prop-")
            .disable_cleanup(keep())
            .tempdir()
            .expect("tempdir");
        let case_root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        // Outside the workspace: what its symlinks point to.
        let outside = case_root.join("outside");
        write_bytes(&outside, b"x.txt", b"outside x\n");
        write_bytes(&outside, b"sub/y.txt", b"outside y\n");
        write_bytes(&outside, b"o\xff.bin", b"\x00\x01outside\n");
        write_bytes(
            &outside,
            b"out.txt",
            b"an outside file named like an output\n",
        );
        write_bytes(&case_root, b"sentinel.txt", b"next to the workspace\n");
        let ws = Ws {
            dir: tempfile::Builder::new()
                .prefix("ws-")
                .disable_cleanup(keep())
                .tempdir_in(&case_root)
                .expect("tempdir"),
            runtime: tempfile::Builder::new()
                .prefix("vx-rt-")
                .tempdir()
                .expect("tempdir"),
            mode: vx_tests::mode(),
        };
        let root = ws.root().to_path_buf();
        ws.write("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n");
        ws.write("shared/s.txt", "shared s\n");
        ws.write("shared/dir/d1.txt", "shared d1\n");

        let n = 1 + rng.below(3);
        // Non-UTF-8 names and overlapping patterns in some cases only, and
        // overlap in one project at most: vx may refuse either for the
        // whole workspace, which then checks nothing else.
        let non_utf8 = rng.chance(20);
        let overlap = rng.chance(20).then(|| rng.below(n));
        let mut projs: Vec<Proj> = Vec::new();
        for k in 0..n {
            let shape = match (overlap == Some(k), rng.chance(50)) {
                (false, true) => Shape::Build,
                (false, false) => Shape::InputsAll,
                (true, true) => Shape::OutputsAll,
                (true, false) => Shape::Formatter,
            };
            let name = format!("p{k}");
            let base = format!("packages/{name}");
            // p0's dist feeds later projects; a formatter has none.
            let reads_p0 = k > 0 && projs[0].shape != Shape::Formatter && rng.chance(50);
            // The transit-node pattern (issue 9, item 0): `check` depends on
            // the group task `^topo` only, and reads p0's sources, which
            // `p0#topo` (no command) must key.
            let transit = k > 0 && projs[0].shape != Shape::Formatter && rng.chance(40);
            let copy_src = rng.chance(60);
            let out_links = rng.chance(50);
            let mut files = 0;
            for nm in NAMES {
                if !non_utf8 && std::str::from_utf8(nm).is_err() {
                    continue;
                }
                if rng.chance(40) || (files == 0 && *nm == b"a.txt") {
                    let mut rel = format!("{base}/src/").into_bytes();
                    rel.extend_from_slice(nm);
                    write_bytes(&root, &rel, line(&mut rng).as_bytes());
                    files += 1;
                }
            }
            for (nm, target) in SRC_LINKS {
                // Another project's sources are only read when no task
                // rewrites them (no formatter in p0), else the read races.
                let peer_ok =
                    !target.contains("p0/") || (k > 0 && projs[0].shape != Shape::Formatter);
                if peer_ok && rng.chance(30) {
                    link(&root, &format!("{base}/src/{nm}"), target);
                }
            }
            if shape != Shape::Formatter && rng.chance(10) {
                link(
                    &root,
                    &format!("{base}/dist"),
                    &dist_link_target(&mut rng, k, n),
                );
            }
            let (inputs, outputs) = match shape {
                Shape::Build => ("[\"src/**\"]", "[\"dist/**\"]"),
                Shape::InputsAll => ("[\"**\"]", "[\"dist/**\"]"),
                Shape::OutputsAll => ("[\"src/**\"]", "[\"**\"]"),
                Shape::Formatter => ("[\"src/**\"]", "[\"src/**\"]"),
            };
            let command = if shape == Shape::Formatter {
                "for f in src/*; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then \
                 tr a-z A-Z < \"$f\" > \"$f.fmt\" && mv \"$f.fmt\" \"$f\"; fi; done; exit 0"
                    .to_string()
            } else {
                let mut c =
                    String::from("rm -rf dist && mkdir dist && { cat src/* src/*/* 2>/dev/null; ");
                if reads_p0 {
                    c.push_str("cat ../p0/dist/out.txt 2>/dev/null; ");
                }
                c.push_str("} > dist/out.txt; ");
                if copy_src {
                    c.push_str("cp -P src/* dist/ 2>/dev/null; ");
                }
                if out_links {
                    c.push_str("ln -s out.txt dist/self.txt; ln -s ../../../../outside/x.txt dist/ext.txt; ");
                }
                c.push_str("exit 0");
                c
            };
            let mut config = String::new();
            if reads_p0 || transit {
                config.push_str("[project]\ndeps = [\"p0\"]\n\n");
            }
            let _ = write!(
                config,
                "[tasks.build]\ncommand = '{command}'\ninputs = {inputs}\noutputs = {outputs}\n"
            );
            if reads_p0 {
                config.push_str("depends_on = [\"^build\"]\n");
            }
            config.push_str("\n[tasks.topo]\ndepends_on = [\"^topo\"]\n");
            if transit {
                config.push_str(
                    "\n[tasks.check]\ncommand = 'rm -rf chk && mkdir chk && \
                     { cat ../p0/src/* ../p0/src/*/* 2>/dev/null; } > chk/out.txt; exit 0'\n\
                     depends_on = [\"^topo\"]\ninputs = [\"src/**\"]\noutputs = [\"chk/**\"]\n",
                );
            }
            ws.write(&format!("{base}/vx.toml"), &config);
            projs.push(Proj {
                name,
                shape,
                config,
            });
        }
        Case {
            _dir: dir,
            case_root,
            ws,
            projs,
            history: Vec::new(),
            non_utf8,
        }
    }

    /// The tasks each run asks for (`check` only where a project has it).
    fn tasks(&self) -> Vec<&'static str> {
        if self
            .projs
            .iter()
            .any(|p| p.config.contains("[tasks.check]"))
        {
            vec!["build", "check"]
        } else {
            vec!["build"]
        }
    }

    fn root(&self) -> &Path {
        self.ws.root()
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for p in &self.projs {
            let _ = writeln!(s, "  packages/{} ({:?}):", p.name, p.shape);
            for l in p.config.lines() {
                let _ = writeln!(s, "    {l}");
            }
            let src = snapshot(
                &self.root().join(format!("packages/{}", p.name)),
                &|_| false,
                false,
            );
            for (k, e) in &src {
                if !matches!(e.node, Node::Dir) {
                    let _ = writeln!(s, "    {}: {}", show(k), describe(Some(e)));
                }
            }
        }
        s
    }

    /// Everything outside the workspace (and outside the fresh copies).
    fn outside(&self) -> Tree {
        snapshot(
            &self.case_root,
            &|r| r.starts_with(b"ws-") || r.starts_with(b"fresh-"),
            true,
        )
    }

    /// Everything in the workspace but `.vx` and the projects' output
    /// directories (`dist`, `chk`).
    fn sources(root: &Path) -> Tree {
        snapshot(
            root,
            &|r| {
                r == b".vx" || {
                    let parts: Vec<&[u8]> = r.split(|b| *b == b'/').collect();
                    parts.len() >= 3
                        && parts[0] == b"packages"
                        && (parts[2] == b"dist" || parts[2] == b"chk")
                }
            },
            false,
        )
    }

    /// Files and symlinks of the whole workspace but `.vx`.
    fn tree(root: &Path) -> Tree {
        let mut t = snapshot(root, &|r| r == b".vx", false);
        t.retain(|_, e| !matches!(e.node, Node::Dir));
        t
    }

    fn formatter_owns(&self, rel: &[u8]) -> bool {
        self.projs.iter().any(|p| {
            p.shape == Shape::Formatter && {
                let pre = format!("packages/{}/src/", p.name);
                rel.starts_with(pre.as_bytes()) && !rel[pre.len()..].contains(&b'/')
            }
        })
    }

    /// Applies one random mutation; returns its description.
    fn mutate(&mut self, rng: &mut Rng) -> String {
        let root = self.root().to_path_buf();
        let n = self.projs.len();
        let k = rng.below(n);
        let base = format!("packages/p{k}");
        let src_files: Vec<Vec<u8>> = Self::sources(&root)
            .into_iter()
            .filter(|(p, e)| {
                p.starts_with(format!("{base}/src/").as_bytes()) && !matches!(e.node, Node::Dir)
            })
            .map(|(p, _)| p)
            .collect();
        match rng.below(12) {
            0 | 1 => {
                let Some(p) = src_files.get(rng.below(src_files.len())).cloned() else {
                    return "skip".into();
                };
                if std::fs::symlink_metadata(root.join(OsStr::from_bytes(&p)))
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return "skip".into();
                }
                let w = line(rng);
                write_bytes(&root, &p, w.as_bytes());
                format!("edit {} = {w:?}", show(&p))
            }
            2 => {
                let mut rel = format!("{base}/src/").into_bytes();
                let nm = NAMES[rng.below(NAMES.len())];
                if !self.non_utf8 && std::str::from_utf8(nm).is_err() {
                    return "skip".into();
                }
                rel.extend_from_slice(nm);
                let w = line(rng);
                write_bytes(&root, &rel, w.as_bytes());
                format!("write {} = {w:?}", show(&rel))
            }
            3 => {
                let Some(p) = src_files.get(rng.below(src_files.len())).cloned() else {
                    return "skip".into();
                };
                std::fs::remove_file(root.join(OsStr::from_bytes(&p))).expect("rm");
                format!("delete {}", show(&p))
            }
            4 | 10 | 11 => {
                let f = ["shared/s.txt", "shared/dir/d1.txt"][rng.below(2)];
                let w = line(rng);
                ws_write(&root, f, &w);
                format!("edit {f} (a symlink target) = {w:?}")
            }
            5 | 6 => {
                let d = root.join(&base).join("dist");
                if std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                    std::fs::remove_dir_all(&d).expect("rm dist");
                } else {
                    let _ = std::fs::remove_file(&d);
                }
                format!("delete {base}/dist")
            }
            7 => {
                let d = root.join(&base).join("dist/out.txt");
                // Never through a symlinked `dist`: that would be this test
                // writing outside, not vx.
                if std::fs::symlink_metadata(&d).is_err()
                    || !std::fs::symlink_metadata(root.join(&base).join("dist"))
                        .is_ok_and(|m| m.is_dir())
                {
                    return "skip".into();
                }
                std::fs::remove_file(&d).expect("rm");
                format!("delete {base}/dist/out.txt")
            }
            8 => {
                let d = root.join(&base).join("dist");
                if std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                    std::fs::remove_dir_all(&d).expect("rm dist");
                } else {
                    let _ = std::fs::remove_file(&d);
                }
                let t = dist_link_target(rng, k, n);
                symlink(&t, &d).expect("symlink");
                format!("{base}/dist -> {t}")
            }
            _ => {
                let d = root.join(&base).join("dist/out.txt");
                if !std::fs::symlink_metadata(root.join(&base).join("dist"))
                    .is_ok_and(|m| m.is_dir())
                {
                    return "skip".into();
                }
                let _ = std::fs::remove_file(&d);
                symlink("../../../../outside/out.txt", &d).expect("symlink");
                format!("{base}/dist/out.txt -> ../../../../outside/out.txt")
            }
        }
    }
}

fn ws_write(root: &Path, rel: &str, content: &str) {
    write_bytes(root, rel.as_bytes(), content.as_bytes());
}

fn upper(b: &[u8]) -> Vec<u8> {
    b.iter().map(u8::to_ascii_uppercase).collect()
}

/// Why a run's outcome is not acceptable, if it is not.
fn refusal_problem(r: &Run) -> Option<String> {
    if r.code == 0 {
        let failed: Vec<String> = r
            .events
            .iter()
            .rev()
            .find(|e| e["type"] == "run_finished")
            .and_then(|e| e["summary"]["tasks"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["status"] != "success" && t["status"] != "cached")
            .map(|t| format!("{} {}", t["id"], t["status"]))
            .collect();
        return (!failed.is_empty()).then(|| format!("exit 0 with tasks {failed:?}"));
    }
    // With `--json` a task's refusal is its summary entry's `error` (and a
    // `warning` event); a refusal of the whole run is on stderr.
    let explained_tasks = r
        .events
        .iter()
        .rev()
        .find(|e| e["type"] == "run_finished")
        .and_then(|e| e["summary"]["tasks"].as_array().cloned())
        .is_some_and(|tasks| {
            let failed: Vec<_> = tasks.iter().filter(|t| t["status"] == "failed").collect();
            !failed.is_empty()
                && failed
                    .iter()
                    .all(|t| t["error"].as_str().is_some_and(|m| !m.trim().is_empty()))
        });
    (r.stderr.trim().is_empty() && !explained_tasks)
        .then(|| format!("exit {} without a message", r.code))
}

fn statuses(r: &Run) -> String {
    r.events
        .iter()
        .rev()
        .find(|e| e["type"] == "run_finished")
        .and_then(|e| e["summary"]["tasks"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            format!(
                "{}={}{}",
                t["id"].as_str().unwrap_or("?"),
                t["status"].as_str().unwrap_or("?"),
                t["cache"]
                    .as_str()
                    .map(|c| format!("({c})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Failure {
    seed: u64,
    property: &'static str,
    text: String,
}

/// What the steps of the cases checked.
#[derive(Default)]
struct Stats {
    steps: usize,
    /// Steps where the run served hits and left the tree a fresh run leaves.
    compared: usize,
    /// Cache hits among those.
    hits: usize,
    /// Steps where vx refused (with a message).
    refusals: usize,
}

/// Runs one case; `Err` holds the first property it violates.
/// With `VX_PROP_ALL=1` a case goes on after a violation (each later step
/// is still checked against its own starting point), to survey every bug a
/// case finds rather than the first.
fn run_case(seed: u64, steps: usize, stats: &mut Stats) -> Vec<Failure> {
    let all = std::env::var_os("VX_PROP_ALL").is_some();
    let mut failures = Vec::new();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut case = Case::new(seed);
    let mut initial_outside;
    let setup = case.describe();
    let fail = |case: &Case, step: usize, property: &'static str, detail: String| Failure {
        seed,
        property,
        text: format!(
            "seed {seed} (replay: VX_PROP_SEED={seed}{}), step {step}, property `{property}`{}:\n{detail}\n\
             case at the start:\n{setup}steps:\n  {}\n",
            if daemon_mode() {
                ", the ::daemon variant"
            } else {
                ", the ::no_daemon variant"
            },
            if keep() {
                format!(" (kept: {})", case.root().display())
            } else {
                String::new()
            },
            case.history.join("\n  ")
        ),
    };
    macro_rules! violated {
        ($f:expr) => {{
            failures.push($f);
            if !all {
                return failures;
            }
            continue;
        }};
    }
    for step in 0..steps {
        if step > 0 {
            let muts = if rng.chance(35) { 0 } else { 1 + rng.below(2) };
            let mut done = Vec::new();
            for _ in 0..muts {
                done.push(case.mutate(&mut rng));
            }
            if rng.chance(30) {
                // Outputs only: the next run should be a restore.
                let k = rng.below(case.projs.len());
                let d = case.root().join(format!("packages/p{k}/dist"));
                if std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                    std::fs::remove_dir_all(&d).expect("rm dist");
                    done.push(format!("delete packages/p{k}/dist"));
                }
            }
            if done.is_empty() {
                done.push("nothing".into());
            }
            case.history
                .push(format!("step {step}: {}", done.join("; ")));
        }
        stats.steps += 1;
        let before = Case::sources(case.root());
        // The reference: the same tree, an empty cache, no daemon.
        let fresh = Ws {
            dir: tempfile::Builder::new()
                .prefix("fresh-")
                .tempdir_in(&case.case_root)
                .expect("tempdir"),
            runtime: tempfile::Builder::new()
                .prefix("vx-rt-")
                .tempdir()
                .expect("tempdir"),
            mode: vx_tests::Mode::NoDaemon,
        };
        copy_tree(case.root(), fresh.root(), true);

        // The outside as the mutations left it (they never write there,
        // but a baseline taken per run keeps the property about vx alone).
        initial_outside = case.outside();
        let r = case.ws.run(&case.tasks());
        case.history.push(format!(
            "  vx run {}: exit {}: {}{}",
            case.tasks().join(" "),
            r.code,
            statuses(&r),
            if r.code != 0 || !r.stderr.trim().is_empty() {
                format!(" stderr: {}", r.stderr.trim().replace('\n', "\n    "))
            } else {
                String::new()
            }
        ));
        let out = diff(&initial_outside, &case.outside(), &|_, _, _| false);
        if !out.is_empty() {
            violated!(fail(
                &case,
                step,
                "outside-untouched",
                format!(
                    "vx run changed files outside the workspace (before / after):\n  {}",
                    out.join("\n  ")
                ),
            ));
        }
        let after = Case::sources(case.root());
        let src = diff(&before, &after, &|k, x, y| {
            case.formatter_owns(k)
                && matches!((&x.node, &y.node), (Node::File { bytes: a, exec: e1 }, Node::File { bytes: b, exec: e2 })
                    if e1 == e2 && *b == upper(a))
        });
        if !src.is_empty() {
            violated!(fail(
                &case,
                step,
                "sources-kept",
                format!(
                    "vx run changed files outside the tasks' output directories (before / after):\n  {}",
                    src.join("\n  ")
                ),
            ));
        }
        if let Some(p) = refusal_problem(&r) {
            violated!(fail(
                &case,
                step,
                "refusal-explained",
                format!("{p}\n{}", r.stderr),
            ));
        }

        // A refusal is accepted (the properties above held for it).
        if r.code != 0 {
            eprintln!(
                "seed {seed}, step {step}: refused (exit {}): {}",
                r.code,
                r.stderr.trim().replace('\n', " | ")
            );
            stats.refusals += 1;
            continue;
        }
        // Only a run that served hits needs the reference (time).
        if r.cached().is_empty() {
            continue;
        }
        let fr = fresh.run_env(&case.tasks(), &[("VX_DAEMON", "0")]);
        let out = diff(&initial_outside, &case.outside(), &|_, _, _| false);
        if !out.is_empty() {
            violated!(fail(
                &case,
                step,
                "outside-untouched",
                format!(
                    "the fresh run changed files outside the workspace:\n  {}",
                    out.join("\n  ")
                ),
            ));
        }
        if fr.code != 0 {
            violated!(fail(
                &case,
                step,
                "hit-equals-fresh",
                format!(
                    "the run served hits ({}) where a fresh run fails (exit {}):\n{}",
                    statuses(&r),
                    fr.code,
                    fr.stderr
                ),
            ));
        }
        let d = diff(
            &Case::tree(case.root()),
            &Case::tree(fresh.root()),
            &|_, _, _| false,
        );
        if !d.is_empty() {
            violated!(fail(
                &case,
                step,
                "hit-equals-fresh",
                format!(
                    "the run ({}) left a tree that differs from a fresh run's ({}) (run / fresh):\n  {}",
                    statuses(&r),
                    statuses(&fr),
                    d.join("\n  ")
                ),
            ));
        }
        stats.compared += 1;
        stats.hits += r.cached().len();
    }
    failures
}

vx_test!(
    vx_never_writes_outside_loses_sources_or_serves_a_wrong_hit,
    || {
        let cases: u64 = std::env::var("VX_PROP_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(32);
        let steps: usize = std::env::var("VX_PROP_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6);
        let seeds: Vec<u64> = match std::env::var("VX_PROP_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(s) => vec![s],
            None => (1..=cases).collect(),
        };
        let t0 = std::time::Instant::now();
        let mut failures: Vec<Failure> = Vec::new();
        let mut stats = Stats::default();
        for &seed in &seeds {
            for f in run_case(seed, steps, &mut stats) {
                eprintln!("{}", f.text);
                failures.push(f);
            }
        }
        eprintln!(
            "{} trust cases ({} steps; {} runs with {} cache hits compared with a fresh run; {} refusals) in {:.1}s, {} failed",
            seeds.len(),
            stats.steps,
            stats.compared,
            stats.hits,
            stats.refusals,
            t0.elapsed().as_secs_f64(),
            failures.len()
        );
        // Not vacuous: a vx refusing everything would pass the rest.
        assert!(
            seeds.len() < 8
                || steps < 4
                || !failures.is_empty()
                || (stats.compared > 0 && stats.hits > 0),
            "no step compared a run holding cache hits with a fresh run"
        );
        if !failures.is_empty() {
            let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            for f in &failures {
                let seeds = by.entry(f.property).or_default();
                if !seeds.contains(&f.seed) {
                    seeds.push(f.seed);
                }
            }
            panic!(
                "{} of {} cases violate a property (seeds by property: {by:?}); the first:\n{}",
                failures.len(),
                seeds.len(),
                failures[0].text
            );
        }
    }
);
