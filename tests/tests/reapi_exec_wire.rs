//! What a remotely executed task gets and gives back, end to end against a
//! real BuildGrid with a real bot (`vx_tests::peers::buildgrid`): exactly
//! its keyed environment and `define` values (never a `pass_env` variable),
//! its declared inputs including a global input and a symlink, retries
//! executed remotely again, and its timeout enforced on the bot.

use vx_tests::peers::buildgrid::{Buildgrid, Services};
use vx_tests::{Run, Ws, vx_test};

fn grid(test: &str) -> Option<Buildgrid> {
    match Buildgrid::start(Services::Execution, 1) {
        Ok(bg) => Some(bg),
        Err(peer) => {
            vx_tests::peers::skip(test, peer);
            None
        }
    }
}

fn fixture(bg: &Buildgrid, marker: &str) -> Ws {
    let ws = Ws::new(&[
        (
            "vx.toml",
            &format!(
                "[workspace]\nmembers = [\"pkg\"]\nglobal_inputs = [\"config/shared.txt\"]\n\n[remote_execution]\nendpoint = \"{}\"\nexecute = true\nplatform = {{ OSFamily = \"linux\" }}\n",
                bg.endpoint()
            ),
        ),
        ("config/shared.txt", "shared-config\n"),
        (
            "pkg/vx.toml",
            &format!(
                r#"[tasks.env]
command = "mkdir -p dist && env | sort > dist/env.txt && cat ../config/shared.txt > dist/shared.txt && cat src/link.txt > dist/via-link.txt && echo env-done"
inputs = ["src/**"]
outputs = ["dist/**"]
env = ["KEYED", "UNSET_KEYED"]
pass_env = ["PASSED"]
define = {{ DEF = "d1" }}

[tasks.flaky]
command = "mkdir -p out && if [ -e \"$MARKER\" ]; then echo second > out/x.txt; else touch \"$MARKER\"; echo first-fails >&2; exit 3; fi"
inputs = ["src/**"]
outputs = ["out/**"]
define = {{ MARKER = "{marker}" }}
retries = 1

[tasks.slow]
command = "sleep 30"
inputs = ["src/**"]
outputs = ["slow/**"]
timeout = "2s"
"#
            ),
        ),
        ("pkg/src/a.txt", "via-a\n"),
    ]);
    std::os::unix::fs::symlink("a.txt", ws.path("pkg/src/link.txt")).unwrap();
    ws
}

fn worker(r: &Run, id: &str) -> String {
    r.task(id)["worker"].as_str().unwrap_or("").to_string()
}

vx_test!(a_remote_task_gets_its_keyed_env_and_inputs_only, || {
    let Some(bg) = grid("a_remote_task_gets_its_keyed_env_and_inputs_only") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let ws = fixture(&bg, marker.to_str().unwrap());
    let r = ws.run_env(
        &["pkg#env"],
        &[("KEYED", "k1"), ("PASSED", "p-secret-value")],
    );
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, bg.logs());
    assert!(
        worker(&r, "pkg#env").starts_with("reapi"),
        "{}",
        r.summary()
    );
    let env = ws.read("pkg/dist/env.txt");
    assert!(env.lines().any(|l| l == "KEYED=k1"), "{env}");
    assert!(env.lines().any(|l| l == "DEF=d1"), "{env}");
    for absent in ["PASSED", "UNSET_KEYED", "HOME", "VX_RUN_WORKSPACE"] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{absent}="))),
            "{absent} crossed the wire: {env}"
        );
    }
    assert!(!env.contains("p-secret-value"), "{env}");
    // The checkout's path never crosses either.
    let root = ws.root().to_string_lossy().into_owned();
    assert!(!env.contains(&root), "{env}");
    // A global input and a symlinked input were in the input root.
    assert_eq!(ws.read("pkg/dist/shared.txt"), "shared-config\n");
    assert_eq!(ws.read("pkg/dist/via-link.txt"), "via-a\n");
});

