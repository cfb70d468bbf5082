//! Worker links end to end, on loopback with the real binaries: a
//! coordinating daemon, `vxd worker` processes in their own clones of a
//! fixture git repo, and a real `vx-cache-server` as the remote cache all
//! three share (outputs travel through it).
//!
//! These are plain `#[test]`s, not `vx_test!`: `vx run --distribute` is
//! daemon-only by nature (the daemon is the coordinator the workers
//! connect to), so only the daemon mode exists; the no-daemon mode's one
//! behaviour (a clear error) is its own test.
//!
//! Every task appends `start`/`end` lines naming its checkout to a log
//! outside the checkouts, so a test can tell which worker is running what,
//! and that each task ran to completion exactly once.

#[path = "remote_support/mod.rs"]
mod remote_support;

use remote_support::{Server, remote_env};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vx_tests::{Mode, Run, Ws, processes_in, vxd_bin};

const RW: &str = "dist-rw-token-0001";
/// The fixture's libraries and their apps (`app`, its libraries).
const LIBS: &[&str] = &["liba", "libb", "libc"];
const APPS: &[(&str, &[&str])] = &[("appx", &["liba", "libb"]), ("appy", &["libb", "libc"])];

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One `vxd worker` in its own clone.
struct Worker {
    name: String,
    dir: tempfile::TempDir,
    child: Child,
    stderr: PathBuf,
}

impl Worker {
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we started and have not reaped.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "kill({sig}) {}", self.name);
    }
    /// Waits for it to exit; its status code.
    fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "worker {} still running after {secs} s:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SIGCONT first: a stopped worker cannot handle SIGTERM.
        // SAFETY: signals to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// A coordinator workspace (a git repo, daemon mode), its remote cache,
/// the shared task log and its workers.
struct Cluster {
    coord: Ws,
    srv: Server,
    _store: tempfile::TempDir,
    shared: tempfile::TempDir,
}

/// What a library's `dist/out.txt` holds.
fn lib_out(lib: &str) -> String {
    format!("{lib}-1\n{lib}-2\n")
}

/// What an app's `dist/app.txt` holds.
fn app_out(app: &str, libs: &[&str]) -> String {
    let mut s: String = libs.iter().map(|l| lib_out(l)).collect();
    s.push_str(&format!("{app}-main\n"));
    s
}

