//! `vx run` end to end on fixture workspaces (each test in both modes).

use vx_tests::{Mode, Ws, basic, gen_use, vx_test};

// The harness itself: each variant's workspace runs `vx` in that variant's
// mode, also from a thread the test spawns, and only the daemon variant
// leaves a daemon behind.
vx_test!(each_variant_runs_in_its_own_mode, || {
    let ws = basic();
    assert_eq!(ws.mode, vx_tests::mode());
    let r = std::thread::scope(|s| s.spawn(|| ws.run(&["build"])).join().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let running = ws.daemon_status()["running"] == true;
    assert_eq!(running, ws.mode == Mode::Daemon, "{}", ws.daemon_status());
});

vx_test!(first_run_executes_everything_second_nothing, || {
    let ws = basic();
    let r = ws.run(&["build", "test"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.executed(), vec!["app#build", "app#test", "lib#build"]);
    assert_eq!(
        ws.read("packages/app/dist/app.txt"),
        "lib-a\nlib-b\napp-main\n"
    );
    let r = ws.run(&["build", "test"]);
    assert_eq!(r.code, 0);
    assert!(
        r.executed().is_empty(),
        "second run executed {:?}",
        r.executed()
    );
    assert_eq!(r.cached(), vec!["app#build", "app#test", "lib#build"]);
    // outputs were intact: nothing restored
    assert_eq!(r.task("lib#build")["cache"], "up-to-date");
});

vx_test!(hits_replay_their_log, || {
    let ws = basic();
    ws.vx(&["run", "build"]);
    let r = ws.vx(&["run", "build"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("lib:build │ built lib"), "{}", r.stdout);
    assert!(r.stdout.contains("cache hit"), "{}", r.stdout);
    let r = ws.vx(&["run", "build", "--output-logs=new-only"]);
    assert!(!r.stdout.contains("built lib"), "{}", r.stdout);
});

vx_test!(
    deleted_outputs_are_restored_byte_identical_without_executing,
    || {
        let ws = basic();
        assert_eq!(ws.run(&["build"]).code, 0);
        let before = ws.read("packages/app/dist/app.txt");
        std::fs::remove_dir_all(ws.path("packages/app/dist")).unwrap();
        std::fs::remove_dir_all(ws.path("packages/lib/dist")).unwrap();
        let r = ws.run(&["build"]);
        assert_eq!(r.code, 0);
        assert!(r.executed().is_empty(), "{:?}", r.executed());
        assert_eq!(r.task("app#build")["cache"], "local");
        assert_eq!(ws.read("packages/app/dist/app.txt"), before);
        assert_eq!(ws.read("packages/lib/dist/out.txt"), "lib-a\nlib-b\n");
    }
);

// A restored output the walk sees (not ignored) is an input of a task of
// the same project: the project is re-walked after the restore, so the
// dependent is keyed by the restored file and is a hit. Beside it, outputs
// in an ignored directory, which need no re-walk, restore alike.
vx_test!(
    a_restored_output_is_seen_by_a_dependent_in_its_project,
    || {
        let ws = gen_use();
        let r = ws.run(&["use"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.executed(), vec!["p#gen", "p#use"]);
        std::fs::remove_dir_all(ws.path("p/gen")).unwrap();
        std::fs::remove_dir_all(ws.path("p/dist")).unwrap();
        let r = ws.run(&["use"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.executed().is_empty(), "{:?}", r.executed());
        assert_eq!(r.task("p#gen")["cache"], "local");
        assert_eq!(ws.read("p/gen/a.txt"), "A\n");
        assert_eq!(ws.read("p/dist/a.txt"), "A\n");
    }
);

vx_test!(stray_output_files_are_removed_on_restore, || {
    let ws = basic();
    ws.run(&["build"]);
    ws.write("packages/lib/dist/stray.txt", "x");
    let r = ws.run(&["build"]);
    assert_eq!(r.task("lib#build")["cache"], "local");
    assert!(!ws.exists("packages/lib/dist/stray.txt"));
});

vx_test!(edited_input_reruns_that_task_and_its_dependents, || {
    let ws = basic();
    ws.run(&["build", "test"]);
    ws.write("packages/app/src/main.txt", "app-main-2\n");
    let r = ws.run(&["build", "test"]);
    assert_eq!(r.executed(), vec!["app#build", "app#test"]);
    assert_eq!(r.cached(), vec!["lib#build"]);
    ws.write("packages/lib/src/a.txt", "lib-a-2\n");
    let r = ws.run(&["build", "test"]);
    assert_eq!(r.executed(), vec!["app#build", "app#test", "lib#build"]);
    assert_eq!(
        ws.read("packages/app/dist/app.txt"),
        "lib-a-2\nlib-b\napp-main-2\n"
    );
    // a new file matching the inputs counts too
    ws.write("packages/lib/src/c.txt", "c\n");
    assert_eq!(
        ws.run(&["build"]).executed(),
        vec!["app#build", "lib#build"]
    );
});

vx_test!(negated_input_glob_is_honoured, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
        (
            "p/vx.toml",
            r#"[tasks.build]
command = "mkdir -p dist && cat src/*.js > dist/o"
inputs = ["src/**", "!src/**/*.test.js"]
outputs = ["dist/**"]
"#,
        ),
        ("p/src/a.js", "a"),
        ("p/src/a.test.js", "t"),
    ]);
    assert_eq!(ws.run(&["build"]).executed(), vec!["p#build"]);
    ws.write("p/src/a.test.js", "t2");
    let r = ws.run(&["build"]);
    assert!(r.executed().is_empty(), "a negated input re-ran the task");
    ws.write("p/src/a.js", "a2");
    assert_eq!(ws.run(&["build"]).executed(), vec!["p#build"]);
});

vx_test!(keyed_env_var_change_reruns_what_it_should, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\", \"b\"]\n"),
        (
            "a/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && echo $MODE > dist/o\"\ninputs = [\"**\"]\noutputs = [\"dist/**\"]\nenv = [\"MODE\"]\n",
        ),
        (
            "b/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && echo b > dist/o\"\ninputs = [\"**\"]\noutputs = [\"dist/**\"]\n",
        ),
    ]);
    assert_eq!(
        ws.run_env(&["build"], &[("MODE", "dev")]).executed(),
        vec!["a#build", "b#build"]
    );
    assert_eq!(ws.read("a/dist/o"), "dev\n");
    assert!(
        ws.run_env(&["build"], &[("MODE", "dev")])
            .executed()
            .is_empty()
    );
    let r = ws.run_env(&["build"], &[("MODE", "prod")]);
    assert_eq!(r.executed(), vec!["a#build"]);
    assert_eq!(ws.read("a/dist/o"), "prod\n");
    // unset and empty are different keys
    assert_eq!(
        ws.run_env(&["build"], &[("MODE", "")]).executed(),
        vec!["a#build"]
    );
    assert_eq!(ws.run(&["build"]).executed(), vec!["a#build"]);
    // an unkeyed variable does not reach the task
    assert_eq!(
        ws.run_env(&["build"], &[("OTHER", "x")]).executed(),
        Vec::<String>::new()
    );
});

