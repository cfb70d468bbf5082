//! The daemon on HTTP through the real binaries: SSE and NDJSON event
//! streams (ids, order, `Last-Event-ID` resume), the WebSocket carrying the
//! socket protocol, `POST /rpc` (single, batch, NDJSON streaming), the
//! token, the `Host`/`Origin` guard, the discovery file, `vx ui`,
//! `/metrics`, `VX_HTTP=0`, and a subscriber that never reads during a
//! 1,000-task run. Only a daemon serves HTTP: every test here checks
//! `daemon_mode()` and does nothing in the no-daemon variant.

mod http_support;

use http_support::{Event, Server, generated, server};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use vx_tests::{basic, daemon_mode, rss, vx_test};

fn root(ws: &vx_tests::Ws) -> String {
    std::fs::canonicalize(ws.root())
        .unwrap()
        .display()
        .to_string()
}

/// The run id and executed task ids of a `vx run --json` summary.
fn run_id(r: &vx_tests::Run) -> String {
    r.summary()["run_id"].as_str().unwrap().to_string()
}

/// Checks a run's events as a stream delivered them: `run.started` first,
/// `run.finished` last, all of this run, `seq` growing by one, and one
/// `task_finished` per task of the summary.
fn check_run_events(msgs: &[Value], run: &vx_tests::Run) {
    let id = run_id(run);
    let mine: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["params"]["run_id"] == id.as_str())
        .collect();
    assert_eq!(mine.first().unwrap()["method"], "run.started", "{mine:#?}");
    assert_eq!(mine.last().unwrap()["method"], "run.finished", "{mine:#?}");
    let seqs: Vec<u64> = mine
        .iter()
        .filter(|m| m["method"] == "events.event")
        .map(|m| m["params"]["seq"].as_u64().unwrap())
        .collect();
    assert!(!seqs.is_empty());
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "events in order, none missing: {seqs:?}");
    }
    let mut finished: Vec<String> = mine
        .iter()
        .filter(|m| m["params"]["event"]["type"] == "task_finished")
        .map(|m| {
            m["params"]["event"]["result"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    finished.sort();
    let mut tasks: Vec<String> = run.summary()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    tasks.sort();
    assert_eq!(finished, tasks);
}

fn ids_consecutive(ids: &[u64]) {
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "ids grow by one: {ids:?}");
    }
}

