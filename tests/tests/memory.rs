//! Bounded memory: a client that never reads its run's events neither stalls
//! the run nor grows the engine; huge concurrency values are refused; the
//! stdio engine never outlives its client.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vx_tests::{Ws, daemon_mode, processes_in, rss, vx_test, vxd_bin};

/// Lines the noisy task prints (about 5 MB of output; as events, far more).
const LINES: usize = 200_000;

fn noisy() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/p/vx.toml",
            &format!(
                r#"[tasks.gen]
command = "seq 1 {LINES} | sed 's/$/ lorem ipsum dolor/' && mkdir -p out && echo ok > out/done"
inputs = ["src/**"]
outputs = ["out/**"]

[tasks.slow]
command = "touch started && sleep 60"
inputs = ["src/**"]
"#
            ),
        ),
        ("packages/p/src/a.txt", "a\n"),
    ])
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn line(v: Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v).unwrap();
    b.push(b'\n');
    b
}

fn hello(id: i64) -> Vec<u8> {
    line(
        json!({"jsonrpc":"2.0","id":id,"method":"daemon.hello","params":{"protocol":1,"client_version":"test"}}),
    )
}

fn run_start(ws: &Ws, id: i64, task: &str, extra: Value) -> Vec<u8> {
    let mut params = json!({
        "cwd": ws.path("packages/p"),
        "tasks": [task],
        "env": {"PATH": std::env::var("PATH").unwrap()},
    });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    line(json!({"jsonrpc":"2.0","id":id,"method":"run.start","params":params}))
}

const BOUND: u64 = 64 << 20;