impl Cluster {
    /// The fixture: three libraries (`build` sleeps `lib_sleep`) and two
    /// apps over them; `root_extra` goes into the root `vx.toml`,
    /// `task_extra(project)` into a project's `build` task.
    fn new(lib_sleep: &str, root_extra: &str, task_extra: impl Fn(&str) -> String) -> Cluster {
        let shared = tempfile::tempdir().expect("tempdir");
        let log = shared.path().join("tasks.log");
        let log = log.to_str().expect("utf-8 path");
        let mut files: Vec<(String, String)> = vec![
            (
                "vx.toml".into(),
                format!("[workspace]\nmembers = [\"packages/*\"]\n{root_extra}\n"),
            ),
            (".gitignore".into(), ".vx/\ndist/\n".into()),
        ];
        for lib in LIBS {
            files.push((
                format!("packages/{lib}/vx.toml"),
                format!(
                    r#"[tasks.build]
command = "echo start {lib}#build $PWD >> {log} && sleep {lib_sleep} && mkdir -p dist && cat src/*.txt > dist/out.txt && echo built {lib} && echo end {lib}#build $PWD >> {log}"
inputs = ["src/**"]
outputs = ["dist/**"]
{}
"#,
                    task_extra(lib)
                ),
            ));
            files.push((format!("packages/{lib}/src/1.txt"), format!("{lib}-1\n")));
            files.push((format!("packages/{lib}/src/2.txt"), format!("{lib}-2\n")));
        }
        for (app, libs) in APPS {
            let deps: Vec<String> = libs.iter().map(|l| format!("\"{l}\"")).collect();
            let cats: Vec<String> = libs
                .iter()
                .map(|l| format!("../{l}/dist/out.txt"))
                .collect();
            files.push((
                format!("packages/{app}/vx.toml"),
                format!(
                    r#"[project]
deps = [{}]

[tasks.build]
command = "echo start {app}#build $PWD >> {log} && sleep 0.5 && mkdir -p dist && cat {} src/main.txt > dist/app.txt && echo built {app} && echo end {app}#build $PWD >> {log}"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = ["dist/**"]
{}
"#,
                    deps.join(", "),
                    cats.join(" "),
                    task_extra(app)
                ),
            ));
            files.push((
                format!("packages/{app}/src/main.txt"),
                format!("{app}-main\n"),
            ));
        }
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let mut coord = Ws::new(&refs);
        coord.mode = Mode::Daemon;
        git(coord.root(), &["init", "-q", "-b", "main"]);
        git(coord.root(), &["add", "-A"]);
        git(coord.root(), &["commit", "-q", "-m", "fixture"]);
        let store = tempfile::tempdir().expect("tempdir");
        let srv = Server::start(
            store.path().to_str().expect("utf-8"),
            &["--token-rw", RW],
            &[],
        );
        Cluster {
            coord,
            srv,
            _store: store,
            shared,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        remote_env(&self.srv, RW)
    }

    /// Starts the coordinator's daemon; its worker URL and token (the
    /// daemon's HTTP token, from the discovery file beside its socket).
    fn door(&self) -> (String, String) {
        let r = self.coord.vx(&["daemon", "start"]);
        assert_eq!(r.code, 0, "daemon start: {}{}", r.stdout, r.stderr);
        let st = self.coord.daemon_status();
        let url = st["worker_url"]
            .as_str()
            .unwrap_or_else(|| panic!("no worker_url in {st}"))
            .to_string();
        let socket = PathBuf::from(st["socket"].as_str().expect("socket"));
        let d: Value = serde_json::from_slice(
            &std::fs::read(socket.with_extension("json")).expect("discovery file"),
        )
        .expect("discovery json");
        (url, d["token"].as_str().expect("token").to_string())
    }

    /// A clone of the coordinator's repository.
    fn clone_repo(&self) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("vx-worker-")
            .tempdir()
            .expect("tempdir");
        git(
            self.coord.root(),
            &[
                "clone",
                "-q",
                self.coord.root().to_str().expect("utf-8"),
                dir.path().to_str().expect("utf-8"),
            ],
        );
        dir
    }

    /// Starts `vxd worker` in `dir` (not waiting for it to connect).
    fn spawn_worker(
        &self,
        dir: tempfile::TempDir,
        name: &str,
        url: &str,
        token: &str,
        extra: &[&str],
    ) -> Worker {
        let stderr = self.shared.path().join(format!("{name}.stderr"));
        let mut c = Command::new(vxd_bin());
        c.args(["worker", "--connect", url, "--name", name])
            .args(extra)
            .current_dir(dir.path())
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("HOME", dir.path())
            .env("VX_WORKER_TOKEN", token)
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"));
        let child = c.spawn().expect("spawn vxd worker");
        Worker {
            name: name.into(),
            dir,
            child,
            stderr,
        }
    }

