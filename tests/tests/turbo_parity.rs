//! Turborepo parity on the shapes of real repos (issue 18): each case is a
//! fixture, an edit and the tasks that must re-run — what real turbo re-runs
//! on the same repo. vx is checked in both modes; where turbo is installed
//! (`tests/peers/setup.sh`), the same case is run through turbo and must
//! agree, so the expectations are turbo's, not ours.

use std::collections::BTreeSet;
use std::process::Command;
use vx_tests::{Ws, peers, vx_test};

/// One case: files, an edit (path, new content), the tasks to run and the
/// task ids that the edit must re-run (everything else is a hit).
struct Case {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    edit: (&'static str, &'static str),
    tasks: &'static [&'static str],
    rerun: &'static [&'static str],
}

const ROOT_TURBO: &str = r#"{ "$schema": "https://turborepo.com/schema.json",
  "tasks": { "lint": {}, "build": { "dependsOn": ["^build"], "outputs": [] } } }"#;

const CASES: &[Case] = &[
    // A shared config package the root package.json depends on: turbo keys
    // its files into every task (the global hash's internal dependencies).
    Case {
        name: "root depends on a config package",
        files: &[
            (
                "package.json",
                r#"{ "name": "root", "private": true, "packageManager": "npm@10.0.0",
  "workspaces": ["apps/*", "packages/*"], "devDependencies": { "@repo/config": "*" } }"#,
            ),
            ("turbo.json", ROOT_TURBO),
            (
                "packages/config/package.json",
                r#"{ "name": "@repo/config", "version": "0.0.0", "private": true }"#,
            ),
            ("packages/config/base.json", "{ \"a\": 1 }\n"),
            (
                "apps/web/package.json",
                r#"{ "name": "web", "version": "0.0.0", "private": true,
  "scripts": { "lint": "echo lint-web", "build": "echo build-web" } }"#,
            ),
            ("apps/web/index.js", "x\n"),
            (".gitignore", "node_modules\n.turbo\n.vx\n"),
        ],
        edit: ("packages/config/base.json", "{ \"a\": 2 }\n"),
        tasks: &["lint", "build"],
        rerun: &["web#build", "web#lint"],
    },
    // A config package with no scripts that a package depends on: only the
    // tasks that depend on its tasks (`^build`, a transit node) re-run.
    Case {
        name: "a package depends on a script-less config package",
        files: &[
            (
                "package.json",
                r#"{ "name": "root", "private": true, "packageManager": "npm@10.0.0",
  "workspaces": ["apps/*", "packages/*"] }"#,
            ),
            ("turbo.json", ROOT_TURBO),
            (
                "packages/tsconfig/package.json",
                r#"{ "name": "@repo/tsconfig", "version": "0.0.0", "private": true }"#,
            ),
            ("packages/tsconfig/base.json", "{ \"a\": 1 }\n"),
            (
                "apps/web/package.json",
                r#"{ "name": "web", "version": "0.0.0", "private": true,
  "dependencies": { "@repo/tsconfig": "*" },
  "scripts": { "lint": "echo lint-web", "build": "echo build-web" } }"#,
            ),
            ("apps/web/index.js", "x\n"),
            (".gitignore", "node_modules\n.turbo\n.vx\n"),
        ],
        edit: ("packages/tsconfig/base.json", "{ \"a\": 2 }\n"),
        tasks: &["lint", "build"],
        rerun: &["web#build"],
    },
];

/// The task ids a `vx run` executed, after a warm-up run and the edit.
fn vx_reruns(case: &Case) -> BTreeSet<String> {
    let ws = Ws::new(case.files);
    let r = ws.run(case.tasks);
    assert_eq!(r.code, 0, "{}: {}", case.name, r.stderr);
    let r = ws.run(case.tasks);
    assert!(
        r.executed().is_empty(),
        "{}: not a full hit: {:?}",
        case.name,
        r.executed()
    );
    ws.write(case.edit.0, case.edit.1);
    let r = ws.run(case.tasks);
    assert_eq!(r.code, 0, "{}: {}", case.name, r.stderr);
    r.executed().into_iter().collect()
}

/// The same through real turbo: `pkg:task: cache miss` lines of the run
/// after the edit, as vx ids.
fn turbo_reruns(turbo: &std::path::Path, case: &Case) -> BTreeSet<String> {
    let ws = Ws::new(case.files);
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .args(args)
            .current_dir(ws.root())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git");
        assert!(
            st.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "fixture"]);
    let run = || {
        let out = Command::new(turbo)
            .arg("run")
            .args(case.tasks)
            .args(["--output-logs=hash-only", "--no-daemon"])
            .current_dir(ws.root())
            .env("TURBO_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1")
            .output()
            .expect("run turbo");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: turbo failed:\n{text}\n{}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .filter(|l| l.contains("cache miss"))
            .filter_map(|l| l.split(": ").next())
            .map(|id| id.trim().replacen(':', "#", 1))
            .collect::<BTreeSet<String>>()
    };
    run();
    assert!(
        run().is_empty(),
        "{}: turbo's second run was not a full hit",
        case.name
    );
    ws.write(case.edit.0, case.edit.1);
    run()
}

vx_test!(edits_rerun_what_turbo_reruns, || {
    let turbo = peers::npm_bin("turbo");
    if turbo.is_none() {
        peers::skip(
            "edits_rerun_what_turbo_reruns (the comparison with turbo)",
            "turbo (npm)",
        );
    }
    for case in CASES {
        let want: BTreeSet<String> = case.rerun.iter().map(|s| s.to_string()).collect();
        assert_eq!(vx_reruns(case), want, "vx: {}", case.name);
        // Turbo is compared once (it has no daemon mode of ours).
        if let Some(t) = &turbo
            && !vx_tests::daemon_mode()
        {
            assert_eq!(turbo_reruns(t, case), want, "real turbo: {}", case.name);
        }
    }
});
