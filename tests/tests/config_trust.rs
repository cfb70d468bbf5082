//! Config-level trust (issue 9): transit nodes take part in keys (no wrong
//! hits), outputs never overlap sources or config (no lost files), the cache
//! directory can never be the workspace or a home (no `vx cache clean`
//! disaster), unreadable configs and option-like refs are refused clearly.
//! Every test runs in both modes (`vx_test!`: `::no_daemon` and `::daemon`).

use vx_tests::{Ws, vx_test};

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

vx_test!(turbo_transit_node_carries_dependency_sources, || {
    transit_node_carries_dependency_sources(&turbo_topo());
});

vx_test!(vx_group_task_carries_its_project_sources, || {
    transit_node_carries_dependency_sources(&vx_topo());
});

vx_test!(
    turbo_task_without_any_script_runs_nothing_and_succeeds,
    || {
        let ws = turbo_topo();
        let r = ws.run(&["topo"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.executed().is_empty(), "{}", r.summary());
        assert_eq!(r.summary()["counts"]["failed"], 0, "{}", r.summary());
    }
);

// ---------------------------------------------------------------------------
// Item 2: outputs never select sources or config.

/// A one-project workspace whose task is `task` (a vx.toml body).
fn one_project(task: &str) -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
        ("p/vx.toml", &format!("[tasks.t]\n{task}")),
        ("p/src/a.js", "const a = 'a';\n"),
        ("p/src/deep/b.js", "const b = 'b';\n"),
    ])
}

fn refused_and_nothing_lost(ws: &Ws, expect: &[&str]) {
    for _ in 0..2 {
        let r = ws.vx(&["run", "t"]);
        assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
        for e in expect {
            assert!(r.stderr.contains(e), "stderr lacks {e:?}:\n{}", r.stderr);
        }
        assert_eq!(ws.read("p/src/a.js"), "const a = 'a';\n");
        assert_eq!(ws.read("p/src/deep/b.js"), "const b = 'b';\n");
        assert!(ws.read("p/vx.toml").starts_with("[tasks.t]"));
        assert!(!ws.exists("p/ran"), "the task ran");
    }
}

vx_test!(
    in_place_formatter_outputs_overlapping_inputs_are_a_config_error,
    || {
        let ws = one_project(
            "command = \"sed -i s/a/A/ src/*.js && touch ran\"\ninputs = [\"src/**\"]\noutputs = [\"src/**\"]\n",
        );
        refused_and_nothing_lost(
            &ws,
            &[
                "p/vx.toml:4:",
                "`src/**` in `outputs` of task `t` overlaps the input pattern `src/**`",
                "formatter",
            ],
        );
    }
);

vx_test!(outputs_of_everything_are_a_config_error, || {
    let ws = one_project("command = \"touch ran\"\noutputs = [\"**\"]\n");
    refused_and_nothing_lost(
        &ws,
        &[
            "p/vx.toml:3:",
            "`**` in `outputs` of task `t` selects every file",
        ],
    );
    let ws = one_project("command = \"touch ran\"\noutputs = [\"*.toml\", \"dist/**\"]\n");
    refused_and_nothing_lost(&ws, &["p/vx.toml:3:", "selects `vx.toml`"]);
});

// ---------------------------------------------------------------------------
// Item 1: a cache directory that `vx cache clean` could turn into data loss
// is refused at load. The workspace is nested one level down (`ws/`) and
// $HOME is the temp dir above it, so even a regression deletes only fixtures.

fn nested(cache_dir: Option<&str>) -> Ws {
    let root = match cache_dir {
        Some(d) => format!("[workspace]\nmembers = [\"packages/*\"]\ncache_dir = {d:?}\n"),
        None => "[workspace]\nmembers = [\"packages/*\"]\n".to_string(),
    };
    Ws::new(&[
        ("ws/vx.toml", &root),
        (
            "ws/packages/a/vx.toml",
            "[tasks.build]\ncommand = \"mkdir -p dist && cp src/x dist/x\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
        ),
        ("ws/packages/a/src/x", "source\n"),
        ("ws/.git/HEAD", "ref: refs/heads/main\n"),
        ("ws/uncommitted.txt", "precious\n"),
        ("sibling.txt", "beside the workspace\n"),
    ])
}

fn intact(ws: &Ws) {
    assert_eq!(ws.read("ws/packages/a/src/x"), "source\n");
    assert_eq!(ws.read("ws/.git/HEAD"), "ref: refs/heads/main\n");
    assert_eq!(ws.read("ws/uncommitted.txt"), "precious\n");
    assert_eq!(ws.read("sibling.txt"), "beside the workspace\n");
    assert!(ws.read("ws/vx.toml").starts_with("[workspace]"));
}

