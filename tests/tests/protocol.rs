//! The wire: `vxd --stdio` answers JSON-RPC 2.0 lines, survives garbage,
//! and insists on `daemon.hello` first.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use vx_tests::{basic, vx_test, vxd_bin};

struct Engine {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Engine {
    fn start(cwd: &std::path::Path) -> Engine {
        let mut child = Command::new(vxd_bin())
            .arg("--stdio")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Engine { child, out }
    }
    fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.child.stdin.as_mut().unwrap();
        w.write_all(bytes).unwrap();
        w.flush().unwrap();
    }
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }
    /// Reads until the response with `id`, returning it and the notifications before it.
    fn until(&mut self, id: i64) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let v = self.recv();
            if v["id"] == id {
                return (v, notes);
            }
            notes.push(v);
        }
    }
}

vx_test!(garbage_lines_get_errors_and_the_connection_survives, || {
    let ws = basic();
    let mut e = Engine::start(ws.root());
    e.send_raw(b"this is not json\n");
    let v = e.recv();
    assert_eq!(v["error"]["code"], -32700);
    assert_eq!(v["id"], Value::Null);
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":{\"x\":1},\"method\":\"m\"}\n");
    assert_eq!(e.recv()["error"]["code"], -32600);
    // a request before the handshake
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"cache.stats\",\"params\":{}}\n");
    assert_eq!(e.recv()["error"]["code"], -32005);
    // the handshake, written one byte at a time
    let hello = json!({"jsonrpc":"2.0","id":2,"method":"daemon.hello","params":{"protocol":1,"client_version":"test"}});
    for b in format!("{hello}\n").bytes() {
        e.send_raw(&[b]);
    }
    let v = e.recv();
    assert_eq!(v["result"]["protocol"], 1);
    assert_eq!(v["result"]["mode"], "stdio");
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"no.such\"}\n");
    assert_eq!(e.recv()["error"]["code"], -32601);
    let stats = json!({"jsonrpc":"2.0","id":4,"method":"cache.stats","params":{"cwd": ws.root()}});
    e.send_raw(format!("{stats}\n").as_bytes());
    let v = e.recv();
    assert_eq!(v["result"]["entries"], 0, "{v}");
    // invalid params
    e.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"run.start\",\"params\":{\"cwd\":3}}\n");
    assert_eq!(e.recv()["error"]["code"], -32602);
    drop(e.child.stdin.take());
    assert!(e.child.wait().unwrap().success());
});

vx_test!(wrong_protocol_version_is_refused, || {
    let ws = basic();
    let mut e = Engine::start(ws.root());
    let hello = json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":999,"client_version":"x"}});
    e.send_raw(format!("{hello}\n").as_bytes());
    let v = e.recv();
    assert_eq!(v["error"]["code"], -32005);
    assert_eq!(v["error"]["data"]["protocol"], 1);
});

vx_test!(run_start_streams_events_then_answers, || {
    let ws = basic();
    let mut e = Engine::start(ws.root());
    let hello = json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":1,"client_version":"t"}});
    e.send_raw(format!("{hello}\n").as_bytes());
    e.recv();
    let run = json!({"jsonrpc":"2.0","id":2,"method":"run.start","params":{
        "cwd": ws.root(), "tasks": ["build"], "env": {"PATH": std::env::var("PATH").unwrap()}}});
    e.send_raw(format!("{run}\n").as_bytes());
    let (resp, notes) = e.until(2);
    assert_eq!(resp["result"]["ok"], true, "{resp}");
    assert!(
        notes
            .iter()
            .all(|n| n["method"] == "run.event" && n.get("id").is_none())
    );
    // Each event names the request that streams it.
    assert!(
        notes.iter().all(|n| n["params"]["request"] == 2),
        "{notes:?}"
    );
    let kinds: Vec<&str> = notes
        .iter()
        .filter_map(|n| n["params"]["type"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.iter().filter(|k| **k == "task_finished").count(), 2);
    // a config error is a JSON-RPC error with the config code
    ws.write("packages/lib/vx.toml", "[tasks.build]\nbogus = 1\n");
    let run = json!({"jsonrpc":"2.0","id":3,"method":"run.start","params":{"cwd": ws.root(), "tasks": ["build"]}});
    e.send_raw(format!("{run}\n").as_bytes());
    let (resp, _) = e.until(3);
    assert_eq!(resp["error"]["code"], -32001, "{resp}");
});

/// A connection to the engine of the current test mode: the daemon's socket
/// in a `::daemon` variant, else `vxd --stdio`.
struct Peer {
    w: Box<dyn Write>,
    r: BufReader<Box<dyn std::io::Read>>,
    _child: Option<std::process::Child>,
}

impl Peer {
    fn open(ws: &vx_tests::Ws) -> Peer {
        let mut p = if vx_tests::daemon_mode() {
            let r = ws.vx_daemon(&["daemon", "start"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let st = ws.daemon_status();
            let s =
                std::os::unix::net::UnixStream::connect(st["socket"].as_str().unwrap()).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
                .unwrap();
            Peer {
                w: Box::new(s.try_clone().unwrap()),
                r: BufReader::new(Box::new(s)),
                _child: None,
            }
        } else {
            let mut e = Engine::start(ws.root());
            let w = e.child.stdin.take().unwrap();
            let Engine { child, out } = e;
            Peer {
                w: Box::new(w),
                r: BufReader::new(Box::new(out.into_inner())),
                _child: Some(child),
            }
        };
        p.send(json!({"jsonrpc":"2.0","id":0,"method":"daemon.hello","params":{"protocol":1,"client_version":"t"}}));
        assert_eq!(p.recv()["id"], 0);
        p
    }
    fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }
    fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
        self.w.flush().unwrap();
    }
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }
}

