//! The run history as the engine records it, end to end: real `vx run`s,
//! then `vx why`, `vx history`, `vx last`, `--profile`, `--report` and
//! history-ordered scheduling. (`history.rs` covers the read side on
//! seeded histories.)

use serde_json::Value;
use vx_tests::{Ws, vx_test};

fn json(ws: &Ws, args: &[&str], env: &[(&str, &str)]) -> Value {
    let r = ws.vx_in(".", args, env);
    assert_eq!(r.code, 0, "vx {args:?}: {}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn app() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            concat!(
                "[project]\nname = \"app\"\n",
                "[tasks.build]\n",
                "command = \"mkdir -p dist && cat src/main.txt > dist/out.txt\"\n",
                "inputs = [\"src/**\"]\noutputs = [\"dist/**\"]\nenv = [\"FOO\"]\n",
            ),
        ),
        ("app/src/main.txt", "one\n"),
        ("app/src/other.txt", "same\n"),
    ])
}

vx_test!(why_names_the_edited_file_and_the_changed_env_name, || {
    let ws = app();
    let r = ws.run_env(&["build"], &[("FOO", "1")]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    ws.write("app/src/main.txt", "two\n");
    let r = ws.run_env(&["build"], &[("FOO", "2")]);
    assert_eq!(r.executed(), vec!["app#build"]);
    let why = json(&ws, &["why", "app#build", "--json"], &[]);
    let changes = why["changes"].as_array().expect("changes");
    let has = |component: &str, name: &str| {
        changes
            .iter()
            .any(|c| c["component"] == component && c["name"] == name)
    };
    assert!(has("file", "app/src/main.txt"), "{why}");
    assert!(has("env", "FOO"), "{why}");
    assert!(!has("file", "app/src/other.txt"), "{why}");
    assert!(
        !why.to_string().contains("\"2\""),
        "env values never appear: {why}"
    );
    // The text form says what to do.
    let r = ws.vx(&["why", "app#build"]);
    assert!(r.stdout.contains("app/src/main.txt"), "{}", r.stdout);
    assert!(r.stdout.contains("FOO"), "{}", r.stdout);
    assert!(r.stdout.contains("what to do"), "{}", r.stdout);
    // The runs are listed, newest first, and the last one replays.
    let list = json(&ws, &["history", "--json"], &[]);
    assert_eq!(list["runs"].as_array().map(|r| r.len()), Some(2), "{list}");
    // A third change; `--run` still explains the second run's key.
    ws.write("app/src/other.txt", "different\n");
    let r = ws.run_env(&["build"], &[("FOO", "2")]);
    assert_eq!(r.executed(), vec!["app#build"]);
    let newest = json(&ws, &["why", "app#build", "--json"], &[]);
    assert!(newest.to_string().contains("app/src/other.txt"), "{newest}");
    assert!(!newest.to_string().contains("main.txt"), "{newest}");
    let second = list["runs"][0]["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let at = json(&ws, &["why", "app#build", "--run", &second, "--json"], &[]);
    assert!(at.to_string().contains("app/src/main.txt"), "{at}");
    assert!(!at.to_string().contains("other.txt"), "{at}");
    let last = json(&ws, &["last", "--json"], &[]);
    assert_eq!(last["tasks"][0]["id"], "app#build");
    assert_eq!(last["tasks"][0]["status"], "success");
    assert!(
        last["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "build")),
        "{last}"
    );
});

vx_test!(a_task_that_needs_a_retry_is_flaky_recoverable, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            concat!(
                "[project]\nname = \"app\"\n",
                "[tasks.test]\n",
                // Fails on odd attempts, passes on even ones.
                "command = \"n=$(cat ../count 2>/dev/null || echo 0); n=$((n+1)); echo $n > ../count; test $((n % 2)) -eq 0\"\n",
                "retries = 1\n",
                "[tasks.steady]\ncommand = \"true\"\n",
            ),
        ),
    ]);
    for _ in 0..3 {
        let r = ws.run(&["test", "steady"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert_eq!(r.task("app#test")["attempts"], 2);
    }
    let h = json(&ws, &["history", "app#test", "--json"], &[]);
    assert_eq!(h["stats"]["failure_mode"], "flaky-recoverable", "{h}");
    assert_eq!(h["stats"]["retried"], 3, "{h}");
    let h = json(&ws, &["history", "app#steady", "--json"], &[]);
    assert_eq!(h["stats"]["failure_mode"], "stable", "{h}");
    let info = json(&ws, &["info", "--json"], &[]);
    assert!(
        info["flaky"]
            .as_array()
            .is_some_and(|f| f.iter().any(|t| t["task"] == "app#test")),
        "{info}"
    );
});

vx_test!(profile_is_a_chrome_trace_and_report_is_markdown, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\", \"b\"]\n"),
        ("a/vx.toml", "[tasks.build]\ncommand = \"sleep 0.2\"\n"),
        (
            "b/vx.toml",
            "[tasks.build]\ncommand = \"sleep 0.2\"\n[tasks.lint]\ncommand = \"exit 2\"\n",
        ),
    ]);
    let r = ws.vx(&[
        "run",
        "build",
        "lint",
        "--concurrency",
        "2",
        "--profile",
        "trace.json",
        "--report=report.md",
    ]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let trace: Value = serde_json::from_str(&ws.read("trace.json")).expect("trace is JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let tasks: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(tasks.len(), 3, "{trace}");
    let mut lanes = std::collections::HashMap::new();
    for e in &tasks {
        for f in ["ts", "dur", "pid", "tid"] {
            assert!(e[f].is_number(), "{f} in {e}");
        }
        lanes
            .entry(e["tid"].as_u64().unwrap_or(0))
            .or_insert_with(Vec::new)
            .push((
                e["ts"].as_f64().unwrap_or(0.0),
                e["ts"].as_f64().unwrap_or(0.0) + e["dur"].as_f64().unwrap_or(0.0),
            ));
    }
    assert!(lanes.len() <= 2, "at most one lane per slot: {lanes:?}");
    for spans in lanes.values_mut() {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0 + 1.0,
                "a lane runs one task at a time: {spans:?}"
            );
        }
    }
    let md = ws.read("report.md");
    assert!(md.starts_with("## "), "{md}");
    assert!(md.contains("b#lint"), "{md}");
    assert!(md.contains('|'), "a table: {md}");
});