// A raw client sends `run.start` for a task printing 200k lines and never
// reads a byte. The run still finishes and is cached, the engine keeps
// answering other clients, and its memory stays within baseline + 64 MiB
// (before the bounded outbox it grew by hundreds of MB and kept them).
vx_test!(
    a_client_that_never_reads_neither_stalls_the_run_nor_grows_memory,
    || {
        let ws = noisy();
        if daemon_mode() {
            let r = ws.vx_daemon(&["daemon", "start"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let st = ws.daemon_status();
            let pid = st["pid"].as_u64().unwrap() as u32;
            let socket = st["socket"].as_str().unwrap().to_string();
            // Warm up like a real first request would.
            let r = ws.vx_daemon(&["cache", "stats", "--json"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let baseline = rss(pid);
            let mut s = UnixStream::connect(&socket).unwrap();
            s.write_all(&hello(1)).unwrap();
            s.write_all(&run_start(&ws, 2, "gen", json!({}))).unwrap();
            // Never read `s`. The run still finishes and saves its entry.
            let mut peak = 0;
            wait_until("the unread run to finish", Duration::from_secs(120), || {
                peak = peak.max(rss(pid));
                ws.exists("packages/p/out/done") && {
                    let r = ws.vx_daemon(&["cache", "stats", "--json"]);
                    serde_json::from_str::<Value>(&r.stdout)
                        .is_ok_and(|v| v["entries"].as_u64().unwrap_or(0) >= 1)
                }
            });
            peak = peak.max(rss(pid));
            assert!(
                peak < baseline + BOUND,
                "daemon RSS grew from {baseline} to {peak} bytes for an unread run"
            );
            // Another client is served, and the result is a hit.
            let st = ws.daemon_status();
            assert_eq!(st["pid"].as_u64().unwrap() as u32, pid);
            let r = ws.vx_daemon(&["run", "--json", "--output-logs=none", "p#gen"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_eq!(r.cached(), vec!["p#gen"]);
            // Once it reads, the client gets what was kept: a notice counting the
            // dropped lines, then the response.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut reader = BufReader::new(s);
            let (mut dropped, mut shown) = (0u64, 0u64);
            loop {
                let mut l = String::new();
                reader.read_line(&mut l).unwrap();
                let v: Value = serde_json::from_str(&l).unwrap();
                match v["params"]["type"].as_str() {
                    Some("events_dropped") => dropped += v["params"]["count"].as_u64().unwrap(),
                    Some("task_output") => shown += 1,
                    _ => {}
                }
                if v["id"] == 2 {
                    assert_eq!(v["result"]["ok"], true, "{v}");
                    break;
                }
            }
            assert!(dropped > 0, "no events_dropped notice");
            assert_eq!(
                dropped + shown,
                LINES as u64,
                "every line is sent or counted"
            );
            // Memory is given back once the run is over and its queue drained.
            std::thread::sleep(Duration::from_millis(500));
            let after = rss(pid);
            assert!(
                after < baseline + BOUND / 2,
                "the daemon kept {after} bytes after the run (baseline {baseline})"
            );
        } else {
            let mut child = Command::new(vxd_bin())
                .arg("--stdio")
                .current_dir(ws.root())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            let mut stdin = child.stdin.take().unwrap();
            let mut stdout = child.stdout.take().unwrap();
            stdin.write_all(&hello(1)).unwrap();
            let mut first = [0u8; 1];
            stdout.read_exact(&mut first).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let baseline = rss(pid);
            stdin
                .write_all(&run_start(&ws, 2, "gen", json!({})))
                .unwrap();
            let mut peak = 0;
            wait_until("the unread run to finish", Duration::from_secs(120), || {
                peak = peak.max(rss(pid));
                ws.exists("packages/p/out/done")
            });
            // Give it time to save and queue the rest.
            for _ in 0..20 {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                peak < baseline + BOUND,
                "vxd --stdio RSS grew from {baseline} to {peak} bytes for an unread run"
            );
            drop(stdin);
            drop(stdout);
            let _ = child.wait();
            let r = ws.run(&["--output-logs=none", "p#gen"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_eq!(r.cached(), vec!["p#gen"]);
        }
    }
);

// `--concurrency 4294967295` used to allocate 16 GiB; now any caller is
// refused with a clear error (the flag, a raw request, the config).
vx_test!(huge_concurrency_is_refused_with_a_clear_error, || {
    let ws = noisy();
    let r = ws.vx(&["run", "p#gen", "--concurrency", "4294967295"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("concurrency 4294967295 is too large")
            && r.stderr.contains("at most 1024"),
        "{}",
        r.stderr
    );
    assert!(!ws.exists("packages/p/out/done"), "nothing ran");
    // A raw caller gets the same refusal (stdio engine).
    let mut child = Command::new(vxd_bin())
        .arg("--stdio")
        .current_dir(ws.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(&hello(1)).unwrap();
    stdin
        .write_all(&run_start(
            &ws,
            2,
            "gen",
            json!({"concurrency": 4_294_967_295u64}),
        ))
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        got.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    assert_eq!(got[1]["id"], 2);
    assert_eq!(got[1]["error"]["code"], -32008, "{}", got[1]);
    drop(stdin);
    let _ = child.wait();
    // A config value is refused the same way.
    ws.write(
        "vx.toml",
        "[workspace]\nmembers = [\"packages/*\"]\nconcurrency = 100000\n",
    );
    let r = ws.vx(&["run", "p#gen"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("too large"), "{}", r.stderr);
    assert!(!ws.exists("packages/p/out/done"), "nothing ran");
});

fn stdio_engines_in(ws: &Ws) -> Vec<String> {
    processes_in(ws.root())
        .into_iter()
        .filter(|p| p.contains("--stdio") || p.contains("sleep"))
        .collect()
}

// A foreground run beside a live daemon shares its cache and runs at once;
// killing its client (`kill -9`) takes `vxd --stdio` along (stdin EOF,
// PR_SET_PDEATHSIG), task and all. (It once waited for the daemon's cache
// lock, up to 600 s, and outlived its client there.)
vx_test!(
    a_killed_client_takes_its_stdio_engine_along_beside_a_daemon,
    || {
        let ws = noisy();
        // A daemon holds the store.
        let r = ws.vx_daemon(&["run", "--json", "--output-logs=none", "p#gen"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut client = ws
            .cmd("packages/p", &["--no-daemon", "run", "slow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            "the foreground engine to start its task beside the daemon",
            Duration::from_secs(30),
            || ws.exists("packages/p/started"),
        );
        assert!(!stdio_engines_in(&ws).is_empty());
        // SAFETY: killing the client we spawned.
        unsafe { libc::kill(client.id() as i32, libc::SIGKILL) };
        let _ = client.wait();
        wait_until(
            "vxd --stdio and its task to exit after its client was killed",
            Duration::from_secs(8),
            || stdio_engines_in(&ws).is_empty(),
        );
    }
);

vx_test!(sigterm_ends_the_stdio_engine_promptly, || {
    let ws = noisy();
    for waiting_on_lock in [false, true] {
        if waiting_on_lock {
            let r = ws.vx_daemon(&["run", "--json", "--output-logs=none", "p#gen"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
        let _ = std::fs::remove_file(ws.path("packages/p/started"));
        let mut child = Command::new(vxd_bin())
            .arg("--stdio")
            .current_dir(ws.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        // Drain its output so only the signal decides.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut BufReader::new(out), &mut std::io::sink());
        });
        stdin.write_all(&hello(1)).unwrap();
        stdin
            .write_all(&run_start(&ws, 2, "slow", json!({"force": true})))
            .unwrap();
        if waiting_on_lock {
            std::thread::sleep(Duration::from_millis(1500));
        } else {
            wait_until("the task to start", Duration::from_secs(30), || {
                ws.exists("packages/p/started")
            });
        }
        let t = Instant::now();
        // SAFETY: signalling the engine we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        // stdin stays open: the signal alone must end it.
        let mut status = None;
        while t.elapsed() < Duration::from_secs(8) {
            if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        if status.is_none() {
            panic!("vxd --stdio ignored SIGTERM (waiting on the lock: {waiting_on_lock})");
        }
        wait_until("its task to be gone", Duration::from_secs(5), || {
            stdio_engines_in(&ws).is_empty()
        });
        drop(stdin);
    }
});
