//! The insights dashboard in a real browser: headless Chromium (Debian's
//! `/usr/bin/chromium`) driven by `playwright-core` (tests/peers) through
//! `http_ui.js`, on a workspace with recorded runs. It asserts on the
//! rendered DOM: the runs are listed; a run's timeline has one bar per task
//! it ran (hover: key and duration; click: the log); the task page shows
//! its history, sparkline, statistics and why; the live view shows a task
//! change state while a run is in progress. Screenshots are kept under
//! `target/<profile>/http-ui/`. Slow (a browser): daemon variant only.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use vx_tests::{Ws, daemon_mode, peers, vx_test};

fn workspace() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/lib/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && cat src/*.txt > dist/out.txt && echo built lib\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
        ),
        ("packages/lib/src/a.txt", "lib-a\n"),
        (
            "packages/app/vx.toml",
            "[project]\ndeps = [\"lib\"]\n\n[tasks.build]\ncommand = \"mkdir -p dist && cat ../lib/dist/out.txt src/*.txt > dist/app.txt && echo built app\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
        ),
        ("packages/app/src/main.txt", "app\n"),
        (
            "packages/gate/vx.toml",
            "[tasks.slow]\ncommand = \"n=0; while [ ! -f ../../gate ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; echo opened\"\ncache = false\n",
        ),
    ])
}

fn json(r: &vx_tests::Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr))
}

vx_test!(
    the_dashboard_renders_runs_timeline_task_page_and_live_view,
    || {
        if !daemon_mode() {
            return; // a browser is slow: the daemon variant only (only a daemon serves HTTP)
        }
        let (Some(chromium), Some(modules)) = (peers::on_path("chromium"), peers::node_modules())
        else {
            peers::skip("http_ui", "chromium or playwright-core");
            return;
        };
        let playwright = modules.join("playwright-core");
        if !playwright.is_dir() {
            peers::skip("http_ui", "playwright-core (npm)");
            return;
        }
        let Some(node) = peers::on_path("node") else {
            peers::skip("http_ui", "node");
            return;
        };
        let ws = workspace();
        for (i, change) in [None, Some("lib-a changed\n"), None].iter().enumerate() {
            if let Some(c) = change {
                ws.write("packages/lib/src/a.txt", c);
            }
            let r = ws.vx_daemon(&["run", "build"]);
            assert_eq!(r.code, 0, "run {i}: {}", r.stderr);
        }
        let runs = json(&ws.vx_daemon(&["history", "--json"]));
        let runs = runs["runs"].as_array().unwrap().clone();
        assert_eq!(runs.len(), 3);
        // The second run (newest first: index 1) executed both tasks.
        let run_id = runs[1]["run_id"].as_str().unwrap().to_string();
        let record = json(&ws.vx_daemon(&["last", &run_id, "--json"]));
        let run_tasks = record["tasks"].as_array().unwrap().len();
        assert_eq!(run_tasks, 2, "{record}");
        let hist = json(&ws.vx_daemon(&["history", "lib#build", "--json"]));
        let task_rows = hist["rows"].as_array().unwrap().len();
        assert_eq!(task_rows, 3, "{hist}");
        let url = ws.vx_daemon(&["ui", "--no-open"]).stdout.trim().to_string();
        let shots = vx_tests::bin_dir().join("http-ui");
        std::fs::create_dir_all(&shots).unwrap();
        let mut child = Command::new(node)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http_ui.js"))
            .env("URL", &url)
            .env("PLAYWRIGHT", &playwright)
            .env("CHROMIUM", &chromium)
            .env("SHOTS", &shots)
            .env("RUNS", runs.len().to_string())
            .env("RUN_ID", &run_id)
            .env("RUN_TASKS", run_tasks.to_string())
            .env("TASK", "lib#build")
            .env("TASK_ROWS", task_rows.to_string())
            .env("LOG_TEXT", "built lib")
            .env("SLOW", "gate#slow")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let expect = |what: &str| {
            let l = rx
                .recv_timeout(Duration::from_secs(180))
                .unwrap_or_else(|e| panic!("the browser driver never said {what:?} ({e})"));
            assert_eq!(l, what);
        };
        let fail = |child: std::process::Child| -> String {
            let o = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&o.stderr).into_owned()
        };
        let got = rx.recv_timeout(Duration::from_secs(180));
        if got.as_deref() != Ok("ready-live") {
            panic!(
                "the dashboard checks failed before the live view: {got:?}\n{}",
                fail(child)
            );
        }
        // The live run: its slow task waits for the gate.
        let mut run = ws
            .cmd(".", &["run", "gate#slow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let got = rx.recv_timeout(Duration::from_secs(180));
        ws.write("gate", "open\n");
        let st = run.wait().unwrap();
        if got.as_deref() != Ok("saw-running") {
            panic!(
                "the live view never showed the task running: {got:?}\n{}",
                fail(child)
            );
        }
        assert!(st.success());
        expect("ok");
        let _ = stdin.write_all(b"done\n");
        let st = child.wait().unwrap();
        assert!(st.success());
        for s in [
            "home.png",
            "timeline.png",
            "task.png",
            "live-running.png",
            "dashboard.png",
        ] {
            assert!(
                shots.join(s).metadata().is_ok_and(|m| m.len() > 1000),
                "screenshot {s}"
            );
        }
    }
);
