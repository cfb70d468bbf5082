//! The default concurrency, end to end (both modes): what docs/cli.md and
//! docs/config.md say — twice the CPU count, at least 8 — is what a run
//! uses and records, and 8 independent tasks really run at once under it;
//! the workspace's `concurrency` and `--concurrency` still win.

use serde_json::Value;
use vx_tests::{Ws, vx_test};

/// What the docs promise when neither the request nor the workspace says.
fn documented_default() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).max(8)
}

/// Eight projects whose `wait` tasks each announce themselves in `.gate/`
/// and succeed only once all eight have (giving up after ~30 s): the run
/// passes only if the eight run at the same time.
fn gated(workspace_extra: &str) -> Ws {
    let mut files: Vec<(String, String)> = vec![(
        "vx.toml".into(),
        format!("[workspace]\nmembers = [\"packages/*\"]\n{workspace_extra}"),
    )];
    for i in 0..8 {
        files.push((
            format!("packages/p{i}/vx.toml"),
            format!(
                r#"[tasks.wait]
command = "mkdir -p ../../.gate && touch ../../.gate/p{i} && n=0; while [ $(ls ../../.gate | wc -l) -lt 8 ]; do n=$((n+1)); [ $n -gt 300 ] && echo 'not all 8 at once' && exit 1; sleep 0.1; done; echo together"
cache = false
"#
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Ws::new(&refs)
}

fn last_concurrency(ws: &Ws) -> u64 {
    let r = ws.vx(&["last", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    v["concurrency"]
        .as_u64()
        .unwrap_or_else(|| panic!("no concurrency in {v}"))
}

vx_test!(the_default_runs_eight_independent_tasks_at_once, || {
    let ws = gated("");
    let r = ws.run(&["wait"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.executed().len(), 8, "{:?}", r.executed());
    assert_eq!(last_concurrency(&ws), documented_default() as u64);
});

vx_test!(the_workspace_and_the_flag_override_the_default, || {
    // The workspace says 3 (which could never gather all eight); the flag
    // says 8, and the eight meet.
    let ws = gated("concurrency = 3\n");
    let r = ws.run(&["wait", "--concurrency", "8"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(last_concurrency(&ws), 8);
    let ws = Ws::new(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"packages/*\"]\nconcurrency = 3\n",
        ),
        (
            "packages/a/vx.toml",
            "[tasks.build]\ncommand = \"echo a\"\ncache = false\n",
        ),
    ]);
    assert_eq!(ws.run(&["build"]).code, 0);
    assert_eq!(last_concurrency(&ws), 3);
    assert_eq!(ws.run(&["build", "--concurrency", "5"]).code, 0);
    assert_eq!(last_concurrency(&ws), 5);
});