// An SSE and an NDJSON subscriber, both attached before `vx run`, receive
// the run's events in order, each with an id that grows by one.
vx_test!(
    sse_and_ndjson_subscribers_get_a_runs_events_in_order_with_ids,
    || {
        if !daemon_mode() {
            return; // only a daemon serves HTTP
        }
        let ws = basic();
        let srv = server(&ws);
        let mut sse = srv.open_stream("/events", &[]);
        let mut nd = srv.open_stream("/stream", &[]);
        let r = ws.vx_daemon(&["run", "--json", "build", "test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let id = run_id(&r);
        let got = sse.sse_until_finished(Some(&id));
        let ids: Vec<u64> = got
            .iter()
            .map(|e| e.id.expect("every SSE event has an id"))
            .collect();
        ids_consecutive(&ids);
        check_run_events(&got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), &r);
        let mut lines = Vec::new();
        loop {
            let v = nd.next_line().expect("the NDJSON stream ended early");
            let done = v["method"] == "run.finished" && v["params"]["run_id"] == id.as_str();
            lines.push(v);
            if done {
                break;
            }
        }
        let nd_ids: Vec<u64> = lines
            .iter()
            .map(|v| v["event_id"].as_u64().expect("event_id"))
            .collect();
        assert_eq!(
            nd_ids, ids,
            "both streams carry the same events with the same ids"
        );
        check_run_events(&lines, &r);
    }
);

// `Last-Event-ID` resumes right after the event it names: from the middle
// of a run, and across a run that happened while the client was away.
vx_test!(last_event_id_resumes_without_a_gap, || {
    if !daemon_mode() {
        return; // only a daemon serves HTTP
    }
    let ws = basic();
    let srv = server(&ws);
    let mut sse = srv.open_stream("/events", &[]);
    let r1 = ws.vx_daemon(&["run", "--json", "build", "test"]);
    assert_eq!(r1.code, 0, "{}", r1.stderr);
    let first: Vec<Event> = sse.sse_until_finished(Some(&run_id(&r1)));
    drop(sse);
    let all: Vec<u64> = first.iter().map(|e| e.id.unwrap()).collect();
    // From the middle of the run.
    let mid = all[all.len() / 2];
    let mut again = srv.open_stream("/events", &[("Last-Event-ID", &mid.to_string())]);
    let rest = again.sse_until_finished(Some(&run_id(&r1)));
    let rest_ids: Vec<u64> = rest.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        rest_ids,
        all.iter().copied().filter(|i| *i > mid).collect::<Vec<_>>()
    );
    drop(again);
    // A run while the client is away: it resumes from its last id.
    let last = *all.last().unwrap();
    let r2 = ws.vx_daemon(&["run", "--json", "build", "--force"]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    let mut back = srv.open_stream("/events", &[("Last-Event-ID", &last.to_string())]);
    let missed = back.sse_until_finished(Some(&run_id(&r2)));
    assert_eq!(missed[0].id, Some(last + 1), "no gap: {missed:#?}");
    ids_consecutive(&missed.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>());
    check_run_events(
        &missed.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        &r2,
    );
    // `?after=0` replays what the buffer holds, from the first event.
    let mut replay = srv.open_stream("/events?after=0", &[]);
    assert_eq!(replay.next_sse().unwrap().id, Some(1));
});

fn ws_connect(
    srv: &Server,
    extra: &[(&str, &str)],
) -> tungstenite::Result<
    tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", srv.auth().parse().unwrap());
    for (k, v) in extra {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tungstenite::connect(req).map(|(s, _)| s)
}

// A WebSocket client speaks the socket protocol: hello first, then
// `run.start` streams `run.event` notifications tagged with its id, then
// the run's summary; a request before hello is refused.
vx_test!(
    a_websocket_client_starts_a_run_and_gets_its_events_and_result,
    || {
        if !daemon_mode() {
            return; // only a daemon serves HTTP
        }
        let ws = basic();
        let srv = server(&ws);
        let mut sock = ws_connect(&srv, &[]).expect("WebSocket handshake");
        let send = |s: &mut tungstenite::WebSocket<_>, v: Value| {
            s.send(tungstenite::Message::text(v.to_string())).unwrap()
        };
        let recv = |s: &mut tungstenite::WebSocket<
            tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
        >|
         -> Value {
            loop {
                match s.read().unwrap() {
                    tungstenite::Message::Text(t) => {
                        return serde_json::from_str(t.as_str()).unwrap();
                    }
                    tungstenite::Message::Close(_) => panic!("closed"),
                    _ => continue,
                }
            }
        };
        send(
            &mut sock,
            json!({"jsonrpc":"2.0","id":0,"method":"history.runs","params":{"cwd": root(&ws)}}),
        );
        let early = recv(&mut sock);
        assert_eq!(early["id"], 0);
        assert!(early["error"].is_object(), "hello comes first: {early}");
        send(
            &mut sock,
            json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":1,"client_version":"ws-test"}}),
        );
        let hello = recv(&mut sock);
        assert_eq!(hello["result"]["mode"], "daemon", "{hello}");
        send(
            &mut sock,
            json!({"jsonrpc":"2.0","id":"r1","method":"run.start","params":{"cwd": root(&ws), "tasks":["build"], "force": true}}),
        );
        let mut events = Vec::new();
        let summary = loop {
            let m = recv(&mut sock);
            if m["id"] == "r1" {
                break m;
            }
            assert_eq!(m["method"], "run.event", "{m}");
            assert_eq!(m["params"]["request"], "r1", "{m}");
            events.push(m["params"]["type"].as_str().unwrap().to_string());
        };
        assert_eq!(summary["result"]["ok"], true, "{summary}");
        assert_eq!(summary["result"]["counts"]["executed"], 2, "{summary}");
        assert_eq!(
            events.first().map(String::as_str),
            Some("run_started"),
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| *e == "task_finished").count(),
            2,
            "{events:?}"
        );
        // Queries share the connection.
        send(
            &mut sock,
            json!({"jsonrpc":"2.0","id":2,"method":"runs.active","params":{}}),
        );
        assert_eq!(recv(&mut sock)["result"]["runs"], json!([]));
        // A foreign Origin or no token is refused before the upgrade.
        assert!(ws_connect(&srv, &[("origin", "http://evil.example")]).is_err());
        let no_token = Server {
            addr: srv.addr.clone(),
            token: "0".repeat(64),
        };
        assert!(ws_connect(&no_token, &[]).is_err());
    }
);

