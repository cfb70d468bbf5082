//! vx's REAPI remote executor (`[remote_execution] execute = true`), end
//! to end with the real binaries against a real BuildGrid (PyPI
//! `buildgrid`, on a private PostgreSQL) and real bots
//! (`tests/peers/reapi_bot.py`; BuildGrid ships none), all started here
//! (`vx_tests::peers::buildgrid`).
//!
//! A fixture `lib#build` → `app#build` → `app#test` (and `docs#test`,
//! pinned local with `remote = false`): the remote tasks run on a bot (their
//! `worker` starts with `reapi`, the bot's log shows their leases), their
//! outputs on disk (an executable, a nested dir, a symlink, a 5 MB file) are byte- and
//! mode-identical to a local run's, and a second clone is all cache hits
//! with no new lease. A failing command's exit code and stderr come back
//! and fail the run. First, the bot on its own: `reapi_bot_check.py`, a
//! plain REAPI client, checks outputs, failures, timeouts and cancellation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use vx_tests::peers::buildgrid::{Buildgrid, Services};
use vx_tests::{Run, Ws, vx_test};

/// The fixture; `extra` goes into the root `vx.toml`.
fn fixture(extra: &str) -> Ws {
    Ws::new(&[
        (
            "vx.toml",
            &format!("[workspace]\nmembers = [\"packages/*\"]\n{extra}"),
        ),
        (
            "packages/lib/vx.toml",
            r#"[tasks.build]
command = "mkdir -p dist/nested/deep && cat src/*.txt > dist/out.txt && printf '#!/bin/sh\necho ran-tool\n' > dist/tool.sh && chmod 755 dist/tool.sh && echo leaf > dist/nested/deep/leaf.txt && ln -sf ../../out.txt dist/nested/deep/link.txt && yes lib-line | head -c 5000000 > dist/big.bin && echo built lib"
inputs = ["src/**"]
outputs = ["dist/**"]
"#,
        ),
        ("packages/lib/src/a.txt", "lib-a\n"),
        ("packages/lib/src/b.txt", "lib-b\n"),
        (
            "packages/app/vx.toml",
            r#"[project]
deps = ["lib"]

[tasks.build]
command = "mkdir -p dist && cat ../lib/dist/out.txt src/*.txt > dist/app.txt && wc -c < ../lib/dist/big.bin > dist/big-size.txt && ../lib/dist/tool.sh > dist/tool-output.txt && echo built app"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = ["dist/**"]

[tasks.test]
command = "test -s dist/app.txt && grep -q lib-b dist/app.txt && echo tested"
depends_on = ["build"]
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/app/src/main.txt", "app-main\n"),
        (
            "packages/docs/vx.toml",
            r#"[project]
deps = ["lib"]

[tasks.test]
command = "mkdir -p dist && cat ../lib/dist/out.txt > dist/docs.txt && echo docs-local"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = ["dist/**"]
remote = false
"#,
        ),
        ("packages/docs/src/index.txt", "docs\n"),
    ])
}

/// `[remote_execution]` pointing at `bg`, executing.
fn remote(bg: &Buildgrid) -> String {
    format!(
        "\n[remote_execution]\nendpoint = \"{}\"\nexecute = true\nplatform = {{ OSFamily = \"linux\" }}\n",
        bg.endpoint()
    )
}

const REMOTE_TASKS: [&str; 3] = ["app#build", "app#test", "lib#build"];

/// Every path under the projects' `dist/`: (kind, mode, bytes or link target).
fn dist_tree(ws: &Ws) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, ('l', 0, t.to_string_lossy().into_owned().into_bytes()));
            } else if md.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    for project in ["lib", "app", "docs"] {
        walk(
            ws.root(),
            &ws.path(&format!("packages/{project}/dist")),
            &mut out,
        );
    }
    out
}

