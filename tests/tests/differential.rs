//! Differential property test: after every random file-system mutation, the
//! daemon's task keys (hot state: watcher, cookie barrier, incremental
//! re-walks) must equal a fresh no-daemon computation of the same plan.
//!
//! `VX_DIFF_CASES` sets the number of mutation steps (default 1,000);
//! `VX_DIFF_SEED` replays one seed.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vx_tests::{Rng, Ws, vxd_bin};

/// A JSON-RPC line connection (to the daemon socket or a `vxd --stdio`).
struct Rpc {
    reader: BufReader<Box<dyn std::io::Read + Send>>,
    writer: Box<dyn Write + Send>,
    next: i64,
    _child: Option<std::process::Child>,
}

impl Rpc {
    fn new(
        reader: Box<dyn std::io::Read + Send>,
        writer: Box<dyn Write + Send>,
        child: Option<std::process::Child>,
    ) -> Rpc {
        let mut r = Rpc {
            reader: BufReader::new(reader),
            writer,
            next: 1,
            _child: child,
        };
        r.call(
            "daemon.hello",
            json!({"protocol": 1, "client_version": env!("CARGO_PKG_VERSION")}),
        )
        .expect("hello");
        r
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next;
        self.next += 1;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .unwrap();
        self.writer.flush().unwrap();
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "connection closed"
            );
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// task id → key (or the error message when planning fails).
    fn keys(&mut self, root: &Path) -> Result<BTreeMap<String, String>, String> {
        let params = json!({"cwd": root, "tasks": ["build", "test"], "all": true, "env": {"PATH": "/usr/bin:/bin"}});
        match self.call("run.plan", params) {
            Ok(plan) => Ok(plan["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["id"].as_str().unwrap().to_string(),
                        t["key"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()),
            Err(e) => Err(e["message"].as_str().unwrap_or("").to_string()),
        }
    }
}

fn fixture() -> Ws {
    let task = |extra: &str| {
        format!(
            "[tasks.build]\ncommand = \"true\"\ninputs = [\"src/**\", \"!src/**/*.tmp\"{extra}]\noutputs = [\"dist/**\"]\n\
             [tasks.test]\ncommand = \"true\"\ndepends_on = [\"build\"]\ninputs = [\"**\"]\noutputs = []\n"
        )
    };
    Ws::new(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"libs/*\", \"apps/*\", \"libs/a/nested\"]\nglobal_inputs = [\"shared/**\"]\n",
        ),
        (".gitignore", "dist\n*.log\n"),
        ("shared/config.json", "{}\n"),
        ("libs/a/vx.toml", &task("")),
        ("libs/a/src/x.js", "x\n"),
        ("libs/a/nested/vx.toml", &task("")),
        ("libs/a/nested/src/n.js", "n\n"),
        (
            "libs/b/vx.toml",
            &format!("[project]\ndeps = [\"a\"]\n{}", task(", \"README.md\"")),
        ),
        ("libs/b/src/y.js", "y\n"),
        ("libs/b/README.md", "b\n"),
        (
            "apps/web/vx.toml",
            &format!("[project]\ndeps = [\"b\", \"nested\"]\n{}", task("")),
        ),
        ("apps/web/src/main.js", "main\n"),
        ("apps/web/src/deep/er/file.js", "deep\n"),
    ])
}

/// Every regular file under `dir` (skipping `.vx`), relative to `root`.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".vx") {
                continue;
            }
            // Symlinks are listed, never followed (no link cycles).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn dirs(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = files(root)
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    out.sort();
    out.dedup();
    out.retain(|d| !d.as_os_str().is_empty());
    out
}

const PLACES: &[&str] = &[
    "libs/a/src",
    "libs/a/nested/src",
    "libs/b/src",
    "libs/b",
    "apps/web/src",
    "apps/web/src/deep",
    "shared",
    "libs/a/dist",
    "apps/web",
    ".",
];

