//! `vx mcp` driven by real MCP clients: the PyPI `mcp` package (through
//! tests/tests/mcp_client.py, from the peers venv) and the
//! `@modelcontextprotocol/inspector` CLI (npm). Every test runs in both
//! modes: with the daemon, `vx mcp` switches its daemon connection to MCP;
//! without, it switches its `vxd --stdio` pipe.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vx_tests::{Ws, peers, vx_test};

/// The fixture: `lib#build` → `app#build`, a failing task, a long one
/// (writes its pid, then sleeps) and one that counts its executions.
fn fixture() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/lib/vx.toml",
            r#"[tasks.build]
command = "mkdir -p dist && cat src/*.txt > dist/out.txt && echo built lib"
inputs = ["src/**"]
outputs = ["dist/**"]

[tasks.fail]
command = "echo about to fail; echo the reason it failed >&2; exit 3"
inputs = ["src/**"]
outputs = []

[tasks.long]
command = "echo $$ > ../../long.pid && exec sleep 60"
cache = false

[tasks.once]
command = "echo ran >> ../../count.txt && touch ../../once.started && sleep 2 && mkdir -p dist2 && echo once > dist2/o"
inputs = ["src/**"]
outputs = ["dist2/**"]
"#,
        ),
        ("packages/lib/src/a.txt", "lib-a\n"),
        (
            "packages/app/vx.toml",
            r#"[project]
deps = ["lib"]

[tasks.build]
command = "mkdir -p dist && cat ../lib/dist/out.txt src/*.txt > dist/app.txt && echo built app"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = ["dist/**"]
"#,
        ),
        ("packages/app/src/main.txt", "app-main\n"),
    ])
}

/// How the client launches `vx mcp`: the workspace's command and
/// environment (its mode, runtime dir, engine binary).
fn server(ws: &Ws) -> Value {
    let c = ws.cmd(".", &["mcp"]);
    let env: serde_json::Map<String, Value> = c
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), json!(v?.to_str()?))))
        .collect();
    json!({
        "command": c.get_program().to_string_lossy(),
        "args": ["mcp"],
        "env": env,
        "cwd": ws.root().to_string_lossy(),
    })
}

/// Runs the Python client with `cfg`; `None` (after a loud skip) when the
/// peer is not installed.
fn python_client(ws: &Ws, test: &str, cfg: &Value) -> Option<Command> {
    let Some(py) = peers::python() else {
        peers::skip(test, "the Python `mcp` package (tests/peers/.venv)");
        return None;
    };
    let file = ws.runtime.path().join(format!("{test}.json"));
    std::fs::write(&file, cfg.to_string()).expect("write config");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let mut c = Command::new(py);
    c.arg(script)
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Some(c)
}

fn finish(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the MCP client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}):\n{stdout}\n{stderr}"))
}

fn drive(ws: &Ws, test: &str, cfg: Value) -> Option<Value> {
    let mut c = python_client(ws, test, &cfg)?;
    Some(finish(c.output().expect("run the MCP client")))
}

/// A call's answer text as JSON.
fn answer(call: &Value) -> Value {
    let text = call["text"].as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {call}"))
}

