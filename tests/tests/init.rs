//! `vx init`: a turbo repo, an Nx repo and a scripts-only repo translated
//! into vx.toml files that run the same tasks; never overwriting without
//! `--force`; `--dry-run` writing nothing; untranslated items reported.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use vx_tests::{Ws, vx_test};

fn turbo_repo() -> Ws {
    Ws::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*", "apps/*"],
  "packageManager": "npm@10.8.2",
  "scripts": { "fmt": "echo formatted" } }"#,
        ),
        (
            "turbo.json",
            r#"{
  // as a turbo user writes it
  "$schema": "https://turborepo.com/schema.json",
  "globalEnv": ["CI_MODE"],
  "globalDependencies": ["tsconfig.base.json"],
  "tasks": {
    "build": { "dependsOn": ["^build"], "inputs": ["$TURBO_DEFAULT$", "!README.md"],
               "outputs": ["dist/**", "!dist/**/*.map"], "env": ["MODE"], "outputLogs": "new-only" },
    "test": { "dependsOn": ["build"] },
    "deploy": { "dependsOn": ["build", "test", "lib#build"], "cache": false },
    "dev": { "persistent": true, "cache": false },
    "web#build": { "outputs": ["dist/**", ".next/**", "!.next/cache/**"] },
    "//#fmt": { "cache": false }
  }
}"#,
        ),
        ("tsconfig.base.json", "{}\n"),
        (
            "packages/lib/package.json",
            r#"{ "name": "lib", "version": "1.0.0",
  "scripts": { "build": "mkdir -p dist && echo lib > dist/lib.txt", "test": "echo lib-test" } }"#,
        ),
        (
            "packages/mid/package.json",
            r#"{ "name": "mid", "version": "1.0.0", "dependencies": { "lib": "*" },
  "scripts": { "test": "echo mid-test $npm_package_name" } }"#,
        ),
        (
            "apps/web/package.json",
            r#"{ "name": "web", "version": "1.0.0", "dependencies": { "mid": "*" },
  "scripts": { "build": "mkdir -p dist && echo web > dist/web.txt", "test": "echo web-test",
               "deploy": "echo deploying", "dev": "echo dev" } }"#,
        ),
        (
            "apps/web/turbo.json",
            r#"{ "extends": ["//"], "tags": ["app"], "tasks": { "build": { "env": ["$TURBO_EXTENDS$", "WEB_URL"] } } }"#,
        ),
        ("packages/lib/src/a.js", "a\n"),
        ("apps/web/src/b.js", "b\n"),
        (".gitignore", "node_modules\ndist\n.vx\n"),
    ])
}

/// Tasks executed by `vx run --force <tasks>` (everything runs, nothing from cache).
fn executed(ws: &Ws, tasks: &[&str]) -> Vec<String> {
    let mut args = vec!["--force"];
    args.extend_from_slice(tasks);
    let r = ws.run(&args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r.executed()
}

/// Each runnable task of a plan → the runnable tasks it waits for,
/// transitively (through group / no-op nodes). `deps` names the field with
/// the dependency ids; `runnable` decides which nodes execute.
fn closures(
    tasks: &[serde_json::Value],
    id: &str,
    deps: &str,
    runnable: &dyn Fn(&serde_json::Value) -> bool,
) -> BTreeMap<String, BTreeSet<String>> {
    let by_id: BTreeMap<&str, &serde_json::Value> = tasks
        .iter()
        .filter_map(|t| t[id].as_str().map(|i| (i, t)))
        .collect();
    let mut out = BTreeMap::new();
    for (i, t) in &by_id {
        if !runnable(t) {
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = t[deps]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .collect();
        let mut reached = BTreeSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d.to_string()) {
                continue;
            }
            let Some(n) = by_id.get(d) else { continue };
            if runnable(n) {
                reached.insert(d.to_string());
            }
            stack.extend(
                n[deps]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str()),
            );
        }
        out.insert(i.to_string(), reached);
    }
    out
}

