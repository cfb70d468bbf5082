//! Stress: the daemon must never hang. Several concurrent `vx run --force`
//! clients while output directories are deleted underneath them and sources
//! are edited, for a bounded number of iterations; then `vx daemon status`
//! must answer within a deadline. Every child runs under a watchdog that
//! kills it on expiry, so a deadlock fails the test instead of hanging CI.
//!
//! This is a daemon test: it drives the daemon in both suite modes. (The
//! no-daemon variant would only exercise the store lock, covered elsewhere.)

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vx_tests::Ws;

/// How long one child may take before it counts as hung.
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

/// Waits for `child` at most `deadline`; kills it on expiry. `Some(code)`
/// when it exited in time, `None` when it had to be killed.
fn wait_or_kill(mut child: Child, deadline: Duration) -> Option<std::process::Output> {
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if t.elapsed() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn workspace() -> Ws {
    let mut files: Vec<(String, String)> = vec![(
        "vx.toml".into(),
        "[workspace]\nmembers = [\"packages/*\"]\n".into(),
    )];
    for p in ["a", "b", "c"] {
        files.push((
            format!("packages/{p}/vx.toml"),
            // Nested output dirs: each is watched before the outputs are
            // checked, and removing them drops those watches.
            format!(
                "[tasks.build]\ncommand = \"mkdir -p dist/x/y dist/z {many} && cat src/*.txt > dist/x/y/o.txt && echo z > dist/z/z.txt\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
                many = (0..24)
                    .map(|i| format!("dist/m/d{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
        files.push((format!("packages/{p}/src/s.txt"), format!("{p}\n")));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Ws::new(&refs)
}

#[test]
fn concurrent_forced_runs_with_outputs_deleted_never_hang_the_daemon() {
    let ws = Arc::new(workspace());
    let first = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let pid = ws.daemon_status()["pid"].as_i64();
    assert!(pid.is_some(), "no daemon started");

    let stop = Arc::new(AtomicBool::new(false));
    // The vandal: deletes output directories (whole `dist/` and the nested
    // ones) and edits sources while the runs go on.
    let vandal = {
        let (ws, stop) = (ws.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                let p = ["a", "b", "c"][(i % 3) as usize];
                let target = match i % 5 {
                    0 => format!("packages/{p}/dist"),
                    1 => format!("packages/{p}/dist/x"),
                    2 => format!("packages/{p}/dist/x/y"),
                    3 => format!("packages/{p}/dist/m"),
                    _ => format!("packages/{p}/dist/z"),
                };
                let _ = std::fs::remove_dir_all(ws.path(&target));
                if i.is_multiple_of(7) {
                    let _ = std::fs::write(
                        ws.path(&format!("packages/{p}/src/s.txt")),
                        format!("{p} {i}\n"),
                    );
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    const CLIENTS: usize = 4;
    const RUNS_PER_CLIENT: usize = 6;
    // Bounded by the iteration count; on a slow machine no new run starts
    // after this budget, so the test stays well within CI's time.
    const BUDGET: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let ws = ws.clone();
            std::thread::spawn(move || {
                let mut hung = 0;
                for i in 0..RUNS_PER_CLIENT {
                    if started.elapsed() > BUDGET {
                        break;
                    }
                    // Forced runs execute and rewrite outputs; plain runs
                    // check outputs on disk (watching their directories)
                    // while the vandal removes them.
                    let args: &[&str] = if i % 2 == 0 {
                        &["run", "--force", "--json", "build"]
                    } else {
                        &["run", "--json", "build"]
                    };
                    let child = ws
                        .cmd(".", args)
                        .env("VX_DAEMON", "1")
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("spawn vx");
                    // A run may fail (its outputs vanished under it); it
                    // must not hang.
                    if wait_or_kill(child, CHILD_DEADLINE).is_none() {
                        hung += 1;
                        break;
                    }
                }
                hung
            })
        })
        .collect();
    let hung: usize = clients.into_iter().map(|c| c.join().unwrap_or(1)).sum();
    stop.store(true, Ordering::Relaxed);
    let _ = vandal.join();

    let status = ws
        .cmd(".", &["daemon", "status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vx daemon status");
    let out = wait_or_kill(status, Duration::from_secs(10));
    let Some(out) = out else {
        // Leave nothing behind: the wedged daemon would outlive the test.
        if let Some(pid) = pid {
            // SAFETY: plain kill of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        panic!("`vx daemon status` did not answer within 10 s: the daemon is wedged");
    };
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["pid"].as_i64(), pid, "the daemon was replaced: {st}");
    assert_eq!(hung, 0, "{hung} client(s) hung");
    // And it still serves runs.
    let last = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(last.code, 0, "{}{}", last.stdout, last.stderr);
}