/// Applies one random mutation; returns a description.
fn mutate(root: &Path, rng: &mut Rng) -> String {
    let all = files(root);
    let pick = |rng: &mut Rng| all[rng.below(all.len())].clone();
    let write = |p: &Path, s: &str| {
        if let Some(parent) = root.join(p).parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(root.join(p), s).unwrap();
    };
    let is_config = |p: &Path| p.file_name().is_some_and(|n| n == "vx.toml");
    match rng.below(13) {
        0 | 1 => {
            let dir = PLACES[rng.below(PLACES.len())];
            let ext = ["js", "tmp", "log", "md"][rng.below(4)];
            let p = Path::new(dir).join(format!("{}{}.{ext}", rng.word(), rng.below(50)));
            write(&p, rng.word());
            format!("create {}", p.display())
        }
        2 | 3 => {
            let p = pick(rng);
            if is_config(&p) {
                return "skip".into();
            }
            // Same size, different bytes half of the time (the racy case).
            let old = std::fs::read(root.join(&p)).unwrap_or_default();
            let new: Vec<u8> = if rng.below(2) == 0 && !old.is_empty() {
                old.iter()
                    .map(|b| if *b == b'z' { b'a' } else { b'z' })
                    .collect()
            } else {
                format!("{}\n", rng.word()).into_bytes()
            };
            // (Through a symlink: edits its target; one to a directory or
            // to a device may refuse, which is fine.)
            let _ = std::fs::write(root.join(&p), new);
            format!("edit {}", p.display())
        }
        4 => {
            let p = pick(rng);
            if is_config(&p) || p == Path::new(".gitignore") {
                return "skip".into();
            }
            std::fs::remove_file(root.join(&p)).unwrap();
            format!("delete {}", p.display())
        }
        5 => {
            let p = pick(rng);
            if is_config(&p) {
                return "skip".into();
            }
            let to = Path::new(PLACES[rng.below(PLACES.len())]).join(format!(
                "mv{}-{}",
                rng.below(100),
                p.file_name().unwrap().to_string_lossy()
            ));
            std::fs::create_dir_all(root.join(&to).parent().unwrap()).unwrap();
            std::fs::rename(root.join(&p), root.join(&to)).unwrap();
            format!("rename {} -> {}", p.display(), to.display())
        }
        6 => {
            // Move a whole directory (not a project root).
            let ds: Vec<PathBuf> = dirs(root)
                .into_iter()
                .filter(|d| {
                    !root.join(d).join("vx.toml").exists()
                        && d != Path::new("libs")
                        && d != Path::new("apps")
                })
                .collect();
            if ds.is_empty() {
                return "skip".into();
            }
            let d = &ds[rng.below(ds.len())];
            let to =
                Path::new(PLACES[rng.below(PLACES.len())]).join(format!("moved{}", rng.below(100)));
            if to.starts_with(d) || root.join(&to).exists() {
                return "skip".into();
            }
            std::fs::create_dir_all(root.join(&to).parent().unwrap()).unwrap();
            std::fs::rename(root.join(d), root.join(&to)).unwrap();
            format!("move dir {} -> {}", d.display(), to.display())
        }
        7 => {
            // A mass change, like a branch switch or `git stash`: many files
            // rewritten, deleted and created at once.
            let mut n = 0;
            for f in &all {
                if is_config(f) || f == Path::new(".gitignore") {
                    continue;
                }
                match rng.below(3) {
                    0 => {
                        let _ = std::fs::write(root.join(f), rng.word());
                    }
                    1 => std::fs::remove_file(root.join(f)).unwrap(),
                    _ => {}
                }
                n += 1;
            }
            for i in 0..20 {
                let p = Path::new(PLACES[rng.below(PLACES.len())])
                    .join(format!("mass{i}-{}.js", rng.below(1000)));
                write(&p, rng.word());
            }
            format!("mass change over {n} files")
        }
        8 => {
            let lines = [
                "dist\n*.log\n",
                "dist\n*.log\n*.md\n",
                "dist\n",
                "dist\n*.log\nmoved*\n",
            ];
            let g = lines[rng.below(lines.len())];
            std::fs::write(root.join(".gitignore"), g).unwrap();
            format!("gitignore = {g:?}")
        }
        9 => {
            // Make a new project appear, or an extra one disappear.
            let p = root.join("libs/extra");
            if p.exists() {
                std::fs::remove_dir_all(&p).unwrap();
                "remove project libs/extra".into()
            } else {
                write(Path::new("libs/extra/src/e.js"), "e\n");
                write(
                    Path::new("libs/extra/vx.toml"),
                    "[tasks.build]\ncommand = \"true\"\ninputs = [\"src/**\"]\noutputs = []\n",
                );
                "add project libs/extra".into()
            }
        }
        11 | 12 => {
            // A symlink: to a file or a directory inside the workspace (an
            // edit of the target must change the link's hash, hot and
            // cold alike), out of it, or dangling. Directory links only
            // point at trees that never hold links, so no cycle forms.
            let dir = PLACES[rng.below(PLACES.len())];
            let up = "../".repeat(
                Path::new(dir)
                    .components()
                    .filter(|c| c.as_os_str() != ".")
                    .count(),
            );
            let target = match rng.below(5) {
                0 | 1 => {
                    let t = pick(rng);
                    format!("{up}{}", t.display())
                }
                2 => format!("{up}{}", ["shared", "libs/b/src"][rng.below(2)]),
                3 => "/dev/null".to_string(),
                _ => format!("{up}missing{}", rng.below(3)),
            };
            let link = Path::new(dir).join(format!("ln{}.js", rng.below(50)));
            let abs = root.join(&link);
            if abs.symlink_metadata().is_ok() {
                return "skip".into();
            }
            std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&target, &abs).unwrap();
            format!("symlink {} -> {target}", link.display())
        }
        _ => {
            let p = pick(rng);
            // (Through a symlink: touches its target, if it can.)
            if let Ok(f) = std::fs::File::options().append(true).open(root.join(&p)) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            format!("touch {}", p.display())
        }
    }
}

