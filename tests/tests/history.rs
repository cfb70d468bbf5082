//! `vx history`, `vx last`, `vx why` and `vx info` end to end, through the
//! real binaries, on histories seeded through the `vxd` library (`seed`):
//! the read side with exact, known contents (stats, flaky modes, why diffs,
//! errors). `recorded.rs` drives the same commands on runs the engine
//! recorded itself.

use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};
use vx_proto::history::{Fingerprint, RunRecord, TaskRun};
use vx_proto::{CacheSource, RunCounts, TaskStatus};
use vx_tests::{Ws, basic, vx_test};
use vxd::history::History;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn row(id: &str, status: TaskStatus, cache: CacheSource, key: &str, ms: u64) -> TaskRun {
    TaskRun {
        id: id.into(),
        status,
        cache,
        key: Some(key.into()),
        exit_code: match status {
            TaskStatus::Success => Some(0),
            TaskStatus::Failed => Some(1),
            _ => None,
        },
        attempts: 1,
        duration_ms: ms,
        start_ms: 0,
        end_ms: ms,
        slot: (cache == CacheSource::Miss).then_some(0),
        cpu_ms: None,
        peak_rss_bytes: None,
        blocked_by: None,
        error: (status == TaskStatus::Failed).then(|| "exit code 1".to_string()),
        persistent: false,
        worker: None,
    }
}

fn record(id: &str, started_at: u64, tasks: Vec<TaskRun>) -> RunRecord {
    let mut counts = RunCounts {
        total: tasks.len(),
        ..Default::default()
    };
    for t in &tasks {
        match t.status {
            TaskStatus::Cached => counts.cached += 1,
            TaskStatus::Success => counts.executed += 1,
            TaskStatus::Failed => {
                counts.executed += 1;
                counts.failed += 1
            }
            TaskStatus::Skipped => counts.skipped += 1,
            TaskStatus::Aborted => counts.aborted += 1,
            TaskStatus::Running => counts.running += 1,
        }
    }
    let ok = counts.failed == 0;
    RunRecord {
        run_id: id.into(),
        argv: vec!["vx".into(), "run".into(), "test".into()],
        requested: vec!["test".into()],
        started_at,
        ended_at: started_at + 1500,
        duration_ms: 1500,
        exit_code: if ok { 0 } else { 1 },
        ok,
        concurrency: 2,
        counts,
        tasks,
    }
}

fn fingerprint(task: &str, key: &str, main_hash: &str, foo_value: &str) -> Fingerprint {
    Fingerprint {
        key: key.into(),
        task: task.into(),
        files: vec![
            ("packages/app/src/main.txt".into(), main_hash.into()),
            ("packages/app/vx.toml".into(), "cfgfile".into()),
        ],
        env: vec![
            ("FOO".into(), foo_value.into()),
            ("HOME".into(), "h".into()),
        ],
        config: "config".into(),
        command: "mkdir -p dist && ...".into(),
        upstream: vec![("lib#build".into(), "libkey".into())],
        args: "noargs".into(),
        plugins: vec![],
    }
}

/// Three runs of `vx run test` in `basic()`: the first executes everything,
/// the second hits, the third re-executes app#build (main.txt and FOO
/// changed) and app#test fails.
// SEEDED → real runs
fn seed(ws: &Ws) -> u64 {
    let t0 = now_ms() - 3_600_000;
    let h = History::open(&ws.path(".vx/cache")).expect("open history");
    let (s, c, f, m, l) = (
        TaskStatus::Success,
        TaskStatus::Cached,
        TaskStatus::Failed,
        CacheSource::Miss,
        CacheSource::Local,
    );
    h.record(
        &record(
            "aaa111",
            t0,
            vec![
                row("lib#build", s, m, "libkey", 400),
                row("app#build", s, m, "appkey1", 900),
                row("app#test", s, m, "testkey1", 200),
            ],
        ),
        &[fingerprint("app#build", "appkey1", "h-main-1", "v-foo-1")],
    )
    .unwrap();
    h.record(
        &record(
            "bbb222",
            t0 + 60_000,
            vec![
                row("lib#build", c, l, "libkey", 3),
                row("app#build", c, l, "appkey1", 4),
                row("app#test", c, l, "testkey1", 2),
            ],
        ),
        &[],
    )
    .unwrap();
    h.record(
        &record(
            "ccc333",
            t0 + 120_000,
            vec![
                row("lib#build", c, l, "libkey", 3),
                row("app#build", s, m, "appkey2", 1100),
                row("app#test", f, m, "testkey1", 250),
            ],
        ),
        &[fingerprint("app#build", "appkey2", "h-main-2", "v-foo-2")],
    )
    .unwrap();
    t0
}

