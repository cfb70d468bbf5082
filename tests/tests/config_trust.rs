//! Config-level trust (issue 9): transit nodes take part in keys (no wrong
//! hits), outputs never overlap sources or config (no lost files), the cache
//! directory can never be the workspace or a home (no `vx cache clean`
//! disaster), unreadable configs and option-like refs are refused clearly.
//! Every test passes in both modes (`VX_E2E_DAEMON=1` or not).

use vx_tests::Ws;

// ---------------------------------------------------------------------------
// Item 0: tasks without a command are nodes like any other.

/// `b` depends on `a`; `typecheck` depends on `^topo`, a task no package has
/// a script for (create-t3-turbo's shape). `b`'s typecheck fails when `a`'s
/// source has a type error.
fn turbo_topo() -> Ws {
    Ws::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"] }"#,
        ),
        (
            "turbo.json",
            r#"{
  "tasks": {
    "topo": { "dependsOn": ["^topo"] },
    "build": { "dependsOn": ["^build"], "outputs": ["dist/**"] },
    "typecheck": { "dependsOn": ["^topo", "^build"], "outputs": [] }
  }
}"#,
        ),
        (
            "packages/a/package.json",
            r#"{ "name": "a", "version": "1.0.0", "scripts": {} }"#,
        ),
        ("packages/a/src/index.ts", "export const x: number = 1;\n"),
        (
            "packages/b/package.json",
            r#"{ "name": "b", "version": "1.0.0",
  "dependencies": { "a": "workspace:*" },
  "scripts": { "typecheck": "! grep -q TYPE_ERROR ../a/src/index.ts && echo types-ok" } }"#,
        ),
        ("packages/b/src/index.ts", "import { x } from 'a';\n"),
    ])
}

/// The same shape in vx.toml: `topo` is a group task in every project.
fn vx_topo() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/a/vx.toml",
            "[tasks.topo]\ndepends_on = [\"^topo\"]\n",
        ),
        ("packages/a/src/index.ts", "export const x: number = 1;\n"),
        (
            "packages/b/vx.toml",
            r#"[project]
deps = ["a"]

[tasks.topo]
depends_on = ["^topo"]

[tasks.typecheck]
command = "! grep -q TYPE_ERROR ../a/src/index.ts && echo types-ok"
depends_on = ["^topo"]
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/b/src/index.ts", "import { x } from 'a';\n"),
    ])
}

fn transit_node_carries_dependency_sources(ws: &Ws) {
    let r = ws.run(&["typecheck"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.executed(), vec!["b#typecheck"]);
    // Nodes without a command execute nothing and are not reported as tasks.
    let ids: Vec<&str> = r.summary()["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["b#typecheck"], "{}", r.summary());
    // Fully cached the second time.
    let r = ws.run(&["typecheck"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.cached(), vec!["b#typecheck"]);
    assert!(r.executed().is_empty());
    // A type error in the dependency re-runs (and fails) the dependent.
    ws.write(
        "packages/a/src/index.ts",
        "export const x: number = 'TYPE_ERROR';\n",
    );
    let r = ws.run(&["typecheck"]);
    assert_eq!(r.executed(), vec!["b#typecheck"], "{}", r.summary());
    assert_eq!(r.status("b#typecheck"), "failed");
    assert_ne!(r.code, 0);
    // Fixed again: the old success is a hit again.
    ws.write("packages/a/src/index.ts", "export const x: number = 1;\n");
    let r = ws.run(&["typecheck"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.cached(), vec!["b#typecheck"]);
}

#[test]
fn turbo_transit_node_carries_dependency_sources() {
    transit_node_carries_dependency_sources(&turbo_topo());
}

#[test]
fn vx_group_task_carries_its_project_sources() {
    transit_node_carries_dependency_sources(&vx_topo());
}

#[test]
fn turbo_task_without_any_script_runs_nothing_and_succeeds() {
    let ws = turbo_topo();
    let r = ws.run(&["topo"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.executed().is_empty(), "{}", r.summary());
    assert_eq!(r.summary()["counts"]["failed"], 0, "{}", r.summary());
}
