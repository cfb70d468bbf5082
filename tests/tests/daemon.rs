//! The long-lived daemon: lifecycle, staleness, concurrency, crashes.

use std::process::Stdio;
use std::time::{Duration, Instant};
use vx_tests::{Ws, basic, vxd_bin};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn repeat_runs_are_served_by_one_daemon_and_see_edits() {
    let ws = basic();
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = ws.daemon_status();
    assert_eq!(st["running"], true);
    let pid = st["pid"].as_i64().unwrap();
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert!(r.executed().is_empty());
    // an edit made right before the run is seen (cookie barrier)
    ws.write("packages/lib/src/a.txt", "edited\n");
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(r.executed(), vec!["app#build", "lib#build"]);
    let st = ws.daemon_status();
    assert_eq!(st["pid"].as_i64().unwrap(), pid, "the daemon was replaced");
    assert!(st["runs_served"].as_u64().unwrap() >= 3);
    assert_eq!(st["projects"], 2);
    assert!(st["watches"].as_u64().unwrap() > 0);
    assert!(ws.read(".vx/daemon.log").contains("serving"));
    let r = ws.vx(&["daemon", "stop"]);
    assert_eq!(r.code, 0);
    wait_until("the daemon to exit", || !alive(pid as i32));
    assert_eq!(ws.daemon_status()["running"], false);
}

#[test]
fn racing_clients_start_exactly_one_daemon() {
    let ws = basic();
    let children: Vec<_> = (0..8)
        .map(|_| {
            ws.cmd(".", &["daemon", "start"])
                .env("VX_DAEMON", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        let pid = s
            .split("pid ")
            .nth(1)
            .unwrap()
            .trim_end_matches([')', '\n'])
            .to_string();
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 1, "several daemons: {pids:?}");
}

#[test]
fn a_daemon_of_another_version_is_replaced() {
    let ws = basic();
    // Start a daemon that claims to be another version.
    let mut old = std::process::Command::new(vxd_bin())
        .args(["--daemon", "--root"])
        .arg(ws.root())
        .env("XDG_RUNTIME_DIR", ws.runtime.path())
        .env("VX_DAEMON_VERSION_OVERRIDE", "0.0.0-old")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the old daemon", || ws.daemon_status()["running"] == true);
    assert_eq!(ws.daemon_status()["version"], "0.0.0-old");
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        old.wait().unwrap().success(),
        "the old daemon did not exit cleanly"
    );
    let st = ws.daemon_status();
    assert_eq!(st["running"], true);
    assert_ne!(st["version"], "0.0.0-old");
}

#[test]
fn a_stale_socket_is_recovered() {
    let ws = basic();
    assert_eq!(ws.vx_daemon(&["run", "--json", "build"]).code, 0);
    let st = ws.daemon_status();
    let pid = st["pid"].as_i64().unwrap() as i32;
    let socket = st["socket"].as_str().unwrap().to_string();
    // SAFETY: killing the test's own daemon.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("the daemon to die", || !alive(pid));
    assert!(
        std::path::Path::new(&socket).exists(),
        "the socket file should be left behind"
    );
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.executed().is_empty());
    let st = ws.daemon_status();
    assert_ne!(st["pid"].as_i64().unwrap() as i32, pid);
}

#[test]
fn kill_9_of_the_daemon_mid_run_leaves_no_orphans_and_no_corrupt_entry() {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\", \"b\"]\n"),
        (
            "a/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && echo a > dist/o\"\ninputs = [\"**\"]\noutputs = [\"dist/**\"]\n",
        ),
        (
            "b/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && echo $$ > ../pgid.tmp && mv ../pgid.tmp ../pgid && sleep 100 & sleep 100\"\ninputs = [\"**\"]\noutputs = [\"dist/**\"]\n",
        ),
    ]);
    let client = ws
        .cmd(".", &["run", "build"])
        .env("VX_DAEMON", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the task to start", || ws.exists("pgid"));
    let pgid: i32 = ws.read("pgid").trim().parse().unwrap();
    let pid = ws.daemon_status()["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing the test's own daemon.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = client.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    // SAFETY: probing a process group.
    wait_until("the task's process group to be killed", || unsafe {
        libc::killpg(pgid, 0) != 0
    });
    // The next run is correct: a's entry (if saved) restores, b runs again.
    std::fs::remove_file(ws.path("pgid")).unwrap();
    ws.write("b/vx.toml", "[tasks.build]\ncommand = \"mkdir -p dist && echo b > dist/o\"\ninputs = [\"**\"]\noutputs = [\"dist/**\"]\n");
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ws.read("a/dist/o"), "a\n");
    assert_eq!(ws.read("b/dist/o"), "b\n");
    std::fs::remove_dir_all(ws.path("a/dist")).unwrap();
    let r = ws.vx_daemon(&["run", "--json", "build"]);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
    assert_eq!(ws.read("a/dist/o"), "a\n");
}

