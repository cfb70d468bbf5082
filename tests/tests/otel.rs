//! OpenTelemetry export through the real binaries to a real OTLP receiver
//! (`tests/otel/otlp_receiver.py`, PyPI `opentelemetry-proto` + `grpcio`):
//! a run's trace (run span, task spans under it, CI/CD attributes) and
//! metrics arrive over HTTP/protobuf and over gRPC; the `TRACEPARENT` a
//! task's process saw is its span; a dead or hanging collector leaves the
//! run green.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vx_tests::{Ws, peers, vx_test};

/// The receiver, its ports, and what it printed.
struct Receiver {
    child: Child,
    grpc: u16,
    http: u16,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(test: &str, blackhole: bool) -> Option<Receiver> {
        let Some(py) = peers::python() else {
            peers::skip(test, "the Python venv (opentelemetry-proto, grpcio)");
            return None;
        };
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("otel/otlp_receiver.py");
        let mut cmd = Command::new(py);
        cmd.arg(script);
        if blackhole {
            cmd.arg("--blackhole");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the receiver");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("read READY");
        let ports: Vec<u16> = first
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the receiver did not start: {first:?}"))
            .split_whitespace()
            .map(|p| p.parse().expect("port"))
            .collect();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    g.lock().unwrap().push(v);
                }
            }
        });
        Some(Receiver {
            child,
            grpc: ports[0],
            http: ports[1],
            got,
        })
    }

    /// The spans received so far.
    fn spans(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["signal"] == "traces")
            .flat_map(|r| r["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn metrics(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["signal"] == "metrics")
            .flat_map(|r| r["metrics"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (bounded) until the run span of `run_id` and a metrics export
    /// arrived.
    fn wait_run(&self, run_id: &str) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let spans = self.spans();
            let done = spans
                .iter()
                .any(|s| s["attributes"]["cicd.pipeline.run.id"] == run_id);
            let metrics = self.metrics().iter().any(|m| {
                m["name"] == "cicd.pipeline.run.duration"
                    && m["points"].as_array().is_some_and(|p| !p.is_empty())
            });
            if done && metrics {
                return spans;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the receiver did not get run {run_id}: {:#?}",
                self.got.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two projects; `lib#build` writes the `TRACEPARENT` it saw.
fn workspace() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/lib/vx.toml",
            r#"[tasks.build]
command = "python3 -c \"import os; open('tp.txt','w').write(os.environ.get('TRACEPARENT','-'))\" && echo built"
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/lib/src/a.txt", "a\n"),
        (
            "packages/app/vx.toml",
            r#"[project]
deps = ["lib"]

[tasks.build]
command = "echo app"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/app/src/b.txt", "b\n"),
    ])
}

fn attr<'a>(s: &'a Value, k: &str) -> &'a Value {
    &s["attributes"][k]
}

fn check_trace(ws: &Ws, rx: &Receiver, env: &[(&str, &str)], transport: &str) {
    let r = ws.run_env(&["build"], env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let run_id = r.summary()["run_id"].as_str().expect("run id").to_string();
    let spans = rx.wait_run(&run_id);
    let run = spans
        .iter()
        .find(|s| attr(s, "cicd.pipeline.run.id") == run_id.as_str())
        .expect("run span");
    assert!(
        run["name"].as_str().is_some_and(|n| n.starts_with("RUN ")),
        "{run}"
    );
    assert_eq!(attr(run, "cicd.pipeline.result"), "success", "{run}");
    assert!(
        attr(run, "cicd.pipeline.name")
            .as_str()
            .is_some_and(|n| n.contains("run") && n.contains("build")),
        "{run}"
    );
    assert_eq!(run["parent_span_id"], "", "a root span: {run}");
    assert_eq!(run["resource"]["service.name"], "vx-e2e", "{run}");
    let trace = run["trace_id"].as_str().expect("trace id");
    let tasks: Vec<&Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == trace && s["span_id"] != run["span_id"])
        .collect();
    let names: std::collections::BTreeSet<&str> =
        tasks.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        ["app#build", "lib#build"].into_iter().collect(),
        "{tasks:#?}"
    );
    for t in &tasks {
        assert_eq!(
            t["parent_span_id"], run["span_id"],
            "a child of the run: {t}"
        );
        let id = t["name"].as_str().unwrap_or_default();
        assert_eq!(attr(t, "cicd.pipeline.task.name"), id);
        assert_eq!(attr(t, "cicd.pipeline.task.run.result"), "success");
        assert_eq!(attr(t, "vx.task.cache.status"), "miss", "{t}");
        assert_eq!(attr(t, "vx.task.key"), &r.task(id)["key"], "{t}");
        assert_eq!(attr(t, "vx.project"), &r.task(id)["project"]);
        assert!(t["start"].as_u64() >= run["start"].as_u64(), "{t} in {run}");
    }
    // The task's process saw its own span.
    let lib = tasks
        .iter()
        .find(|s| s["name"] == "lib#build")
        .expect("lib span");
    assert_eq!(
        ws.read("packages/lib/tp.txt"),
        format!(
            "00-{trace}-{}-01",
            lib["span_id"].as_str().unwrap_or_default()
        ),
        "over {transport}"
    );
    assert!(
        rx.got
            .lock()
            .unwrap()
            .iter()
            .all(|r| r["transport"] == transport),
        "sent over {transport} only"
    );
    // Metrics: the run's duration and its task counts by cache status.
    let m = rx.metrics();
    let count = m
        .iter()
        .find(|m| m["name"] == "vx.task.count")
        .expect("vx.task.count");
    assert!(
        count["points"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["attributes"]["vx.task.cache.status"] == "miss" && p["value"] == 2),
        "{count}"
    );

    // Again: both hit the cache (TRACEPARENT is not part of the key), and
    // their spans say so.
    let r2 = ws.run_env(&["build"], env);
    assert_eq!(r2.cached(), vec!["app#build", "lib#build"], "{}", r2.stderr);
    let run2 = r2.summary()["run_id"].as_str().expect("run id").to_string();
    let spans = rx.wait_run(&run2);
    let run = spans
        .iter()
        .find(|s| attr(s, "cicd.pipeline.run.id") == run2.as_str())
        .expect("run span");
    let hits: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == run["span_id"])
        .collect();
    assert_eq!(hits.len(), 2, "{hits:#?}");
    assert!(
        hits.iter().all(|s| ["local", "up-to-date"]
            .contains(&attr(s, "vx.task.cache.status").as_str().unwrap_or_default())),
        "{hits:#?}"
    );
}

