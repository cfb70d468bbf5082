//! Cancellation: a signal to `vx` stops every task's whole process group,
//! and nothing is left running.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vx_tests::{Ws, processes_in, vx_test};

fn sleeper() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/vx.toml",
            // The shell records its process group, starts a background sleep
            // (same group) and waits on a foreground one.
            "[tasks.serve]\ncommand = \"echo $$ > ../pgid.tmp && mv ../pgid.tmp ../pgid; sleep 100 & sleep 100\"\n",
        ),
    ])
}

fn wait_for(path: &Path) -> i32 {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(n) = s.trim().parse()
        {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the task never started");
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only probes.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

fn assert_all_gone(ws: &Ws, pgid: i32) {
    let t = Instant::now();
    while (group_alive(pgid) || !processes_in(ws.root()).is_empty())
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !group_alive(pgid),
        "the task's process group {pgid} survived"
    );
    let left = processes_in(ws.root());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn interrupt_with(sig: i32, expect: i32) {
    let ws = sleeper();
    let mut child = ws
        .cmd(".", &["run", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pgid = wait_for(&ws.path("pgid"));
    assert!(group_alive(pgid));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "vx did not exit after signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(status.code(), Some(expect), "{out}");
    assert!(out.contains("aborted"), "{out}");
    assert_all_gone(&ws, pgid);
}

vx_test!(sigint_kills_the_whole_task_group_and_exits_130, || {
    interrupt_with(libc::SIGINT, 130);
});

vx_test!(sigterm_exits_143, || {
    interrupt_with(libc::SIGTERM, 143);
});

vx_test!(a_killed_client_leaves_no_orphans, || {
    let ws = sleeper();
    let mut child = ws
        .cmd(".", &["run", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pgid = wait_for(&ws.path("pgid"));
    child.kill().unwrap(); // SIGKILL: the client cannot clean up; the engine must.
    child.wait().unwrap();
    assert_all_gone(&ws, pgid);
});