    /// A worker in a fresh clone, connected (its "connected" line seen).
    fn worker(&self, name: &str, url: &str, token: &str, extra: &[&str]) -> Worker {
        let mut w = self.spawn_worker(self.clone_repo(), name, url, token, extra);
        let t0 = Instant::now();
        while !w.stderr().contains("connected to") {
            if let Some(st) = w.child.try_wait().expect("try_wait") {
                panic!("worker {name} exited ({st}):\n{}", w.stderr());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "worker {name} did not connect:\n{}",
                w.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    }

    /// `vx run build --json <args>` at the coordinator, in the background.
    fn spawn_run(&self, args: &[&str]) -> (Child, PathBuf, PathBuf) {
        let out = self.shared.path().join("run.stdout");
        let err = self.shared.path().join("run.stderr");
        let mut a = vec!["run", "build", "--json"];
        a.extend_from_slice(args);
        let mut c = self.coord.cmd(".", &a);
        c.envs(self.env())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"));
        (c.spawn().expect("spawn vx run"), out, err)
    }

    fn finish_run(&self, mut child: Child, out: &Path, err: &Path, workers: &[&Worker]) -> Run {
        let t0 = Instant::now();
        let code = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st.code().unwrap_or(-1);
            }
            if t0.elapsed() > Duration::from_secs(180) {
                let _ = child.kill();
                let logs: Vec<String> = workers
                    .iter()
                    .map(|w| format!("--- {}:\n{}", w.name, w.stderr()))
                    .collect();
                panic!(
                    "the run did not finish in 180 s\n{}\n{}\ntask log:\n{}\n{}",
                    std::fs::read_to_string(out).unwrap_or_default(),
                    std::fs::read_to_string(err).unwrap_or_default(),
                    self.task_log(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(out).unwrap_or_default();
        Run {
            code,
            events: stdout
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
            stdout,
            stderr: std::fs::read_to_string(err).unwrap_or_default(),
        }
    }

    fn run(&self, args: &[&str], workers: &[&Worker]) -> Run {
        let (c, o, e) = self.spawn_run(args);
        self.finish_run(c, &o, &e, workers)
    }

    fn task_log(&self) -> String {
        std::fs::read_to_string(self.shared.path().join("tasks.log")).unwrap_or_default()
    }

    /// `(start|end, task, checkout dir)` of each task log line.
    fn log_lines(&self) -> Vec<(String, String, String)> {
        self.task_log()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                Some((
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                ))
            })
            .collect()
    }

    /// The task log's lines of `what` (`start`/`end`) in `root`'s checkout.
    fn lines_in(&self, what: &str, root: &Path) -> Vec<String> {
        let root = root.to_string_lossy().into_owned();
        self.log_lines()
            .into_iter()
            .filter(|(w, _, dir)| w == what && dir.starts_with(&root))
            .map(|(_, t, _)| t)
            .collect()
    }

    /// Asserts every library's and app's outputs at the coordinator.
    fn assert_outputs(&self) {
        for lib in LIBS {
            assert_eq!(
                self.coord.read(&format!("packages/{lib}/dist/out.txt")),
                lib_out(lib),
                "{lib}"
            );
        }
        for (app, libs) in APPS {
            assert_eq!(
                self.coord.read(&format!("packages/{app}/dist/app.txt")),
                app_out(app, libs),
                "{app}"
            );
        }
    }
}

fn all_builds() -> Vec<String> {
    let mut v: Vec<String> = LIBS
        .iter()
        .copied()
        .chain(APPS.iter().map(|(a, _)| *a))
        .map(|p| format!("{p}#build"))
        .collect();
    v.sort();
    v
}

fn events_of<'a>(r: &'a Run, kind: &str, id: &str) -> Vec<&'a Value> {
    r.events
        .iter()
        .filter(|e| e["type"] == kind && (e["id"] == id || e["result"]["id"] == id))
        .collect()
}

fn ctx(r: &Run, c: &Cluster, workers: &[&Worker]) -> String {
    let logs: Vec<String> = workers
        .iter()
        .map(|w| format!("--- {}:\n{}", w.name, w.stderr()))
        .collect();
    let results: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| {
            l.contains("\"task_finished\"") || l.contains("\"warning\"") || l.contains("\"error\"")
        })
        .collect();
    format!(
        "code {}\nstderr:\n{}\nresults:\n{}\ntask log:\n{}\n{}",
        r.code,
        r.stderr,
        results.join("\n"),
        c.task_log(),
        logs.join("\n")
    )
}

