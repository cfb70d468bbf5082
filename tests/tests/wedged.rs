//! A daemon that does not answer (stopped with SIGSTOP, as a deadlocked one
//! would look to its clients) must never hang a client: the hello has a
//! deadline and the command falls back to the foreground engine, a second
//! Ctrl-C always exits, `vx daemon stop` kills what does not answer, and a
//! foreground run beside a live daemon gives up its wait for the cache on
//! the first Ctrl-C (or after a bound) and leaves no engine behind.
//!
//! Every client here runs under a watchdog that kills it, so a regression
//! fails the test instead of hanging the suite.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vx_tests::{Ws, processes_in, vx_test};

/// How long any client here may take before the watchdog kills it.
const LIMIT: Duration = Duration::from_secs(30);

fn ws() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/vx.toml",
            concat!(
                "[tasks.build]\n",
                "command = \"mkdir -p dist && cp src/in.txt dist/out.txt && echo built\"\n",
                "inputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
                // Records its process group, then waits.
                "[tasks.serve]\n",
                "command = \"echo $$ > ../pgid.tmp && mv ../pgid.tmp ../pgid; sleep 100\"\n",
            ),
        ),
        ("a/src/in.txt", "hello\n"),
    ])
}

/// A started client whose output is collected on threads.
struct Client {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    stderr_so_far: String,
}

fn drain(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = r;
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    rx
}