// `POST /rpc` answers catalogue methods through the one router: graph.get,
// task.explain, a batch in order, notifications-only with 204, a streaming
// method as NDJSON when asked; and `/metrics` counts what ran.
vx_test!(post_rpc_answers_graph_get_and_task_explain, || {
    if !daemon_mode() {
        return; // only a daemon serves HTTP
    }
    let ws = basic();
    let srv = server(&ws);
    let cwd = root(&ws);
    let g = srv.rpc(&json!({"jsonrpc":"2.0","id":1,"method":"graph.get","params":{"cwd": cwd, "tasks":["build"]}}));
    let mut ids: Vec<&str> = g["result"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["app#build", "lib#build"], "{g}");
    assert!(
        g["result"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from"] == "app#build" && e["to"] == "lib#build"),
        "{g}"
    );
    let e = srv.rpc(&json!({"jsonrpc":"2.0","id":"x","method":"task.explain","params":{"cwd": cwd, "task":"app#build"}}));
    assert_eq!(e["id"], "x");
    let t = &e["result"]["tasks"][0];
    assert_eq!(t["id"], "app#build", "{e}");
    assert_eq!(t["key"].as_str().unwrap().len(), 64, "{e}");
    assert!(
        t["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "packages/app/src/main.txt"),
        "{e}"
    );
    // A batch: answered in order; the notification gets no answer.
    let b = srv.rpc(&json!([
        {"jsonrpc":"2.0","id":1,"method":"graph.get","params":{"cwd": cwd, "tasks":["test"]}},
        {"jsonrpc":"2.0","method":"$/cancel","params":{"id": 99}},
        {"jsonrpc":"2.0","id":2,"method":"no.such.method","params":{}},
        {"jsonrpc":"2.0","id":3,"method":"task.explain","params":{"cwd": cwd, "task":"lib#build"}},
    ]));
    let b = b.as_array().unwrap();
    assert_eq!(
        b.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(),
        [json!(1), json!(2), json!(3)]
    );
    assert_eq!(b[1]["error"]["code"], -32601, "{b:?}");
    let r = srv.request(
        "POST",
        "/rpc",
        &[("Authorization", &srv.auth())],
        br#"{"jsonrpc":"2.0","method":"$/cancel","params":{"id":1}}"#,
    );
    assert_eq!(r.status, 204);
    let r = srv.request(
        "POST",
        "/rpc",
        &[("Authorization", &srv.auth())],
        b"{not json",
    );
    assert_eq!(r.json()["error"]["code"], -32700);
    // Streaming as NDJSON: the run's events, then its response.
    let body = json!({"jsonrpc":"2.0","id":7,"method":"run.start","params":{"cwd": cwd, "tasks":["build"]}}).to_string();
    let r = srv.request(
        "POST",
        "/rpc",
        &[
            ("Authorization", &srv.auth()),
            ("Accept", "application/x-ndjson"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["id"], 7, "{last}");
    assert_eq!(last["result"]["ok"], true, "{last}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l["method"] == "run.event" && l["params"]["request"] == 7)
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["params"]["type"] == "task_finished")
            .count(),
        2
    );
    // Without NDJSON, only the response.
    let plain = srv.rpc(&json!({"jsonrpc":"2.0","id":8,"method":"run.start","params":{"cwd": cwd, "tasks":["build"]}}));
    assert_eq!(plain["result"]["counts"]["cached"], 2, "{plain}");
    // /metrics counts both runs' tasks.
    let m = srv.get("/metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("vx_runs_finished_total{ok=\"true\"}"), 2.0, "{text}");
    assert_eq!(
        value("vx_tasks_finished_total{status=\"success\",cache=\"miss\"}"),
        2.0,
        "{text}"
    );
    let cached: f64 = text
        .lines()
        .filter(|l| l.starts_with("vx_tasks_finished_total{status=\"cached\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(cached, 2.0, "{text}");
    assert_eq!(value("vx_cache_entries"), 2.0, "{text}");
    assert!(value("vx_daemon_rss_bytes") > 0.0, "{text}");
    assert!(
        text.contains("# TYPE vx_http_stream_subscribers gauge"),
        "{text}"
    );
});

// Without the token (or with a wrong one) every route but `GET /health`
// answers 401; with it, none does.
vx_test!(without_the_token_every_route_but_health_answers_401, || {
    if !daemon_mode() {
        return; // only a daemon serves HTTP
    }
    let ws = basic();
    let srv = server(&ws);
    let routes: &[(&str, &str)] = &[
        ("GET", "/"),
        ("GET", "/version"),
        ("POST", "/rpc"),
        ("GET", "/ws"),
        ("GET", "/events"),
        ("GET", "/stream"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ];
    let wrong = format!("Bearer {}", "f".repeat(64));
    for (m, p) in routes {
        for h in [vec![], vec![("Authorization", wrong.as_str())]] {
            let r = srv.request(m, p, &h, b"");
            assert_eq!(r.status, 401, "{m} {p} {h:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        let r = srv.request(m, &format!("{p}?token={}", "0".repeat(64)), &[], b"");
        assert_eq!(r.status, 401, "{m} {p}?token=wrong");
    }
    assert_eq!(srv.request("GET", "/health", &[], b"").status, 200);
    let ok = srv.get("/version");
    assert_eq!(ok.status, 200);
    let v = ok.json();
    assert_eq!(v["root"], root(&ws).as_str());
    assert!(
        v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "run.start" && m["scope"] == "run"),
        "{v}"
    );
    // The token in the query works where a browser cannot set headers.
    let r = srv.request("GET", &format!("/?token={}", srv.token), &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("vx insights"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
});

// A `Host` that is not this server on loopback (DNS rebinding), or an
// `Origin` other than the server's own, is refused.
vx_test!(a_bad_host_or_origin_is_refused, || {
    if !daemon_mode() {
        return; // only a daemon serves HTTP
    }
    let ws = basic();
    let srv = server(&ws);
    let port = srv.addr.rsplit(':').next().unwrap().to_string();
    let auth = srv.auth();
    for host in [
        "evil.example",
        "evil.example:80",
        &format!("attacker.test:{port}"),
        "127.0.0.1:1",
        "localhost",
    ] {
        for (m, p) in [
            ("GET", "/health"),
            ("GET", "/version"),
            ("POST", "/rpc"),
            ("GET", "/events"),
        ] {
            let r = srv.request(m, p, &[("Host", host), ("Authorization", &auth)], b"{}");
            assert_eq!(r.status, 403, "Host {host}: {m} {p}");
        }
    }
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(
            srv.request(
                "GET",
                "/version",
                &[("Host", &host), ("Authorization", &auth)],
                b""
            )
            .status,
            200,
            "{host}"
        );
    }
    let own = format!("http://127.0.0.1:{port}");
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://localhost.evil.example:{port}"),
        &format!("https://127.0.0.1:{port}"),
    ] {
        for (m, p) in [
            ("GET", "/events"),
            ("GET", "/stream"),
            ("POST", "/rpc"),
            ("GET", "/ws"),
        ] {
            let r = srv.request(m, p, &[("Origin", origin), ("Authorization", &auth)], b"{}");
            assert_eq!(r.status, 403, "Origin {origin}: {m} {p}");
        }
    }
    let body = json!({"jsonrpc":"2.0","id":1,"method":"runs.active"}).to_string();
    let r = srv.request(
        "POST",
        "/rpc",
        &[("Origin", &own), ("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "the server's own origin is fine");
});

// The discovery file is `0600` JSON beside the socket, names this daemon's
// URL, token and pid, and goes when the daemon stops; `vx daemon status`
// shows the URL; `VX_HTTP=0` starts a daemon without HTTP, and `vx ui`
// says so.
vx_test!(discovery_file_status_and_vx_http_off, || {
    if !daemon_mode() {
        return; // only a daemon serves HTTP
    }
    let ws = basic();
    let srv = server(&ws);
    let st = ws.daemon_status();
    let socket = std::path::PathBuf::from(st["socket"].as_str().unwrap());
    let file = socket.with_extension("json");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!file.starts_with(ws.root()), "never in the workspace");
    let d: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(d["url"], format!("http://{}", srv.addr));
    assert_eq!(d["token"], srv.token.as_str());
    assert_eq!(d["pid"], st["pid"]);
    assert_eq!(st["http_url"], format!("http://{}", srv.addr));
    let text = ws.vx_daemon(&["daemon", "status"]);
    assert!(
        text.stdout.contains(&format!("http://{}", srv.addr)),
        "{}",
        text.stdout
    );
    let r = ws.vx_daemon(&["daemon", "stop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!file.exists(), "the discovery file goes with the daemon");
    // Off.
    let r = ws.vx_in(
        ".",
        &["daemon", "start"],
        &[("VX_DAEMON", "1"), ("VX_HTTP", "0")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = ws.daemon_status();
    assert!(st.get("http_url").is_none(), "{st}");
    assert!(!file.exists());
    let r = ws.vx_daemon(&["ui", "--no-open"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("VX_HTTP=0"), "{}", r.stderr);
});

/// Runs `p#all --force` while sampling the daemon's RSS: (run, peak, took, after).
fn measured(ws: &vx_tests::Ws, pid: u32) -> (vx_tests::Run, u64, Duration, u64) {
    let t = Instant::now();
    let (r, peak) = vx_tests::peak_rss_while(pid, Duration::from_millis(20), || {
        ws.run(&[
            "p#all",
            "--force",
            "--output-logs=none",
            "--concurrency",
            "8",
        ])
    });
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let mut after = rss(pid);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        after = after.min(rss(pid));
    }
    (r, peak, took, after)
}

// SSE, NDJSON and WebSocket subscribers that never read a byte, attached
// during a 1,000-task run (40k output lines): the run completes with every
// task executed, and the daemon's RSS stays within a few MiB of the same
// run without them (both measured here; times are printed, not asserted).
vx_test!(
    subscribers_that_never_read_do_not_slow_or_grow_a_1000_task_run,
    || {
        if !daemon_mode() {
            return; // only a daemon serves HTTP
        }
        const TASKS: usize = 1000;
        let ws = generated(TASKS, 40);
        let srv = server(&ws);
        let pid = ws.daemon_status()["pid"].as_u64().unwrap() as u32;
        let r = ws.run(&["p#all", "--output-logs=none", "--concurrency", "8"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (base, base_peak, base_took, base_after) = measured(&ws, pid);
        assert_eq!(base.summary()["counts"]["executed"], TASKS);
        // Never read: two SSE, one NDJSON, one WebSocket subscribed to everything.
        let _sse1 = srv.send("GET", "/events", &[("Authorization", &srv.auth())], b"");
        let _sse2 = srv.send(
            "GET",
            "/events?timing=1",
            &[("Authorization", &srv.auth())],
            b"",
        );
        let _nd = srv.send("GET", "/stream", &[("Authorization", &srv.auth())], b"");
        let mut wsock = ws_connect(&srv, &[]).unwrap();
        for m in [
            json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":1,"client_version":"t"}}),
            json!({"jsonrpc":"2.0","id":2,"method":"events.subscribe","params":{}}),
        ] {
            wsock
                .send(tungstenite::Message::text(m.to_string()))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        let (with, with_peak, with_took, with_after) = measured(&ws, pid);
        assert_eq!(with.code, 0, "{}", with.stderr);
        assert_eq!(with.summary()["counts"]["executed"], TASKS);
        let mib = |b: u64| b as f64 / 1048576.0;
        eprintln!(
            "daemon RSS without HTTP subscribers: peak {:.1} MiB, after {:.1} MiB ({:.1} s); with 4 that never read: peak {:.1} MiB, after {:.1} MiB ({:.1} s)",
            mib(base_peak),
            mib(base_after),
            base_took.as_secs_f64(),
            mib(with_peak),
            mib(with_after),
            with_took.as_secs_f64()
        );
        // The replay ring (16 MiB at most) and the WebSocket's queue (bounded
        // by the bus at 2 MiB) are the only new holders.
        assert!(
            with_after < base_after + (24 << 20),
            "after: {with_after} vs {base_after}"
        );
        assert!(
            with_peak < base_peak + (32 << 20),
            "peak: {with_peak} vs {base_peak}"
        );
        // The daemon still answers over HTTP.
        assert_eq!(srv.get("/metrics").status, 200);
    }
);