// (a) A distributed run (workers only) gives the results and outputs of a
// plain local run of another clone: the same tasks succeed with the same
// keys, the same files; the workers executed the tasks, and their lines
// streamed back as the run's own `task_output` events, marked with the
// worker.
#[test]
fn distributed_run_equals_a_local_run() {
    let c = Cluster::new("0.3", "", |_| String::new());
    let (url, token) = c.door();
    let w1 = c.worker("w1", &url, &token, &["--capacity", "2"]);
    let w2 = c.worker("w2", &url, &token, &["--capacity", "2"]);
    let r = c.run(&["--distribute", "--no-local"], &[&w1, &w2]);
    assert_eq!(r.code, 0, "{}", ctx(&r, &c, &[&w1, &w2]));
    assert_eq!(r.executed(), all_builds(), "{}", r.summary());
    c.assert_outputs();
    for id in all_builds() {
        let w = r.task(&id)["worker"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(w == "w1" || w == "w2", "{id} ran on {w:?}: {}", r.summary());
        let lines = events_of(&r, "task_output", &id);
        assert!(
            lines
                .iter()
                .any(|e| e["line"].as_str().is_some_and(|l| l.contains("built"))
                    && e["worker"] == w.as_str()),
            "{id}: no live line from {w}: {lines:?}"
        );
    }
    // Nothing ran in the coordinator's checkout.
    assert!(
        c.lines_in("start", c.coord.root()).is_empty(),
        "{}",
        c.task_log()
    );

    // A plain local run of another clone, no remote cache, no daemon.
    let local_dir = c.clone_repo();
    let local = Ws {
        dir: local_dir,
        runtime: tempfile::tempdir().expect("tempdir"),
        mode: Mode::NoDaemon,
    };
    let l = local.run(&["build"]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    assert_eq!(l.executed(), r.executed());
    for id in all_builds() {
        assert_eq!(l.task(&id)["status"], r.task(&id)["status"], "{id}");
        assert_eq!(l.task(&id)["key"], r.task(&id)["key"], "{id}: keys differ");
        assert!(l.task(&id)["worker"].is_null(), "{id}");
    }
    for lib in LIBS {
        let p = format!("packages/{lib}/dist/out.txt");
        assert_eq!(local.read(&p), c.coord.read(&p), "{p}");
    }
    for (app, _) in APPS {
        let p = format!("packages/{app}/dist/app.txt");
        assert_eq!(local.read(&p), c.coord.read(&p), "{p}");
    }
}

// (b) A worker killed (-9) in the middle of a task: the run still
// completes with the right outputs, every task ran to completion exactly
// once (the lost one again, elsewhere), and nothing the dead worker
// started is left running.
#[test]
fn a_killed_worker_loses_nothing() {
    let c = Cluster::new("3", "", |_| String::new());
    let (url, token) = c.door();
    let mut w1 = c.worker("w1", &url, &token, &["--capacity", "1"]);
    let w2 = c.worker("w2", &url, &token, &["--capacity", "1"]);
    let (child, out, err) = c.spawn_run(&["--distribute", "--no-local"]);
    wait_for("a task started on w1", 60, || {
        !c.lines_in("start", w1.root()).is_empty()
    });
    let killed = c.lines_in("start", w1.root())[0].clone();
    w1.child.kill().expect("kill -9 w1");
    let _ = w1.child.wait();
    let r = c.finish_run(child, &out, &err, &[&w1, &w2]);
    assert_eq!(r.code, 0, "{}", ctx(&r, &c, &[&w1, &w2]));
    assert_eq!(r.executed(), all_builds(), "{}", r.summary());
    c.assert_outputs();
    // Each task ended exactly once; the killed one never ended on w1.
    let ends: Vec<(String, String, String)> = c
        .log_lines()
        .into_iter()
        .filter(|(w, _, _)| w == "end")
        .collect();
    for id in all_builds() {
        let n = ends.iter().filter(|(_, t, _)| *t == id).count();
        assert_eq!(n, 1, "{id} completed {n} times:\n{}", c.task_log());
    }
    assert!(
        !c.lines_in("end", w1.root()).contains(&killed),
        "{killed} completed on the killed worker:\n{}",
        c.task_log()
    );
    assert_eq!(r.task(&killed)["worker"], "w2", "{}", r.summary());
    // The killed worker's task process went with it.
    let t0 = Instant::now();
    while !processes_in(w1.root()).is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_in(w1.root()), Vec::<String>::new(), "orphans");
}

// (c) A worker stalled (SIGSTOP) past its lease has its task reassigned;
// when it resumes, its task having meanwhile finished, its late report
// changes nothing: the task's one result is the other worker's.
#[test]
fn a_stalled_worker_loses_its_lease_and_its_late_report_is_ignored() {
    let c = Cluster::new("3", "[workers]\nlease = \"1500ms\"\n", |_| String::new());
    let (url, token) = c.door();
    let w1 = c.worker("w1", &url, &token, &["--capacity", "1"]);
    let w2 = c.worker("w2", &url, &token, &["--capacity", "1"]);
    let (child, out, err) = c.spawn_run(&["--distribute", "--no-local"]);
    wait_for("a task started on w1", 60, || {
        !c.lines_in("start", w1.root()).is_empty()
    });
    w1.signal(libc::SIGSTOP);
    let stalled = c.lines_in("start", w1.root())[0].clone();
    // Its process is not stopped: it ends on w1 while w1 cannot report;
    // meanwhile the lease expires and w2 takes the task over.
    wait_for("the stalled task to end on w1 and start on w2", 60, || {
        c.lines_in("end", w1.root()).contains(&stalled)
            && c.lines_in("start", w2.root()).contains(&stalled)
    });
    let reassigned_done = c.lines_in("end", w2.root()).contains(&stalled);
    w1.signal(libc::SIGCONT);
    let r = c.finish_run(child, &out, &err, &[&w1, &w2]);
    assert_eq!(r.code, 0, "{}", ctx(&r, &c, &[&w1, &w2]));
    assert_eq!(r.executed(), all_builds(), "{}", r.summary());
    c.assert_outputs();
    assert_eq!(
        r.task(&stalled)["worker"],
        "w2",
        "the late report won (reassigned copy already done at SIGCONT: {reassigned_done}): {}",
        ctx(&r, &c, &[&w1, &w2])
    );
    assert_eq!(
        events_of(&r, "task_finished", &stalled).len(),
        1,
        "{}",
        r.stdout
    );
    assert!(
        c.lines_in("end", w2.root()).contains(&stalled),
        "{}",
        c.task_log()
    );
}

// (d) A task that needs a label no connected worker has fails fast, naming
// the label (the run does not wait for a worker that may never come); a
// worker with the label then runs it.
#[test]
fn a_task_needing_a_missing_label_fails_fast() {
    let c = Cluster::new("0.2", "", |p| {
        if p == "libc" {
            "labels = [\"gpu\"]".into()
        } else {
            String::new()
        }
    });
    let (url, token) = c.door();
    let w1 = c.worker("w1", &url, &token, &["--capacity", "2", "--label", "linux"]);
    let r = c.run(&["--distribute", "--no-local"], &[&w1]);
    assert_ne!(r.code, 0, "{}", ctx(&r, &c, &[&w1]));
    assert_eq!(r.status("libc#build"), "failed", "{}", r.summary());
    let e = r.task("libc#build")["error"].as_str().unwrap_or_default();
    assert!(e.contains("gpu"), "the error names the label: {e:?}");
    assert!(
        c.lines_in("start", w1.root())
            .iter()
            .all(|t| t != "libc#build")
    );

    let w2 = c.worker("w2", &url, &token, &["--capacity", "2", "--label", "gpu"]);
    let r = c.run(&["--distribute", "--no-local"], &[&w1, &w2]);
    assert_eq!(r.code, 0, "{}", ctx(&r, &c, &[&w1, &w2]));
    assert_eq!(r.task("libc#build")["worker"], "w2", "{}", r.summary());
    c.assert_outputs();
}

// (e) A worker at another commit is refused naming both SHAs; a wrong
// token is refused; either way the worker exits 2 with the message.
#[test]
fn refusals_name_the_reason() {
    let c = Cluster::new("0.1", "", |_| String::new());
    let (url, token) = c.door();
    let ours = git(c.coord.root(), &["rev-parse", "HEAD"]);

    let moved = c.clone_repo();
    std::fs::write(moved.path().join("packages/liba/src/3.txt"), "new\n").expect("write");
    git(moved.path(), &["add", "-A"]);
    git(moved.path(), &["commit", "-q", "-m", "moved on"]);
    let theirs = git(moved.path(), &["rev-parse", "HEAD"]);
    let mut w = c.spawn_worker(moved, "moved", &url, &token, &[]);
    assert_eq!(w.wait_exit(30), Some(2), "{}", w.stderr());
    let msg = w.stderr();
    assert!(
        msg.contains(&ours) && msg.contains(&theirs),
        "both SHAs ({ours}, {theirs}) named: {msg}"
    );

    let mut w = c.spawn_worker(c.clone_repo(), "badtoken", &url, "not-the-token", &[]);
    assert_eq!(w.wait_exit(30), Some(2), "{}", w.stderr());
    assert!(w.stderr().contains("token"), "{}", w.stderr());

    // `vx worker` is `vxd worker` with the same arguments (the token passed
    // on in the environment): refused the same way.
    let out = c
        .coord
        .cmd(
            ".",
            &[
                "worker",
                "--connect",
                &url,
                "--token",
                "nope",
                "--capacity",
                "1",
            ],
        )
        .output()
        .expect("run vx worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("refused") && err.contains("token"), "{err}");

    // The right token at the same commit is accepted.
    let _ok = c.worker("ok", &url, &token, &[]);
}

// (f) Without a daemon there is no coordinator: a clear error, nothing run.
#[test]
fn distribute_without_the_daemon_is_a_clear_error() {
    let c = Cluster::new("0.1", "", |_| String::new());
    let mut ws_mode = c
        .coord
        .cmd(".", &["run", "build", "--distribute", "--no-daemon"]);
    let out = ws_mode.output().expect("run vx");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--distribute needs the daemon"), "{stderr}");
    assert!(c.task_log().is_empty(), "{}", c.task_log());
}

// The worker door assumes a hostile caller: no token or a wrong one gets
// UNAUTHENTICATED and nothing else; a link that sends no Hello is dropped
// (DEADLINE_EXCEEDED after 10 s); a first message that is not a Hello, or
// a Hello out of bounds, is INVALID_ARGUMENT; a message over 1 MiB closes
// the link. The daemon serves on: a proper worker still attaches.
#[test]
fn the_worker_door_bounds_hostile_callers() {
    use tokio_stream::wrappers::ReceiverStream;
    use vxd_workers::pb;
    let c = Cluster::new("0.1", "", |_| String::new());
    let (url, token) = c.door();
    let commit = git(c.coord.root(), &["rev-parse", "HEAD"]);
    let hello = |capacity: u32| pb::FromWorker {
        msg: Some(pb::from_worker::Msg::Hello(pb::Hello {
            name: "raw".into(),
            commit: Some(commit.clone()),
            capacity,
            labels: vec![],
            protocol: vxd::engine::distribute::PROTOCOL,
        })),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect to the worker door");
        let client = pb::worker_link_client::WorkerLinkClient::new(channel);
        // Opens a link with `token`, sends `first`, returns the answer
        // (and the sender, to keep the stream open or send more).
        let open = |token: Option<String>, first: Vec<pb::FromWorker>| {
            let mut client = client.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                for m in first {
                    tx.send(m).await.expect("queue");
                }
                let mut req = tonic::Request::new(ReceiverStream::new(rx));
                if let Some(t) = token {
                    req.metadata_mut()
                        .insert("authorization", format!("Bearer {t}").parse().unwrap());
                }
                (client.connect(req).await, tx)
            }
        };
        let code = |r: &Result<_, tonic::Status>| match r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        let (r, _tx) = open(None, vec![hello(1)]).await;
        assert_eq!(code(&r), tonic::Code::Unauthenticated);
        let (r, _tx) = open(Some(format!("{token}x")), vec![hello(1)]).await;
        assert_eq!(code(&r), tonic::Code::Unauthenticated);
        let (r, _tx) = open(Some("Bearer".into()), vec![hello(1)]).await;
        assert_eq!(code(&r), tonic::Code::Unauthenticated);
        let ready = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Ready(pb::Ready { free: 1 })),
        };
        let (r, _tx) = open(Some(token.clone()), vec![ready]).await;
        assert_eq!(code(&r), tonic::Code::InvalidArgument);
        let (r, _tx) = open(Some(token.clone()), vec![hello(0)]).await;
        assert_eq!(code(&r), tonic::Code::InvalidArgument);
        // Silent after connecting: dropped, the stream still open on our side.
        let (r, tx) =
            tokio::time::timeout(Duration::from_secs(60), open(Some(token.clone()), vec![]))
                .await
                .expect("the door answers a silent link");
        assert_eq!(code(&r), tonic::Code::DeadlineExceeded);
        drop(tx);
        // Over the size limit after a good Hello: the link is closed.
        let (r, tx) = open(Some(token.clone()), vec![hello(1)]).await;
        let mut inbound = r.expect("attached").into_inner();
        let huge = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Log(pb::Log {
                lease: 1,
                stream: pb::Stream::Stdout as i32,
                line: "x".repeat(2 << 20),
            })),
        };
        let _ = tx.send(huge).await;
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        assert!(ended.is_ok(), "the link survived a 2 MiB message");
    });
    // The daemon is fine: a real worker attaches.
    let _w = c.worker("after", &url, &token, &["--capacity", "1"]);
}

