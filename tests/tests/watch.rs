//! `vx watch` and persistent tasks, end to end: the real `vx` (and `vxd`)
//! binaries on fixture workspaces. A watch client is driven with `--json`
//! (one event per line) and stopped with SIGINT, like Ctrl-C.

use serde_json::Value;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vx_tests::{Ws, processes_in, vx_test};

const WAIT: Duration = Duration::from_secs(60);

struct Watch {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Watch {
    fn start(ws: &Ws, args: &[&str], env: &[(&str, &str)]) -> Watch {
        let mut a = vec!["watch", "--json", "--debounce", "50"];
        a.extend_from_slice(args);
        let mut c = ws.cmd(".", &a);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vx watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Watch { child, rx }
    }

    fn next(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        self.rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no event from vx watch in time: {e}"))
    }

    /// Events of the next cycle (from its `watch_cycle` to its `settled`).
    fn cycle(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut evs = Vec::new();
        loop {
            let e = self.next(deadline);
            let t = e["type"].as_str().unwrap_or("").to_string();
            evs.push(e);
            if t == "settled" {
                return evs;
            }
        }
    }

    /// The ids started in the next cycle that starts anything.
    fn next_starts(&mut self) -> (Vec<String>, Vec<Value>) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let evs = self.cycle();
            let ids = started(&evs);
            if !ids.is_empty() {
                return (ids, evs);
            }
        }
        panic!("no cycle started a task");
    }

    /// The next cycle in which task `id` did anything (ran, joined another
    /// client's execution of it, or was restored).
    fn next_touching(&mut self, id: &str) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let evs = self.cycle();
            if evs.iter().any(|e| e["id"] == id || e["result"]["id"] == id) {
                return evs;
            }
        }
        panic!("no cycle touched {id}");
    }

    /// SIGINT (Ctrl-C); returns the exit code.
    fn interrupt(mut self) -> i32 {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code().unwrap_or(-1);
            }
            if t.elapsed() > WAIT {
                let _ = self.child.kill();
                panic!("vx watch did not stop after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn started(evs: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = evs
        .iter()
        .filter(|e| e["type"] == "task_started")
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

fn assert_no_processes(root: &Path) {
    let t = Instant::now();
    loop {
        let left = processes_in(root);
        if left.is_empty() {
            return;
        }
        if t.elapsed() > Duration::from_secs(10) {
            panic!("processes left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn read_pid(ws: &Ws, rel: &str) -> i32 {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(ws.path(rel))
            && let Ok(n) = s.trim().parse()
        {
            return n;
        }
        assert!(t.elapsed() < WAIT, "{rel} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chain() -> Ws {
    Ws::new(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"lib\", \"app\", \"other\"]\n",
        ),
        (
            "lib/vx.toml",
            "[project]\nname = \"lib\"\n[tasks.build]\ncommand = \"mkdir -p dist && cat src/a.txt > dist/a.txt\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
        ),
        ("lib/src/a.txt", "one\n"),
        ("lib/notes.md", "notes\n"),
        (
            "app/vx.toml",
            "[project]\nname = \"app\"\ndeps = [\"lib\"]\n[tasks.build]\ncommand = \"echo app\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\n",
        ),
        ("app/src/main.txt", "main\n"),
        (
            "other/vx.toml",
            "[project]\nname = \"other\"\n[tasks.build]\ncommand = \"echo other\"\ninputs = [\"src/**\"]\n",
        ),
        ("other/src/x.txt", "x\n"),
    ])
}

vx_test!(editing_a_leaf_reruns_only_the_affected_tasks, || {
    let ws = chain();
    let mut w = Watch::start(&ws, &["build"], &[]);
    let first = w.cycle();
    assert_eq!(
        started(&first),
        vec!["app#build", "lib#build", "other#build"],
        "{first:?}"
    );
    // Not an input of anything: no task starts. Then a real edit.
    ws.write("lib/notes.md", "more notes\n");
    std::thread::sleep(Duration::from_millis(300));
    ws.write("lib/src/a.txt", "two\n");
    let (ids, _) = w.next_starts();
    assert_eq!(ids, vec!["app#build", "lib#build"]);
    assert_eq!(ws.read("lib/dist/a.txt"), "two\n");
    // Deleted outputs come back from the cache (nothing runs).
    std::fs::remove_dir_all(ws.path("lib/dist")).expect("rm dist");
    // A restore writes the file in place: it can exist, still empty, for a
    // moment before its bytes are in. Wait for bytes, then check them.
    let t = Instant::now();
    let restored = loop {
        match std::fs::read_to_string(ws.path("lib/dist/a.txt")) {
            Ok(text) if !text.is_empty() => break text,
            _ => {}
        }
        assert!(t.elapsed() < WAIT, "lib/dist was not restored");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(restored, "two\n");
    // A failing edit keeps watching; fixing it runs again.
    ws.write(
        "other/vx.toml",
        "[project]\nname = \"other\"\n[tasks.build]\ncommand = \"exit 3\"\ninputs = [\"src/**\"]\n",
    );
    let (ids, evs) = w.next_starts();
    assert_eq!(ids, vec!["other#build"]);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "settled" && e["summary"]["ok"] == false),
        "{evs:?}"
    );
    ws.write("other/src/x.txt", "y\n");
    ws.write(
        "other/vx.toml",
        "[project]\nname = \"other\"\n[tasks.build]\ncommand = \"echo fixed\"\ninputs = [\"src/**\"]\n",
    );
    let (ids, _) = w.next_starts();
    assert_eq!(ids, vec!["other#build"]);
    assert_eq!(w.interrupt(), 0);
    assert_no_processes(ws.root());
});

fn dev_ws() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            concat!(
                "[project]\nname = \"app\"\n",
                "[tasks.dev]\n",
                // Records its pid, is ready only after a pause, then serves forever.
                "command = \"echo $$ > dev.pid.tmp && mv dev.pid.tmp dev.pid; echo booting; sleep 0.4; echo 'server ready on :3000'; exec sleep 1000\"\n",
                "persistent = true\n",
                "ready_when = \"ready on\"\n",
                "inputs = [\"server.js\"]\n",
                "[tasks.smoke]\n",
                "command = \"test -f dev.pid && echo smoke ok\"\n",
                "depends_on = [\"dev\"]\n",
                "inputs = [\"smoke.txt\"]\n",
            ),
        ),
        ("app/server.js", "v1\n"),
        ("app/smoke.txt", "s\n"),
        ("app/unrelated.txt", "u\n"),
    ])
}