vx_test!(env_is_isolated_and_defined_values_arrive, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/vx.toml",
            "[tasks.show]\ncommand = \"echo secret=[$SECRET_THING] mode=[$MODE] pass=[$PASSED] task=[$VX_RUN_TASK]\"\npass_env = [\"PASSED\"]\ndefine = { MODE = \"fixed\" }\n",
        ),
    ]);
    let r = ws.vx_in(
        ".",
        &["run", "show"],
        &[("SECRET_THING", "leak"), ("PASSED", "yes")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("secret=[] mode=[fixed] pass=[yes] task=[a#show]"),
        "{}",
        r.stdout
    );
});

vx_test!(
    failing_task_skips_its_dependents_and_exits_with_its_code,
    || {
        let ws = Ws::new(&[
            ("vx.toml", "[workspace]\nmembers = [\"*\"]\n"),
            (
                "lib/vx.toml",
                "[tasks.build]\ncommand = \"echo boom >&2; exit 3\"\n",
            ),
            ("other/vx.toml", "[tasks.build]\ncommand = \"echo fine\"\n"),
            (
                "app/vx.toml",
                "[project]\ndeps = [\"lib\"]\n[tasks.build]\ncommand = \"echo app\"\ndepends_on = [\"^build\"]\n",
            ),
        ]);
        let r = ws.run(&["build"]);
        // The failed task's own exit code, as turbo.
        assert_eq!(r.code, 3);
        assert_eq!(r.status("lib#build"), "failed");
        assert_eq!(r.task("lib#build")["exit_code"], 3);
        assert_eq!(r.status("app#build"), "skipped");
        assert_eq!(r.task("app#build")["blocked_by"], "lib#build");
        assert_eq!(r.status("other#build"), "success");
        // --continue=always runs the dependent anyway
        let r = ws.run(&["build", "--continue=always"]);
        assert_eq!(r.code, 3);
        assert_eq!(r.status("app#build"), "success");
        // the human output names the failure
        let r = ws.vx(&["run", "build"]);
        assert!(r.stdout.contains("lib:build │ boom"), "{}", r.stdout);
        assert!(r.stdout.contains("Failed:"), "{}", r.stdout);
    }
);