// A long chain beside short tasks that have more dependents: the structural
// order starts the short ones first; with history, the chain's head (the
// longest remaining path) goes first.
vx_test!(history_orders_ready_tasks_by_critical_path, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"w\"]\n"),
        (
            "w/vx.toml",
            concat!(
                "[project]\nname = \"w\"\n",
                "[tasks.long1]\ncommand = \"sleep 0.3\"\n",
                "[tasks.long2]\ncommand = \"sleep 0.3\"\ndepends_on = [\"long1\"]\n",
                "[tasks.s1]\ncommand = \"true\"\n",
                "[tasks.s1b]\ncommand = \"true\"\ndepends_on = [\"s1\"]\n",
                "[tasks.s1c]\ncommand = \"true\"\ndepends_on = [\"s1b\"]\n",
                "[tasks.s2]\ncommand = \"true\"\n",
                "[tasks.s2b]\ncommand = \"true\"\ndepends_on = [\"s2\"]\n",
                "[tasks.s2c]\ncommand = \"true\"\ndepends_on = [\"s2b\"]\n",
                "[tasks.all]\ndepends_on = [\"long2\", \"s1c\", \"s2c\"]\n",
            ),
        ),
    ]);
    let first_started = |env: &[(&str, &str)]| -> String {
        let r = ws.run_env(&["all", "--concurrency", "1"], env);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        r.events
            .iter()
            .find(|e| e["type"] == "task_started")
            .and_then(|e| e["id"].as_str())
            .unwrap_or("")
            .to_string()
    };
    // No history yet: structural (s1/s2 have 3 dependents, long1 has 2).
    let first = first_started(&[]);
    assert!(
        first == "w#s1" || first == "w#s2",
        "structural first: {first}"
    );
    // Now the history knows long1 + long2 take the longest.
    assert_eq!(first_started(&[]), "w#long1");
    // The structural order can be forced.
    let forced = first_started(&[("VX_SCHEDULE", "structural")]);
    assert!(forced == "w#s1" || forced == "w#s2", "{forced}");
});

// The daemon writes most records without an fsync; stopping it makes them
// durable, so a later no-daemon reader sees every run.
vx_test!(runs_recorded_by_a_daemon_survive_its_stop, || {
    let ws = app();
    for i in 0..3 {
        ws.write("app/src/main.txt", &format!("v{i}\n"));
        let r = ws.vx_in(".", &["run", "build"], &[("VX_DAEMON", "1")]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    let r = ws.vx_in(".", &["daemon", "stop"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let list = json(&ws, &["history", "--json"], &[("VX_DAEMON", "0")]);
    assert_eq!(list["runs"].as_array().map(|r| r.len()), Some(3), "{list}");
});