#[test]
fn fifty_concurrent_clients_share_each_execution() {
    let mut files = vec![(
        "vx.toml".to_string(),
        "[workspace]\nmembers = [\"p*\"]\n".to_string(),
    )];
    for i in 0..4 {
        let deps = if i > 0 {
            format!("deps = [\"p{}\"]\n", i - 1)
        } else {
            String::new()
        };
        files.push((
            format!("p{i}/vx.toml"),
            format!(
                "[project]\n{deps}[tasks.build]\ncommand = \"echo p{i} >> ../executions.log; sleep 0.3; mkdir -p dist && echo {i} > dist/o\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n"
            ),
        ));
        files.push((format!("p{i}/src/x"), format!("{i}\n")));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ws = Ws::new(&refs);
    // Start the daemon first so the clients race on runs, not on the spawn.
    assert_eq!(ws.vx(&["daemon", "start"]).code, 0);
    let children: Vec<_> = (0..50)
        .map(|_| {
            ws.cmd(".", &["run", "--json", "build"])
                .env("VX_DAEMON", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut log: Vec<String> = ws
        .read("executions.log")
        .lines()
        .map(str::to_string)
        .collect();
    log.sort();
    assert_eq!(
        log,
        vec!["p0", "p1", "p2", "p3"],
        "each task must execute exactly once"
    );
    assert_eq!(ws.read("p3/dist/o"), "3\n");
}

#[test]
fn a_connection_from_another_uid_is_refused() {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: switching uid needs root");
        return;
    }
    let ws = basic();
    assert_eq!(ws.vx(&["daemon", "start"]).code, 0);
    let st = ws.daemon_status();
    let socket = st["socket"].as_str().unwrap().to_string();
    // Let uid 65534 reach the socket file, so the daemon's own check is what refuses it.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new(&socket).parent().unwrap();
    for p in [ws.runtime.path(), dir, std::path::Path::new(&socket)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let script = format!(
        "import os, socket\nos.setgid(65534); os.setuid(65534)\ns = socket.socket(socket.AF_UNIX)\ns.connect({socket:?})\ns.settimeout(5)\ntry:\n    s.sendall(b'{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.hello\",\"params\":{{\"protocol\":1,\"client_version\":\"x\"}}}}\\n')\n    data = s.recv(4096)\nexcept (ConnectionResetError, BrokenPipeError):\n    data = b''\nprint(repr(data))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "b''", "another uid got an answer: {stdout}");
    assert!(
        ws.read(".vx/daemon.log")
            .contains("refused a connection from uid 65534")
    );
    // our own uid still works
    assert_eq!(ws.vx_daemon(&["run", "--json", "build"]).code, 0);
}

#[test]
fn ci_defaults_to_no_daemon_and_vx_daemon_1_overrides() {
    let ws = basic();
    let r = ws.vx_in(
        ".",
        &["run", "--json", "build"],
        &[("CI", "true"), ("VX_DAEMON", "")],
    );
    assert_eq!(r.code, 0);
    assert_eq!(ws.daemon_status()["running"], false);
    let r = ws.vx_in(
        ".",
        &["run", "--json", "build"],
        &[("CI", "true"), ("VX_DAEMON", "1")],
    );
    assert_eq!(r.code, 0);
    assert_eq!(ws.daemon_status()["running"], true);
    let r = ws.vx_in(".", &["--no-daemon", "daemon", "status"], &[]);
    assert_eq!(r.code, 0);
}

#[test]
fn a_socket_path_too_long_falls_back_with_a_clear_message() {
    let ws = basic();
    let long = ws.root().join("x".repeat(60)).join("y".repeat(60));
    std::fs::create_dir_all(&long).unwrap();
    let long_s = long.to_string_lossy().into_owned();
    let r = ws.vx_in(
        ".",
        &["run", "--json", "build"],
        &[("VX_DAEMON", "1"), ("XDG_RUNTIME_DIR", &long_s)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("longer than"), "{}", r.stderr);
    assert!(r.stderr.contains("running without it"), "{}", r.stderr);
}

#[test]
fn idle_daemon_exits() {
    let ws = basic();
    let r = ws.vx_in(
        ".",
        &["daemon", "start"],
        &[("VX_DAEMON_IDLE_TIMEOUT", "1s")],
    );
    assert_eq!(r.code, 0);
    let pid = ws.daemon_status()["pid"].as_i64().unwrap() as i32;
    wait_until("the idle daemon to exit", || !alive(pid));
    assert!(ws.read(".vx/daemon.log").contains("idle"));
}

#[test]
fn the_daemon_exits_when_its_workspace_is_deleted() {
    let ws = basic();
    assert_eq!(ws.vx(&["daemon", "start"]).code, 0);
    let pid = ws.daemon_status()["pid"].as_i64().unwrap() as i32;
    std::fs::remove_dir_all(ws.root()).unwrap();
    wait_until("the daemon to exit", || !alive(pid));
}