vx_test!(failures_are_never_cached, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/vx.toml",
            "[tasks.build]\ncommand = \"echo run >> ../count; exit 1\"\ninputs = [\"**\"]\noutputs = []\n",
        ),
    ]);
    ws.run(&["build"]);
    ws.run(&["build"]);
    assert_eq!(ws.read("count"), "run\nrun\n");
});

vx_test!(retries_and_timeouts, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        (
            "a/vx.toml",
            r#"[tasks.flaky]
command = "n=$(cat ../n 2>/dev/null || echo 0); n=$((n+1)); echo $n > ../n; [ $n -ge 2 ]"
retries = 2

[tasks.slow]
command = "sleep 5"
timeout = "200ms"
"#,
        ),
    ]);
    let r = ws.run(&["flaky"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.task("a#flaky")["attempts"], 2);
    let r = ws.run(&["slow"]);
    // A timed-out task exits 124, as timeout(1).
    assert_eq!(r.code, 124);
    assert!(
        r.task("a#slow")["error"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
});

vx_test!(corrupted_blob_is_a_miss, || {
    let ws = basic();
    ws.run(&["build"]);
    // corrupt every blob in the store
    let cas = ws.path(".vx/cache/cas");
    let mut n = 0;
    for sub in std::fs::read_dir(&cas).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            let mut bytes = std::fs::read(f.path()).unwrap();
            bytes.push(b'!');
            std::fs::write(f.path(), bytes).unwrap();
            n += 1;
        }
    }
    assert!(n > 0);
    std::fs::remove_dir_all(ws.path("packages/lib/dist")).unwrap();
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.executed().contains(&"lib#build".to_string()),
        "{:?}",
        r.executed()
    );
    assert!(
        r.events
            .iter()
            .any(|e| e["type"] == "warning"
                && e["message"].as_str().unwrap_or("").contains("corrupt")),
        "{}",
        r.stdout
    );
    assert_eq!(ws.read("packages/lib/dist/out.txt"), "lib-a\nlib-b\n");
    // the re-run saved a good entry again
    std::fs::remove_dir_all(ws.path("packages/lib/dist")).unwrap();
    let r = ws.run(&["build"]);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
});