fn json(ws: &Ws, dir: &str, args: &[&str]) -> Value {
    let r = ws.vx_in(dir, args, &[]);
    assert_eq!(r.code, 0, "vx {args:?}: {}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

vx_test!(no_history_yet_is_a_clear_error, || {
    let ws = basic();
    for args in [
        &["history"][..],
        &["last"],
        &["why", "app#build"],
        &["history", "app#build"],
    ] {
        let r = ws.vx(args);
        assert_eq!(r.code, 1, "vx {args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("no runs recorded yet in") && r.stderr.contains("vx run"),
            "vx {args:?}: {}",
            r.stderr
        );
    }
    // Reading never creates the history file.
    assert!(!ws.exists(".vx/cache/history.redb"));
});

vx_test!(history_lists_runs_and_task_rows, || {
    let ws = basic();
    seed(&ws);
    let v = json(&ws, ".", &["history", "--json"]);
    let ids: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ccc333", "bbb222", "aaa111"]);
    assert_eq!(v["runs"][0]["ok"], false);
    assert_eq!(v["runs"][0]["counts"]["failed"], 1);
    let v = json(&ws, ".", &["history", "--limit", "1", "--json"]);
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);

    let r = ws.vx(&["history"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("ccc333") && r.stdout.contains("vx run test"),
        "{}",
        r.stdout
    );

    let v = json(&ws, ".", &["history", "app#test", "--json"]);
    assert_eq!(v["task"], "app#test");
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    assert_eq!(v["rows"][0]["run_id"], "ccc333");
    assert_eq!(v["stats"]["total"], 3);
    assert_eq!(v["stats"]["failures"], 1);
    // testkey1 both failed and succeeded → flaky; 1 of 3 failed → fatal.
    assert_eq!(v["stats"]["mixed_outcome_keys"], 1);
    assert_eq!(v["stats"]["failure_mode"], "flaky-fatal");

    // A bare task name resolves against the current project.
    let v = json(&ws, "packages/app", &["history", "build", "--json"]);
    assert_eq!(v["task"], "app#build");
    assert_eq!(v["stats"]["p50_ms"], 1100);
    let r = ws.vx_in("packages/app", &["history", "build"], &[]);
    assert!(
        r.stdout.contains("app#build: 3 runs") && r.stdout.contains("stable"),
        "{}",
        r.stdout
    );

    let r = ws.vx(&["history", "app#tset"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unknown task `app#tset`") && r.stderr.contains("app#test"),
        "{}",
        r.stderr
    );
});

vx_test!(last_replays_a_recorded_run, || {
    let ws = basic();
    seed(&ws);
    let v = json(&ws, ".", &["last", "--json"]);
    assert_eq!(v["run_id"], "ccc333");
    assert_eq!(v["tasks"].as_array().unwrap().len(), 3);
    let v = json(&ws, ".", &["last", "bbb", "--json"]);
    assert_eq!(v["run_id"], "bbb222");
    assert_eq!(v["counts"]["cached"], 3);
    let v = json(&ws, ".", &["last", "--failed", "--json"]);
    assert_eq!(v["run_id"], "ccc333");

    let r = ws.vx(&["last"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("run ccc333"), "{}", r.stdout);
    assert!(r.stdout.contains("✗ app#test"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("Tasks:  3 total · 1 cached · 2 executed · 1 failed"),
        "{}",
        r.stdout
    );

    let r = ws.vx(&["last", "zzz"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no recorded run matches `zzz`"),
        "{}",
        r.stderr
    );
});

vx_test!(why_names_the_edited_file_and_the_changed_env, || {
    let ws = basic();
    seed(&ws);
    let r = ws.vx(&["why", "app#build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("packages/app/src/main.txt"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("the value of FOO changed"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("what to do:"), "{}", r.stdout);

    let v = json(&ws, "packages/app", &["why", "build", "--json"]);
    assert_eq!(v["task"], "app#build");
    assert_eq!(v["key"], "appkey2");
    assert_eq!(v["previous_key"], "appkey1");
    assert_eq!(v["compared"], true);
    let changes: Vec<(String, String, String)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["component"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap_or_default().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "file".into(),
                "packages/app/src/main.txt".into(),
                "changed".into()
            ),
            ("env".into(), "FOO".into(), "changed".into()),
        ]
    );

    // One key throughout: nothing changed.
    let v = json(&ws, ".", &["why", "lib#build", "--json"]);
    assert_eq!(v["compared"], false);
    assert!(v["advice"][0].as_str().unwrap().contains("same key"), "{v}");

    // A bare name declared by several projects must be qualified.
    let r = ws.vx(&["why", "build"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("name one"), "{}", r.stderr);
});

vx_test!(info_reports_counts_history_and_flaky_tasks, || {
    let ws = basic();
    seed(&ws);
    let v = json(&ws, ".", &["info", "--json"]);
    assert_eq!(v["projects"], 2);
    assert_eq!(v["tasks"], 3);
    assert_eq!(v["history_runs"], 3);
    assert_eq!(v["runs_last_24h"], 3);
    assert!(
        v["history_file"]
            .as_str()
            .unwrap()
            .ends_with(".vx/cache/history.redb")
    );
    assert_eq!(v["flaky"][0]["task"], "app#test");
    assert_eq!(v["flaky"][0]["failure_mode"], "flaky-fatal");
    assert!(v["socket"].as_str().unwrap().ends_with(".sock"));
    assert!(v.get("daemon").is_none() || v["daemon"].is_null(), "{v}");
    let r = ws.vx(&["info"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("projects  2 (3 tasks)"), "{}", r.stdout);
    assert!(r.stdout.contains("app#test (flaky-fatal"), "{}", r.stdout);
});

// The same requests answered by a daemon that keeps the history open.
vx_test!(a_running_daemon_serves_the_history, || {
    let ws = basic();
    seed(&ws);
    let r = ws.vx_daemon(&["daemon", "start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&ws, ".", &["info", "--json"]);
    assert!(v["daemon"]["pid"].as_u64().is_some(), "{v}");
    assert_eq!(v["history_runs"], 3);
    let v = json(&ws, ".", &["history", "--json"]);
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    let v = json(&ws, ".", &["why", "app#build", "--json"]);
    assert_eq!(v["previous_key"], "appkey1");
    // The daemon holds the file open: the no-daemon engine reads it too,
    // at once (the file is shared), and sees the same runs.
    let v = json(&ws, ".", &["--no-daemon", "history", "--json"]);
    assert_eq!(v["runs"].as_array().unwrap().len(), 3, "{v}");
    let v = json(&ws, ".", &["--no-daemon", "why", "app#build", "--json"]);
    assert_eq!(v["previous_key"], "appkey1");
    // `vx cache clean` deletes the history with the cache; the daemon
    // notices and starts an empty one.
    let r = ws.vx_daemon(&["cache", "clean"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ws.vx(&["history"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no runs recorded yet"), "{}", r.stderr);
});

// A workspace-wide input (`global_inputs`) that changed is named as such,
// with advice about the workspace setting, not the task's own `inputs`;
// a project file still gets the task-level advice.
vx_test!(why_names_a_changed_global_input_as_workspace_wide, || {
    let ws = basic();
    ws.write(
        "vx.toml",
        "[workspace]\nmembers = [\"packages/*\"]\nglobal_inputs = [\"shared.cfg\"]\n",
    );
    ws.write("shared.cfg", "one\n");
    let r = ws.run(&["app#build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    ws.write("shared.cfg", "two\n");
    let r = ws.run(&["app#build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&ws, ".", &["why", "app#build", "--json"]);
    let advice: Vec<&str> = v["advice"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        advice
            .iter()
            .any(|a| a.contains("shared.cfg changed; it is a workspace-wide input")),
        "{advice:#?}"
    );
    assert!(
        !advice.iter().any(|a| a.contains("narrow `inputs`")),
        "{advice:#?}"
    );
    ws.write("packages/app/src/main.txt", "edited\n");
    let r = ws.run(&["app#build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json(&ws, ".", &["why", "app#build", "--json"]);
    let text = v["advice"].to_string();
    assert!(
        text.contains("packages/app/src/main.txt changed; if it is not an input"),
        "{text}"
    );
});

/// `vx run build --json` whose own exit is all the caller waits for: its
/// output goes to files (an engine left writing its record after the answer
/// holds no pipe the caller reads). Returns the run id and the exit code.
fn run_detached(ws: &Ws, env: &[(&str, &str)]) -> (String, i32) {
    run_detached_with(ws, &[], env)
}

/// [`run_detached`] with more arguments for `vx run build --json`.
fn run_detached_with(ws: &Ws, args: &[&str], env: &[(&str, &str)]) -> (String, i32) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut a = vec!["run", "build", "--json"];
    a.extend_from_slice(args);
    let mut c = ws.cmd(".", &a);
    for (k, v) in env {
        c.env(k, v);
    }
    let st = c
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .status()
        .expect("run vx");
    let stdout = std::fs::read_to_string(out.path()).unwrap();
    let stderr = std::fs::read_to_string(err.path()).unwrap();
    let id = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["run_id"].as_str().map(str::to_string))
        .next_back()
        .unwrap_or_else(|| panic!("no run id: {stdout}{stderr}"));
    (id, st.code().unwrap_or(-1))
}

fn history_ids(ws: &Ws) -> Vec<String> {
    let v = json(ws, ".", &["history", "--json"]);
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

// The answer comes before the record is written (no daemon: the engine
// commits it after answering; the daemon on its recording thread), yet a
// `vx last` or `vx history` started the moment `vx run` returns always
// sees that run: the writer holds the history from before its answer until
// its commit, and readers wait for it. The write is slowed down
// (VX_TEST_RECORD_DELAY_MS) so that every reader starts while it is going on.
// With a daemon, every other run is a foreground one beside it (`--no-daemon`)
// while the reader is the daemon, whose history handle is open all along.
vx_test!(a_run_is_in_the_history_the_moment_vx_run_returns, || {
    let ws = basic();
    let mut ids = Vec::new();
    for i in 0..6 {
        let args: &[&str] = if i % 3 == 1 { &["--no-daemon"] } else { &[] };
        let (id, code) = run_detached_with(&ws, args, &[("VX_TEST_RECORD_DELAY_MS", "300")]);
        assert_eq!(code, 0, "run {i}");
        if i % 2 == 0 {
            let v = json(&ws, ".", &["last", "--json"]);
            assert_eq!(v["run_id"], id.as_str(), "run {i}: vx last");
            assert_eq!(v["tasks"].as_array().unwrap().len(), 2, "{v}");
        } else {
            assert_eq!(history_ids(&ws).first(), Some(&id), "run {i}: vx history");
        }
        ids.push(id);
    }
    ids.reverse();
    assert_eq!(history_ids(&ws), ids);
});

/// The process writing this workspace's history record: the daemon, or the
/// foreground engine named in the history's lock file.
fn writer_pid(ws: &Ws) -> i32 {
    if vx_tests::daemon_mode() {
        return ws.daemon_status()["pid"].as_i64().expect("daemon pid") as i32;
    }
    let text = std::fs::read_to_string(ws.path(".vx/cache/history.lock")).unwrap_or_default();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no writer pid in history.lock: {text:?}"))
}

// An engine killed while it writes a run's record (inside the write
// transaction: VX_TEST_RECORD_DELAY_MS holds it open) leaves the history as
// it was: the earlier run intact, no trace of the killed one, and the next
// run recorded as usual.
vx_test!(a_writer_killed_mid_record_leaves_the_history_intact, || {
    let ws = basic();
    let (first, code) = run_detached(&ws, &[]);
    assert_eq!(code, 0);
    assert_eq!(history_ids(&ws), std::slice::from_ref(&first));
    let (killed, code) = run_detached(&ws, &[("VX_TEST_RECORD_DELAY_MS", "60000")]);
    assert_eq!(code, 0, "the answer does not wait for the record");
    // The record has begun (the daemon starts it once idle for 50 ms).
    std::thread::sleep(std::time::Duration::from_millis(800));
    let pid = writer_pid(&ws);
    // SAFETY: kill(2) on a pid this test's workspace started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
    let start = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ids = history_ids(&ws);
    assert_eq!(
        ids,
        std::slice::from_ref(&first),
        "killed run {killed} must not appear"
    );
    let v = json(&ws, ".", &["last", "--json"]);
    assert_eq!(v["run_id"], first.as_str());
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2, "{v}");
    let (third, code) = run_detached(&ws, &[]);
    assert_eq!(code, 0);
    assert_eq!(history_ids(&ws), [third, first]);
});