// SIGTERM stops a worker cleanly: it kills the task it runs (nothing is
// left in its checkout), exits 0, and the run completes elsewhere.
#[test]
fn a_terminated_worker_kills_its_tasks_and_exits_0() {
    let c = Cluster::new("3", "", |_| String::new());
    let (url, token) = c.door();
    let mut w1 = c.worker("w1", &url, &token, &["--capacity", "1"]);
    let w2 = c.worker("w2", &url, &token, &["--capacity", "1"]);
    let (child, out, err) = c.spawn_run(&["--distribute", "--no-local"]);
    wait_for("a task started on w1", 60, || {
        !c.lines_in("start", w1.root()).is_empty()
    });
    let stopped = c.lines_in("start", w1.root())[0].clone();
    w1.signal(libc::SIGTERM);
    assert_eq!(w1.wait_exit(30), Some(0), "{}", w1.stderr());
    assert!(
        w1.stderr().contains("killing 1 running task"),
        "{}",
        w1.stderr()
    );
    assert_eq!(processes_in(w1.root()), Vec::<String>::new(), "orphans");
    let r = c.finish_run(child, &out, &err, &[&w1, &w2]);
    assert_eq!(r.code, 0, "{}", ctx(&r, &c, &[&w1, &w2]));
    assert_eq!(r.task(&stopped)["worker"], "w2", "{}", r.summary());
    assert!(
        !c.lines_in("end", w1.root()).contains(&stopped),
        "{}",
        c.task_log()
    );
    c.assert_outputs();
}

// A connected worker keeps the coordinator's daemon from idling out (it
// counts as a connection); once it is gone, the daemon idles out.
#[test]
fn a_connected_worker_keeps_the_daemon_alive() {
    let c = Cluster::new("0.1", "", |_| String::new());
    let r = c
        .coord
        .cmd(".", &["daemon", "start"])
        .env("VX_DAEMON_IDLE_TIMEOUT", "1s")
        .output()
        .expect("vx daemon start");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (url, token) = c.door();
    let st = c.coord.daemon_status();
    assert_eq!(st["idle_timeout_ms"], 1000, "{st}");
    let pid = st["pid"].as_u64().expect("pid") as i32;
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    let mut w = c.worker("w1", &url, &token, &["--capacity", "1"]);
    // Several idle timeouts pass without a request: the link holds it.
    std::thread::sleep(Duration::from_secs(4));
    assert!(alive(), "the daemon idled out under a connected worker");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit(30), Some(0), "{}", w.stderr());
    wait_for("the daemon to idle out once the worker left", 60, || {
        !alive()
    });
}