#[test]
fn hot_keys_equal_cold_keys_under_random_mutations() {
    let total: usize = std::env::var("VX_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let steps_per_seed = 50;
    let seeds: Vec<u64> = match std::env::var("VX_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(s) => vec![s],
        None => (1..=total.div_ceil(steps_per_seed) as u64).collect(),
    };
    let mut cases = 0;
    // (One replayed seed runs its 50 steps, not `total`.)
    let expected = (seeds.len() * steps_per_seed).min(total.max(steps_per_seed));
    for seed in seeds {
        let ws = fixture();
        let root = std::fs::canonicalize(ws.root()).unwrap();
        assert_eq!(ws.vx(&["daemon", "start"]).code, 0);
        let socket = ws.daemon_status()["socket"].as_str().unwrap().to_string();
        let s = UnixStream::connect(&socket).unwrap();
        let mut hot = Rpc::new(Box::new(s.try_clone().unwrap()), Box::new(s), None);
        // The cold engine keeps its own cache: the daemon holds the default one.
        let mut child = Command::new(vxd_bin())
            .arg("--stdio")
            .env("VX_CACHE_DIR", ".vx/cold-cache")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut cold = Rpc::new(Box::new(stdout), Box::new(stdin), Some(child));
        let mut rng = Rng::new(seed);
        let mut history = Vec::new();
        for step in 0..steps_per_seed {
            history.push(mutate(&root, &mut rng));
            let h = hot.keys(&root);
            let c = cold.keys(&root);
            if h != c {
                panic!(
                    "seed {seed}, step {step}: daemon and no-daemon keys differ\nmutations:\n  {}\ndaemon:    {h:?}\nno-daemon: {c:?}",
                    history.join("\n  ")
                );
            }
            cases += 1;
        }
        assert_eq!(ws.daemon_status()["running"], true);
    }
    assert!(cases >= expected, "only {cases} cases ran");
    eprintln!("{cases} differential cases passed");
}

// ---- Whole-run answers: a replayed repeat run equals a fresh one ----------

fn run_fixture() -> Ws {
    let task = "[tasks.build]\ncommand = \"mkdir -p dist && ls src > dist/out.txt && echo $MODE >> dist/out.txt\"\n\
         inputs = [\"src/**\"]\noutputs = [\"dist/**\"]\nenv = [\"MODE\"]\n\
         [tasks.test]\ncommand = \"true\"\ndepends_on = [\"build\"]\ninputs = [\"src/**\"]\noutputs = []\n";
    Ws::new(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"libs/*\", \"apps/*\"]\n",
        ),
        (".gitignore", "dist\n"),
        ("libs/a/vx.toml", task),
        ("libs/a/src/x.js", "x\n"),
        (
            "libs/b/vx.toml",
            &format!("[project]\ndeps = [\"a\"]\n{task}"),
        ),
        ("libs/b/src/y.js", "y\n"),
        (
            "apps/web/vx.toml",
            &format!("[project]\ndeps = [\"b\"]\n{task}"),
        ),
        ("apps/web/src/main.js", "main\n"),
    ])
}

/// A `vxd --stdio` on the workspace's own cache: another process.
/// The seeds of a whole-run differential test: `VX_DIFF_SEED` alone, else 1–4.
fn run_seeds() -> Vec<u64> {
    match std::env::var("VX_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(s) => vec![s],
        None => (1..=4).collect(),
    }
}

