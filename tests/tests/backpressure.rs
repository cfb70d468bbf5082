//! Backpressure on the event bus: a subscriber that never reads neither
//! slows nor stalls a run nor grows the daemon; it gets one `resync` and
//! its subscription ends.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vx_tests::{Ws, daemon_mode, rss, vx_test};

/// Tasks in the generated workspace, and lines each prints.
const TASKS: usize = 3000;
const LINES: usize = 40;
/// How much more than after the same run without the subscriber the daemon
/// may hold once the run is over and the subscriber still has not read (its
/// queue is bounded at 2 MiB, `bus::SUBSCRIBER_LIMIT`; unbounded, it would
/// hold the ~25 MB of the run's events).
const SLACK: u64 = 6 << 20;
/// The same for the peak during the run, which also moves with how fast the
/// run's own client reads (its output lines may queue up to 8 MiB).
const PEAK_SLACK: u64 = 12 << 20;

/// One project with `TASKS` tasks printing `LINES` lines each, and a group
/// task `all` over them.
fn generated() -> Ws {
    let mut toml = String::new();
    let mut all = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let name = format!("t{i:04}");
        toml.push_str(&format!(
            "[tasks.{name}]\ncommand = \"for n in $(seq 1 {LINES}); do echo {name} line $n lorem ipsum dolor sit amet consectetur adipiscing; done\"\ninputs = [\"src/**\"]\noutputs = []\n\n"
        ));
        all.push(format!("\"{name}\""));
    }
    toml.push_str(&format!("[tasks.all]\ndepends_on = [{}]\n", all.join(", ")));
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        ("packages/p/vx.toml", &toml),
        ("packages/p/src/a.txt", "a\n"),
    ])
}

/// Runs `vx run p#all --force --json` while sampling the daemon's RSS;
/// returns the run, the peak, the time it took and the RSS once it is over
/// (after the daemon gave freed memory back: the lowest over 3 s).
fn measured_run(ws: &Ws, pid: u32) -> (vx_tests::Run, u64, Duration, u64) {
    let t = Instant::now();
    let (r, peak) = vx_tests::peak_rss_while(pid, Duration::from_millis(10), || {
        ws.run(&["p#all", "--force", "--concurrency", "8"])
    });
    let took = t.elapsed();
    // What it keeps: the lowest figure over the next 3 s (giving memory
    // back happens on a blocking thread once the run is over, later on a
    // loaded machine; what stays above it is what the daemon holds).
    let mut after = u64::MAX;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        after = after.min(rss(pid));
    }
    (r, peak, took, after)
}

fn line(v: Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v).unwrap();
    b.push(b'\n');
    b
}

fn check(r: &vx_tests::Run) {
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = &r.summary()["counts"];
    assert_eq!(c["executed"], TASKS, "{c}");
    assert_eq!(c["failed"], 0, "{c}");
    // Every line reaches the run's own client, or is counted in an
    // `events_dropped` notice when that client itself reads too slowly (its
    // own bounded outbox, under a loaded machine): never silently lost.
    let outputs = r
        .events
        .iter()
        .filter(|e| e["type"] == "task_output")
        .count();
    let dropped: u64 = r
        .events
        .iter()
        .filter(|e| e["type"] == "events_dropped")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert_eq!(
        outputs as u64 + dropped,
        (TASKS * LINES) as u64,
        "the run's own client got every line or its count ({outputs} delivered, {dropped} dropped)"
    );
}

// A client connects, subscribes to every event and never reads while a
// 3,000-task run streams (120k output lines). The run finishes with the
// right result; once it is over the daemon holds at most a few MiB more
// than after the same run without the subscriber, and its peak stays
// within its usual figure plus the run client's own queue (all measured in
// the same test). Reading
// afterwards, the subscriber finds one `events.resync` and its
// subscription ended with `resync`. Only a daemon serves several clients:
// the stdio engine's unread-client bound is `memory.rs`'s test.
vx_test!(
    a_subscriber_that_never_reads_does_not_slow_or_grow_the_daemon,
    || {
        if !daemon_mode() {
            return;
        }
        let ws = generated();
        let r = ws.vx_daemon(&["daemon", "start"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let st = ws.daemon_status();
        let pid = st["pid"].as_u64().unwrap() as u32;
        let socket = st["socket"].as_str().unwrap().to_string();
        // Warm up: the first run loads and caches everything.
        let r = ws.run(&["p#all", "--output-logs=none", "--concurrency", "8"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // The usual figure: the larger peak of two runs without the subscriber
        // (a daemon's peak creeps up over its first few runs).
        let (base, first_peak, _, first_after) = measured_run(&ws, pid);
        check(&base);
        let (base, base_peak, base_took, base_after) = measured_run(&ws, pid);
        check(&base);
        let base_peak = base_peak.max(first_peak);
        let base_after = base_after.max(first_after);
        // The subscriber: hello, subscribe, then never a byte read.
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(&line(json!({"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":1,"client_version":"test"}})))
        .unwrap();
        s.write_all(&line(
            json!({"jsonrpc":"2.0","id":2,"method":"events.subscribe","params":{}}),
        ))
        .unwrap();
        // Let the subscription be in place before the run starts.
        std::thread::sleep(Duration::from_millis(300));
        let (with, with_peak, with_took, with_after) = measured_run(&ws, pid);
        check(&with);
        let mib = |b: u64| b as f64 / 1048576.0;
        eprintln!(
            "daemon RSS without the subscriber: peak {:.1} MiB, after {:.1} MiB ({:.1} s); with it: peak {:.1} MiB, after {:.1} MiB ({:.1} s)",
            mib(base_peak),
            mib(base_after),
            base_took.as_secs_f64(),
            mib(with_peak),
            mib(with_after),
            with_took.as_secs_f64()
        );
        assert!(
            with_after < base_after + SLACK,
            "a subscriber that never reads kept the daemon large: {with_after} bytes after the run vs {base_after} without it"
        );
        assert!(
            with_peak < base_peak + PEAK_SLACK,
            "a subscriber that never reads grew the daemon: peak {with_peak} bytes vs {base_peak} without it"
        );
        // The daemon still answers, and shows no run in progress.
        let active = ws.vx(&["ps", "--json"]);
        assert_eq!(active.code, 0, "{}", active.stderr);
        assert!(active.stdout.contains("\"runs\": []"), "{}", active.stdout);
        // Now read what the subscriber was sent: one resync, then the end.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(s);
        let (mut resyncs, mut events, mut ended) = (0, 0, None);
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).unwrap() == 0 {
                break;
            }
            let v: Value = serde_json::from_str(&l).unwrap();
            match v["method"].as_str() {
                Some("events.resync") => resyncs += 1,
                Some("events.event") => {
                    assert_eq!(resyncs, 0, "no event after the resync");
                    events += 1;
                }
                _ => {}
            }
            if v["id"] == 2 {
                ended = Some(v["result"]["ended"].clone());
                break;
            }
        }
        assert_eq!(resyncs, 1);
        assert!(events > 0 && events < TASKS * LINES, "{events}");
        assert_eq!(ended, Some(json!("resync")));
    }
);