// JSON-RPC 2.0: a request whose id is `null` is a request (answered with
// `"id": null`); a batch (a JSON array) gets one clear error.
vx_test!(null_id_is_answered_and_batches_get_a_clear_error, || {
    let ws = basic();
    let mut p = Peer::open(&ws);
    p.send(json!({"jsonrpc":"2.0","id":null,"method":"cache.stats","params":{"cwd": ws.root()}}));
    let v = p.recv();
    assert!(v.as_object().unwrap().contains_key("id"), "{v}");
    assert_eq!(v["id"], Value::Null);
    assert!(v["result"]["dir"].is_string(), "{v}");
    for batch in [
        "[]".to_string(),
        format!(
            "[{}]",
            json!({"jsonrpc":"2.0","id":7,"method":"cache.stats","params":{"cwd": ws.root()}})
        ),
    ] {
        p.send_raw(format!("{batch}\n").as_bytes());
        let v = p.recv();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], -32600, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("batch requests are not supported"), "{msg}");
    }
    // The connection goes on.
    p.send(json!({"jsonrpc":"2.0","id":9,"method":"cache.stats","params":{"cwd": ws.root()}}));
    assert_eq!(p.recv()["id"], 9);
});

// Every method that takes a `cwd` refuses a relative one (it used to be
// resolved against the engine's own directory, `/` for a daemon), naming
// the field; a concurrency over the cap is refused by every run method.
vx_test!(
    relative_cwd_and_huge_concurrency_are_refused_for_every_method,
    || {
        let ws = basic();
        let mut p = Peer::open(&ws);
        let cases = [
            ("cache.stats", json!({"cwd": "."}), "`cwd`"),
            ("cache.clean", json!({"cwd": "packages"}), "`cwd`"),
            ("cache.prune", json!({"cwd": "", "max_size": 1}), "`cwd`"),
            (
                "run.start",
                json!({"cwd": "packages/lib", "tasks": ["build"]}),
                "`cwd`",
            ),
            ("run.plan", json!({"cwd": "x", "tasks": ["build"]}), "`cwd`"),
            (
                "watch.start",
                json!({"run": {"cwd": "x", "tasks": ["build"]}}),
                "`run.cwd`",
            ),
            ("history.runs", json!({"cwd": "."}), "`cwd`"),
            (
                "history.task",
                json!({"cwd": ".", "task": "build"}),
                "`cwd`",
            ),
            ("workspace.info", json!({"cwd": "relative/dir"}), "`cwd`"),
        ];
        for (i, (method, params, field)) in cases.iter().enumerate() {
            p.send(json!({"jsonrpc":"2.0","id":i,"method":method,"params":params}));
            let v = p.recv();
            assert_eq!(v["error"]["code"], -32602, "{method}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains(field) && msg.contains("absolute"),
                "{method}: {msg}"
            );
        }
        assert!(!ws.exists("packages/lib/dist"), "nothing ran");
        let root = ws.root().to_string_lossy().into_owned();
        let huge = json!(4_294_967_295u64);
        let cases = [
            (
                "run.start",
                json!({"cwd": root, "tasks": ["build"], "concurrency": huge}),
            ),
            (
                "run.plan",
                json!({"cwd": root, "tasks": ["build"], "concurrency": huge}),
            ),
            (
                "watch.start",
                json!({"run": {"cwd": root, "tasks": ["build"], "concurrency": huge}}),
            ),
        ];
        for (i, (method, params)) in cases.iter().enumerate() {
            p.send(json!({"jsonrpc":"2.0","id":100 + i,"method":method,"params":params}));
            let v = p.recv();
            assert_eq!(v["id"], 100 + i);
            assert_eq!(v["error"]["code"], -32008, "{method}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("at most 1024")
            );
        }
        assert!(!ws.exists("packages/lib/dist"), "nothing ran");
    }
);

