//! The method catalogue and the router, through the real binaries:
//! `daemon.methods` lists every method with its schemas, `$/cancel` stops
//! one request and not its neighbour on the same connection, streamed
//! events carry their request's id, a bad param is named, and
//! `docs/protocol.md` is generated from the catalogue.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vx_tests::{Ws, vx_test, vxd_bin};

/// A raw JSON-RPC connection to the engine of the current test mode: the
/// daemon's socket in a `::daemon` variant, else `vxd --stdio`.
struct Peer {
    w: Box<dyn Write>,
    r: BufReader<Box<dyn std::io::Read>>,
    _child: Option<std::process::Child>,
}

impl Peer {
    fn open(ws: &Ws) -> Peer {
        let mut p = if vx_tests::daemon_mode() {
            let r = ws.vx_daemon(&["daemon", "start"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let st = ws.daemon_status();
            let s =
                std::os::unix::net::UnixStream::connect(st["socket"].as_str().unwrap()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            Peer {
                w: Box::new(s.try_clone().unwrap()),
                r: BufReader::new(Box::new(s)),
                _child: None,
            }
        } else {
            let mut child = Command::new(vxd_bin())
                .arg("--stdio")
                .current_dir(ws.root())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let w = child.stdin.take().unwrap();
            let out = child.stdout.take().unwrap();
            Peer {
                w: Box::new(w),
                r: BufReader::new(Box::new(out)),
                _child: Some(child),
            }
        };
        p.request(
            0,
            "daemon.hello",
            json!({"protocol": 1, "client_version": "t"}),
        );
        assert_eq!(p.recv()["id"], 0);
        p
    }

    fn send(&mut self, v: Value) {
        self.w.write_all(format!("{v}\n").as_bytes()).unwrap();
        self.w.flush().unwrap();
    }

    fn request(&mut self, id: i64, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    /// The answer to `id`; notifications before it go to `notes`.
    fn answer(&mut self, id: i64, notes: &mut Vec<Value>) -> Value {
        loop {
            let v = self.recv();
            if v.get("method").is_some() {
                notes.push(v);
            } else {
                assert_eq!(v["id"], id, "an answer to another request came first: {v}");
                return v;
            }
        }
    }
}

fn env() -> Value {
    json!({"PATH": std::env::var("PATH").unwrap_or_default()})
}

vx_test!(daemon_methods_lists_every_method_with_schemas, || {
    let ws = vx_tests::basic();
    let mut p = Peer::open(&ws);
    p.request(1, "daemon.methods", Value::Null);
    let v = p.answer(1, &mut Vec::new());
    let c = &v["result"];
    assert_eq!(c["protocol"], 1, "{v}");
    let methods = c["methods"].as_array().unwrap_or_else(|| panic!("{v}"));
    let listed: BTreeSet<&str> = methods.iter().filter_map(|m| m["name"].as_str()).collect();
    let want: BTreeSet<&str> = vx_proto::catalogue::method_names().into_iter().collect();
    assert_eq!(listed, want);
    for name in [
        "daemon.hello",
        "daemon.methods",
        "$/cancel",
        "run.start",
        "run.cancel",
        "watch.start",
        "history.why",
        "cache.prune",
    ] {
        assert!(listed.contains(name), "{name} is not listed");
    }
    for m in methods {
        let name = m["name"].as_str().unwrap();
        assert!(
            !m["doc"].as_str().unwrap_or("").is_empty(),
            "{name}: no doc"
        );
        assert!(
            ["query", "mutation", "stream"].contains(&m["kind"].as_str().unwrap()),
            "{m}"
        );
        assert!(
            ["read", "run", "admin"].contains(&m["scope"].as_str().unwrap()),
            "{m}"
        );
        for which in ["params", "result"] {
            let s = &m[which];
            assert!(
                s.is_object()
                    && s["$schema"]
                        .as_str()
                        .is_some_and(|u| u.contains("json-schema")),
                "{name}: no {which} schema: {s}"
            );
        }
    }
    let by_name = |n: &str| methods.iter().find(|m| m["name"] == n).unwrap();
    // The schemas are the real types: run.start's params need `cwd` and
    // `tasks` (a list of strings); its result is a summary with counts.
    let run = by_name("run.start");
    assert_eq!(
        (&run["kind"], &run["scope"]),
        (&json!("stream"), &json!("run"))
    );
    assert_eq!(run["events"], json!(["run.event"]));
    let params = &run["params"];
    let required: BTreeSet<&str> = params["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["cwd", "tasks"]), "{params}");
    assert_eq!(params["properties"]["tasks"]["type"], "array");
    assert_eq!(params["properties"]["tasks"]["items"]["type"], "string");
    assert!(run["result"]["properties"]["counts"].is_object(), "{run}");
    assert_eq!(by_name("cache.clean")["scope"], "admin");
    assert_eq!(by_name("run.plan")["kind"], "query");
    assert_eq!(by_name("$/cancel")["notification"], true);
    // The notification run.event: an event plus its request's id.
    let notes = c["notifications"].as_array().unwrap();
    let ev = notes.iter().find(|n| n["name"] == "run.event").unwrap();
    let text = ev["params"].to_string();
    assert!(text.contains("\"request\""), "{text}");
    assert!(
        text.contains("task_output") && text.contains("settled"),
        "{text}"
    );
});

fn two_projects() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\", \"b\"]\n"),
        (
            "a/vx.toml",
            "[project]\nname = \"a\"\n[tasks.job]\ncommand = \"echo a-up; touch started; exec sleep 60\"\ncache = false\n",
        ),
        (
            "b/vx.toml",
            "[project]\nname = \"b\"\n[tasks.job]\ncommand = \"echo b-up; touch started; while [ ! -f ../release ]; do sleep 0.05; done; echo b-done\"\ncache = false\n",
        ),
    ])
}

fn wait_for(ws: &Ws, rel: &str) {
    let t = Instant::now();
    while !ws.exists(rel) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{rel} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Two runs in flight on one connection; `$/cancel` of the first stops it
// (SIGTERM: exit 143, its task aborted) and the second goes on to succeed.
// Every event carries the id of the request it belongs to.
vx_test!(cancel_stops_one_run_and_not_its_neighbour, || {
    let ws = two_projects();
    let mut p = Peer::open(&ws);
    let root = ws.root().to_string_lossy().into_owned();
    for (id, task) in [(10, "a#job"), (11, "b#job")] {
        p.request(
            id,
            "run.start",
            json!({"cwd": root, "tasks": [task], "env": env(), "no_cache": true}),
        );
    }
    wait_for(&ws, "a/started");
    wait_for(&ws, "b/started");
    // A notification, as an editor would send it.
    p.send(json!({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": 10}}));
    let mut notes = Vec::new();
    let a = p.answer(10, &mut notes);
    assert_eq!(a["result"]["exit_code"], 143, "{a}");
    let a_tasks = a["result"]["tasks"].as_array().unwrap();
    assert_eq!(a_tasks[0]["id"], "a#job");
    assert_eq!(a_tasks[0]["status"], "aborted", "{a}");
    // The neighbour still runs: release it and it succeeds.
    std::thread::sleep(Duration::from_millis(300));
    ws.write("release", "");
    let b = p.answer(11, &mut notes);
    assert_eq!(b["result"]["ok"], true, "{b}");
    assert_eq!(b["result"]["exit_code"], 0, "{b}");
    // Events are tagged with their request, and each run's are its own.
    for n in &notes {
        assert_eq!(n["method"], "run.event", "{n}");
        let req = &n["params"]["request"];
        assert!(
            *req == 10 || *req == 11,
            "an event without its request: {n}"
        );
        if let Some(id) = n["params"]["id"].as_str() {
            let want = if id.starts_with("a#") { 10 } else { 11 };
            assert_eq!(*req, want, "{n}");
        }
    }
    let lines = |req: i64| -> Vec<String> {
        notes
            .iter()
            .filter(|n| n["params"]["request"] == req && n["params"]["type"] == "task_output")
            .filter_map(|n| n["params"]["line"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(lines(10), ["a-up"]);
    assert_eq!(lines(11), ["b-up", "b-done"]);
    for req in [10, 11] {
        assert!(
            notes
                .iter()
                .any(|n| n["params"]["request"] == req && n["params"]["type"] == "run_started"),
            "request {req} has no run_started"
        );
    }
    // `$/cancel` as a request is answered; an id not in flight is ignored.
    p.request(12, "$/cancel", json!({"id": 999}));
    assert_eq!(p.answer(12, &mut Vec::new())["result"], json!({}));
    // `run.cancel` still stops the connection's runs.
    ws.write("a/vx.toml", "[project]\nname = \"a\"\n[tasks.job]\ncommand = \"touch again; exec sleep 60\"\ncache = false\n");
    p.request(
        13,
        "run.start",
        json!({"cwd": root, "tasks": ["a#job"], "env": env(), "no_cache": true}),
    );
    wait_for(&ws, "a/again");
    p.send(json!({"jsonrpc": "2.0", "method": "run.cancel", "params": {"signal": 2}}));
    let r = p.answer(13, &mut Vec::new());
    assert_eq!(r["result"]["exit_code"], 130, "{r}");
});

vx_test!(a_bad_param_is_named, || {
    let ws = vx_tests::basic();
    let mut p = Peer::open(&ws);
    let root = ws.root().to_string_lossy().into_owned();
    // (method, params, the field named)
    let cases = [
        (
            "run.start",
            json!({"cwd": root, "tasks": ["build", 3]}),
            "tasks[1]",
        ),
        ("run.plan", json!({"cwd": root}), "tasks"),
        (
            "run.start",
            json!({"cwd": root, "tasks": [], "continue": "sometimes"}),
            "continue",
        ),
        (
            "watch.start",
            json!({"run": {"tasks": ["build"]}}),
            "run.cwd",
        ),
        (
            "watch.start",
            json!({"run": {"cwd": root, "tasks": ["build"]}, "debounce_ms": -1}),
            "debounce_ms",
        ),
        (
            "cache.prune",
            json!({"cwd": root, "max_size": "big"}),
            "max_size",
        ),
        ("$/cancel", json!({}), "id"),
        ("daemon.hello", json!({"protocol": 1}), "client_version"),
    ];
    for (i, (method, params, field)) in cases.iter().enumerate() {
        let id = 100 + i as i64;
        p.request(id, method, params.clone());
        let v = p.answer(id, &mut Vec::new());
        assert_eq!(v["error"]["code"], -32602, "{method} {params}: {v}");
        assert_eq!(
            v["error"]["data"]["field"], *field,
            "{method} {params}: {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("`{field}`")), "{method}: {msg}");
    }
    assert!(!ws.exists("packages/lib/dist"), "nothing ran");
});

/// The generated part of `docs/protocol.md` is the catalogue's
/// (`VX_BLESS=1` rewrites it): a method cannot be added undocumented.
#[test]
fn protocol_md_is_generated_from_the_catalogue() {
    const BEGIN: &str = "<!-- catalogue:begin (generated from vx_proto::catalogue; VX_BLESS=1 cargo test -p vx-tests --test catalogue rewrites it) -->\n";
    const END: &str = "<!-- catalogue:end -->";
    let c = vx_proto::catalogue::catalogue();
    assert!(
        c.methods.iter().all(|m| m.params.is_some()),
        "vx-proto was built without its `schema` feature: the docs would lose their field tables"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/protocol.md lacks the catalogue markers:\n{BEGIN}{END}");
    };
    let want = vx_proto::catalogue::markdown();
    let have = &doc[b + BEGIN.len()..e];
    if have == want {
        return;
    }
    if vx_proto::knobs::BLESS.get_process().as_deref() == Some("1") {
        let new = format!("{}{want}{}", &doc[..b + BEGIN.len()], &doc[e..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    panic!(
        "docs/protocol.md's catalogue differs from vx_proto::catalogue; rerun with VX_BLESS=1 to rewrite it. Expected:\n{want}"
    );
}

/// The schemas are the daemon's: the client links neither schemars nor the
/// router's dependencies (resolved for `vx` alone, transitively).
#[test]
fn the_client_links_no_schema_code() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "vx", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("vx-proto"), "{tree}");
    for banned in ["schemars ", "tokio ", "tokio-util ", "serde_path_to_error "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(banned)),
            "the client pulls in {banned}:\n{tree}"
        );
    }
}