impl Client {
    fn start(mut cmd: Command) -> Client {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vx");
        let out = drain(child.stdout.take().expect("stdout"));
        let err = drain(child.stderr.take().expect("stderr"));
        Client {
            child,
            out,
            err,
            stderr_so_far: String::new(),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the exit within `limit` (else kills it and fails):
    /// (code, stdout, stderr, how long it took).
    fn finish(mut self, limit: Duration) -> (i32, String, String, Duration) {
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "vx did not exit within {limit:?}; stderr so far: {}",
                    self.stderr_so_far
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = t.elapsed();
        let collect = |rx: &mpsc::Receiver<String>| {
            let mut s = String::new();
            while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
                s.push_str(&chunk);
            }
            s
        };
        let out = collect(&self.out);
        let mut err = std::mem::take(&mut self.stderr_so_far);
        err.push_str(&collect(&self.err));
        (status.code().unwrap_or(-1), out, err, took)
    }
}

/// `vx <args>` in the workspace under the watchdog.
fn vx(ws: &Ws, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String, Duration) {
    let mut c = ws.cmd(".", args);
    for (k, v) in env {
        c.env(k, v);
    }
    Client::start(c).finish(LIMIT)
}

/// A daemon stopped with SIGSTOP until this is dropped (then it gets
/// SIGCONT, so the workspace's own cleanup can stop it).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        // SAFETY: stopping the test's own daemon.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        // Wait until the kernel reports it stopped.
        let t = Instant::now();
        while proc_state(pid) != Some('T') && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: resuming the test's own daemon (harmless if it is gone).
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

fn wait_gone(pid: i32) {
    let t = Instant::now();
    while !gone(pid) {
        assert!(t.elapsed() < Duration::from_secs(10), "pid {pid} is alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the workspace's daemon, has it open the cache (one run), and
/// returns its pid.
fn daemon_holding_the_cache(ws: &Ws) -> i32 {
    let pid = start_daemon(ws);
    let (code, out, err, _) = vx(ws, &["run", "build"], &[("VX_DAEMON", "1")]);
    assert_eq!(code, 0, "{out}{err}");
    pid
}

/// Starts the workspace's daemon and returns its pid.
fn start_daemon(ws: &Ws) -> i32 {
    let (code, out, err, _) = vx(ws, &["daemon", "start"], &[("VX_DAEMON", "1")]);
    assert_eq!(code, 0, "{out}{err}");
    let st = ws.daemon_status();
    st["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {st}")) as i32
}

fn wait_for_file(path: &Path) -> i32 {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(n) = s.trim().parse()
        {
            return n;
        }
        assert!(t.elapsed() < LIMIT, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

fn no_engine_left(ws: &Ws) {
    let t = Instant::now();
    loop {
        let left: Vec<String> = processes_in(ws.root())
            .into_iter()
            .filter(|p| p.contains("vxd") || p.contains("sleep"))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

vx_test!(a_stopped_daemon_is_reported_bypassed_and_stopped, || {
    let ws = ws();
    let pid = daemon_holding_the_cache(&ws);
    let _stopped = Stopped::new(pid);
    let env = [("VX_DAEMON", "1"), ("VX_HELLO_TIMEOUT_MS", "500")];
    // The run completes through the foreground engine, saying why.
    let (code, out, err, took) = vx(&ws, &["run", "--json", "build"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "vx: the daemon (pid {pid}) is not responding; run `vx daemon stop --force`"
        )),
        "{err}"
    );
    assert!(
        out.contains("\"status\":\"success\""),
        "the task did not run: {out}"
    );
    assert_eq!(ws.read("a/dist/out.txt"), "hello\n");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // Other commands do not hang either (the history stays the daemon's);
    // status says what is wrong.
    let (_, _, err, took) = vx(&ws, &["history", "--json"], &env);
    assert!(err.contains("is not responding"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let (code, out, err, _) = vx(&ws, &["daemon", "status"], &env);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    // `vx daemon stop` (not forced) stops what does not answer.
    let (code, out, err, _) = vx(&ws, &["daemon", "stop"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("stopped the daemon (pid {pid})")),
        "{out}{err}"
    );
    wait_gone(pid);
    // A new daemon takes over and serves the next run.
    let (code, out, err, _) = vx(&ws, &["run", "build"], &[("VX_DAEMON", "1")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("not responding"), "{err}");
    assert_ne!(ws.daemon_status()["pid"].as_i64(), Some(i64::from(pid)));
});

vx_test!(daemon_stop_force_kills_a_stopped_daemon, || {
    let ws = ws();
    let pid = start_daemon(&ws);
    let _stopped = Stopped::new(pid);
    let (code, out, err, took) = vx(&ws, &["daemon", "stop", "--force"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("stopped the daemon (pid {pid})")),
        "{out}{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    wait_gone(pid);
    let (code, out, _, _) = vx(&ws, &["daemon", "stop"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("no daemon is running"), "{out}");
});

vx_test!(
    a_second_ctrl_c_exits_while_the_daemon_does_not_answer,
    || {
        let ws = ws();
        start_daemon(&ws);
        let mut c = ws.cmd(".", &["run", "a#serve"]);
        c.env("VX_DAEMON", "1");
        let client = Client::start(c);
        let pgid = wait_for_file(&ws.path("pgid"));
        let pid = ws.daemon_status()["pid"].as_i64().expect("pid") as i32;
        let stopped = Stopped::new(pid);
        client.signal(libc::SIGINT);
        std::thread::sleep(Duration::from_millis(300));
        client.signal(libc::SIGINT);
        let (code, _, err, took) = client.finish(Duration::from_secs(10));
        assert_eq!(code, 130, "{err}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // Once it runs again, the daemon sees the client gone and stops its task.
        drop(stopped);
        let t = Instant::now();
        while group_alive(pgid) {
            assert!(t.elapsed() < LIMIT, "the task's group {pgid} survived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
);

// The foreground engine shares the cache with the live daemon: it starts
// its task at once (no lock wait), and one Ctrl-C stops it.
vx_test!(
    a_foreground_run_beside_a_daemon_starts_at_once_and_stops_on_the_first_ctrl_c,
    || {
        let ws = ws();
        let pid = daemon_holding_the_cache(&ws);
        let client = Client::start(ws.cmd(".", &["--no-daemon", "run", "serve"]));
        let pgid = wait_for_file(&ws.path("pgid"));
        assert!(group_alive(pgid));
        client.signal(libc::SIGINT);
        let (code, _, err, took) = client.finish(Duration::from_secs(10));
        assert_eq!(code, 130, "{err}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(!err.contains("waiting"), "{err}");
        // The daemon was never asked to let go of anything.
        assert_eq!(ws.daemon_status()["pid"].as_i64(), Some(pid as i64));
        no_engine_left(&ws);
    }
);

// Beside a live daemon, a foreground run opens the cache the daemon holds
// and hits what the daemon stored (it used to wait and give up).
vx_test!(
    a_foreground_run_beside_a_daemon_hits_what_the_daemon_stored,
    || {
        let ws = ws();
        let pid = daemon_holding_the_cache(&ws);
        std::fs::remove_dir_all(ws.path("a/dist")).expect("rm dist");
        let (code, out, err, _) = vx(&ws, &["--no-daemon", "run", "build"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(!err.contains("in use"), "{err}");
        assert!(!err.contains("without it"), "{err}");
        assert!(
            out.contains("cache hit") || err.contains("cache hit"),
            "{out}{err}"
        );
        assert_eq!(ws.read("a/dist/out.txt"), "hello\n");
        assert_eq!(ws.daemon_status()["pid"].as_i64(), Some(pid as i64));
        // `--no-cache` runs at once too, and restores nothing.
        std::fs::remove_dir_all(ws.path("a/dist")).expect("rm dist");
        let (code, _, err, _) = vx(&ws, &["--no-daemon", "run", "--no-cache", "build"], &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(ws.read("a/dist/out.txt"), "hello\n");
    }
);

/// A foreground engine that answers the hello, then ignores everything
/// (SIGTERM and SIGINT included), like an engine stuck where it cannot be
/// cancelled.
const DEAF_ENGINE: &str = r#"#!/bin/sh
echo $$ > "$DEAF_PID_FILE"
trap '' TERM INT
read -r hello
printf '%s\n' '{"jsonrpc":"2.0","id":1,"result":{"protocol":1,"version":"0","pid":'$$',"mode":"stdio"}}'
exec sleep 1000
"#;

vx_test!(
    a_second_signal_stops_a_deaf_foreground_engine_and_exits_130,
    || {
        use std::os::unix::fs::PermissionsExt;
        for second in [libc::SIGINT, libc::SIGTERM] {
            let ws = ws();
            let bin = ws.path("deaf-vxd");
            std::fs::write(&bin, DEAF_ENGINE).expect("write the fake engine");
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let pid_file = ws.path("deaf.pid");
            let mut c = ws.cmd(".", &["--no-daemon", "run", "build"]);
            c.env("VX_DAEMON_BIN", &bin).env("DEAF_PID_FILE", &pid_file);
            let client = Client::start(c);
            let engine = wait_for_file(&pid_file);
            // Let it answer the hello and receive the run.
            std::thread::sleep(Duration::from_millis(300));
            client.signal(libc::SIGINT);
            std::thread::sleep(Duration::from_millis(300));
            client.signal(second);
            let (code, _, err, took) = client.finish(Duration::from_secs(10));
            assert_eq!(code, 130, "second signal {second}: {err}");
            assert!(took < Duration::from_secs(5), "took {took:?}");
            wait_gone(engine);
            no_engine_left(&ws);
        }
    }
);