vx_test!(
    dev_server_restarts_when_its_input_changes_and_not_otherwise,
    || {
        let ws = dev_ws();
        let mut w = Watch::start(&ws, &["smoke"], &[]);
        let first = w.cycle();
        let order: Vec<String> = first
            .iter()
            .filter_map(|e| match e["type"].as_str() {
                Some("task_ready") => Some(format!("ready {}", e["id"].as_str().unwrap_or(""))),
                Some("task_started") => Some(format!("start {}", e["id"].as_str().unwrap_or(""))),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            vec!["start app#dev", "ready app#dev", "start app#smoke"],
            "the dependent starts only after the server is ready"
        );
        let pid1 = read_pid(&ws, "app/dev.pid");
        assert!(pid_alive(pid1));
        // An unrelated file: the server keeps running.
        ws.write("app/unrelated.txt", "changed\n");
        std::thread::sleep(Duration::from_millis(300));
        // The smoke test's own input: it re-runs against the same server.
        ws.write("app/smoke.txt", "s2\n");
        let (ids, _) = w.next_starts();
        assert_eq!(ids, vec!["app#smoke"]);
        assert_eq!(read_pid(&ws, "app/dev.pid"), pid1);
        assert!(pid_alive(pid1));
        // The server's input: it is restarted, then its dependent runs again.
        std::fs::remove_file(ws.path("app/dev.pid")).expect("rm pid");
        ws.write("app/server.js", "v2\n");
        let (ids, _) = w.next_starts();
        assert_eq!(ids, vec!["app#dev", "app#smoke"]);
        let pid2 = read_pid(&ws, "app/dev.pid");
        assert_ne!(pid1, pid2);
        let t = Instant::now();
        while pid_alive(pid1) && t.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!pid_alive(pid1), "the old server was stopped");
        assert_eq!(w.interrupt(), 0);
        assert_no_processes(ws.root());
    }
);

