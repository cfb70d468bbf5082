//! The live methods through the real binaries: `vx events`
//! (`events.subscribe`), `vx ps` (`runs.active`), `vx graph` (`graph.get`),
//! `vx explain` (`task.explain`) and `vx log` (`task.log`).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vx_tests::{Ws, basic, daemon_mode, vx_test};

fn json(r: &vx_tests::Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vx events --json` in the background, its lines on a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Follower {
    fn start(ws: &Ws, args: &[&str]) -> Follower {
        let mut a = vec!["events", "--json"];
        a.extend_from_slice(args);
        let mut child = ws
            .cmd(".", &a)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let f = Follower { child, lines };
        f.next_until(|v| v["method"] == "events.subscribed");
        f
    }

    /// Lines up to and including the first one `stop` accepts.
    fn next_until(&self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no line from vx events ({e}); got {got:#?}"));
            let done = stop(&v);
            got.push(v);
            if done {
                return got;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// A subscriber on one connection (`vx events`) sees every event of a run
// another `vx run` started, tagged with its run id and in order, between
// `run.started` (argv redacted) and `run.finished` (counts). Without a
// daemon there is nothing to follow: a clear error.
vx_test!(
    a_subscriber_sees_another_clients_run_tagged_and_in_order,
    || {
        let ws = basic();
        if !daemon_mode() {
            let r = ws.vx(&["events"]);
            assert_ne!(r.code, 0);
            assert!(r.stderr.contains("daemon"), "{}", r.stderr);
            return;
        }
        let all = Follower::start(&ws, &[]);
        let only_lib = Follower::start(&ws, &["--task", "lib#build"]);
        let r = ws.run(&["app#test", "--", "s3cret"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let run_id = r.summary()["run_id"].as_str().unwrap().to_string();
        let got =
            all.next_until(|v| v["method"] == "run.finished" && v["params"]["run_id"] == run_id);
        let first = got
            .iter()
            .position(|v| v["method"] == "run.started" && v["params"]["run_id"] == run_id)
            .expect("run.started");
        let started = &got[first]["params"];
        assert_eq!(started["kind"], "run");
        assert_eq!(started["tasks"], 3);
        let argv = started["argv"].to_string();
        assert!(
            argv.contains("app#test") && !argv.contains("s3cret"),
            "{argv}"
        );
        let events: Vec<&Value> = got[first + 1..got.len() - 1]
            .iter()
            .filter(|v| v["method"] == "events.event" && v["params"]["run_id"] == run_id)
            .collect();
        let seqs: Vec<u64> = events
            .iter()
            .map(|v| v["params"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "every event, in order"
        );
        let order: Vec<String> = events
            .iter()
            .filter(|v| v["params"]["event"]["type"] == "task_finished")
            .map(|v| {
                v["params"]["event"]["result"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(order, ["lib#build", "app#build", "app#test"]);
        let finished = &got.last().unwrap()["params"];
        assert_eq!(finished["ok"], true);
        assert_eq!(finished["exit_code"], 0);
        assert_eq!(finished["counts"]["total"], 3);
        assert_eq!(finished["counts"]["executed"], 3);
        // The task filter: only lib#build's events (and the run's start and end).
        let lib = only_lib.next_until(|v| v["method"] == "run.finished");
        assert!(lib.iter().all(|v| v["method"] != "events.event"
            || v["params"]["event"]["result"]["id"] == "lib#build"
            || v["params"]["event"]["id"] == "lib#build"));
        assert!(
            lib.iter()
                .any(|v| v["params"]["event"]["type"] == "task_finished"),
            "{lib:#?}"
        );
    }
);

// A plain `vx run` asks for changes only, yet a subscriber sees every task
// of it: the cache hits of a repeat run are on the bus (published for the
// watchers, not sent to that client), in order with the rest.
/// The ids of the tasks a follower saw finish as cached, up to the end of
/// the next run (its events in order, numbered from 1 per run).
fn hits_of_next_run(all: &Follower) -> Vec<String> {
    let got = all.next_until(|v| v["method"] == "run.finished");
    let finished = &got.last().unwrap()["params"];
    assert_eq!(finished["counts"]["cached"], 3, "{finished:#}");
    let events: Vec<&Value> = got
        .iter()
        .filter(|v| v["method"] == "events.event")
        .collect();
    let seqs: Vec<u64> = events
        .iter()
        .map(|v| v["params"]["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "in order");
    let mut hits: Vec<String> = events
        .iter()
        .filter(|v| v["params"]["event"]["type"] == "task_finished")
        .inspect(|v| assert_eq!(v["params"]["event"]["result"]["status"], "cached", "{v}"))
        .map(|v| {
            v["params"]["event"]["result"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    hits.sort();
    hits
}

fn runs_replayed(ws: &Ws) -> u64 {
    let r = ws.vx(&["daemon", "status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    json(&r)["runs_replayed"].as_u64().unwrap()
}

vx_test!(a_subscriber_sees_the_hits_of_a_plain_run, || {
    let ws = basic();
    if !daemon_mode() {
        return;
    }
    let r = ws.run(&["app#test"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The same plain request once unwatched: its answer is kept for replay,
    // which must not hide the hits from the watcher that comes next.
    let unwatched = ws.vx(&["run", "app#test"]);
    assert_eq!(unwatched.code, 0, "{}", unwatched.stderr);
    let all = Follower::start(&ws, &[]);
    let plain = ws.vx(&["run", "app#test"]);
    assert_eq!(plain.code, 0, "{}{}", plain.stdout, plain.stderr);
    let hits = hits_of_next_run(&all);
    assert_eq!(hits, ["app#build", "app#test", "lib#build"]);
});

// While a subscriber watches, a repeat plain run is still replayed from
// memory (once a watched run was kept), and the subscriber still sees
// every task's hit, which the run's own client does not ask for.
vx_test!(a_watched_repeat_run_is_replayed_with_every_hit, || {
    let ws = basic();
    if !daemon_mode() {
        return;
    }
    let r = ws.run(&["app#test"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = Follower::start(&ws, &[]);
    let before = runs_replayed(&ws);
    for round in 0..3 {
        let plain = ws.vx(&["run", "app#test"]);
        assert_eq!(plain.code, 0, "{}{}", plain.stdout, plain.stderr);
        let hits = hits_of_next_run(&all);
        assert_eq!(
            hits,
            ["app#build", "app#test", "lib#build"],
            "round {round}"
        );
    }
    // The first watched run is computed (and kept as watched); the next two
    // are replays.
    assert_eq!(runs_replayed(&ws) - before, 2);
});

fn waiting() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/p/vx.toml",
            r#"[tasks.wait]
command = "touch started && while [ ! -f go ]; do sleep 0.05; done && echo done"
cache = false
"#,
        ),
    ])
}

// `vx ps` (runs.active) shows a task that is running, in slot 0, while
// another client's run waits on a file; nothing once it finished. Without
// a daemon, `vx ps` has nothing to list and says so.
vx_test!(runs_active_shows_a_running_task, || {
    let ws = waiting();
    let mut run = ws
        .cmd(".", &["run", "--json", "p#wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the task to start", Duration::from_secs(60), || {
        ws.exists("packages/p/started")
    });
    let r = ws.vx(&["ps", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let active = json(&r);
    if daemon_mode() {
        let runs = active["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{active:#}");
        assert_eq!(runs[0]["kind"], "run");
        let tasks = runs[0]["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 1, "{active:#}");
        assert_eq!(tasks[0]["id"], "p#wait");
        assert_eq!(tasks[0]["state"], "running");
        assert_eq!(tasks[0]["slot"], 0);
        assert!(tasks[0]["started_at"].as_u64().unwrap() > 0);
        let text = ws.vx(&["ps"]);
        assert!(text.stdout.contains("p#wait"), "{}", text.stdout);
    } else {
        assert_eq!(active["runs"], serde_json::json!([]));
    }
    ws.write("packages/p/go", "");
    assert!(run.wait().unwrap().success());
    let after = json(&ws.vx(&["ps", "--json"]));
    assert_eq!(after["runs"], serde_json::json!([]), "{after:#}");
});

// `vx graph --json` (graph.get): the selection's projects, tasks and edges.
vx_test!(graph_get_lists_projects_tasks_and_edges, || {
    let ws = basic();
    let r = ws.vx(&["graph", "app#test", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let g = json(&r);
    let ids: Vec<&str> = g["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lib#build", "app#build", "app#test"]);
    let edges: Vec<(String, String)> = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("app#build".to_string(), "lib#build".to_string()),
            ("app#test".to_string(), "app#build".to_string())
        ]
    );
    let projects: Vec<&str> = g["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(projects, ["app", "lib"]);
    assert_eq!(g["tasks"][2]["requested"], true);
    assert_eq!(g["tasks"][0]["requested"], false);
    // An unknown task is the same error as `vx run`'s.
    let bad = ws.vx(&["graph", "app#tset", "--json"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("tset"), "{}", bad.stderr);
});

fn explain(ws: &Ws, task: &str) -> Value {
    let r = ws.vx(&["explain", task, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    json(&r)["tasks"][0].clone()
}

fn plan_key(ws: &Ws, task: &str) -> String {
    let r = ws.vx(&["run", task, "--dry=json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    json(&r)["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task)
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

// `vx explain` (task.explain): the key is the one `vx run --dry` plans,
// its parts are listed, the prediction follows the cache, and after an
// edit it names the changed file.
vx_test!(
    task_explain_reports_the_plan_key_and_names_a_changed_file,
    || {
        let ws = basic();
        let x = explain(&ws, "app#build");
        assert_eq!(x["key"].as_str().unwrap(), plan_key(&ws, "app#build"));
        assert_eq!(x["prediction"], "miss");
        let inputs: Vec<&str> = x["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert_eq!(inputs, ["packages/app/src/main.txt"]);
        assert_eq!(x["upstream"][0]["id"], "lib#build");
        assert_eq!(ws.run(&["app#build"]).code, 0);
        let x = explain(&ws, "app#build");
        assert_eq!(x["prediction"], "hit");
        assert_eq!(x["source"], "up-to-date");
        assert_eq!(x["last_key"], x["key"]);
        ws.write("packages/app/src/main.txt", "edited\n");
        let y = explain(&ws, "app#build");
        assert_eq!(y["key"].as_str().unwrap(), plan_key(&ws, "app#build"));
        assert_ne!(y["key"], x["key"]);
        assert_eq!(y["prediction"], "miss");
        assert_eq!(y["compared"], true);
        assert_eq!(
            y["changes"],
            serde_json::json!([{"component": "file", "name": "packages/app/src/main.txt", "kind": "changed"}])
        );
        let text = ws.vx(&["explain", "app#build"]);
        assert!(
            text.stdout.contains("packages/app/src/main.txt"),
            "{}",
            text.stdout
        );
    }
);

// `vx log` (task.log): the stored log of the current key, or of a recorded
// run's key; bounded, and it says when it cut.
vx_test!(task_log_returns_the_log_and_truncates, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/p/vx.toml",
            r#"[tasks.noisy]
command = "seq 1 5000 | sed 's/^/line /'"
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/p/src/a.txt", "a\n"),
    ]);
    let missing = ws.vx(&["log", "p#noisy"]);
    assert_ne!(missing.code, 0, "nothing stored yet");
    assert!(
        missing.stderr.contains("no stored log"),
        "{}",
        missing.stderr
    );
    let r = ws.run(&["p#noisy", "--output-logs=none"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run_id = r.summary()["run_id"].as_str().unwrap().to_string();
    let full = json(&ws.vx(&["log", "p#noisy", "--json"]));
    assert_eq!(full["truncated"], false);
    assert_eq!(full["source"], "current");
    let log = full["log"].as_str().unwrap();
    assert!(log.starts_with("line 1\n") && log.ends_with("line 5000\n"));
    assert_eq!(full["size"].as_u64().unwrap(), log.len() as u64);
    let cut = json(&ws.vx(&["log", "p#noisy", "--json", "--max-bytes", "100"]));
    assert_eq!(cut["truncated"], true);
    let tail = cut["log"].as_str().unwrap();
    assert!(
        tail.len() <= 100 && tail.ends_with("line 5000\n"),
        "{tail:?}"
    );
    assert!(tail.starts_with("line "), "cut at a line: {tail:?}");
    // From the history: the key of that run, after the current key moved on.
    ws.write("packages/p/src/a.txt", "b\n");
    let gone = ws.vx(&["log", "p#noisy"]);
    assert_ne!(gone.code, 0, "the new key has no log yet");
    let old = json(&ws.vx(&["log", "p#noisy", "--json", "--run", &run_id]));
    assert_eq!(old["source"], "history");
    assert_eq!(old["run_id"], run_id.as_str());
    assert_eq!(old["key"], full["key"]);
    let text = ws.vx(&["log", "p#noisy", "--max-bytes", "20", "--run", &run_id]);
    assert!(text.stdout.ends_with("line 5000\n"), "{}", text.stdout);
    assert!(text.stderr.contains("--max-bytes"), "{}", text.stderr);
});

// A subscription is a request like any other: `$/cancel` with its id ends
// it (answered `cancelled`) and a neighbour request on the same connection
// is unaffected. Over `vxd --stdio` too (it sees that connection's runs).
vx_test!(cancel_ends_a_subscription, || {
    use std::io::Write;
    let ws = basic();
    let mut engine = None;
    let (mut w, r): (Box<dyn Write>, Box<dyn std::io::Read>) = if daemon_mode() {
        let st = ws.vx_daemon(&["daemon", "start"]);
        assert_eq!(st.code, 0, "{}", st.stderr);
        let st = ws.daemon_status();
        let s = std::os::unix::net::UnixStream::connect(st["socket"].as_str().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        (Box::new(s.try_clone().unwrap()), Box::new(s))
    } else {
        let mut child = std::process::Command::new(vx_tests::vxd_bin())
            .arg("--stdio")
            .current_dir(ws.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (w, r) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        engine = Some(child);
        (Box::new(w), Box::new(r))
    };
    let mut r = BufReader::new(r);
    let mut send = |v: Value| {
        let mut b = serde_json::to_vec(&v).unwrap();
        b.push(b'\n');
        w.write_all(&b).unwrap();
    };
    let mut recv = || -> Value {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    };
    send(
        serde_json::json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":1,"client_version":"t"}}),
    );
    assert_eq!(recv()["id"], 1);
    send(serde_json::json!({"jsonrpc":"2.0","id":"sub","method":"events.subscribe","params":{}}));
    let ack = recv();
    assert_eq!(ack["method"], "events.subscribed", "{ack}");
    assert_eq!(ack["params"]["subscription"], "sub");
    send(serde_json::json!({"jsonrpc":"2.0","id":2,"method":"runs.active","params":{}}));
    let active = recv();
    assert_eq!(active["id"], 2, "{active}");
    assert_eq!(active["result"]["runs"], serde_json::json!([]));
    send(serde_json::json!({"jsonrpc":"2.0","method":"$/cancel","params":{"id":"sub"}}));
    let end = recv();
    assert_eq!(end["id"], "sub", "{end}");
    assert_eq!(end["result"]["ended"], "cancelled");
    drop(w);
    if let Some(mut c) = engine {
        // The stdio engine exits when its stdin closes.
        assert!(c.wait().unwrap().success());
    }
});

// `vx events --run ID` follows one run and exits when it ends; a run that
// is not in progress is said so at once.
vx_test!(events_follows_one_run_to_its_end, || {
    let ws = waiting();
    if !daemon_mode() {
        return; // `vx events` needs the daemon (checked above)
    }
    let none = ws.vx(&["events", "--run", "no-such-run"]);
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(none.stderr.contains("not in progress"), "{}", none.stderr);
    let mut run = ws
        .cmd(".", &["run", "--json", "p#wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the task to start", Duration::from_secs(60), || {
        ws.exists("packages/p/started")
    });
    let active = json(&ws.vx(&["ps", "--json"]));
    let id = active["runs"][0]["run_id"].as_str().unwrap().to_string();
    let mut follower = ws
        .cmd(".", &["events", "--json", "--run", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&out.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["method"], "events.subscribed");
    // Subscribed: let the run end.
    ws.write("packages/p/go", "");
    assert!(run.wait().unwrap().success());
    let lines: Vec<Value> = out
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(
        follower.wait().unwrap().success(),
        "it exits when the run ends"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["method"], "run.finished", "{lines:#?}");
    assert_eq!(last["params"]["run_id"], id.as_str());
    assert!(
        lines
            .iter()
            .any(|v| v["params"]["event"]["type"] == "task_finished")
    );
});

// A `vx watch` session publishes each cycle as a run of kind `watch`:
// `run.started`, its events, `run.finished`; a cycle after an edit is a
// new run with a new id.
vx_test!(watch_cycles_are_published_as_runs, || {
    let ws = basic();
    if !daemon_mode() {
        return; // `vx events` needs the daemon (checked above)
    }
    let all = Follower::start(&ws, &[]);
    let mut watch = ws
        .cmd(".", &["watch", "--json", "--debounce", "50", "app#build"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = all.next_until(|v| v["method"] == "run.finished");
    let started: Vec<&Value> = first
        .iter()
        .filter(|v| v["method"] == "run.started")
        .collect();
    assert_eq!(started.len(), 1, "{first:#?}");
    assert_eq!(started[0]["params"]["kind"], "watch");
    let id1 = started[0]["params"]["run_id"].clone();
    assert_eq!(first.last().unwrap()["params"]["run_id"], id1);
    assert_eq!(first.last().unwrap()["params"]["ok"], true);
    ws.write("packages/app/src/main.txt", "edited\n");
    let second = all.next_until(|v| v["method"] == "run.finished");
    let s2 = second
        .iter()
        .find(|v| v["method"] == "run.started")
        .expect("a second cycle");
    assert_ne!(s2["params"]["run_id"], id1);
    assert!(
        second
            .iter()
            .any(|v| v["params"]["event"]["type"] == "watch_cycle")
    );
    let _ = watch.kill();
    let _ = watch.wait();
    // The session is gone with its client.
    wait_until(
        "the watch to leave runs.active",
        Duration::from_secs(30),
        || json(&ws.vx(&["ps", "--json"]))["runs"] == serde_json::json!([]),
    );
});