/// `vx run --dry=json <task>`: runnable tasks and what each waits for.
fn vx_plan(ws: &Ws, task: &str) -> BTreeMap<String, BTreeSet<String>> {
    let r = ws.vx(&["run", "--dry=json", task]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    closures(v["tasks"].as_array().unwrap(), "id", "deps", &|t| {
        !t["command"].is_null()
    })
}

/// `vx run --dry=json <task>`: each runnable task's outputs, sorted.
fn vx_outputs(ws: &Ws, task: &str) -> BTreeMap<String, Vec<String>> {
    let r = ws.vx(&["run", "--dry=json", task]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    outputs_of(
        v["tasks"].as_array().unwrap(),
        "id",
        &|t| t["outputs"].clone(),
        &|t| !t["command"].is_null(),
    )
}

fn outputs_of(
    tasks: &[serde_json::Value],
    id: &str,
    outs: &dyn Fn(&serde_json::Value) -> serde_json::Value,
    runnable: &dyn Fn(&serde_json::Value) -> bool,
) -> BTreeMap<String, Vec<String>> {
    tasks
        .iter()
        .filter(|t| runnable(t))
        .map(|t| {
            let mut o: Vec<String> = outs(t)
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect();
            o.sort();
            (t[id].as_str().unwrap_or_default().to_string(), o)
        })
        .collect()
}

fn init(ws: &Ws, args: &[&str]) -> vx_tests::Run {
    let mut a = vec!["init"];
    a.extend_from_slice(args);
    ws.vx(&a)
}

vx_test!(turbo_repo_translates_to_the_same_tasks, || {
    let ws = turbo_repo();
    let cases: &[&[&str]] = &[&["build"], &["test"], &["deploy"], &["//#fmt"]];
    let before: Vec<Vec<String>> = cases.iter().map(|c| executed(&ws, c)).collect();
    assert_eq!(before[0], vec!["lib#build", "web#build"]);
    let plans: Vec<_> = ["build", "test", "deploy"]
        .iter()
        .map(|t| vx_plan(&ws, t))
        .collect();
    let r = init(&ws, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for f in [
        "vx.toml",
        "packages/lib/vx.toml",
        "packages/mid/vx.toml",
        "apps/web/vx.toml",
    ] {
        assert!(
            r.stdout.contains(&format!("wrote {f}")),
            "{f}: {}",
            r.stdout
        );
        assert!(ws.exists(f), "{f}");
    }
    assert!(
        r.stdout.contains("turbo.json: tasks.build.outputLogs:"),
        "{}",
        r.stdout
    );
    let web = ws.read("apps/web/vx.toml");
    assert!(
        web.contains("# from turbo.json \"web#build\", then apps/web/turbo.json \"build\""),
        "{web}"
    );
    assert!(web.contains("tags = [\"app\"]"), "{web}");
    // `web#build` replaces `build` for web (as in turbo); web's turbo.json appends.
    assert!(web.contains(r#"env = ["WEB_URL"]"#), "{web}");
    assert!(
        web.contains(r#"outputs = ["dist/**", ".next/**", "!.next/cache/**"]"#),
        "{web}"
    );
    // turbo.json gone: vx reads only the generated files.
    std::fs::rename(ws.path("turbo.json"), ws.path("turbo.json.orig")).unwrap();
    std::fs::remove_file(ws.path("apps/web/turbo.json")).unwrap();
    let after: Vec<Vec<String>> = cases.iter().map(|c| executed(&ws, c)).collect();
    assert_eq!(before, after);
    // The same edges: each task waits for the same tasks.
    for (i, t) in ["build", "test", "deploy"].iter().enumerate() {
        assert_eq!(plans[i], vx_plan(&ws, t), "vx run {t}: dependencies");
    }
    // mid has no build script: its no-op build still carries ^build.
    assert!(plans[1]["mid#test"].contains("lib#build"), "{:?}", plans[1]);
    assert!(
        plans[2]["web#deploy"].contains("lib#build"),
        "{:?}",
        plans[2]
    );
    // The same keys matter: cache:false stays uncached, env is keyed.
    let r = ws.run(&["deploy"]);
    assert_eq!(r.task("web#deploy")["cache"], "disabled");
    let r = ws.run(&["build"]);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
    let r = ws.run_env(&["build"], &[("WEB_URL", "x")]);
    assert_eq!(r.executed(), vec!["web#build"]);
    let r = ws.run_env(&["build"], &[("CI_MODE", "1")]);
    assert_eq!(r.executed(), vec!["lib#build", "web#build"]);
    // A package script that reads npm's variables still gets them.
    let r = ws.run(&["--force", "mid#test"]);
    let lines: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["type"] == "task_output")
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(lines.contains(&"mid-test mid"), "{lines:?}");
    if ws.mode == vx_tests::Mode::NoDaemon {
        compare_with_turbo(&ws);
    }
});

/// With real turbo on PATH: `turbo run <task> --dry=json` on the original
/// turbo.json lists the same tasks vx runs from the generated vx.toml.
fn compare_with_turbo(ws: &Ws) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("turbo").is_file()));
    if !found {
        println!(
            "SKIP turbo comparison: `turbo` is not on PATH (e.g. `npm install --prefix /tmp/t turbo@2` and put /tmp/t/node_modules/.bin on PATH)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // turbo's view of the original repo (its own copy: no vx.toml).
    let copy = dir.path().join("repo");
    let status = Command::new("cp")
        .arg("-r")
        .arg(ws.root())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(copy.join(".vx"));
    for f in [
        "vx.toml",
        "packages/lib/vx.toml",
        "packages/mid/vx.toml",
        "apps/web/vx.toml",
    ] {
        let _ = std::fs::remove_file(copy.join(f));
    }
    std::fs::rename(copy.join("turbo.json.orig"), copy.join("turbo.json")).unwrap();
    std::fs::write(
        copy.join("apps/web/turbo.json"),
        r#"{ "extends": ["//"], "tags": ["app"], "tasks": { "build": { "env": ["$TURBO_EXTENDS$", "WEB_URL"] } } }"#,
    )
    .unwrap();
    let _ = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&copy)
        .status();
    let _ = Command::new("npm")
        .args([
            "install",
            "--package-lock-only",
            "--no-audit",
            "--no-fund",
            "--offline",
        ])
        .current_dir(&copy)
        .output();
    for task in ["build", "test", "deploy"] {
        let out = Command::new("turbo")
            .args(["run", task, "--dry=json"])
            .env("TURBO_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1")
            .current_dir(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "turbo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut turbo: Vec<String> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["command"] != "<NONEXISTENT>")
            .filter_map(|t| t["taskId"].as_str().map(str::to_string))
            .collect();
        turbo.sort();
        assert_eq!(turbo, executed(ws, &[task]), "turbo run {task}");
        let edges = closures(
            v["tasks"].as_array().unwrap(),
            "taskId",
            "dependencies",
            &|t| t["command"] != "<NONEXISTENT>",
        );
        assert_eq!(
            edges,
            vx_plan(ws, task),
            "turbo run {task}: dependencies\n{v:#}"
        );
        let outs = outputs_of(
            v["tasks"].as_array().unwrap(),
            "taskId",
            &|t| t["resolvedTaskDefinition"]["outputs"].clone(),
            &|t| t["command"] != "<NONEXISTENT>",
        );
        assert_eq!(
            outs,
            vx_outputs(ws, task),
            "turbo run {task}: outputs\n{v:#}"
        );
        println!(
            "turbo run {task} --dry=json agrees on tasks, dependencies and outputs: {edges:?}"
        );
    }
}

fn nx_repo() -> Ws {
    Ws::new(&[
        ("package.json", r#"{ "name": "nxroot", "private": true }"#),
        (
            "nx.json",
            r#"{
  "$schema": "./node_modules/nx/schemas/nx-schema.json",
  "namedInputs": {
    "default": ["{projectRoot}/**/*", "sharedGlobals"],
    "production": ["default", "!{projectRoot}/**/*.spec.js"],
    "sharedGlobals": ["{workspaceRoot}/babel.config.json"]
  },
  "targetDefaults": {
    "build": { "dependsOn": ["^build"], "inputs": ["production", "^production"],
               "outputs": ["{projectRoot}/dist"], "cache": true },
    "test": { "dependsOn": ["build"], "inputs": ["default", { "env": "TEST_SEED" }], "cache": true }
  }
}"#,
        ),
        ("babel.config.json", "{}\n"),
        (
            "libs/util/project.json",
            r#"{ "name": "util", "targets": {
  "build": { "executor": "nx:run-commands",
             "options": { "command": "mkdir -p dist && echo util > dist/u.txt", "cwd": "libs/util" } } } }"#,
        ),
        ("libs/util/src/u.js", "u\n"),
        (
            "libs/ui/project.json",
            r#"{ "name": "ui", "implicitDependencies": ["util"], "tags": ["scope:ui"], "targets": {
  "build": { "command": "mkdir -p libs/ui/dist && echo ui > libs/ui/dist/ui.txt" },
  "test": { "executor": "nx:run-commands", "options": { "command": "test -s dist/ui.txt && echo ui-tested", "cwd": "{projectRoot}" } } } }"#,
        ),
        ("libs/ui/src/ui.js", "ui\n"),
        (
            "apps/web/project.json",
            r#"{ "name": "web", "implicitDependencies": ["ui"], "targets": {
  "build": { "executor": "nx:run-commands", "options": { "commands": ["mkdir -p dist", "echo web > dist/w.txt"], "parallel": false, "cwd": "apps/web" } },
  "serve": { "executor": "@nx/vite:dev-server", "continuous": true },
  "lint": { "executor": "@nx/eslint:lint" } } }"#,
        ),
        ("apps/web/src/w.js", "w\n"),
        (".gitignore", "dist\n.vx\n"),
    ])
}