// The spans of a run reach a real receiver over HTTP/protobuf, with the
// CI/CD attributes and structure, and the task saw its span's context.
vx_test!(a_run_is_a_trace_over_http, || {
    let Some(rx) = Receiver::start("a_run_is_a_trace_over_http", false) else {
        return;
    };
    let ws = workspace();
    let url = format!("http://127.0.0.1:{}", rx.http);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "vx-e2e"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=builds"),
    ];
    check_trace(&ws, &rx, &env, "http");
    let got = rx.got.lock().unwrap();
    assert!(
        got.iter().all(|r| r["headers"]["x-team"] == "builds"),
        "the headers are sent"
    );
});

// The same over gRPC.
vx_test!(a_run_is_a_trace_over_grpc, || {
    let Some(rx) = Receiver::start("a_run_is_a_trace_over_grpc", false) else {
        return;
    };
    let ws = workspace();
    if ws.mode == vx_tests::Mode::Daemon {
        // A daemon started without any OTEL_* variable: each run's own
        // environment turns export on.
        let r = ws.vx(&["daemon", "start"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let url = format!("http://127.0.0.1:{}", rx.grpc);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "vx-e2e"),
    ];
    check_trace(&ws, &rx, &env, "grpc");
});

// Without an endpoint (or with OTEL_SDK_DISABLED) nothing is traced: the
// task gets no TRACEPARENT.
vx_test!(no_endpoint_no_trace_context, || {
    let ws = workspace();
    for env in [
        vec![],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    ] {
        let _ = std::fs::remove_file(ws.path("packages/lib/tp.txt"));
        let r = ws.run_env(&["build", "--force"], &env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(ws.read("packages/lib/tp.txt"), "-", "{env:?}");
    }
});

// A collector that is down (nothing listens) or hangs (accepts, never
// answers) leaves every run green; the run completes.
vx_test!(a_dead_or_hanging_collector_never_fails_a_run, || {
    let Some(hang) = Receiver::start("a_dead_or_hanging_collector_never_fails_a_run", true) else {
        return;
    };
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cases = [
        (format!("http://127.0.0.1:{dead}"), "http/protobuf"),
        (format!("http://127.0.0.1:{dead}"), "grpc"),
        (format!("http://127.0.0.1:{}", hang.http), "http/protobuf"),
    ];
    for (url, proto) in &cases {
        let ws = workspace();
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", *proto),
        ];
        for _ in 0..2 {
            let r = ws.run_env(&["build"], &env);
            assert_eq!(r.code, 0, "{url} {proto}: {}", r.stderr);
            assert_eq!(r.summary()["ok"], true);
        }
    }
});

/// The run span whose `cicd.pipeline.run.id` is not in `seen`, once it
/// arrived (bounded), and every span of its trace.
fn wait_new_run(rx: &Receiver, seen: &[String]) -> (Value, Vec<Value>) {
    let t = Instant::now();
    loop {
        let spans = rx.spans();
        if let Some(run) = spans.iter().find(|s| {
            s["attributes"]["cicd.pipeline.run.id"]
                .as_str()
                .is_some_and(|id| !seen.iter().any(|x| x == id))
        }) {
            let trace = run["trace_id"].clone();
            let all = spans
                .iter()
                .filter(|s| s["trace_id"] == trace)
                .cloned()
                .collect();
            return (run.clone(), all);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no new run span: {:#?}",
            rx.got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// A plain `vx run` (the terminal view: changes only) still puts every
// task on the bus: the exporter gets a span for each cache hit, though
// the client was shown none of them.
vx_test!(every_cache_hit_of_a_plain_run_is_a_span, || {
    let Some(rx) = Receiver::start("every_cache_hit_of_a_plain_run_is_a_span", false) else {
        return;
    };
    let ws = workspace();
    let url = format!("http://127.0.0.1:{}", rx.http);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_SERVICE_NAME", "vx-e2e"),
    ];
    let mut seen = Vec::new();
    for round in 0..2 {
        let r = ws.vx_in(".", &["run", "build"], &env);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let (run, spans) = wait_new_run(&rx, &seen);
        seen.push(
            attr(&run, "cicd.pipeline.run.id")
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let tasks: Vec<&Value> = spans
            .iter()
            .filter(|s| s["parent_span_id"] == run["span_id"])
            .collect();
        let names: std::collections::BTreeSet<&str> =
            tasks.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(
            names,
            ["app#build", "lib#build"].into_iter().collect(),
            "round {round}: {tasks:#?}"
        );
        let want: &[&str] = if round == 0 {
            &["miss"]
        } else {
            &["local", "up-to-date"]
        };
        for t in &tasks {
            let status = attr(t, "vx.task.cache.status").as_str().unwrap_or_default();
            assert!(want.contains(&status), "round {round}: {t:#}");
        }
        if round == 1 {
            assert_eq!(attr(&run, "vx.run.cached"), 2, "{run:#}");
        }
    }
});

// An executed task's CPU time and peak RSS (its process tree, sampled)
// are on its finished event (`--json`) and on its span, and they are
// plausible: a task that holds 64 MiB and burns CPU reports more than
// 32 MiB and some CPU time; a hit reports neither.
vx_test!(a_tasks_cpu_and_peak_rss_are_on_its_span, || {
    let Some(rx) = Receiver::start("a_tasks_cpu_and_peak_rss_are_on_its_span", false) else {
        return;
    };
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/hog/vx.toml",
            r#"[tasks.build]
command = "python3 -c \"b = b'x' * (64 << 20); s = sum(i * i for i in range(3000000)); print(len(b), s % 7)\""
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/hog/src/a.txt", "a\n"),
    ]);
    let url = format!("http://127.0.0.1:{}", rx.http);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_SERVICE_NAME", "vx-e2e"),
    ];
    let r = ws.run_env(&["build"], &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let t = r.task("hog#build");
    let cpu = t["cpu_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("cpu_ms: {t}"));
    let rss = t["peak_rss_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("peak_rss_bytes: {t}"));
    assert!(cpu > 0, "{t}");
    assert!(rss > 32 << 20, "holds 64 MiB: {t}");
    let run_id = r.summary()["run_id"].as_str().expect("run id").to_string();
    let spans = rx.wait_run(&run_id);
    let span = spans
        .iter()
        .find(|s| s["name"] == "hog#build")
        .expect("the task's span");
    assert_eq!(attr(span, "vx.task.cpu_ms"), cpu, "{span:#}");
    assert_eq!(attr(span, "vx.task.peak_rss_bytes"), rss, "{span:#}");
    // A hit ran nothing: no measurements.
    let r = ws.run_env(&["build"], &env);
    assert_eq!(r.cached(), ["hog#build"], "{}", r.stdout);
    assert!(r.task("hog#build").get("cpu_ms").is_none(), "{}", r.stdout);
});