/// [`run_fixture`] with its daemon started: the workspace, its canonical
/// root and a JSON-RPC connection to the daemon's socket.
fn run_fixture_with_daemon() -> (Ws, PathBuf, Rpc) {
    let ws = run_fixture();
    let root = std::fs::canonicalize(ws.root()).unwrap();
    assert_eq!(ws.vx(&["daemon", "start"]).code, 0);
    let socket = ws.daemon_status()["socket"].as_str().unwrap().to_string();
    let s = UnixStream::connect(&socket).unwrap();
    let hot = Rpc::new(Box::new(s.try_clone().unwrap()), Box::new(s), None);
    (ws, root, hot)
}

fn other_process() -> Rpc {
    let mut child = Command::new(vxd_bin())
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    Rpc::new(Box::new(stdout), Box::new(stdin), Some(child))
}

fn run_params(root: &Path, mode: &str, fresh: bool) -> Value {
    let mut env = json!({"PATH": "/usr/bin:/bin", "MODE": mode});
    if fresh {
        // Computed afresh: never replayed, and never kept to be.
        env["VX_REPLAY"] = json!("0");
    }
    json!({"cwd": root, "tasks": ["build", "test"], "all": true, "detail": "all",
           "output_logs": "none", "env": env})
}

/// What a run answered, without what differs between two runs anyway
/// (ids, times, durations): per task (status, cache source, key, exit
/// code), the counts, ok and the exit code.
fn answer(summary: &Value) -> Value {
    let tasks: BTreeMap<String, Value> = summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                json!([t["status"], t["cache"], t["key"], t["exit_code"]]),
            )
        })
        .collect();
    json!({"tasks": tasks, "counts": summary["counts"], "ok": summary["ok"],
           "exit_code": summary["exit_code"]})
}

/// Applies one random change a replay must notice (or none); returns a
/// description.
fn change(root: &Path, rng: &mut Rng, hot: &mut Rpc, mode: &mut &'static str) -> String {
    let projects = ["libs/a", "libs/b", "apps/web"];
    let p = projects[rng.below(projects.len())];
    match rng.below(14) {
        0..=4 => "nothing".into(),
        5 => {
            std::fs::write(root.join(p).join("src/x.js"), rng.word()).unwrap();
            format!("edit {p}/src/x.js")
        }
        6 => {
            let _ = std::fs::remove_dir_all(root.join(p).join("dist"));
            format!("delete {p}/dist")
        }
        7 => {
            let f = root.join(p).join("dist/out.txt");
            if f.exists() {
                std::fs::write(&f, "tampered\n").unwrap();
            }
            format!("overwrite {p}/dist/out.txt")
        }
        8 => {
            hot.call("cache.clean", json!({"cwd": root})).unwrap();
            "cache clean (daemon)".into()
        }
        9 => {
            let mut other = other_process();
            let max = rng.below(3) as u64 * 40;
            other
                .call("cache.prune", json!({"cwd": root, "max_size": max}))
                .unwrap();
            format!("cache prune --max-size {max} (another process)")
        }
        10 => {
            *mode = if *mode == "a" { "b" } else { "a" };
            format!("MODE={mode}")
        }
        11 | 12 => {
            let m = ["a", "b"][rng.below(2)];
            let force = rng.below(2) == 0;
            let mut other = other_process();
            let mut params = run_params(root, m, false);
            params["force"] = json!(force);
            other.call("run.start", params).unwrap();
            format!("run MODE={m} force={force} (another process)")
        }
        _ => {
            let _ = std::fs::remove_file(root.join(p).join("dist/out.txt"));
            format!("delete {p}/dist/out.txt")
        }
    }
}

#[test]
fn replayed_runs_equal_fresh_runs_under_random_changes() {
    let seeds = run_seeds();
    let steps = 40;
    let (mut replays, mut fresh_checks) = (0, 0);
    for seed in seeds {
        let (ws, root, mut hot) = run_fixture_with_daemon();
        let mut rng = Rng::new(seed);
        let mut mode: &'static str = "a";
        let mut history = Vec::new();
        let replayed = |hot: &mut Rpc| {
            hot.call("daemon.status", json!({})).unwrap()["runs_replayed"]
                .as_u64()
                .unwrap()
        };
        for step in 0..steps {
            history.push(change(&root, &mut rng, &mut hot, &mut mode));
            let before = replayed(&mut hot);
            let a = hot
                .call("run.start", run_params(&root, mode, false))
                .unwrap();
            let was_replayed = replayed(&mut hot) != before;
            eprintln!(
                "seed {seed} step {step}: {} -> {}",
                history.last().unwrap(),
                if was_replayed { "replayed" } else { "fresh" }
            );
            if !was_replayed {
                continue;
            }
            replays += 1;
            // A replay: a fresh computation now must answer the same.
            let b = hot
                .call("run.start", run_params(&root, mode, true))
                .unwrap();
            assert_eq!(
                answer(&a),
                answer(&b),
                "seed {seed}, step {step}: the replayed run differs from a fresh one\nchanges:\n  {}",
                history.join("\n  ")
            );
            fresh_checks += 1;
        }
        ws.vx(&["daemon", "stop"]);
    }
    // The test is about replays: they must have happened, and been checked.
    assert!(replays >= 10, "only {replays} replays");
    assert_eq!(replays, fresh_checks);
    eprintln!("{replays} replayed runs equal their fresh computation");
}