vx_test!(missing_blob_is_a_miss, || {
    let ws = basic();
    ws.run(&["build"]);
    std::fs::remove_dir_all(ws.path(".vx/cache/cas")).unwrap();
    std::fs::remove_dir_all(ws.path("packages/lib/dist")).unwrap();
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0);
    assert!(r.executed().contains(&"lib#build".to_string()));
});

vx_test!(force_and_no_cache, || {
    let ws = basic();
    ws.run(&["build"]);
    let r = ws.run(&["build", "--force"]);
    assert_eq!(r.executed(), vec!["app#build", "lib#build"]);
    let r = ws.run(&["build", "--no-cache"]);
    assert_eq!(r.executed(), vec!["app#build", "lib#build"]);
    assert!(ws.run(&["build"]).executed().is_empty());
});

vx_test!(keys_do_not_depend_on_the_checkout_path, || {
    let a = basic();
    let b = basic();
    let ka = a.run(&["build"]);
    let kb = b.run(&["build"]);
    assert_ne!(a.root(), b.root());
    assert_eq!(ka.task("app#build")["key"], kb.task("app#build")["key"]);
    assert_eq!(ka.task("lib#build")["key"], kb.task("lib#build")["key"]);
});

vx_test!(forwarded_args_reach_requested_tasks_and_are_keyed, || {
    let ws = basic();
    let r = ws.vx(&["run", "--json", "app#test", "--", "--flag", "two words"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let started: Vec<&serde_json::Value> = r
        .events
        .iter()
        .filter(|e| e["type"] == "task_started")
        .collect();
    let cmd = |id: &str| {
        started
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["command"].as_str().unwrap().to_string())
    };
    assert!(cmd("app#test").unwrap().ends_with(" --flag 'two words'"));
    assert!(!cmd("lib#build").unwrap().contains("--flag"));
    let again = ws.vx(&["run", "--json", "app#test", "--", "--other"]);
    let executed: Vec<&str> = again
        .events
        .iter()
        .filter(|e| e["type"] == "task_started")
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(executed, vec!["app#test"]);
});

vx_test!(scope_follows_the_current_directory, || {
    let ws = basic();
    let r = ws.vx_in("packages/lib", &["run", "--json", "build"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["lib#build"]);
    let r = ws.vx_in("packages/app/src", &["run", "--json", "test"], &[]);
    assert_eq!(r.executed(), vec!["app#build", "app#test"]);
});

vx_test!(filters_select_projects, || {
    let ws = basic();
    assert_eq!(
        ws.run(&["build", "--filter", "lib"]).executed(),
        vec!["lib#build"]
    );
    ws.vx(&["cache", "clean"]);
    let r = ws.run(&["build", "--filter", "...lib", "--force"]);
    assert_eq!(r.executed(), vec!["app#build", "lib#build"]);
    let r = ws.run(&["build", "--filter", "./packages/lib", "--force"]);
    assert_eq!(r.executed(), vec!["lib#build"]);
    let r = ws.run(&["build", "--filter", "!app", "--force"]);
    assert_eq!(r.executed(), vec!["lib#build"]);
    let r = ws.run(&["build", "--filter", "nope"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("matched no project"), "{}", r.stderr);
});

vx_test!(dry_run_predicts_and_runs_nothing, || {
    let ws = basic();
    let r = ws.vx(&["run", "build", "--dry=json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let preds: Vec<(&str, &str)> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["prediction"].as_str().unwrap()))
        .collect();
    assert_eq!(preds, vec![("lib#build", "miss"), ("app#build", "miss")]);
    assert!(!ws.exists("packages/lib/dist"));
    ws.run(&["build"]);
    let r = ws.vx(&["run", "build", "--dry"]);
    assert!(
        r.stdout.contains("lib#build") && r.stdout.contains("hit"),
        "{}",
        r.stdout
    );
    let r = ws.vx(&["run", "build", "--graph"]);
    assert!(r.stdout.starts_with("digraph"), "{}", r.stdout);
    assert!(
        r.stdout.contains("\"app#build\" -> \"lib#build\""),
        "{}",
        r.stdout
    );
});

vx_test!(summarize_writes_a_json_summary, || {
    let ws = basic();
    let r = ws.vx(&["run", "build", "--summarize=out/summary.json"]);
    assert_eq!(r.code, 0);
    let s: serde_json::Value = serde_json::from_str(&ws.read("out/summary.json")).unwrap();
    assert_eq!(s["counts"]["executed"], 2);
    for t in s["tasks"].as_array().unwrap() {
        for f in ["id", "status", "cache", "key", "exit_code", "duration_ms"] {
            assert!(t.get(f).is_some(), "{f} missing in {t}");
        }
    }
});

vx_test!(cache_stats_and_clean, || {
    let ws = basic();
    ws.run(&["build"]);
    let r = ws.vx(&["cache", "stats", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["entries"], 2);
    assert!(s["blobs"].as_u64().unwrap() >= 2);
    let r = ws.vx(&["cache", "clean"]);
    assert_eq!(r.code, 0);
    assert!(!ws.exists(".vx/cache"));
    assert_eq!(
        ws.run(&["build"]).executed(),
        vec!["app#build", "lib#build"]
    );
});

vx_test!(affected_runs_only_changed_tasks_and_dependents, || {
    let ws = basic();
    ws.write(".gitignore", "dist\n.vx\n");
    ws.git(&["init", "-q", "-b", "main"]);
    ws.git(&["add", "-A"]);
    ws.git(&["commit", "-q", "-m", "init"]);
    ws.git(&["checkout", "-q", "-b", "feature"]);
    let r = ws.run(&["build", "--affected"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary()["counts"]["total"], 0);
    ws.write("packages/app/src/new.txt", "untracked\n");
    let r = ws.run(&["build", "--affected=main"]);
    assert_eq!(r.executed(), vec!["app#build", "lib#build"]);
    assert_eq!(r.task("lib#build")["status"], "success"); // pulled in as a dependency
    ws.git(&["add", "-A"]);
    ws.git(&["commit", "-q", "-m", "app change"]);
    ws.write("packages/lib/src/a.txt", "changed\n");
    let r = ws.run(&["build", "--affected"]);
    assert_eq!(r.code, 0);
    let ids: Vec<String> = r.summary()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["app#build", "lib#build"]);
});

// Two tasks of a project with the same input patterns share the picked
// files within a run (no daemon); each still leaves out only its own
// outputs: `build`'s key never sees `dist/`, `check`'s always does.
vx_test!(
    tasks_with_the_same_inputs_each_leave_out_their_own_outputs,
    || {
        let ws = Ws::new(&[
            ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
            (
                "p/vx.toml",
                r#"[tasks.build]
command = "mkdir -p dist && cat src/*.txt > dist/out.txt"
inputs = ["**"]
outputs = ["dist/**"]

[tasks.check]
command = "cat dist/out.txt > /dev/null"
depends_on = ["build"]
inputs = ["**"]
outputs = []
"#,
            ),
            ("p/src/a.txt", "a\n"),
        ]);
        assert_eq!(ws.run(&["build", "check"]).code, 0);
        let r = ws.run(&["build", "check"]);
        assert!(r.executed().is_empty(), "{:?}", r.executed());
        // An output edited: `build` is unchanged (restored, not run); `check`
        // is keyed after the restore, on the same bytes.
        ws.write("p/dist/out.txt", "edited\n");
        let r = ws.run(&["build", "check"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.executed().is_empty(), "{:?}", r.executed());
        assert_eq!(r.task("p#build")["cache"], "local");
        assert_eq!(ws.read("p/dist/out.txt"), "a\n");
        // Edited again, `check` alone (its dependency keyed from the files as
        // they are, first): `check` sees the edit and runs.
        ws.write("p/dist/out.txt", "edited\n");
        let r = ws.run(&["check", "--only"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert_eq!(r.executed(), vec!["p#check"]);
    }
);