vx_test!(two_watch_clients_share_one_daemon, || {
    let ws = chain();
    let env = [("VX_DAEMON", "1")];
    let mut a = Watch::start(&ws, &["build", "--filter", "lib"], &env);
    let mut b = Watch::start(&ws, &["build", "--filter", "app..."], &env);
    a.cycle();
    b.cycle();
    ws.write("lib/src/a.txt", "three\n");
    // Both clients see the change. lib#build (same key for both) executes
    // once: one client runs it, the other joins that execution or restores
    // its result.
    let ea = a.next_touching("lib#build");
    let (ib, evs) = b.next_starts();
    assert!(ib.contains(&"app#build".to_string()), "{evs:?}");
    let lib_starts = started(&ea)
        .iter()
        .chain(ib.iter())
        .filter(|id| *id == "lib#build")
        .count();
    assert_eq!(lib_starts, 1, "a: {ea:?}\nb: {evs:?}");
    let status = ws.daemon_status();
    assert!(status["pid"].as_u64().is_some(), "{status}");
    assert_eq!(a.interrupt(), 0);
    assert_eq!(b.interrupt(), 0);
    assert_eq!(ws.read("lib/dist/a.txt"), "three\n");
});

vx_test!(run_keeps_a_requested_persistent_task_until_it_exits, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            concat!(
                "[project]\nname = \"app\"\n",
                "[tasks.dev]\n",
                "command = \"echo up; sleep 0.5; echo bye; exit 4\"\n",
                "persistent = true\n",
                "[tasks.early]\n",
                "command = \"echo crashing; exit 2\"\n",
                "persistent = true\n",
                "ready_when = \"never printed\"\n",
                "[tasks.after]\n",
                "command = \"echo after\"\n",
                "depends_on = [\"early\"]\n",
                "[tasks.slow]\n",
                "command = \"exec sleep 1000\"\n",
                "persistent = true\n",
                "ready_when = \"never printed\"\n",
                "timeout = \"300ms\"\n",
            ),
        ),
    ]);
    // Kept after the summary (a `settled` event), output keeps streaming,
    // and its non-zero exit makes the run fail.
    let r = ws.run(&["dev"]);
    // Its own exit code (4), as any failed task's.
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let kinds: Vec<&str> = r.events.iter().filter_map(|e| e["type"].as_str()).collect();
    let settled = kinds.iter().position(|k| *k == "settled").expect("settled");
    let bye = r
        .events
        .iter()
        .position(|e| e["type"] == "task_output" && e["line"] == "bye")
        .expect("bye");
    assert!(bye > settled, "output after the summary streams too");
    assert_eq!(r.status("app#dev"), "failed");
    // Exiting before ready fails the task and skips its dependents.
    let r = ws.run(&["after"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.status("app#early"), "failed");
    assert!(
        r.task("app#early")["error"]
            .as_str()
            .unwrap_or("")
            .contains("exited before it was ready"),
        "{}",
        r.stdout
    );
    assert_eq!(r.status("app#after"), "skipped");
    // A readiness timeout stops the process and fails.
    let r = ws.run(&["slow"]);
    assert_eq!(r.code, 1);
    assert!(
        r.task("app#slow")["error"]
            .as_str()
            .unwrap_or("")
            .contains("not ready after 300 ms"),
        "{}",
        r.stdout
    );
    assert_no_processes(ws.root());
});

vx_test!(ctrl_c_stops_a_kept_dev_server, || {
    let ws = dev_ws();
    let mut c = ws.cmd(".", &["run", "--json", "dev"]);
    let mut child = c.stdout(Stdio::piped()).spawn().expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    // Wait for the settled summary: the server is up and kept.
    loop {
        let line = lines.next().expect("settled before EOF").expect("line");
        if line.contains("\"type\":\"settled\"") {
            assert!(line.contains("\"running\":1"), "{line}");
            break;
        }
    }
    let pid = read_pid(&ws, "app/dev.pid");
    assert!(pid_alive(pid));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(130));
    assert_no_processes(ws.root());
});

/// Runs `vx <args>` in a pseudo-terminal (python's `pty`), typing `input`.
fn in_pty(ws: &Ws, args: &[&str], input: &str, env: &[(&str, &str)]) -> (i32, String) {
    let script = r#"
import os, pty, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
def give_up(*_):
    os.kill(pid, signal.SIGKILL)
    sys.stdout.write("timed out")
    sys.exit(99)
signal.signal(signal.SIGALRM, give_up)
signal.alarm(60)
time.sleep(0.5)
os.write(fd, os.environ["VX_TEST_INPUT"].encode())
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut c = ws.cmd(".", &[]);
    let prog = c.get_program().to_owned();
    let mut py = std::process::Command::new("python3");
    py.arg("-c").arg(script).arg(prog).args(args);
    py.current_dir(ws.root());
    py.env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            py.env(k, v);
        }
    }
    for (k, v) in env {
        py.env(k, v);
    }
    py.env("VX_TEST_INPUT", input);
    c.stdin(Stdio::null());
    let out = py.output().expect("python3 with pty");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