vx_test!(every_tool_answers_on_a_fixture, || {
    let ws = fixture();
    let calls = json!([
        {"tool": "list_projects"},
        {"tool": "task_graph", "args": {"tasks": ["build"]}},
        {"tool": "run_tasks", "args": {"tasks": "build"}},
        {"tool": "run_tasks", "args": {"tasks": ["build"]}},
        {"tool": "explain_task", "args": {"task": "app#build"}},
        {"tool": "why_rerun", "args": {"task": "app#build"}},
        {"tool": "run_history"},
        {"tool": "run_history", "args": {"task": "app#build"}},
        {"tool": "cache_stats"},
        {"tool": "task_log", "args": {"task": "app#build"}},
        {"tool": "run_tasks", "args": {"tasks": "lib#fail"}},
        {"tool": "task_log", "args": {"task": "lib#fail"}},
        {"tool": "explain_task", "args": {"task": "app#biuld"}},
        {"tool": "run_tasks", "args": {"tasks": "build", "forse": true}},
    ]);
    let cfg = json!({
        "server": server(&ws),
        "calls": calls,
        "resources": ["vx://runs/last", "vx://tasks/app%23build/log"],
    });
    let Some(out) = drive(&ws, "every_tool_answers_on_a_fixture", cfg) else {
        return;
    };
    assert_eq!(out["server"], "vx");
    let names: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "list_projects",
            "task_graph",
            "explain_task",
            "why_rerun",
            "run_history",
            "cache_stats",
            "task_log",
            "run_tasks"
        ]
    );
    for t in out["tools"].as_array().unwrap() {
        assert_eq!(t["input_schema"]["type"], "object", "{t}");
    }
    let c = out["calls"].as_array().unwrap();
    for (i, call) in c.iter().enumerate().take(10) {
        assert_eq!(call["is_error"], false, "call {i}: {call}");
    }
    // list_projects: projects, their dependencies, tasks with theirs.
    let lp = answer(&c[0]);
    assert_eq!(lp["total"], 2);
    let app = &lp["projects"][0];
    assert_eq!(
        (app["name"].as_str(), &app["deps"]),
        (Some("app"), &json!(["lib"]))
    );
    assert_eq!(app["tasks"]["build"], json!(["lib#build"]));
    // task_graph: dependencies first, predicted misses.
    let tg = answer(&c[1]);
    let ids: Vec<&str> = tg["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lib#build", "app#build"]);
    assert_eq!(tg["predicted"], json!({"miss": 2}));
    // run_tasks: executed, with progress; again: every task from the cache.
    let first = answer(&c[2]);
    assert_eq!(
        (first["ok"].as_bool(), first["counts"]["executed"].as_u64()),
        (Some(true), Some(2))
    );
    let progress = c[2]["progress"].as_array().unwrap();
    assert!(
        progress
            .iter()
            .any(|p| p["progress"] == 2.0 && p["total"] == 2.0),
        "no final progress notification: {progress:?}"
    );
    let second = answer(&c[3]);
    assert_eq!(second["counts"]["cached"], 2, "{second}");
    assert_eq!(second["counts"]["executed"], 0, "{second}");
    for t in second["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "cached", "{t}");
        assert!(t["cache"] == "local" || t["cache"] == "up-to-date", "{t}");
    }
    // explain_task: the key part by part, a hit now.
    let ex = answer(&c[4]);
    let t = &ex["tasks"][0];
    assert_eq!(
        (t["id"].as_str(), t["prediction"].as_str()),
        (Some("app#build"), Some("hit"))
    );
    assert_eq!(t["inputs"][0][0], "packages/app/src/main.txt");
    assert_eq!(t["upstream"][0][0], "lib#build");
    assert_eq!(t["key"].as_str().map(str::len), Some(64));
    // why_rerun: the same key in both runs, and advice.
    let why = answer(&c[5]);
    assert_eq!(why["task"], "app#build");
    assert!(!why["advice"].as_array().unwrap().is_empty(), "{why}");
    // run_history: both agent runs, named after the client.
    let h = answer(&c[6]);
    let runs = h["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{h}");
    assert!(
        runs.iter()
            .all(|r| r["by"].as_str().unwrap().starts_with("mcp:")),
        "{h}"
    );
    let th = answer(&c[7]);
    assert_eq!(th["stats"]["total"], 2, "{th}");
    assert_eq!(th["stats"]["hits"], 1, "{th}");
    assert!(th["stats"]["p50_ms"].is_u64(), "{th}");
    // cache_stats: the two entries.
    let cs = answer(&c[8]);
    assert_eq!(cs["entries"], 2, "{cs}");
    // task_log: the stored log.
    let log = answer(&c[9]);
    assert_eq!(log["log"], "built app\n", "{log}");
    // A failing task: a tool error with the failure and its log tail.
    assert_eq!(c[10]["is_error"], true);
    let failed = answer(&c[10]);
    assert_eq!(failed["ok"], false);
    let f = &failed["failed"][0];
    assert_eq!(
        (f["id"].as_str(), f["exit_code"].as_i64()),
        (Some("lib#fail"), Some(3))
    );
    assert!(
        f["log_tail"]
            .as_str()
            .unwrap()
            .contains("the reason it failed"),
        "{f}"
    );
    let flog = answer(&c[11]);
    assert!(
        flog["log"].as_str().unwrap().contains("about to fail"),
        "{flog}"
    );
    // Errors are clear: a did-you-mean; an unknown argument named.
    assert_eq!(c[12]["is_error"], true);
    assert!(
        c[12]["text"]
            .as_str()
            .unwrap()
            .contains("did you mean app#build"),
        "{}",
        c[12]
    );
    assert_eq!(c[13]["is_error"], true);
    assert!(
        c[13]["text"]
            .as_str()
            .unwrap()
            .contains("unknown field `forse`"),
        "{}",
        c[13]
    );
    // Resources: the last run (the failing one), a task's log.
    let last: Value = serde_json::from_str(out["resources"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(last["requested"], json!(["lib#fail"]), "{last}");
    assert_eq!(out["resources"][1]["text"], "built app\n");
    // The agent's runs are in the history the CLI reads.
    let hist = ws.vx(&["history", "--json"]);
    let hist: Value =
        serde_json::from_str(&hist.stdout).unwrap_or_else(|e| panic!("{e}: {}", hist.stdout));
    let by_agent = hist["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["argv"][0].as_str().is_some_and(|a| a.starts_with("mcp:")))
        .count();
    assert_eq!(by_agent, 3, "{hist}");
    let last = ws.vx(&["last", "--json"]);
    let last: Value =
        serde_json::from_str(&last.stdout).unwrap_or_else(|e| panic!("{e}: {}", last.stdout));
    assert_eq!(last["argv"][0], "mcp:mcp", "{last}");
    assert_eq!(last["argv"][1], "run_tasks", "{last}");
});

vx_test!(cancelling_a_long_run_stops_its_processes, || {
    let ws = fixture();
    let cfg = json!({
        "server": server(&ws),
        "cancel": {
            "tool": "run_tasks",
            "args": {"tasks": "lib#long"},
            "marker": ws.path("long.pid").to_string_lossy(),
            "timeout": 30,
        },
    });
    let Some(out) = drive(&ws, "cancelling_a_long_run_stops_its_processes", cfg) else {
        return;
    };
    let c = &out["cancel"];
    assert_eq!(c["started"], true, "{out}");
    assert_eq!(
        c["stopped"], true,
        "the task's process outlived the cancel: {out}"
    );
    let left = vx_tests::processes_in(ws.root());
    assert!(
        left.iter().all(|p| !p.contains("sleep 60")),
        "left behind: {left:?}"
    );
});

vx_test!(
    an_agent_run_shares_an_in_flight_execution_with_vx_run,
    || {
        let ws = fixture();
        let cfg = json!({
            "server": server(&ws),
            "calls": [{"tool": "run_tasks", "args": {"tasks": "lib#once"}}],
        });
        let Some(mut agent) =
            python_client(&ws, "an_agent_run_shares_an_in_flight_execution", &cfg)
        else {
            return;
        };
        let agent = agent.spawn().expect("start the MCP client");
        let start = Instant::now();
        while !ws.exists("once.started") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the agent's run never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let cli = ws.run(&["lib#once"]);
        assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);
        let out = finish(agent.wait_with_output().expect("MCP client"));
        let agent_run = answer(&out["calls"][0]);
        assert_eq!(agent_run["ok"], true, "{agent_run}");
        assert_eq!(ws.read("count.txt"), "ran\n", "the task ran more than once");
        let hist = ws.vx(&["history", "--json"]);
        let hist: Value = serde_json::from_str(&hist.stdout).unwrap();
        let argv0: Vec<&str> = hist["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["argv"][0].as_str())
            .collect();
        assert_eq!(argv0.len(), 2, "{hist}");
        assert!(argv0.iter().any(|a| a.starts_with("mcp:")), "{hist}");
    }
);

vx_test!(the_inspector_cli_lists_and_calls_tools, || {
    let Some(inspector) = peers::npm_bin("mcp-inspector") else {
        peers::skip(
            "the_inspector_cli_lists_and_calls_tools",
            "@modelcontextprotocol/inspector (npm)",
        );
        return;
    };
    let ws = fixture();
    let vx = ws.cmd(".", &["mcp"]);
    let run = |args: &[&str]| {
        let mut c = Command::new(&inspector);
        c.arg("--cli")
            .arg(vx.get_program())
            .arg("mcp")
            .args(args)
            .current_dir(ws.root())
            .env_clear()
            .stdin(Stdio::null());
        for (k, v) in vx.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let out = c.output().expect("run mcp-inspector");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mcp-inspector {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let list = run(&["--method", "tools/list"]);
    let n = list["tools"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(n, 8, "{list}");
    let ran = run(&[
        "--method",
        "tools/call",
        "--tool-name",
        "run_tasks",
        "--tool-arg",
        "tasks=app#build",
    ]);
    assert_eq!(ran["isError"], false, "{ran}");
    let text = ran["content"][0]["text"].as_str().unwrap_or_default();
    let summary: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(summary["counts"]["executed"], 2, "{summary}");
    assert!(ws.exists("packages/app/dist/app.txt"));
});

vx_test!(the_2026_07_28_revision_is_served, || {
    let ws = fixture();
    // No handshake: `server/discover`, then `_meta` on every request.
    let cfg = json!({
        "server": server(&ws),
        "modern": true,
        "calls": [
            {"tool": "run_tasks", "args": {"tasks": "build"}},
            {"tool": "run_history"},
        ],
    });
    let Some(out) = drive(&ws, "the_2026_07_28_revision_is_served", cfg) else {
        return;
    };
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_eq!(out["tools"].as_array().unwrap().len(), 8);
    let c = out["calls"].as_array().unwrap();
    let ran = answer(&c[0]);
    assert_eq!(ran["counts"]["executed"], 2, "{ran}");
    assert!(!c[0]["progress"].as_array().unwrap().is_empty(), "{}", c[0]);
    // The client is named from the request's `_meta`.
    let h = answer(&c[1]);
    assert_eq!(h["runs"][0]["by"], "mcp:mcp run_tasks build", "{h}");
});