// An output line over 64 MiB used to vanish (the client's framer dropped
// the event); now every line is cut at 1 MiB with a visible marker.
vx_test!(
    a_huge_output_line_is_truncated_with_a_marker_not_dropped,
    || {
        let n = (64 << 20) + 100;
        let ws = vx_tests::Ws::new(&[
            ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
            (
                "packages/p/vx.toml",
                &format!(
                    "[tasks.big]\ncommand = \"echo before; head -c {n} /dev/zero | tr '\\\\0' x; echo; echo after\"\ninputs = []\n"
                ),
            ),
        ]);
        let r = ws.run(&["p#big"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let lines: Vec<&str> = r
            .events
            .iter()
            .filter(|e| e["type"] == "task_output")
            .filter_map(|e| e["line"].as_str())
            .collect();
        assert_eq!(
            lines.len(),
            3,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "before");
        assert!(
            lines[1].ends_with(&format!("… [line truncated: {n} bytes]")),
            "{}",
            &lines[1][lines[1].len().saturating_sub(60)..]
        );
        assert!(lines[1].len() <= (1 << 20) + 64);
        assert_eq!(lines[2], "after");
    }
);

// `VX_CACHE_DIR` and `VX_KILL_GRACE_MS` are the client's: a daemon started
// by a client with other values (or none) does not impose its own.
vx_test!(cache_dir_and_kill_grace_come_from_the_client_env, || {
    let ws = basic();
    // The first client starts the daemon with values of its own.
    let r = ws.vx_in(
        ".",
        &["run", "--json", "lib#build"],
        &[("VX_CACHE_DIR", ".vx/first"), ("VX_KILL_GRACE_MS", "60000")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(ws.exists(".vx/first"));
    // A client without them uses the default cache...
    let r = ws.run(&["lib#build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        ws.exists(".vx/cache/index.redb"),
        "the default cache was not used"
    );
    // ...and one naming another cache gets that one, for runs and cache.*.
    let other = [("VX_CACHE_DIR", ".vx/other")];
    let r = ws.vx_in(".", &["run", "--json", "lib#build"], &other);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        ws.exists(".vx/other/index.redb"),
        "VX_CACHE_DIR was ignored"
    );
    let r = ws.vx_in(".", &["cache", "stats", "--json"], &other);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["dir"].as_str().unwrap().ends_with(".vx/other"), "{v}");
    // The kill grace is this client's: 100 ms, not the first client's 60 s.
    ws.write(
        "packages/lib/vx.toml",
        "[tasks.hang]\ncommand = \"trap '' TERM; touch started; sleep 60\"\ncache = false\n",
    );
    let mut c = ws
        .cmd(".", &["run", "lib#hang"])
        .env("VX_KILL_GRACE_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !ws.exists("packages/lib/started") {
        assert!(t.elapsed().as_secs() < 30, "the task never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let t = std::time::Instant::now();
    // SAFETY: interrupting the client we spawned.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let st = c.wait().unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(15),
        "the cancel waited {:?}: the grace did not come from the client",
        t.elapsed()
    );
    assert_eq!(st.code(), Some(130));
});

// A panic in the daemon reaches `.vx/daemon.log` (its stderr used to go to
// /dev/null), and the daemon goes on serving.
vx_test!(daemon_panics_reach_the_log, || {
    let ws = basic();
    let r = ws.vx_in(
        ".",
        &["daemon", "start"],
        &[("VX_DAEMON", "1"), ("VX_TEST_HOOKS", "1")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = ws.daemon_status();
    let s = std::os::unix::net::UnixStream::connect(st["socket"].as_str().unwrap()).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut call = |id: i64, method: &str| {
        let m = json!({"jsonrpc":"2.0","id":id,"method":method,"params":{"protocol":1,"client_version":"t"}});
        w.write_all(format!("{m}\n").as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    call(1, "daemon.hello");
    let v = call(2, "test.panic");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    let t = std::time::Instant::now();
    loop {
        let log = ws.read(".vx/daemon.log");
        if log.contains("test.panic requested") && log.contains("panicked at") {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 10,
            "the panic is not in the log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(call(3, "daemon.status")["result"]["pid"], st["pid"]);
});
