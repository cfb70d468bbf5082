//! Plugins through the real binaries: the example plugins in Python and
//! Node (`examples/plugins/`) get each run's lifecycle in order and are
//! started once by the daemon; plugins that crash, hang on the handshake or
//! write garbage leave every run green with one warning each; `vx plugins`
//! reports them; config errors name the file and line.

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vx_tests::{Ws, daemon_mode, peers, vx_test};

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/plugins")
        .join(name)
        .canonicalize()
        .expect("example plugin")
        .to_string_lossy()
        .into_owned()
}

/// The absolute path of the python3 on PATH (the tests' `vx` runs with a
/// clean environment).
fn python3() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PROJECT: &str = r#"[tasks.build]
command = "echo built"
inputs = ["src/**"]
outputs = []

[tasks.test]
command = "echo tested"
depends_on = ["build"]
inputs = ["src/**"]
outputs = []
"#;

fn plugins_json(ws: &Ws) -> Value {
    let r = ws.vx(&["plugins", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn plugin<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {list:#}"))
}

// A Python and a Node plugin get each run's lifecycle, in order; the
// daemon starts them once, whatever the number of runs.
vx_test!(plugins_get_the_lifecycle_in_order_and_start_once, || {
    let Some(node) = peers::on_path("node") else {
        peers::skip("plugins_get_the_lifecycle_in_order_and_start_once", "node");
        return;
    };
    let root_toml = format!(
        r#"[workspace]
members = ["packages/*"]

[[plugins]]
name = "lifecycle-py"
command = "{py}"
args = ["{script}", "--out", "py.log"]

[[plugins]]
name = "lifecycle-node"
command = "{node}"
args = ["{js}", "--out", "node.log"]
events = ["run", "task"]
"#,
        py = python3(),
        script = example("lifecycle.py"),
        node = node.display(),
        js = example("lifecycle.js"),
    );
    let ws = Ws::new(&[
        ("vx.toml", root_toml.as_str()),
        ("packages/app/vx.toml", PROJECT),
        ("packages/app/src/a.txt", "a\n"),
    ]);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let r = ws.run(&["test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        runs.push(r.summary()["run_id"].as_str().expect("id").to_string());
    }
    if !daemon_mode() {
        // Plugins are children of the daemon: the no-daemon engine runs none.
        assert!(!ws.exists("py.log") && !ws.exists("node.log"));
        assert_eq!(plugins_json(&ws)["hosted"], false);
        return;
    }
    wait_for("both runs in the Python plugin's log", || {
        ws.exists("py.log") && ws.read("py.log").matches("run.finished").count() == 2
    });
    let log = ws.read("py.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("hello ")).count(),
        1,
        "started once:\n{log}"
    );
    for run in &runs {
        let mine: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.split(' ').nth(1) == Some(run.as_str()))
            .collect();
        assert_eq!(
            mine.first(),
            Some(&format!("run.started {run}").as_str()),
            "{log}"
        );
        assert_eq!(
            mine.last(),
            Some(&format!("run.finished {run} ok").as_str()),
            "{log}"
        );
        for task in ["app#build", "app#test"] {
            let fin = mine
                .iter()
                .position(|l| l.starts_with("task_finished") && l.contains(task))
                .unwrap_or_else(|| panic!("{task} finished in {log}"));
            if let Some(start) = mine
                .iter()
                .position(|l| l.starts_with("task_started") && l.contains(task))
            {
                assert!(start < fin, "{log}");
            }
        }
    }
    wait_for("both runs in the Node plugin's log", || {
        ws.exists("node.log") && ws.read("node.log").matches(" ok ").count() == 2
    });
    let node_log = ws.read("node.log");
    assert!(
        node_log.contains(&format!("run {} ok success=2", runs[0])),
        "{node_log}"
    );
    assert!(
        node_log.contains(&format!("run {} ok cached=2", runs[1])),
        "{node_log}"
    );
    let list = plugins_json(&ws);
    assert_eq!(list["hosted"], true);
    for name in ["lifecycle-py", "lifecycle-node"] {
        let p = plugin(&list, name);
        assert_eq!(p["state"], "ready", "{p}");
        assert_eq!(p["starts"], 1, "{p}");
        assert_eq!(p["protocol"], 1, "{p}");
        assert!(p["delivered"].as_u64() >= Some(8), "{p}");
    }
    assert_eq!(plugin(&list, "lifecycle-py")["version"], "1.0.0");
});

// A plugin that crashes, one that never answers the handshake, one that
// writes garbage and one that floods: every run stays green, each leaves one warning
// naming it and why, and a good plugin beside them is unaffected.
vx_test!(failing_plugins_are_isolated_with_one_warning, || {
    let root_toml = format!(
        r#"[workspace]
members = ["packages/*"]

[[plugins]]
name = "crash"
command = "sh"
args = ["crash.sh"]

[[plugins]]
name = "hang"
command = "sh"
args = ["hang.sh"]
handshake_timeout_ms = 500

[[plugins]]
name = "garbage"
command = "sh"
args = ["garbage.sh"]

[[plugins]]
name = "flood"
command = "sh"
args = ["flood.sh"]

[[plugins]]
name = "good"
command = "{py}"
args = ["{script}", "--out", "good.log"]
"#,
        py = python3(),
        script = example("lifecycle.py"),
    );
    let ws = Ws::new(&[
        ("vx.toml", root_toml.as_str()),
        (
            "crash.sh",
            "read -r line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocol\":1,\"version\":\"0.0.1\",\"hooks\":[]}}'\nread -r line\necho 'boom: crashing on purpose' >&2\nexit 3\n",
        ),
        ("hang.sh", "echo 'warming up slowly' >&2\nexec sleep 60\n"),
        (
            "flood.sh",
            "read -r line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocol\":1,\"hooks\":[]}}'\nexec yes '{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{\"message\":\"spam\"}}'\n",
        ),
        (
            "garbage.sh",
            "read -r line\necho 'hello, I am not JSON'\nexec sleep 60\n",
        ),
        (
            "packages/app/vx.toml",
            // Long enough for every failure to be seen before it settles.
            "[tasks.build]\ncommand = \"sleep 2 && echo built\"\ninputs = [\"src/**\"]\noutputs = []\n",
        ),
        ("packages/app/src/a.txt", "a\n"),
    ]);
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["ok"], true);
    let warnings: Vec<String> = r
        .events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    if !daemon_mode() {
        assert!(
            warnings.is_empty(),
            "no plugins without a daemon: {warnings:?}"
        );
        return;
    }
    let about = |name: &str| -> Vec<&String> {
        warnings
            .iter()
            .filter(|w| w.starts_with(&format!("plugin {name} ")))
            .collect()
    };
    let crash = about("crash");
    assert_eq!(crash.len(), 1, "{warnings:#?}\n{}\n{}", r.stdout, r.stderr);
    assert!(
        crash[0].contains("exited") && crash[0].contains("boom: crashing on purpose"),
        "{crash:?}"
    );
    let hang = about("hang");
    assert_eq!(hang.len(), 1, "{warnings:#?}");
    assert!(
        hang[0].contains("did not answer the handshake within 0.5 s")
            && hang[0].contains("warming up slowly"),
        "{hang:?}"
    );
    let garbage = about("garbage");
    assert_eq!(garbage.len(), 1, "{warnings:#?}");
    assert!(
        garbage[0].contains("garbage") && garbage[0].contains("hello, I am not JSON"),
        "{garbage:?}"
    );
    let flood = about("flood");
    assert_eq!(flood.len(), 1, "{warnings:#?}");
    assert!(flood[0].contains("a flood"), "{flood:?}");
    assert!(about("good").is_empty(), "{warnings:#?}");
    // The good plugin got the whole run.
    let run = r.summary()["run_id"].as_str().expect("id").to_string();
    wait_for("the good plugin's log", || {
        ws.exists("good.log")
            && ws
                .read("good.log")
                .contains(&format!("run.finished {run} ok"))
    });
    // A second run is green too.
    let r2 = ws.run(&["build"]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    let list = plugins_json(&ws);
    assert_eq!(plugin(&list, "good")["state"], "ready");
    assert_eq!(plugin(&list, "good")["starts"], 1);
    let crash = plugin(&list, "crash");
    assert!(
        crash["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("boom")),
        "{crash}"
    );
    assert!(crash["starts"].as_u64() >= Some(1), "{crash}");
});

// A mistake in [[plugins]] is reported with the file and line, and the
// run is unaffected.
vx_test!(plugin_config_errors_name_the_line, || {
    let ws = Ws::new(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"packages/*\"]\n\n[[plugins]]\nname = \"p\"\ncommand = \"true\"\nevents = [\"everything\"]\n",
        ),
        ("packages/app/vx.toml", PROJECT),
        ("packages/app/src/a.txt", "a\n"),
    ]);
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    if !daemon_mode() {
        return;
    }
    let list = plugins_json(&ws);
    let e = list["config_error"].as_str().unwrap_or_default();
    assert!(
        e.starts_with("vx.toml:4: plugin `p`: unknown event kind `everything`"),
        "{list:#}"
    );
});

// docs/plugins.md is checked against the protocol's types: the version,
// the handshake method, the notification names, the event kinds and the
// states `vx plugins` reports.
#[test]
fn the_protocol_reference_matches_the_types() {
    use vx_proto::plugins::{HOOK_KEY, HOOK_WEIGHTS, INITIALIZE, PROTOCOL, PluginState};
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/plugins.md"),
    )
    .expect("docs/plugins.md");
    let mut want = vec![
        format!("## The protocol (version {PROTOCOL})"),
        format!("\"method\":\"{INITIALIZE}\",\"params\":{{\"protocol\":{PROTOCOL}"),
        format!("\"result\":{{\"protocol\":{PROTOCOL}"),
        format!("`{}`", vx_proto::live::RUN_STARTED),
        format!("`{}`", vx_proto::live::RUN_FINISHED),
        format!("`{}`", vx_proto::live::EVENTS_EVENT),
        format!("`{}`", vx_proto::plugins::PLUGINS_LIST),
        format!("\"method\":\"{HOOK_KEY}\",\"params\":{{\"tasks\":"),
        format!("### The {HOOK_KEY} hook"),
        format!("### The {HOOK_WEIGHTS} hook"),
        format!("{{\"{HOOK_WEIGHTS}\":{{"),
    ];
    for kind in ["run", "task", "output"] {
        want.push(format!("| `{kind}` |"));
    }
    for s in [
        PluginState::Starting,
        PluginState::Ready,
        PluginState::Backoff,
        PluginState::Disabled,
    ] {
        let name = serde_json::to_value(s).expect("state");
        want.push(format!("`{}`", name.as_str().unwrap_or_default()));
    }
    let missing: Vec<&String> = want.iter().filter(|w| !doc.contains(w.as_str())).collect();
    assert!(missing.is_empty(), "docs/plugins.md lacks {missing:?}");
}

/// A root vx.toml with one hook plugin: the example `toolchain.py` with
/// these extra arguments, and `extra` lines for its entry.
fn hook_toml(name: &str, args: &[&str], extra: &str) -> String {
    let mut a = vec![example("toolchain.py")];
    a.extend(args.iter().map(|s| s.to_string()));
    format!(
        "[workspace]\nmembers = [\"packages/*\"]\n\n[[plugins]]\nname = \"{name}\"\ncommand = \"{py}\"\nargs = {args}\nevents = []\n{extra}\n",
        py = python3(),
        args = serde_json::to_string(&a).expect("args"),
    )
}

fn warnings_of(r: &vx_tests::Run) -> Vec<String> {
    r.events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

// A key plugin's material is part of the key: the same material hits, new
// material misses and `vx why` / `vx explain` name the `plugin:NAME`
// component; the daemon and the no-daemon engine fold the same key.
vx_test!(a_key_plugins_material_changes_the_key, || {
    let ws = Ws::new(&[
        (
            "vx.toml",
            hook_toml("toolchain", &["--file", "tools.txt"], "hooks = [\"key\"]").as_str(),
        ),
        ("tools.txt", "node 20\n"),
        ("packages/app/vx.toml", PROJECT),
        ("packages/app/src/a.txt", "a\n"),
    ]);
    let r1 = ws.run(&["test"]);
    assert_eq!(r1.code, 0, "{}{}", r1.stdout, r1.stderr);
    assert_eq!(r1.executed(), ["app#build", "app#test"], "{}", r1.stdout);
    assert!(warnings_of(&r1).is_empty(), "{:?}", warnings_of(&r1));
    let key1 = r1.task("app#build")["key"].clone();
    let r2 = ws.run(&["test"]);
    assert_eq!(r2.cached(), ["app#build", "app#test"], "{}", r2.stdout);
    assert_eq!(r2.task("app#build")["key"], key1);
    // The other engine folds the same key: a hit.
    let other = if daemon_mode() { "0" } else { "1" };
    let r = ws.vx_in(".", &["run", "--json", "test"], &[("VX_DAEMON", other)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.cached(), ["app#build", "app#test"], "{}", r.stdout);
    assert_eq!(r.task("app#build")["key"], key1);
    // Without the plugin, the key is another.
    // New material: a miss, named in `vx why` and `vx explain`.
    ws.write("tools.txt", "node 22\n");
    let x = ws.vx(&["explain", "app#build", "--json"]);
    assert_eq!(x.code, 0, "{}{}", x.stdout, x.stderr);
    let explain: Value = serde_json::from_str(&x.stdout).expect("explain json");
    let t = if explain["tasks"].is_array() {
        explain["tasks"][0].clone()
    } else {
        explain.clone()
    };
    assert_eq!(t["prediction"], "miss", "{t:#}");
    assert_eq!(t["plugins"][0]["name"], "toolchain", "{t:#}");
    assert!(
        t["changes"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["component"] == "plugin" && c["name"] == "toolchain")),
        "{t:#}"
    );
    let r3 = ws.run(&["test"]);
    assert_eq!(r3.executed(), ["app#build", "app#test"], "{}", r3.stdout);
    assert_ne!(r3.task("app#build")["key"], key1);
    let why = ws.vx(&["why", "app#build"]);
    assert_eq!(why.code, 0, "{}{}", why.stdout, why.stderr);
    assert!(
        why.stdout
            .lines()
            .any(|l| l.contains("plugin") && l.contains("toolchain") && l.contains("changed")),
        "{}",
        why.stdout
    );
    assert!(
        why.stdout.contains("plugin toolchain gave"),
        "{}",
        why.stdout
    );
    let why_json = ws.vx(&["why", "app#build", "--json"]);
    let w: Value = serde_json::from_str(&why_json.stdout).expect("why json");
    assert_eq!(
        w["changes"],
        serde_json::json!([{"component": "plugin", "name": "toolchain", "kind": "changed"}]),
        "{w:#}"
    );
    // The old material again: the first key, a hit.
    ws.write("tools.txt", "node 20\n");
    let r4 = ws.run(&["test"]);
    assert_eq!(r4.cached(), ["app#build", "app#test"], "{}", r4.stdout);
    assert_eq!(r4.task("app#build")["key"], key1);
});

// The Node hook example (`examples/plugins/lockfile.js`) keys each task by
// its project's lockfile: a changed lockfile misses that project's tasks
// only, `vx why` names `plugin:lockfile`, both engines fold the same key,
// and the old lockfile hits again.
vx_test!(a_node_key_plugin_keys_tasks_by_their_lockfile, || {
    let Some(node) = peers::on_path("node") else {
        peers::skip("a_node_key_plugin_keys_tasks_by_their_lockfile", "node");
        return;
    };
    let root_toml = format!(
        "[workspace]\nmembers = [\"packages/*\"]\n\n[[plugins]]\nname = \"lockfile\"\ncommand = \"{node}\"\nargs = [\"{js}\", \"--count\", \"asked.log\"]\nhooks = [\"key\"]\nevents = []\n",
        node = node.display(),
        js = example("lockfile.js"),
    );
    let ws = Ws::new(&[
        ("vx.toml", root_toml.as_str()),
        ("packages/app/vx.toml", PROJECT),
        ("packages/app/src/a.txt", "a\n"),
        (
            "packages/app/package-lock.json",
            "{\"lockfileVersion\": 3}\n",
        ),
        ("packages/lib/vx.toml", PROJECT),
        ("packages/lib/src/a.txt", "a\n"),
    ]);
    let all = ["app#build", "app#test", "lib#build", "lib#test"];
    let r1 = ws.run(&["test"]);
    assert_eq!(r1.code, 0, "{}{}", r1.stdout, r1.stderr);
    assert_eq!(r1.executed(), all, "{}", r1.stdout);
    assert!(warnings_of(&r1).is_empty(), "{:?}", warnings_of(&r1));
    // The plugin was asked (not a run that merely ignored it).
    assert!(
        ws.read("asked.log").starts_with("key "),
        "{}",
        ws.read("asked.log")
    );
    let app1 = r1.task("app#build")["key"].clone();
    let lib1 = r1.task("lib#build")["key"].clone();
    let r2 = ws.run(&["test"]);
    assert_eq!(r2.cached(), all, "{}", r2.stdout);
    // The other engine folds the same keys: hits.
    let other = if daemon_mode() { "0" } else { "1" };
    let r = ws.vx_in(".", &["run", "--json", "test"], &[("VX_DAEMON", other)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.cached(), all, "{}", r.stdout);
    assert_eq!(r.task("app#build")["key"], app1);
    // A dependency upgrade in app's lockfile: app misses, lib still hits.
    ws.write(
        "packages/app/package-lock.json",
        "{\"lockfileVersion\": 3, \"x\": 1}\n",
    );
    let r3 = ws.run(&["test"]);
    assert_eq!(r3.code, 0, "{}{}", r3.stdout, r3.stderr);
    assert_eq!(r3.executed(), ["app#build", "app#test"], "{}", r3.stdout);
    assert_eq!(r3.cached(), ["lib#build", "lib#test"], "{}", r3.stdout);
    assert_ne!(r3.task("app#build")["key"], app1);
    assert_eq!(r3.task("lib#build")["key"], lib1);
    let why = ws.vx(&["why", "app#build"]);
    assert_eq!(why.code, 0, "{}{}", why.stdout, why.stderr);
    assert!(
        why.stdout
            .lines()
            .any(|l| l.contains("plugin") && l.contains("lockfile") && l.contains("changed")),
        "{}",
        why.stdout
    );
    let w: Value =
        serde_json::from_str(&ws.vx(&["why", "app#build", "--json"]).stdout).expect("why json");
    assert_eq!(
        w["changes"],
        serde_json::json!([{"component": "plugin", "name": "lockfile", "kind": "changed"}]),
        "{w:#}"
    );
    // A root lockfile is lib's (it has none of its own); app keeps its own.
    ws.write("package-lock.json", "{\"lockfileVersion\": 3}\n");
    let r4 = ws.run(&["test"]);
    assert_eq!(r4.executed(), ["lib#build", "lib#test"], "{}", r4.stdout);
    assert_eq!(r4.cached(), ["app#build", "app#test"], "{}", r4.stdout);
    // The old lockfiles again: the first keys, hits.
    ws.write(
        "packages/app/package-lock.json",
        "{\"lockfileVersion\": 3}\n",
    );
    std::fs::remove_file(ws.path("package-lock.json")).expect("rm root lockfile");
    let r5 = ws.run(&["test"]);
    assert_eq!(r5.cached(), all, "{}", r5.stdout);
    assert_eq!(r5.task("app#build")["key"], app1);
});

// A key plugin that crashes, hangs on its answer, or answers garbage: the
// run stays green with one warning naming it, and its tasks run uncached
// (a result cached before the plugin existed is not restored, nothing is
// saved); a working plugin afterwards caches again.
vx_test!(a_failing_key_plugin_runs_its_tasks_uncached, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        ("packages/app/vx.toml", PROJECT),
        ("packages/app/src/a.txt", "a\n"),
        (
            "crash.sh",
            "read -r line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocol\":1,\"hooks\":[\"key\"]}}'\nread -r line\necho 'boom: no key for you' >&2\nexit 3\n",
        ),
        (
            "hang.sh",
            "read -r line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocol\":1,\"hooks\":[\"key\"]}}'\nexec sleep 60\n",
        ),
        (
            "garbage.sh",
            "read -r line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocol\":1,\"hooks\":[\"key\"]}}'\nread -r line\necho 'here is your key, I think'\nexec sleep 60\n",
        ),
        (
            "nohook.sh",
            "read -r line\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"protocol\":1,\"hooks\":[]}}'\nexec sleep 60\n",
        ),
    ]);
    // Cached with no plugin at all.
    let r0 = ws.run(&["test"]);
    assert_eq!(r0.executed(), ["app#build", "app#test"], "{}", r0.stdout);
    let cases = [
        ("crash", "exited"),
        ("hang", "did not answer the key request within 0.5 s"),
        ("garbage", "garbage"),
        ("nohook", "does not implement the `key` hook"),
    ];
    for (name, want) in cases {
        ws.write(
            "vx.toml",
            &format!(
                "[workspace]\nmembers = [\"packages/*\"]\n\n[[plugins]]\nname = \"{name}\"\ncommand = \"sh\"\nargs = [\"{name}.sh\"]\nevents = []\nhooks = [\"key\"]\nhook_timeout_ms = 500\n"
            ),
        );
        for attempt in 0..2 {
            let r = ws.run(&["test"]);
            assert_eq!(r.code, 0, "{name}: {}{}", r.stdout, r.stderr);
            assert_eq!(r.summary()["ok"], true, "{name}");
            assert_eq!(
                r.executed(),
                ["app#build", "app#test"],
                "{name} #{attempt}: never a hit: {}",
                r.stdout
            );
            for id in ["app#build", "app#test"] {
                assert_eq!(r.task(id)["cache"], "disabled", "{name}: {}", r.stdout);
            }
            let w = warnings_of(&r);
            let mine: Vec<&String> = w
                .iter()
                .filter(|m| m.starts_with(&format!("plugin {name} ")))
                .collect();
            assert!(
                !mine.is_empty() && mine.len() <= 2,
                "{name} #{attempt}: one warning about the key ({w:#?})"
            );
            let about_key: Vec<&&String> =
                mine.iter().filter(|m| m.contains("not cached")).collect();
            assert_eq!(about_key.len(), 1, "{name} #{attempt}: {w:#?}");
            if attempt == 0 {
                assert!(about_key[0].contains(want), "{name}: {about_key:?}");
            }
        }
    }
    // A working plugin: cached again (under its own key).
    ws.write(
        "vx.toml",
        &hook_toml("toolchain", &["--file", "tools.txt"], "hooks = [\"key\"]"),
    );
    let r = ws.run(&["test"]);
    assert_eq!(r.executed(), ["app#build", "app#test"], "{}", r.stdout);
    assert!(warnings_of(&r).is_empty(), "{:?}", warnings_of(&r));
    let r = ws.run(&["test"]);
    assert_eq!(r.cached(), ["app#build", "app#test"], "{}", r.stdout);
});