vx_test!(nx_repo_translates_to_the_tasks_nx_describes, || {
    let ws = nx_repo();
    let r = init(&ws, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("from nx in"), "{}", r.stdout);
    // Executors vx cannot run are reported, each with its file.
    assert!(
        r.stdout
            .contains("apps/web/project.json: targets.lint.executor \"@nx/eslint:lint\":"),
        "{}",
        r.stdout
    );
    let root = ws.read("vx.toml");
    assert!(
        root.contains(r#"members = ["apps/web", "libs/ui", "libs/util"]"#),
        "{root}"
    );
    assert!(
        root.contains(r#"global_inputs = ["babel.config.json"]"#),
        "{root}"
    );
    let ui = ws.read("libs/ui/vx.toml");
    assert!(ui.contains(r#"deps = ["util"]"#), "{ui}");
    assert!(
        ui.contains("command = \"cd ../.. && mkdir -p libs/ui/dist"),
        "{ui}"
    );
    // build: ^build through implicitDependencies; test: after its own build.
    assert_eq!(
        executed(&ws, &["build"]),
        vec!["ui#build", "util#build", "web#build"]
    );
    assert_eq!(
        executed(&ws, &["web#build"]),
        vec!["ui#build", "util#build", "web#build"]
    );
    assert_eq!(
        executed(&ws, &["ui#test"]),
        vec!["ui#build", "ui#test", "util#build"]
    );
    assert_eq!(ws.read("libs/ui/dist/ui.txt"), "ui\n");
    // outputs {projectRoot}/dist are cached and restored.
    std::fs::remove_dir_all(ws.path("apps/web/dist")).unwrap();
    let r = ws.run(&["build"]);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
    assert_eq!(ws.read("apps/web/dist/w.txt"), "web\n");
    // the env input is keyed; the shared global input too.
    let r = ws.run_env(&["ui#test"], &[("TEST_SEED", "7")]);
    assert_eq!(r.executed(), vec!["ui#test"]);
    ws.write("babel.config.json", "{ \"x\": 1 }\n");
    assert_eq!(
        ws.run(&["build"]).executed(),
        vec!["ui#build", "util#build", "web#build"]
    );
});

vx_test!(scripts_repo_gets_common_tasks_with_inferred_outputs, || {
    let ws = Ws::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"], "scripts": { "ci": "turbo run build" } }"#,
        ),
        (
            "packages/lib/package.json",
            r#"{ "name": "lib", "scripts": { "build": "tsc -p tsconfig.build.json", "typecheck": "tsc --noEmit",
  "lint": "echo linted", "release": "npm publish" } }"#,
        ),
        (
            "packages/lib/tsconfig.build.json",
            r#"{ // jsonc
  "compilerOptions": { "outDir": "./lib", } }"#,
        ),
        ("packages/lib/src/index.ts", "export const x = 1;\n"),
        (
            "packages/web/package.json",
            r#"{ "name": "web", "dependencies": { "lib": "*" },
  "scripts": { "build": "next build", "dev": "next dev", "test": "echo tested" } }"#,
        ),
        (
            "packages/tool/package.json",
            r#"{ "name": "tool", "scripts": { "build": "node scripts/build.js" } }"#,
        ),
        (
            "node_modules/.bin/tsc",
            "#!/bin/sh\nmkdir -p lib && echo built > lib/index.js\n",
        ),
        (
            "node_modules/.bin/next",
            "#!/bin/sh\nmkdir -p .next/cache && echo page > .next/page.html && echo c > .next/cache/c\n",
        ),
        ("packages/tool/scripts/build.js", "// x\n"),
        (".gitignore", "node_modules\n.vx\nlib\n.next\n"),
    ]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for b in ["node_modules/.bin/tsc", "node_modules/.bin/next"] {
            std::fs::set_permissions(ws.path(b), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let r = init(&ws, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("from scripts in"), "{}", r.stdout);
    let lib = ws.read("packages/lib/vx.toml");
    assert!(lib.contains(r#"outputs = ["lib/**"]"#), "{lib}");
    assert!(
        lib.contains("# outputs: inferred from tsc (tsconfig.build.json outDir)"),
        "{lib}"
    );
    let web = ws.read("packages/web/vx.toml");
    assert!(
        web.contains(r#"outputs = [".next/**", "!.next/cache/**"]"#),
        "{web}"
    );
    assert!(
        web.contains("[tasks.dev]\ncommand = \"next dev\"\npersistent = true"),
        "{web}"
    );
    let tool = ws.read("packages/tool/vx.toml");
    assert!(
        tool.contains("# TODO: vx could not tell what this script writes"),
        "{tool}"
    );
    assert!(
        r.stdout
            .contains("packages/lib/package.json: scripts: release:"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("package.json: scripts: ci:"),
        "{}",
        r.stdout
    );
    // It runs: build with ^build, then cached and restored.
    assert_eq!(
        executed(&ws, &["build"]),
        vec!["lib#build", "tool#build", "web#build"]
    );
    std::fs::remove_dir_all(ws.path("packages/lib/lib")).unwrap();
    let r = ws.run(&["build"]);
    assert_eq!(r.executed(), vec!["tool#build"]);
    assert_eq!(ws.read("packages/lib/lib/index.js"), "built\n");
    assert_eq!(executed(&ws, &["web#test"]), vec!["lib#build", "web#test"]);
});

vx_test!(
    init_never_overwrites_without_force_and_dry_run_writes_nothing,
    || {
        let ws = turbo_repo();
        ws.write("packages/lib/vx.toml", "# mine\n");
        let r = init(&ws, &["--dry-run"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("would write vx.toml"), "{}", r.stdout);
        assert!(
            r.stdout
                .contains("would write packages/lib/vx.toml (replaced)"),
            "{}",
            r.stdout
        );
        assert!(!ws.exists("vx.toml"));
        assert_eq!(ws.read("packages/lib/vx.toml"), "# mine\n");
        let r = init(&ws, &[]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("would replace packages/lib/vx.toml"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("--force"), "{}", r.stderr);
        assert!(
            !ws.exists("vx.toml"),
            "nothing is written when one file exists"
        );
        assert_eq!(ws.read("packages/lib/vx.toml"), "# mine\n");
        let r = init(&ws, &["--force", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let lib = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "packages/lib/vx.toml")
            .unwrap();
        assert_eq!(lib["replaced"], true);
        assert!(ws.read("packages/lib/vx.toml").contains("[tasks.build]"));
        assert!(
            v["untranslated"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["file"] == "turbo.json" && i["item"] == "tasks.build.outputLogs"),
            "{v}"
        );
        // --from names a source that is not there.
        let r = init(&ws, &["--from", "nx", "--force"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("there is no nx.json"), "{}", r.stderr);
    }
);
