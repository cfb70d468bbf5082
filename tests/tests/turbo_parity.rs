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
    // A gitignored file that `globalDependencies` names is keyed anyway.
    Case {
        name: "a gitignored global dependency",
        files: &[
            (
                "package.json",
                r#"{ "name": "root", "private": true, "packageManager": "npm@10.0.0",
  "workspaces": ["apps/*"] }"#,
            ),
            (
                "turbo.json",
                r#"{ "globalDependencies": ["**/.env.*local"],
  "tasks": { "lint": {}, "build": { "outputs": [] } } }"#,
            ),
            (
                "apps/web/package.json",
                r#"{ "name": "web", "version": "0.0.0", "private": true,
  "scripts": { "lint": "echo lint-web", "build": "echo build-web" } }"#,
            ),
            ("apps/web/.env.local", "A=1\n"),
            (".gitignore", "node_modules\n.turbo\n.vx\n.env*.local\n"),
        ],
        edit: ("apps/web/.env.local", "A=2\n"),
        tasks: &["lint", "build"],
        rerun: &["web#build", "web#lint"],
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

/// A small turbo repo: `web` (Next.js) depends on `ui`; scripts with
/// pre/post hooks, a failing pair, an env printer.
fn repo() -> Ws {
    Ws::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "packageManager": "npm@10.0.0",
  "workspaces": ["apps/*", "packages/*"] }"#,
        ),
        (
            "turbo.json",
            r#"{ "$schema": "https://turborepo.com/schema.json",
  "tasks": {
    "build": { "dependsOn": ["^build"], "outputs": [] },
    "lint": {}, "env": { "cache": false },
    "fail3": {}, "fail5": {},
    "quiet": { "outputLogs": "errors-only" }
  } }"#,
        ),
        (
            "packages/ui/package.json",
            r#"{ "name": "ui", "version": "1.0.0", "private": true,
  "scripts": { "prebuild": "echo pre-ui", "build": "echo build-ui", "postbuild": "echo post-ui",
               "lint": "echo lint-ui" } }"#,
        ),
        (
            "apps/web/package.json",
            r#"{ "name": "web", "version": "1.0.0", "private": true,
  "dependencies": { "ui": "*", "next": "15.0.0" },
  "scripts": { "build": "echo build-web $NEXT_PUBLIC_FLAG", "lint": "echo lint-web",
               "env": "echo loose=${LOOSE_ONLY:-unset}",
               "fail3": "exit 3", "fail5": "exit 5", "quiet": "echo should-not-show" } }"#,
        ),
        (".gitignore", "node_modules\n.turbo\n.vx\n"),
    ])
}

