//! A foreground engine (`--no-daemon`, as under `CI`) beside a live daemon
//! on one workspace: both use one cache and one history, both ways, at the
//! same time, and neither waits for the other (issue 10, item 6).
//!
//! Every test here needs a live daemon whatever its mode: each starts it
//! explicitly (`vx daemon start`), sends the daemon's side with
//! `VX_DAEMON=1` and the foreground side with `--no-daemon`. Both variants
//! of [`vx_test!`] run the same scenario; the mode only decides how the
//! helper commands without a flag reach the engine.

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use vx_tests::{Ws, vx_test};

/// Four independent projects (no task reads another's outputs, so two runs
/// racing in one tree never break each other's commands) and a slow task.
fn ws() -> Ws {
    let mut files: Vec<(String, String)> = vec![(
        "vx.toml".into(),
        "[workspace]\nmembers = [\"p/*\"]\n".into(),
    )];
    for p in ["a", "b", "c", "d"] {
        files.push((
            format!("p/{p}/vx.toml"),
            concat!(
                "[tasks.build]\n",
                "command = \"mkdir -p dist && cat src/*.txt > dist/out.txt && echo built\"\n",
                "inputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
                "[tasks.slow]\n",
                "command = \"touch ../../started && sleep 8 && touch ../../done\"\n",
                "cache = false\n",
            )
            .into(),
        ));
        files.push((format!("p/{p}/src/in.txt"), format!("{p}\n")));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Ws::new(&refs)
}

const BUILDS: [&str; 4] = ["a#build", "b#build", "c#build", "d#build"];

/// Starts the workspace's daemon; returns its pid.
fn start_daemon(ws: &Ws) -> i64 {
    let r = ws.vx_daemon(&["daemon", "start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    daemon_pid(ws)
}

fn daemon_pid(ws: &Ws) -> i64 {
    let st = ws.daemon_status();
    assert_eq!(st["running"], true, "the daemon is not running: {st}");
    st["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {st}"))
}

/// `vx run --json <args>` through the daemon.
fn daemon_run(ws: &Ws, args: &[&str]) -> vx_tests::Run {
    let mut a = vec!["run", "--json"];
    a.extend_from_slice(args);
    ws.vx_in(".", &a, &[("VX_DAEMON", "1")])
}

/// `vx --no-daemon run --json <args>`.
fn fg_run(ws: &Ws, args: &[&str]) -> vx_tests::Run {
    let mut a = vec!["--no-daemon", "run", "--json"];
    a.extend_from_slice(args);
    ws.vx_in(".", &a, &[])
}

fn spawn(ws: &Ws, daemon: bool, args: &[&str]) -> Child {
    let mut a = if daemon { vec![] } else { vec!["--no-daemon"] };
    a.extend_from_slice(&["run", "--json"]);
    a.extend_from_slice(args);
    let mut c = ws.cmd(".", &a);
    if daemon {
        c.env("VX_DAEMON", "1");
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vx")
}

/// Exit code, summary and stderr of a spawned `vx run --json`.
fn finish(child: Child) -> (i32, Value, String) {
    let out = child.wait_with_output().expect("wait for vx");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "run_finished")
        .map(|e| e["summary"].clone())
        .next_back()
        .unwrap_or_else(|| panic!("no summary:\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), summary, stderr)
}

/// Task id → key of every task of a summary.
fn keys(summary: &Value) -> BTreeMap<String, String> {
    summary["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["id"].as_str()?.into(), t["key"].as_str()?.into())))
        .collect()
}

fn statuses(summary: &Value) -> BTreeMap<String, String> {
    summary["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["id"].as_str()?.into(), t["status"].as_str()?.into())))
        .collect()
}

fn all_cached(r: &vx_tests::Run) -> bool {
    r.executed().is_empty() && r.cached() == BUILDS
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// The acceptance test: a `--no-daemon` run and a daemon-served run of the
// same tasks, started together 20 times with an input changed before each
// round (so both miss and both write), all finish, agree on every key, and
// leave a cache that a third run (alternately foreground and daemon) fully
// hits, restoring the right bytes.
vx_test!(
    foreground_and_daemon_runs_started_together_share_one_cache,
    || {
        let ws = ws();
        let pid = start_daemon(&ws);
        for round in 0..20 {
            let p = ["a", "b", "c", "d"][round % 4];
            ws.write(&format!("p/{p}/src/in.txt"), &format!("{p} {round}\n"));
            let fg = spawn(&ws, false, &["build"]);
            let daemon = spawn(&ws, true, &["build"]);
            let (fg_code, fg_sum, fg_err) = finish(fg);
            let (d_code, d_sum, d_err) = finish(daemon);
            assert_eq!(fg_code, 0, "round {round}, foreground: {fg_err}");
            assert_eq!(d_code, 0, "round {round}, daemon: {d_err}");
            for err in [&fg_err, &d_err] {
                assert!(!err.contains("cannot be used"), "round {round}: {err}");
                assert!(!err.contains("waiting"), "round {round}: {err}");
            }
            let (fk, dk) = (keys(&fg_sum), keys(&d_sum));
            assert_eq!(fk.len(), 4, "round {round}: {fg_sum}");
            assert_eq!(fk, dk, "round {round}: the two engines disagree on keys");
            // A third run hits everything, whoever stored it.
            let third = if round % 2 == 0 {
                fg_run(&ws, &["build"])
            } else {
                daemon_run(&ws, &["build"])
            };
            assert_eq!(third.code, 0, "round {round}: {}", third.stderr);
            assert!(
                all_cached(&third),
                "round {round}: not a full hit: {:?}",
                statuses(third.summary())
            );
            assert_eq!(keys(third.summary()), fk, "round {round}");
            assert_eq!(
                ws.read(&format!("p/{p}/dist/out.txt")),
                format!("{p} {round}\n")
            );
        }
        assert_eq!(daemon_pid(&ws), pid, "one daemon served every round");
        // Nothing in the store is damaged: a fresh foreground run restores
        // every output from it, byte for byte.
        for p in ["a", "b", "c", "d"] {
            std::fs::remove_dir_all(ws.path(&format!("p/{p}/dist"))).expect("rm dist");
        }
        let r = fg_run(&ws, &["build"]);
        assert!(all_cached(&r), "{:?}", statuses(r.summary()));
        assert!(!r.stderr.contains("damaged"), "{}", r.stderr);
        assert_eq!(ws.read("p/a/dist/out.txt"), "a 16\n");
        assert_eq!(ws.read("p/d/dist/out.txt"), "d 19\n");
    }
);

// A foreground run beside a daemon that is busy running a task starts at
// once: it finishes (hitting what the daemon stored) while the daemon's run
// is still going, and leaves the daemon alive.
vx_test!(a_foreground_run_beside_a_busy_daemon_does_not_wait, || {
    let ws = ws();
    let pid = start_daemon(&ws);
    let r = daemon_run(&ws, &["build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), BUILDS);
    for p in ["a", "b", "c", "d"] {
        std::fs::remove_dir_all(ws.path(&format!("p/{p}/dist"))).expect("rm dist");
    }
    let busy = spawn(&ws, true, &["a#slow"]);
    wait_for("the daemon's slow task to start", || ws.exists("started"));
    let r = fg_run(&ws, &["build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(all_cached(&r), "{:?}", statuses(r.summary()));
    assert!(!r.stderr.contains("waiting"), "{}", r.stderr);
    assert!(!r.stderr.contains("without it"), "{}", r.stderr);
    assert_eq!(ws.read("p/c/dist/out.txt"), "c\n");
    assert!(
        !ws.exists("done"),
        "the foreground run finished only after the daemon's task"
    );
    let (code, _, err) = finish(busy);
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon_pid(&ws), pid);
});

// The daemon, which keeps the store open (and its entries memoised), sees
// what a foreground run stored and dropped, at its next run.
vx_test!(the_daemon_sees_what_a_foreground_run_stored, || {
    let ws = ws();
    let pid = start_daemon(&ws);
    // The daemon's store is open and has these entries memoised.
    let r = daemon_run(&ws, &["build"]);
    assert_eq!(r.executed(), BUILDS, "{}", r.stderr);
    // New inputs: the foreground run executes and stores.
    ws.write("p/a/src/in.txt", "a2\n");
    ws.write("p/b/src/in.txt", "b2\n");
    let r = fg_run(&ws, &["build"]);
    assert_eq!(r.executed(), ["a#build", "b#build"], "{}", r.stderr);
    let stored = keys(r.summary());
    std::fs::remove_dir_all(ws.path("p/a/dist")).expect("rm dist");
    let r = daemon_run(&ws, &["build"]);
    assert!(all_cached(&r), "{:?}", statuses(r.summary()));
    assert_eq!(keys(r.summary()), stored);
    assert_eq!(ws.read("p/a/dist/out.txt"), "a2\n");
    // A foreground prune drops every entry the daemon has memoised; its
    // next run must not serve them (not even as "outputs up to date", which
    // reads no blob without logs): they are gone, so it executes.
    let r = ws.vx_in(
        ".",
        &["--no-daemon", "cache", "prune", "--max-size", "0"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = daemon_run(&ws, &["--output-logs=none", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), BUILDS, "{:?}", statuses(r.summary()));
    assert_eq!(daemon_pid(&ws), pid);
});

// `vx history`, `vx cache prune` and `vx cache clean` without the daemon,
// beside a live one: they run at once on the files the daemon keeps open,
// and the daemon sees their effect.
vx_test!(
    history_prune_and_clean_without_the_daemon_beside_a_live_one,
    || {
        let ws = ws();
        let pid = start_daemon(&ws);
        assert_eq!(daemon_run(&ws, &["build"]).code, 0);
        assert_eq!(daemon_run(&ws, &["build"]).code, 0);
        // The foreground reads the history the daemon holds (the daemon
        // writes a run's record just after answering: polled, bounded).
        let fg_runs = || {
            let r = ws.vx_in(".", &["--no-daemon", "history", "--json"], &[]);
            serde_json::from_str::<Value>(&r.stdout)
                .ok()
                .and_then(|v| v["runs"].as_array().map(Vec::len))
        };
        wait_for("the daemon's two records, read without the daemon", || {
            fg_runs() == Some(2)
        });
        // ...records into it, and the daemon sees that record.
        assert_eq!(fg_run(&ws, &["build"]).code, 0);
        let r = ws.vx_in(".", &["history", "--json"], &[("VX_DAEMON", "1")]);
        let v: Value = serde_json::from_str(&r.stdout).expect("history json");
        assert_eq!(v["runs"].as_array().map(Vec::len), Some(3), "{v}");

        // A dry-run prune sees the daemon's entries; a real one removes them.
        let r = ws.vx_in(
            ".",
            &["--no-daemon", "cache", "prune", "--max-size", "0", "--json"],
            &[],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).expect("prune json");
        assert_eq!(v["removed"], 4, "{v}");
        let r = daemon_run(&ws, &["build"]);
        assert_eq!(r.executed(), BUILDS, "{:?}", statuses(r.summary()));

        // Clean waits for a daemon run in progress (it never pulls a blob
        // out from under it), then empties what the daemon keeps open.
        let busy = spawn(&ws, true, &["a#slow"]);
        wait_for("the daemon's slow task to start", || ws.exists("started"));
        let r = ws.vx_in(".", &["--no-daemon", "cache", "clean"], &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            ws.exists("done"),
            "clean returned while a daemon run was still in progress"
        );
        let (code, _, err) = finish(busy);
        assert_eq!(code, 0, "{err}");
        assert_eq!(daemon_pid(&ws), pid, "the daemon lives on");
        assert!(ws.exists(".vx/cache/index.redb"), "emptied in place");
        let r = ws.vx_in(".", &["--no-daemon", "cache", "stats", "--json"], &[]);
        let v: Value = serde_json::from_str(&r.stdout).expect("stats json");
        assert_eq!(
            (v["entries"].as_u64(), v["blobs"].as_u64()),
            (Some(0), Some(0))
        );
        // The daemon starts from the empty cache and history.
        let r = daemon_run(&ws, &["build"]);
        assert_eq!(r.executed(), BUILDS, "{:?}", statuses(r.summary()));
        let r = ws.vx_in(".", &["history", "--json"], &[("VX_DAEMON", "1")]);
        let v: Value = serde_json::from_str(&r.stdout).expect("history json");
        assert_eq!(v["runs"].as_array().map(Vec::len), Some(1), "{v}");
        // And the foreground hits what it stored since.
        let r = fg_run(&ws, &["build"]);
        assert!(all_cached(&r), "{:?}", statuses(r.summary()));
    }
);

// Two runs of one slow task in one tree, started together (here two
// foreground runs; in the test above a foreground run and the daemon):
// the second waits for the first instead of wiping and rewriting the same
// outputs beside it, then takes the first's result from the cache. The
// outputs and the stored entry hold the whole file, never a half-written
// one.
vx_test!(the_same_task_in_two_processes_runs_once, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n"),
        (
            "p/a/vx.toml",
            concat!(
                "[tasks.build]\n",
                "command = \"mkdir -p dist && printf head > dist/out.txt && sleep 1 ",
                "&& cat src/in.txt >> dist/out.txt\"\n",
                "inputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
            ),
        ),
        ("p/a/src/in.txt", "-tail\n"),
    ]);
    let one = spawn(&ws, false, &["build"]);
    let two = spawn(&ws, false, &["build"]);
    let (c1, s1, e1) = finish(one);
    let (c2, s2, e2) = finish(two);
    assert_eq!((c1, c2), (0, 0), "{e1}\n{e2}");
    let ran: Vec<String> = [&s1, &s2]
        .iter()
        .map(|s| statuses(s)["a#build"].clone())
        .collect();
    assert_eq!(
        ran.iter().filter(|s| *s == "success").count(),
        1,
        "exactly one executed: {ran:?}"
    );
    assert_eq!(keys(&s1), keys(&s2));
    assert_eq!(ws.read("p/a/dist/out.txt"), "head-tail\n");
    std::fs::remove_dir_all(ws.path("p/a/dist")).expect("rm dist");
    let r = fg_run(&ws, &["build"]);
    assert!(r.executed().is_empty(), "{:?}", statuses(r.summary()));
    assert_eq!(ws.read("p/a/dist/out.txt"), "head-tail\n");
});
