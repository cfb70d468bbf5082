//! The first ten minutes (issue 16): what a newcomer types first, and the
//! stumbles a first try found — `vx ls`, `vx run` with no task, a task some
//! filtered project lacks, `web:build` for `web#build`, pluralisation.

use serde_json::Value;
use vx_tests::{Ws, basic, vx_test};

fn three() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"pkgs/*\"]\n"),
        (
            "pkgs/a/vx.toml",
            "[tasks.build]\ncommand = \"echo a-build\"\n[tasks.test]\ncommand = \"echo a-test\"\n[tasks.lint]\ncommand = \"echo a-lint\"\n",
        ),
        (
            "pkgs/b/vx.toml",
            "[tasks.build]\ncommand = \"echo b-build\"\n",
        ),
        (
            "pkgs/web/vx.toml",
            "[tasks.build]\ncommand = \"echo web-build\"\n[tasks.lint]\ncommand = \"echo web-lint\"\n",
        ),
    ])
}

vx_test!(ls_lists_projects_and_their_tasks, || {
    let ws = three();
    let r = ws.vx(&["ls"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("3 projects in "), "{}", r.stdout);
    for line in [
        "a (pkgs/a)",
        "  build  echo a-build",
        "  lint   echo a-lint",
        "b (pkgs/b)",
    ] {
        assert!(r.stdout.contains(line), "{line:?} not in:\n{}", r.stdout);
    }
    let r = ws.vx(&["ls", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("vx ls --json prints JSON");
    let projects = v["projects"].as_array().expect("projects");
    let names: Vec<&str> = projects.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["a", "b", "web"]);
    let a_tasks: Vec<&str> = projects[0]["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(a_tasks, ["build", "lint", "test"]);
    assert_eq!(projects[1]["tasks"][0]["command"], "echo b-build");
    // A filter narrows it.
    let r = ws.vx(&["ls", "--json", "--filter", "b"]);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["projects"].as_array().map(Vec::len), Some(1));
});

vx_test!(run_without_a_task_lists_the_tasks, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
        ("p/vx.toml", "[tasks.compile]\ncommand = \"true\"\n"),
    ]);
    let r = ws.vx(&["run"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("try `vx run compile`"), "{}", r.stderr);
    assert!(!r.stderr.contains("vx run build"), "{}", r.stderr);
    let r = three().vx(&["run"]);
    assert!(
        r.stderr
            .contains("build (3 projects), lint (2 projects), test"),
        "{}",
        r.stderr
    );
});

// turbo runs what exists: `b` has no `test`, so only b#build runs.
vx_test!(filtered_project_missing_a_task_runs_what_exists, || {
    let ws = three();
    let r = ws.run(&["build", "test", "--filter", "b"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.executed(), ["b#build"]);
    // Every requested task missing from the selection: an error naming who
    // declares it, never "did you mean lint?" for lint.
    let r = ws.vx(&["run", "lint", "--filter", "b"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("project `b` does not declare task `lint` (declared by a, web)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("did you mean `lint`"), "{}", r.stderr);
    // A task no project declares is an error even beside one that runs.
    let r = ws.vx(&["run", "build", "tset", "--filter", "b"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("no project declares task `tset` (did you mean `test`?)"),
        "{}",
        r.stderr
    );
});

vx_test!(colon_form_points_at_the_hash_form, || {
    let ws = three();
    let r = ws.vx(&["run", "web:build"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("did you mean `web#build`?"),
        "{}",
        r.stderr
    );
});

vx_test!(counts_are_pluralised, || {
    let ws = three();
    let r = ws.vx(&["run", "b#build", "--dry"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("Plan: 1 task (0 predicted cache hits)"),
        "{}",
        r.stdout
    );
    let r = basic().vx(&["run", "build", "--dry"]);
    assert!(r.stdout.contains("Plan: 2 tasks"), "{}", r.stdout);
    let r = ws.vx(&["ls"]);
    assert!(r.stdout.contains("3 projects"), "{}", r.stdout);
});