/// The `worker` of `id`'s result and of its `task_started` event.
fn workers(r: &Run, id: &str) -> (String, String) {
    let result = r.task(id)["worker"].as_str().unwrap_or("").to_string();
    let started = r
        .events
        .iter()
        .find(|e| e["type"] == "task_started" && e["id"] == id)
        .map(|e| e["worker"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no task_started for {id}"));
    (result, started)
}

fn leases(bg: &Buildgrid) -> usize {
    bg.bot_logs().matches(" accepted").count()
}

/// The start, or the skip line when a peer is missing.
fn grid(test: &str, bots: usize) -> Option<Buildgrid> {
    match Buildgrid::start(Services::Execution, bots) {
        Ok(bg) => Some(bg),
        Err(peer) => {
            vx_tests::peers::skip(test, peer);
            None
        }
    }
}

#[test]
fn the_bot_alone_runs_actions_through_buildgrid() {
    let Some(mut bg) = grid("the_bot_alone_runs_actions_through_buildgrid", 1) else {
        return;
    };
    let python = vx_tests::peers::python().expect("the venv's python");
    let out = Command::new(python)
        .arg(vx_tests::peers::dir().join("reapi_bot_check.py"))
        .args(["--remote", &format!("127.0.0.1:{}", bg.port)])
        .args(["--bot-id", "reapi-bot-1"])
        .output()
        .expect("run reapi_bot_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("reapi_bot_check: ok"),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bg.logs()
    );
    // Five actions reached the bot; the cancelled one was killed there.
    assert_eq!(leases(&bg), 5, "{}", bg.logs());
    assert!(
        bg.bot_logs().contains("cancelled by the server"),
        "{}",
        bg.logs()
    );
    // SIGTERM: the bot stops cleanly.
    bg.stop_bots();
    assert!(
        bg.bot_logs().trim_end().ends_with("reapi_bot: stopped"),
        "{}",
        bg.logs()
    );
}

vx_test!(tasks_execute_on_a_buildgrid_bot, || {
    let Some(bg) = grid("tasks_execute_on_a_buildgrid_bot", 2) else {
        return;
    };
    let cfg = remote(&bg);
    let a = fixture(&cfg);
    let r = a.run(&["test"]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, bg.logs());
    assert_eq!(
        r.executed(),
        vec!["app#build", "app#test", "docs#test", "lib#build"],
        "{}",
        r.summary()
    );
    for id in REMOTE_TASKS {
        let (result, started) = workers(&r, id);
        assert!(
            result.starts_with("reapi") && started.starts_with("reapi"),
            "{id} did not run remotely (result worker {result:?}, task_started worker {started:?}): {}\n{}",
            r.summary(),
            bg.logs()
        );
    }
    // `remote = false`: run here.
    let (result, started) = workers(&r, "docs#test");
    assert!(
        result.is_empty() && started.is_empty(),
        "docs#test is pinned local: {result:?} {started:?}"
    );
    // One lease per remote task, on the bot its result names
    // (`reapi:<execution_metadata.worker>`), whose log shows its command.
    assert_eq!(leases(&bg), 3, "{}", bg.logs());
    for (id, cmd) in [
        ("lib#build", "echo built lib"),
        ("app#build", "echo built app"),
        ("app#test", "echo tested"),
    ] {
        let (result, _) = workers(&r, id);
        let bot = result.strip_prefix("reapi:").unwrap_or_default();
        assert!(
            bg.bot_log(bot).contains(cmd),
            "{id}: worker {result:?}, but no such bot ran `{cmd}`:\n{}",
            bg.logs()
        );
    }
    for (id, line) in [
        ("lib#build", "built lib"),
        ("app#build", "built app"),
        ("app#test", "tested"),
    ] {
        assert!(
            r.events
                .iter()
                .any(|e| e["type"] == "task_output" && e["id"] == id && e["line"] == line),
            "{id}'s `{line}` did not come back: {}",
            r.stdout
        );
    }
    // The same bytes and modes as a local run (no remote at all).
    let local = fixture("");
    let rl = local.run(&["test"]);
    assert_eq!(rl.code, 0, "{}\n{}", rl.stdout, rl.stderr);
    let (remote_tree, local_tree) = (dist_tree(&a), dist_tree(&local));
    assert!(
        remote_tree.contains_key("packages/lib/dist/nested/deep/leaf.txt"),
        "{:?}",
        remote_tree.keys()
    );
    assert_eq!(remote_tree["packages/lib/dist/tool.sh"].1, 0o755);
    assert_eq!(
        remote_tree["packages/lib/dist/nested/deep/link.txt"],
        ('l', 0, b"../../out.txt".to_vec())
    );
    // Over 4 MiB: out of the bot, into this checkout, and into app#build's
    // input root, through ByteStream.
    assert_eq!(remote_tree["packages/lib/dist/big.bin"].2.len(), 5_000_000);
    assert_eq!(
        remote_tree["packages/app/dist/big-size.txt"].2,
        b"5000000\n"
    );
    assert_eq!(
        remote_tree["packages/app/dist/tool-output.txt"].2,
        b"ran-tool\n"
    );
    assert_eq!(remote_tree, local_tree);
    // A second clone: all hits, nothing executed, no new lease.
    let b = fixture(&cfg);
    let r2 = b.run(&["test"]);
    assert_eq!(r2.code, 0, "{}\n{}", r2.stdout, r2.stderr);
    assert!(r2.executed().is_empty(), "{}", r2.summary());
    assert_eq!(leases(&bg), 3, "{}", bg.logs());
    assert_eq!(dist_tree(&b), local_tree);
});

vx_test!(a_failing_remote_command_fails_the_run, || {
    let Some(bg) = grid("a_failing_remote_command_fails_the_run", 1) else {
        return;
    };
    let ws = Ws::new(&[
        (
            "vx.toml",
            &format!("[workspace]\nmembers = [\"bad\"]\n{}", remote(&bg)),
        ),
        (
            "bad/vx.toml",
            "[tasks.build]\ncommand = \"echo partial; echo broke-on-the-bot >&2; exit 7\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
        ),
        ("bad/src/x.txt", "x\n"),
    ]);
    let r = ws.run(&["build"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.status("bad#build"), "failed", "{}", r.summary());
    assert_eq!(r.task("bad#build")["exit_code"], 7, "{}", r.summary());
    let (result, _) = workers(&r, "bad#build");
    assert!(result.starts_with("reapi"), "{result:?}\n{}", bg.logs());
    assert!(
        r.events.iter().any(|e| e["type"] == "task_output"
            && e["id"] == "bad#build"
            && e["line"] == "broke-on-the-bot"),
        "the remote stderr did not come back: {}",
        r.stdout
    );
    assert_eq!(leases(&bg), 1, "{}", bg.logs());
    // Not cached: the next run executes it again.
    let r = ws.run(&["build"]);
    assert_eq!(r.status("bad#build"), "failed");
    assert_eq!(leases(&bg), 2, "{}", bg.logs());
    // `VX_REAPI_EXECUTE=0`: here, with the same outcome, and no lease.
    let r = ws.run_env(&["build"], &[("VX_REAPI_EXECUTE", "0")]);
    assert_eq!(r.task("bad#build")["exit_code"], 7, "{}", r.summary());
    let (result, started) = workers(&r, "bad#build");
    assert!(
        result.is_empty() && started.is_empty(),
        "{result:?} {started:?}"
    );
    assert_eq!(leases(&bg), 2, "{}", bg.logs());
});

// With no bot connected, a remote task waits a bounded time (its timeout
// plus the executor's margin), then runs here with one warning, and the rest
// of the run stays local. One mode: the bound is the engine's, not the
// client's. (About a minute: the executor's margin is 60 s.)
#[test]
fn with_no_bot_a_task_runs_here_after_a_bounded_wait() {
    let Some(bg) = grid("with_no_bot_a_task_runs_here_after_a_bounded_wait", 0) else {
        return;
    };
    let cfg = format!("{}timeout = \"2s\"\n", remote(&bg));
    let ws = Ws::new(&[
        (
            "vx.toml",
            &format!("[workspace]\nmembers = [\"a\", \"b\"]\n{cfg}"),
        ),
        (
            "a/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && echo a > dist/a.txt\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\ntimeout = \"1s\"\n",
        ),
        ("a/src/x.txt", "x\n"),
        (
            "b/vx.toml",
            "[project]\ndeps = [\"a\"]\n\n[tasks.build]\ncommand = \"mkdir -p dist && cat ../a/dist/a.txt > dist/b.txt\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\ntimeout = \"1s\"\n",
        ),
        ("b/src/y.txt", "y\n"),
    ]);
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, bg.logs());
    assert_eq!(r.executed(), vec!["a#build", "b#build"]);
    for id in ["a#build", "b#build"] {
        assert!(
            r.task(id)["worker"].is_null(),
            "{id} ran here: {}",
            r.summary()
        );
    }
    assert_eq!(ws.read("b/dist/b.txt"), "a\n");
    let warnings: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("no result from Execute") && warnings[0].contains("a#build"),
        "{warnings:?}"
    );
}