fn refuses_cache_dir(ws: &Ws, env: &[(&str, &str)], expect: &[&str]) {
    for args in [
        &["cache", "clean"][..],
        &["run", "build"],
        &["cache", "prune", "--max-age", "0s"],
    ] {
        let r = ws.vx_in("ws", args, env);
        assert_ne!(r.code, 0, "{args:?} succeeded:\n{}\n{}", r.stdout, r.stderr);
        for e in expect {
            assert!(
                r.stderr.contains(e),
                "{args:?}: stderr lacks {e:?}:\n{}",
                r.stderr
            );
        }
        intact(ws);
        assert!(!ws.exists("ws/packages/a/dist"), "a task ran");
    }
}

vx_test!(cache_dir_dot_is_refused_and_clean_deletes_nothing, || {
    let ws = nested(Some("."));
    refuses_cache_dir(
        &ws,
        &[],
        &[
            "vx.toml:3:13:",
            "`cache_dir = \".\"` is refused",
            "is the workspace root",
        ],
    );
});

vx_test!(cache_dir_home_is_refused_and_clean_deletes_nothing, || {
    // $HOME is the directory holding the workspace.
    let ws = nested(Some("~/"));
    refuses_cache_dir(
        &ws,
        &[],
        &[
            "vx.toml:3:13:",
            "`cache_dir = \"~/\"` is refused",
            "contains the workspace",
        ],
    );
});

vx_test!(cache_dir_inside_a_project_is_refused, || {
    let ws = nested(Some("packages/a/src"));
    refuses_cache_dir(
        &ws,
        &[],
        &["vx.toml:3:13:", "inside the sources of project `a`"],
    );
    // Refused means never opened, so never created: not even by a daemon's
    // start-up (which preloads the file index from the configured cache).
    for name in ["index.redb", "cas", "tmp", ".gitignore"] {
        assert!(
            !ws.exists(&format!("ws/packages/a/src/{name}")),
            "a refused cache dir got {name}"
        );
    }
});

vx_test!(
    vx_cache_dir_parent_is_refused_and_clean_deletes_nothing,
    || {
        let ws = nested(None);
        refuses_cache_dir(
            &ws,
            &[("VX_CACHE_DIR", "..")],
            &["VX_CACHE_DIR=.. is refused", "contains the workspace"],
        );
        // A fresh workspace: a daemon keeps the environment it was started with.
        // (`/` is covered by the unit tables only: a regression there would
        // write to the machine's root.)
        let ws = nested(None);
        refuses_cache_dir(
            &ws,
            &[("VX_CACHE_DIR", "packages/a/src")],
            &[
                "VX_CACHE_DIR=packages/a/src is refused",
                "inside the sources of project `a`",
            ],
        );
    }
);

vx_test!(a_cache_dir_of_its_own_is_fine, || {
    let ws = nested(Some("build-cache"));
    let r = ws.vx_in("ws", &["run", "build"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(ws.exists("ws/build-cache"));
    let r = ws.vx_in("ws", &["cache", "clean"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(!ws.exists("ws/build-cache"));
    intact(&ws);
});

// ---------------------------------------------------------------------------
// Item 13: unreadable configs and option-like refs.

vx_test!(invalid_utf8_config_names_file_line_and_column, || {
    let ws = one_project("command = \"true\"\n");
    std::fs::write(
        ws.path("p/vx.toml"),
        b"[tasks.t]\ncommand = \"echo h\xe9llo\"\n",
    )
    .unwrap();
    let r = ws.vx(&["run", "t"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("p/vx.toml:2:18: invalid UTF-8 (byte 0xe9)"),
        "{}",
        r.stderr
    );
});

vx_test!(affected_refuses_a_ref_that_looks_like_an_option, || {
    let ws = vx_tests::basic();
    ws.write(".gitignore", "dist\n.vx\n");
    ws.git(&["init", "-q", "-b", "main"]);
    ws.git(&["add", "-A"]);
    ws.git(&["commit", "-q", "-m", "init"]);
    let out = ws.path("pwned");
    let bad = format!("--affected=--output={}", out.display());
    for arg in ["--affected=-x", bad.as_str()] {
        let r = ws.vx(&["run", "build", arg]);
        assert_ne!(r.code, 0, "{arg}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("--affected takes a git ref") && r.stderr.contains("starts with `-`"),
            "{arg}: {}",
            r.stderr
        );
        assert!(!ws.exists("pwned"), "git wrote a file");
        assert!(!ws.exists("packages/lib/dist"), "a task ran");
    }
});