vx_test!(an_interactive_task_run_alone_gets_the_terminal, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            concat!(
                "[project]\nname = \"app\"\n",
                "[tasks.login]\n",
                "command = \"printf 'name? '; read name; echo \\\"hello $name\\\" > greeting.txt\"\n",
                "interactive = true\n",
                "depends_on = [\"prep\"]\n",
                "[tasks.prep]\ncommand = \"echo prepared\"\n",
            ),
        ),
    ]);
    // Through the daemon too: it hands the run to the foreground engine.
    for daemon in ["0", "1"] {
        let _ = std::fs::remove_file(ws.path("app/greeting.txt"));
        let (code, out) = in_pty(
            &ws,
            &["run", "app#login"],
            "bob\n",
            &[("VX_DAEMON", daemon)],
        );
        assert_eq!(code, 0, "VX_DAEMON={daemon}: {out}");
        assert_eq!(ws.read("app/greeting.txt"), "hello bob\n", "{out}");
    }
    // Without a terminal its stdin is closed, with a warning.
    let r = ws.vx(&["run", "app#login"]);
    assert!(
        r.stderr.contains("is interactive but does not run alone"),
        "{}",
        r.stderr
    );
    assert_eq!(ws.read("app/greeting.txt"), "hello \n");
});

vx_test!(
    a_watch_cycle_replays_no_log_of_a_task_that_did_not_change,
    || {
        let ws = Ws::new(&[
            ("vx.toml", "[workspace]\nmembers = [\"lib\", \"other\"]\n"),
            (
                "lib/vx.toml",
                "[project]\nname = \"lib\"\n[tasks.build]\ncommand = \"mkdir -p dist && cp src/a.txt dist/a.txt && echo lib-log-line\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
            ),
            ("lib/src/a.txt", "one\n"),
            ("lib/notes.md", "notes\n"),
            (
                "other/vx.toml",
                "[project]\nname = \"other\"\n[tasks.build]\ncommand = \"echo other-log-line\"\ninputs = [\"src/**\"]\n",
            ),
            ("other/src/x.txt", "x\n"),
        ]);
        // Cached already: the initial cycle is a hit (its log is replayed once).
        assert_eq!(ws.run(&["build"]).code, 0);
        let mut w = Watch::start(&ws, &["build"], &[]);
        let first = w.cycle();
        assert!(
            first
                .iter()
                .any(|e| e["type"] == "task_output" && e["line"] == "lib-log-line"),
            "{first:?}"
        );
        let about_lib = |evs: &[Value]| -> Vec<Value> {
            evs.iter()
                .filter(|e| {
                    e["id"] == "lib#build"
                        && matches!(
                            e["type"].as_str(),
                            Some("task_output" | "task_cache_hit" | "task_started")
                        )
                })
                .cloned()
                .collect()
        };
        // An edit that affects nothing, then one that affects only `other`:
        // no cycle says anything about lib#build.
        ws.write("lib/notes.md", "more notes\n");
        std::thread::sleep(Duration::from_millis(300));
        ws.write("other/src/x.txt", "y\n");
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "other#build never re-ran");
            let evs = w.cycle();
            assert_eq!(about_lib(&evs), Vec::<Value>::new(), "{evs:?}");
            if started(&evs) == vec!["other#build"] {
                break;
            }
            assert!(started(&evs).is_empty(), "{evs:?}");
        }
        // Deleted outputs are restored, and that is news: its cycle says so.
        std::fs::remove_dir_all(ws.path("lib/dist")).expect("rm dist");
        let evs = w.next_touching("lib#build");
        assert!(
            evs.iter()
                .any(|e| e["type"] == "task_cache_hit" && e["id"] == "lib#build"),
            "{evs:?}"
        );
        assert_eq!(ws.read("lib/dist/a.txt"), "one\n");
        assert_eq!(w.interrupt(), 0);
        assert_no_processes(ws.root());
    }
);