// A key-stable plugin is asked once per task per life under the daemon:
// a fully cached repeat run costs it no request; without a daemon every
// run asks it once, for all its tasks at once.
vx_test!(a_key_stable_plugin_is_asked_once_per_task, || {
    let ws = Ws::new(&[
        (
            "vx.toml",
            hook_toml(
                "stable",
                &["--file", "tools.txt", "--stable", "--count", "count.txt"],
                "hooks = [\"key\"]",
            )
            .as_str(),
        ),
        ("tools.txt", "node 20\n"),
        ("packages/app/vx.toml", PROJECT),
        ("packages/app/src/a.txt", "a\n"),
    ]);
    for _ in 0..3 {
        let r = ws.run(&["test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let count = ws.read("count.txt");
    let lines: Vec<&str> = count.lines().collect();
    if daemon_mode() {
        assert_eq!(lines, ["key 2"], "{count}");
    } else {
        assert_eq!(lines, ["key 2", "key 2", "key 2"], "{count}");
    }
});

// A weights plugin orders the run: with one lane, the tasks start by the
// expected cost it gave (heaviest first), whatever their names; a weights
// plugin that fails is ignored with one warning.
vx_test!(a_weights_plugin_orders_the_run, || {
    let project = |n: &str| {
        format!("[tasks.build]\ncommand = \"echo {n}\"\ninputs = [\"src/**\"]\noutputs = []\n")
    };
    let ws = Ws::new(&[
        (
            "vx.toml",
            hook_toml(
                "weigh",
                &["--file", "tools.txt", "--weights", "weights.json"],
                "hooks = [\"key\", \"weights\"]",
            )
            .as_str(),
        ),
        ("tools.txt", "x\n"),
        (
            "weights.json",
            r#"{"a#build": 10, "b#build": 9000, "c#build": 500}"#,
        ),
        ("packages/a/vx.toml", project("a").as_str()),
        ("packages/a/src/f", "a\n"),
        ("packages/b/vx.toml", project("b").as_str()),
        ("packages/b/src/f", "b\n"),
        ("packages/c/vx.toml", project("c").as_str()),
        ("packages/c/src/f", "c\n"),
    ]);
    let started = |r: &vx_tests::Run| -> Vec<String> {
        r.events
            .iter()
            .filter(|e| e["type"] == "task_started")
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    };
    let r = ws.run(&["build", "--concurrency", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        started(&r),
        ["b#build", "c#build", "a#build"],
        "{}",
        r.stdout
    );
    // Other weights, another order (forced: every task executes).
    ws.write(
        "weights.json",
        r#"{"a#build": 7000, "b#build": 1, "c#build": 20}"#,
    );
    let r = ws.run(&["build", "--concurrency", "1", "--force"]);
    assert_eq!(
        started(&r),
        ["a#build", "c#build", "b#build"],
        "{}",
        r.stdout
    );
    // Garbage weights: one warning, the run is green and still cached.
    ws.write("weights.json", r#"{"a#build": "heavy"}"#);
    let r = ws.run(&["build", "--concurrency", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.cached(),
        ["a#build", "b#build", "c#build"],
        "{}",
        r.stdout
    );
    let w = warnings_of(&r);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("plugin weigh ") && w[0].contains("weights are ignored"),
        "{w:?}"
    );
});