// ---- Per-task memo: a daemon run's served hits are what a fresh run finds --

/// Per task: its key, and whether it is a hit whose outputs are in place.
fn keys_and_in_place(summary: &Value) -> BTreeMap<String, (Value, bool)> {
    summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                (
                    t["key"].clone(),
                    t["status"] == "cached" && t["cache"] == "up-to-date",
                ),
            )
        })
        .collect()
}

/// After each random change (an edit, deleted or overwritten outputs, a
/// `cache clean`, a prune or a (forced) run by another process on the same
/// cache, a changed keyed env value, or nothing), the daemon computes the
/// run afresh or in part: tasks nothing can have changed since its last
/// run of the request are served from that run's memo, unvisited. Right
/// after, another process's fresh run on the same cache must find the
/// same keys and every task a hit in place (a served hit that was stale —
/// an input changed, outputs gone or altered, its entry dropped — shows as
/// another key, a restore or an execution there); and when the daemon's
/// run found every task in place, the very same answer.
#[test]
fn memo_served_runs_agree_with_a_fresh_process_under_random_changes() {
    let seeds = run_seeds();
    let steps = 40;
    let (mut served_total, mut partial_runs) = (0, 0);
    for seed in seeds {
        let (ws, root, mut hot) = run_fixture_with_daemon();
        let mut rng = Rng::new(seed);
        let mut mode: &'static str = "a";
        let mut history = Vec::new();
        let served = |hot: &mut Rpc| {
            hot.call("daemon.status", json!({})).unwrap()["tasks_memo_served"]
                .as_u64()
                .unwrap()
        };
        for step in 0..steps {
            history.push(change(&root, &mut rng, &mut hot, &mut mode));
            let before = served(&mut hot);
            let a = hot
                .call("run.start", run_params(&root, mode, false))
                .unwrap();
            let n = served(&mut hot) - before;
            let total = a["counts"]["total"].as_u64().unwrap();
            eprintln!(
                "seed {seed} step {step}: {} -> {n} of {total} served",
                history.last().unwrap()
            );
            served_total += n;
            if n > 0 && n < total {
                partial_runs += 1;
            }
            assert_eq!(a["ok"], true, "seed {seed}, step {step}: {a}");
            let b = other_process()
                .call("run.start", run_params(&root, mode, true))
                .unwrap();
            let (ka, kb) = (keys_and_in_place(&a), keys_and_in_place(&b));
            let stale: Vec<&String> = kb
                .iter()
                .filter(|(_, (_, ok))| !ok)
                .map(|(id, _)| id)
                .collect();
            let keys = |m: &BTreeMap<String, (Value, bool)>| -> BTreeMap<String, Value> {
                m.iter()
                    .map(|(id, (k, _))| (id.clone(), k.clone()))
                    .collect()
            };
            assert!(
                keys(&ka) == keys(&kb) && stale.is_empty(),
                "seed {seed}, step {step}: a fresh run after the daemon's disagrees (not in place there: {stale:?})\nchanges:\n  {}\ndaemon:    {a}\nfresh:     {b}",
                history.join("\n  ")
            );
            if ka.values().all(|(_, in_place)| *in_place) {
                assert_eq!(
                    answer(&a),
                    answer(&b),
                    "seed {seed}, step {step}: the daemon's run differs from a fresh one\nchanges:\n  {}",
                    history.join("\n  ")
                );
            }
        }
        ws.vx(&["daemon", "stop"]);
    }
    // The test is about served tasks: some runs must have served part.
    assert!(partial_runs >= 5, "only {partial_runs} partly served runs");
    eprintln!("{served_total} tasks served from memos; {partial_runs} partly served runs agreed");
}