vx_test!(a_failed_run_exits_with_its_tasks_exit_code, || {
    let ws = repo();
    let r = ws.vx(&["run", "fail3", "--filter", "web"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    // Several failed: the largest code (turbo's rule).
    let r = ws.vx(&["run", "fail3", "fail5", "--filter", "web", "--continue"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
});

vx_test!(turbo_filters_with_caret_leave_the_package_out, || {
    let ws = repo();
    let r = ws.run(&["build", "--filter", "web^..."]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["ui#build"]);
    let r = ws.run(&["lint", "--filter", "...^ui"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["web#lint"]);
});

vx_test!(pre_and_post_scripts_run_around_the_script, || {
    let ws = repo();
    let r = ws.vx(&["run", "build", "--filter", "ui", "--log-prefix=none"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().filter(|l| l.ends_with("-ui")).collect();
    assert_eq!(lines, vec!["pre-ui", "build-ui", "post-ui"], "{}", r.stdout);
    // pnpm runs them only when asked: not here.
    let ws = repo();
    let pkg = ws.read("package.json").replace("npm@10.0.0", "pnpm@9.0.0");
    ws.write("package.json", &pkg);
    let r = ws.vx(&["run", "build", "--filter", "ui", "--log-prefix=none"]);
    assert!(!r.stdout.contains("pre-ui"), "{}", r.stdout);
});

vx_test!(framework_env_is_keyed_and_passed, || {
    let ws = repo();
    let run = |flag: &str, extra: &[&str]| {
        let mut a = vec!["run", "build", "--filter", "web", "--json"];
        a.extend_from_slice(extra);
        ws.vx_in(".", &a, &[("NEXT_PUBLIC_FLAG", flag)])
    };
    let r = run("one", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("build-web one"), "{}", r.stdout);
    assert!(run("one", &[]).executed().is_empty(), "same value: a hit");
    let r = run("two", &[]);
    assert_eq!(
        r.executed(),
        vec!["web#build"],
        "NEXT_PUBLIC_* is keyed for a Next.js package"
    );
    assert!(
        r.stdout.contains("build-web two"),
        "and passed: {}",
        r.stdout
    );
    // Off: neither keyed nor passed.
    let r = run("three", &["--framework-inference=false"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("three"), "{}", r.stdout);
});

vx_test!(env_mode_loose_passes_everything, || {
    let ws = repo();
    let env = [("LOOSE_ONLY", "yes")];
    let r = ws.vx_in(".", &["run", "env", "--filter", "web"], &env);
    assert!(
        r.stdout.contains("loose=unset"),
        "strict by default: {}",
        r.stdout
    );
    let r = ws.vx_in(
        ".",
        &["run", "env", "--filter", "web", "--env-mode=loose"],
        &env,
    );
    assert!(r.stdout.contains("loose=yes"), "{}", r.stdout);
    // turbo.json's `envMode` sets the default.
    let t = ws
        .read("turbo.json")
        .replace("\"tasks\"", "\"envMode\": \"loose\", \"tasks\"");
    ws.write("turbo.json", &t);
    let r = ws.vx_in(".", &["run", "env", "--filter", "web"], &env);
    assert!(r.stdout.contains("loose=yes"), "{}", r.stdout);
});

vx_test!(log_flags_shape_the_output, || {
    let ws = repo();
    // A task's own outputLogs (errors-only) applies unless the run picks.
    let r = ws.vx(&["run", "quiet", "--filter", "web"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("should-not-show"), "{}", r.stdout);
    let r = ws.vx(&[
        "run",
        "quiet",
        "--filter",
        "web",
        "--force",
        "--output-logs=full",
    ]);
    assert!(r.stdout.contains("should-not-show"), "{}", r.stdout);
    // hash-only: a line per task with its hash, no output.
    let r = ws.vx(&["run", "lint"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ws.vx(&["run", "lint", "--output-logs=hash-only"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("lint-web\n"), "{}", r.stdout);
    assert!(r.stdout.contains("web:lint │ cache hit"), "{}", r.stdout);
    // No prefix; grouped: each task's lines together.
    let r = ws.vx(&[
        "run",
        "build",
        "--force",
        "--log-prefix=none",
        "--log-order=grouped",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let at = |s: &str| {
        lines
            .iter()
            .position(|l| *l == s)
            .unwrap_or_else(|| panic!("no `{s}` in {}", r.stdout))
    };
    assert_eq!(at("build-ui"), at("pre-ui") + 1);
    assert_eq!(at("post-ui"), at("build-ui") + 1);
});

vx_test!(turbo_flags_are_accepted, || {
    let ws = repo();
    let cache = ws.path(".other-cache");
    let cache_dir = format!("--cache-dir={}", cache.display());
    for flags in [
        vec!["--concurrency=50%"],
        vec!["--continue=dependencies-successful"],
        vec!["--ui=stream"],
        vec!["--ui=tui"],
        vec![cache_dir.as_str()],
    ] {
        let mut a = vec!["run", "lint"];
        a.extend(flags.iter().copied());
        let r = ws.vx(&a);
        assert_eq!(r.code, 0, "{flags:?}: {}", r.stderr);
    }
    assert!(
        cache.join("index.redb").exists() || cache.join("cas").exists(),
        "--cache-dir used"
    );
    let r = ws.vx(&["run", "lint", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Plan:"), "{}", r.stdout);
    let r = ws.vx(&["run", "lint", "--concurrency=0%"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
});

vx_test!(only_and_parallel_leave_dependencies_out, || {
    let ws = repo();
    // `web#build` depends on `ui#build` (`^build`): --only runs web's alone.
    let r = ws.run(&["build", "--filter", "web", "--only"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["web#build"]);
    // The dependency's key still counts: editing ui re-runs web#build.
    let r = ws.run(&["build", "--filter", "web", "--only"]);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
    ws.write("packages/ui/src.js", "changed\n");
    let r = ws.run(&["build", "--filter", "web", "--only"]);
    assert_eq!(r.executed(), vec!["web#build"]);
    // --parallel: both requested builds, no order between them.
    let r = ws.run(&["build", "--parallel", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["ui#build", "web#build"]);
});

vx_test!(turbo_1_keys_warn_instead_of_failing, || {
    let ws = repo();
    let t = ws
        .read("turbo.json")
        .replace(
            "\"lint\": {}",
            "\"lint\": { \"outputMode\": \"full\", \"dotEnv\": [\".env\"] }",
        )
        .replace("\"tasks\"", "\"experimentalUI\": true, \"tasks\"");
    ws.write("turbo.json", &t);
    let r = ws.vx(&["run", "lint"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for k in ["outputMode", "dotEnv", "experimentalUI"] {
        assert!(r.stderr.contains(k), "no warning about {k}: {}", r.stderr);
    }
});

// Two tasks of one package that declare the same output (`build` and
// `typecheck` both write `.cache/tsbuildinfo.json`, as in create-t3-turbo):
// they restore and execute one at a time, so a fully cached run with the
// outputs deleted never fails or warns, however often it is repeated, and
// the file holds one task's whole content.
vx_test!(tasks_sharing_an_output_never_race, || {
    // Big enough that two restores of it would overlap in time.
    let writer = |tag: &str| {
        format!(
            "mkdir -p .cache dist && head -c 4000000 /dev/zero | tr '\\\\0' {tag} > .cache/tsbuildinfo.json && echo {tag} > dist/{tag}"
        )
    };
    let pkg = format!(
        r#"{{ "name": "web", "version": "1.0.0", "private": true,
  "scripts": {{ "build": "{}", "typecheck": "{}" }} }}"#,
        writer("b"),
        writer("t")
    );
    let ws = Ws::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "packageManager": "npm@10.0.0", "workspaces": ["apps/*"] }"#,
        ),
        (
            "turbo.json",
            r#"{ "tasks": {
  "build": { "outputs": [".cache/tsbuildinfo.json", "dist/b"] },
  "typecheck": { "outputs": [".cache/tsbuildinfo.json", "dist/t"] } } }"#,
        ),
        ("apps/web/package.json", &pkg),
        ("apps/web/src/a.ts", "x\n"),
        (".gitignore", "node_modules\n.cache\ndist\n"),
    ]);
    let r = ws.run(&["build", "typecheck"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let whole = |ws: &Ws| {
        let b = std::fs::read(ws.path("apps/web/.cache/tsbuildinfo.json")).expect("output");
        assert_eq!(b.len(), 4_000_000);
        assert!(b.iter().all(|c| *c == b[0]), "a mix of both tasks' bytes");
    };
    whole(&ws);
    for round in 0..8 {
        std::fs::remove_dir_all(ws.path("apps/web/.cache")).expect("rm .cache");
        let r = ws.run(&["build", "typecheck"]);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        assert!(r.executed().is_empty(), "round {round}: {:?}", r.executed());
        assert!(!r.stderr.contains("warning"), "round {round}: {}", r.stderr);
        whole(&ws);
    }
});
