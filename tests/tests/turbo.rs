//! Zero-config Turborepo repos: `turbo.json` + `package.json` scripts run unchanged.

use vx_tests::{Ws, vx_test};

fn turbo_repo() -> Ws {
    Ws::new(&[
        (
            "package.json",
            r#"{ "name": "root", "private": true, "workspaces": ["packages/*"],
  "scripts": { "check": "echo root-check" } }"#,
        ),
        (
            "turbo.json",
            r#"{
  // comments are allowed, as in turbo
  "$schema": "https://turborepo.com/schema.json",
  "globalEnv": ["GLOBAL_MODE"],
  "tasks": {
    "build": { "dependsOn": ["^build"], "inputs": ["src/**"], "outputs": ["dist/**"] },
    "test": { "dependsOn": ["build"], "outputs": [] },
    "lint": {},
    "//#check": { "cache": false }
  }
}"#,
        ),
        (
            "packages/lib/package.json",
            r#"{ "name": "@acme/lib", "version": "1.2.3",
  "scripts": { "build": "mkdir -p dist && cp src/lib.js dist/lib.js && echo $npm_package_name@$npm_package_version:$npm_lifecycle_event",
               "lint": "helper-tool lint" } }"#,
        ),
        ("packages/lib/src/lib.js", "export const x = 1;\n"),
        (
            "packages/app/package.json",
            r#"{ "name": "@acme/app", "version": "0.0.1",
  "dependencies": { "@acme/lib": "workspace:*" },
  "scripts": { "build": "mkdir -p dist && cat ../lib/dist/lib.js src/app.js > dist/app.js",
               "test": "test -s dist/app.js && echo app-tested" } }"#,
        ),
        (
            "packages/app/turbo.json",
            r#"{ "extends": ["//"], "tasks": { "build": { "outputs": ["dist/**", "!dist/**/*.map"] } } }"#,
        ),
        (
            "packages/app/src/app.js",
            "import { x } from '@acme/lib';\n",
        ),
        (
            "node_modules/.bin/helper-tool",
            "#!/bin/sh\necho helper-ran \"$@\"\n",
        ),
        (".gitignore", "node_modules\ndist\n"),
    ])
}

vx_test!(a_turbo_repo_runs_unchanged, || {
    let ws = turbo_repo();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            ws.path("node_modules/.bin/helper-tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    let r = ws.run(&["build", "test", "lint"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        r.executed(),
        vec![
            "@acme/app#build",
            "@acme/app#test",
            "@acme/lib#build",
            "@acme/lib#lint"
        ]
    );
    assert_eq!(
        ws.read("packages/app/dist/app.js"),
        "export const x = 1;\nimport { x } from '@acme/lib';\n"
    );
    let lines: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["type"] == "task_output")
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(lines.contains(&"@acme/lib@1.2.3:build"), "{lines:?}");
    assert!(lines.contains(&"helper-ran lint"), "{lines:?}");
    // fully cached the second time
    let r = ws.run(&["build", "test", "lint"]);
    assert!(r.executed().is_empty(), "{:?}", r.executed());
    // an input outside `inputs` of build does not invalidate it, but test uses all files
    ws.write("packages/app/README.md", "docs\n");
    let r = ws.run(&["build", "test"]);
    assert_eq!(r.executed(), vec!["@acme/app#test"]);
    // globalEnv is keyed into every task
    let r = ws.run_env(&["build"], &[("GLOBAL_MODE", "x")]);
    assert_eq!(r.executed(), vec!["@acme/app#build", "@acme/lib#build"]);
});

vx_test!(root_tasks_and_uncached_tasks, || {
    let ws = turbo_repo();
    let r = ws.run(&["//#check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["//#check"]);
    assert_eq!(r.task("//#check")["cache"], "disabled");
    assert_eq!(ws.run(&["//#check"]).executed(), vec!["//#check"]);
});