vx_test!(retries_run_remotely_and_timeouts_hold_on_the_bot, || {
    let Some(bg) = grid("retries_run_remotely_and_timeouts_hold_on_the_bot") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let ws = fixture(&bg, marker.to_str().unwrap());
    let r = ws.run(&["pkg#flaky"]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, bg.logs());
    let t = r.task("pkg#flaky");
    assert_eq!(t["attempts"], 2, "{}", r.summary());
    assert!(
        worker(&r, "pkg#flaky").starts_with("reapi"),
        "{}",
        r.summary()
    );
    assert!(
        r.events.iter().any(|e| e["type"] == "task_retry"),
        "{}",
        r.stdout
    );
    assert!(
        r.events
            .iter()
            .any(|e| e["type"] == "task_output" && e["line"] == "first-fails"),
        "the first attempt's stderr came back: {}",
        r.stdout
    );
    assert_eq!(ws.read("pkg/out/x.txt"), "second\n");
    assert_eq!(
        bg.bot_logs().matches(" accepted").count(),
        2,
        "{}",
        bg.logs()
    );
    // The task's timeout is the Action's: the bot stops it, the task fails.
    let r = ws.run(&["pkg#slow"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.status("pkg#slow"), "failed", "{}", r.summary());
    let err = r.task("pkg#slow")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains("timed out"), "{err}\n{}", bg.logs());
});

vx_test!(no_worker_is_one_warning_and_the_run_goes_on_here, || {
    // BuildGrid with no bot at all: the first task waits queued for the
    // queue timeout, then the run warns once, runs it here, and sends no
    // other task (its dependent runs here at once).
    let bg = match Buildgrid::start(Services::Execution, 0) {
        Ok(bg) => bg,
        Err(peer) => {
            vx_tests::peers::skip("no_worker_is_one_warning_and_the_run_goes_on_here", peer);
            return;
        }
    };
    let ws = Ws::new(&[
        (
            "vx.toml",
            &format!(
                "[workspace]\nmembers = [\"a\", \"b\"]\n\n[remote_execution]\nendpoint = \"{}\"\nexecute = true\nplatform = {{ OSFamily = \"linux\" }}\n",
                bg.endpoint()
            ),
        ),
        (
            "a/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && echo a > dist/a.txt\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\ntimeout = \"5s\"\n",
        ),
        ("a/src/x", "x\n"),
        (
            "b/vx.toml",
            "[project]\ndeps = [\"a\"]\n\n[tasks.build]\ncommand = \"mkdir -p dist && cat ../a/dist/a.txt > dist/b.txt\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\ntimeout = \"5s\"\n",
        ),
        ("b/src/x", "x\n"),
    ]);
    let r = ws.run_env(&["build"], &[("VX_REAPI_QUEUE_TIMEOUT_MS", "1500")]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, bg.logs());
    assert_eq!(r.executed(), vec!["a#build", "b#build"]);
    let w: Vec<String> = r
        .events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("no worker took") && w[0].contains(&bg.endpoint()),
        "{w:?}"
    );
    assert!(worker(&r, "a#build").is_empty() && worker(&r, "b#build").is_empty());
    // a#build was started remotely, then again here: its last task_started
    // names no worker; b#build was only ever started here.
    let started = |id: &str| -> Vec<serde_json::Value> {
        r.events
            .iter()
            .filter(|e| e["type"] == "task_started" && e["id"] == id)
            .map(|e| e["worker"].clone())
            .collect()
    };
    assert_eq!(
        started("a#build"),
        vec![serde_json::json!("reapi"), serde_json::Value::Null],
        "{:?}",
        r.events
    );
    assert_eq!(started("b#build"), vec![serde_json::Value::Null]);
    assert_eq!(ws.read("b/dist/b.txt"), "a\n");
});

vx_test!(cancelling_the_run_cancels_the_remote_operation, || {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let Some(bg) = grid("cancelling_the_run_cancels_the_remote_operation") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let ws = Ws::new(&[
        (
            "vx.toml",
            &format!(
                "[workspace]\nmembers = [\"pkg\"]\n\n[remote_execution]\nendpoint = \"{}\"\nexecute = true\nplatform = {{ OSFamily = \"linux\" }}\n",
                bg.endpoint()
            ),
        ),
        (
            "pkg/vx.toml",
            &format!(
                "[tasks.hang]\ncommand = \"echo $$ > \\\"$PIDFILE\\\" && exec sleep 120\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\ndefine = {{ PIDFILE = \"{}\" }}\n",
                pidfile.display()
            ),
        ),
        ("pkg/src/x", "x\n"),
    ]);
    let mut child = ws
        .cmd(".", &["run", "pkg#hang"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let pid: i32 = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the task never started on the bot:\n{}",
            bg.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "vx did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("aborted"), "{out}");
    // The server was asked to cancel: the bot killed the command.
    let t = Instant::now();
    // SAFETY: probing a pid with signal 0.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the remote command {pid} still runs:\n{}",
            bg.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
});
