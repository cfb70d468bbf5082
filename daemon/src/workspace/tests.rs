//! Workspace loading tests over temporary directory trees.

use std::fs;
use std::path::Path;

use super::*;

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), files);
    t
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (p, c) in files {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, c).unwrap();
    }
}

fn err(files: &[(&str, &str)]) -> ConfigError {
    let t = tree(files);
    load(t.path()).expect_err("expected a config error")
}

fn names(ws: &Workspace) -> Vec<&str> {
    ws.projects.iter().map(|p| p.name.as_str()).collect()
}

// ---------------------------------------------------------------- vx.toml

#[test]
fn vx_workspace_with_deps() {
    let t = tree(&[
        (
            "vx.toml",
            r#"
[workspace]
members = ["packages/*", "apps/*", "!packages/legacy"]
concurrency = 4
timeout = "10m"
cache_dir = ".vx/cache"
global_inputs = ["tsconfig.base.json"]
global_env = ["NODE_ENV"]
global_pass_env = ["AWS_PROFILE"]
"#,
        ),
        (
            "packages/lib/vx.toml",
            r#"
[project]
tags = ["lib", "core"]
[tasks.build]
command = "tsc -b"
inputs = ["src/**", "!src/**/*.test.ts"]
outputs = ["dist/**"]
env = ["NODE_ENV", "VITE_*"]
define = { MODE = "prod" }
timeout = 30000
retries = 2
[tasks.lint]
command = "eslint ."
"#,
        ),
        ("packages/legacy/vx.toml", "[tasks.x]\ncommand = \"x\"\n"),
        (
            "apps/web/vx.toml",
            r#"
[project]
name = "web"
deps = ["lib"]
[tasks.dev]
command = "vite"
persistent = true
ready_when = "listening on"
inputs = ["**"]
outputs = []
[tasks.all]
depends_on = ["^build", "lint", "lib#build"]
[tasks.lint]
command = "eslint ."
"#,
        ),
        (
            "apps/web/package.json",
            r#"{"name": "@x/web-pkg", "version": "1.0.0"}"#,
        ),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(ws.kind, ConfigKind::Vx);
    assert_eq!(names(&ws), vec!["lib", "web"]);
    let lib = ws.project("lib").unwrap();
    assert_eq!(lib.dir, "packages/lib");
    assert_eq!(lib.tags, vec!["core", "lib"]);
    assert_eq!(lib.config_file, "packages/lib/vx.toml");
    let b = &lib.tasks["build"];
    assert!(b.cache);
    assert_eq!(b.inputs, vec!["src/**", "!src/**/*.test.ts"]);
    assert_eq!(b.timeout_ms, Some(30_000));
    assert_eq!(b.retries, 2);
    assert_eq!(b.define["MODE"], "prod");
    assert!(
        !lib.tasks["lint"].cache,
        "cache needs both inputs and outputs"
    );
    assert_eq!(lib.tasks["lint"].inputs, vec!["**"]);
    let web = ws.project("web").unwrap();
    assert_eq!(web.deps, vec!["lib"]);
    assert_eq!(web.version.as_deref(), Some("1.0.0"));
    assert!(!web.tasks["dev"].cache);
    assert_eq!(web.tasks["dev"].ready_when.as_deref(), Some("listening on"));
    assert_eq!(web.tasks["all"].command, None);
    assert_eq!(
        web.tasks["all"].depends_on,
        vec!["^build", "lint", "lib#build"]
    );
    assert_eq!(ws.defaults.concurrency, Some(4));
    assert_eq!(ws.defaults.timeout_ms, Some(600_000));
    assert_eq!(ws.defaults.cache_dir, Some(ws.root.join(".vx/cache")));
    assert_eq!(ws.global.inputs, vec!["tsconfig.base.json"]);
    assert_eq!(ws.global.env, vec!["NODE_ENV"]);
    assert_eq!(ws.global.pass_env, vec!["AWS_PROFILE"]);
    assert_eq!(
        ws.config_files,
        vec![
            "apps/web/package.json",
            "apps/web/vx.toml",
            "packages/lib/vx.toml",
            "vx.toml"
        ]
    );
    assert!(ws.project("//").is_none());
}

#[test]
fn vx_root_tasks_make_root_project() {
    let t = tree(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"pkgs/*\"]\n[project]\ntags = [\"root\"]\ndeps = [\"a\"]\n[tasks.fmt]\ncommand = \"prettier -w .\"\n",
        ),
        (
            "pkgs/a/vx.toml",
            "[tasks.t]\ncommand = \"true\"\ndepends_on = [\"//#fmt\"]\n",
        ),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(names(&ws), vec!["//", "a"]);
    let root = ws.project("//").unwrap();
    assert_eq!(root.dir, ".");
    assert_eq!(root.deps, vec!["a"]);
    assert_eq!(root.tags, vec!["root"]);
    assert!(root.tasks.contains_key("fmt"));
    // a project named by its directory (no package.json, no name)
    assert_eq!(ws.project("a").unwrap().dir, "pkgs/a");
}

#[test]
fn single_project_workspace() {
    let t = tree(&[(
        "package.json",
        r#"{"name": "solo", "version": "0.1.0", "scripts": {"build": "tsc"}}"#,
    )]);
    let ws = load(t.path()).unwrap();
    assert_eq!(names(&ws), vec!["solo"]);
    assert_eq!(ws.projects[0].dir, ".");
    assert!(ws.projects[0].tasks.is_empty());
}

// ---------------------------------------------------------------- npm / pnpm

#[test]
fn npm_workspaces_and_local_deps() {
    let t = tree(&[
        (
            "package.json",
            r#"{"name": "root", "private": true, "workspaces": ["packages/*"]}"#,
        ),
        (
            "packages/a/package.json",
            r#"{"name": "a", "version": "1.2.0"}"#,
        ),
        (
            "packages/b/package.json",
            r#"{"name": "b", "version": "2.0.0", "dependencies": {"a": "workspace:*"}}"#,
        ),
        (
            "packages/c/package.json",
            r#"{"name": "c", "devDependencies": {"a": "^1.1.0", "b": "^1.0.0", "react": "^18"}}"#,
        ),
        (
            "packages/d/package.json",
            r#"{"name": "d", "dependencies": {"b": "latest"}, "optionalDependencies": {"a": "~1.2"}, "peerDependencies": {"c": "*"}}"#,
        ),
        ("packages/noname/package.json", r#"{"version": "1.0.0"}"#),
        ("packages/d/vx.toml", "[tasks.build]\ncommand = \"make\"\n"),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(ws.kind, ConfigKind::Vx);
    assert_eq!(names(&ws), vec!["a", "b", "c", "d"]);
    assert_eq!(ws.project("b").unwrap().deps, vec!["a"]);
    assert_eq!(
        ws.project("c").unwrap().deps,
        vec!["a"],
        "^1.0.0 does not match b@2.0.0"
    );
    assert_eq!(ws.project("d").unwrap().deps, vec!["a", "c"]);
    assert!(ws.project("d").unwrap().tasks.contains_key("build"));
    assert_eq!(
        ws.project("a").unwrap().config_file,
        "packages/a/package.json"
    );
}

#[test]
fn yarn_object_workspaces_and_peer_cycles() {
    let t = tree(&[
        (
            "package.json",
            r#"{"workspaces": {"packages": ["libs/*"]}}"#,
        ),
        (
            "libs/a/package.json",
            r#"{"name": "a", "dependencies": {"b": "*"}}"#,
        ),
        (
            "libs/b/package.json",
            r#"{"name": "b", "peerDependencies": {"a": "*"}}"#,
        ),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(ws.project("a").unwrap().deps, vec!["b"]);
    assert!(
        ws.project("b").unwrap().deps.is_empty(),
        "peer edge closing a cycle is dropped"
    );
}

#[test]
fn pnpm_workspace() {
    let t = tree(&[
        ("package.json", r#"{"name": "root"}"#),
        (
            "pnpm-workspace.yaml",
            "packages:\n  - 'packages/**'\n  - '!**/test/**'\ncatalog:\n  react: ^18\n",
        ),
        (
            "packages/x/package.json",
            r#"{"name": "x", "version": "1.0.0"}"#,
        ),
        (
            "packages/group/y/package.json",
            r#"{"name": "y", "dependencies": {"x": "workspace:^1"}}"#,
        ),
        ("packages/test/z/package.json", r#"{"name": "z"}"#),
        ("packages/x/node_modules/q/package.json", r#"{"name": "q"}"#),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(names(&ws), vec!["x", "y"]);
    assert_eq!(ws.project("y").unwrap().deps, vec!["x"]);
    assert!(ws.config_files.contains(&"pnpm-workspace.yaml".to_string()));
}

// ---------------------------------------------------------------- turbo

#[test]
fn turbo_tasks_overrides_and_root_tasks() {
    let t = tree(&[
        (
            "package.json",
            r#"{"name": "mono", "workspaces": ["apps/*", "packages/*"], "scripts": {"format": "prettier -w .", "build": "nope"}}"#,
        ),
        (
            "turbo.json",
            r#"{
  "$schema": "https://turbo.build/schema.json",
  // line comment
  "ui": "tui",
  "globalDependencies": ["tsconfig.json"],
  "globalEnv": ["CI"],
  "globalPassThroughEnv": ["HOME"],
  "tasks": {
    "build": {
      "dependsOn": ["^build"],
      "inputs": ["$TURBO_DEFAULT$", "!README.md", "$TURBO_ROOT$/tsconfig.json"],
      "outputs": ["dist/**"], /* block
      comment */
      "env": ["API_URL"],
    },
    "web#build": { "outputs": [".next/**", "!.next/cache/**"] },
    "dev": { "cache": false, "persistent": true },
    "test": { "dependsOn": ["build", "//#format"], "passThroughEnv": ["DISPLAY"], "outputLogs": "new-only" },
    "//#format": { "cache": false },
  },
}"#,
        ),
        (
            "apps/web/package.json",
            r#"{"name": "web", "version": "1.0.0", "scripts": {"build": "next build", "dev": "next dev", "test": "jest"}, "dependencies": {"ui": "workspace:*"}}"#,
        ),
        ("apps/web/vx.toml", "this is = not read"),
        (
            "packages/ui/package.json",
            r#"{"name": "ui", "scripts": {"build": "tsc", "lint": "eslint"}}"#,
        ),
        (
            "packages/ui/turbo.json",
            r#"{"extends": ["//"], "tags": ["lib"], "tasks": {"build": {"outputs": ["$TURBO_EXTENDS$", "types/**"], "inputs": ["src/**"]}, "lint": {}}}"#,
        ),
        (
            "packages/cfg/package.json",
            r#"{"name": "cfg", "scripts": {}}"#,
        ),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(ws.kind, ConfigKind::Turbo);
    assert_eq!(names(&ws), vec!["//", "cfg", "ui", "web"]);
    let web = ws.project("web").unwrap();
    assert_eq!(web.deps, vec!["ui"]);
    let b = &web.tasks["build"];
    assert_eq!(b.command.as_deref(), Some("next build"));
    assert!(b.npm_script && b.cache);
    // `web#build` replaces the generic `build` for web (as turbo 2.x does).
    assert!(b.depends_on.is_empty());
    assert_eq!(b.inputs, vec!["**"]);
    assert!(b.root_inputs.is_empty());
    assert_eq!(b.outputs, vec![".next/**", "!.next/cache/**"]);
    assert!(b.env.is_empty());
    let ub = &ws.project("ui").unwrap().tasks["build"];
    assert_eq!(ub.depends_on, vec!["^build"]);
    assert_eq!(ub.env, vec!["API_URL"]);
    assert!(!web.tasks["dev"].cache && web.tasks["dev"].persistent);
    assert_eq!(web.tasks["test"].pass_env, vec!["DISPLAY"]);
    assert_eq!(web.tasks["test"].inputs, vec!["**"]);
    let ui = ws.project("ui").unwrap();
    assert_eq!(ui.config_file, "packages/ui/turbo.json");
    assert_eq!(ui.tags, vec!["lib"]);
    assert_eq!(ui.tasks["build"].outputs, vec!["dist/**", "types/**"]);
    assert_eq!(ui.tasks["build"].inputs, vec!["src/**"]);
    assert!(ui.tasks["lint"].cache);
    // No script: a no-op node (turbo's transit node), keyed but executing nothing.
    let noop = &ui.tasks["test"];
    assert_eq!(noop.command, None);
    assert!(!noop.npm_script);
    assert_eq!(noop.depends_on, vec!["build", "//#format"]);
    let dev = &ui.tasks["dev"];
    assert!(dev.command.is_none() && !dev.persistent, "{dev:?}");
    let cfg = ws.project("cfg").unwrap();
    assert_eq!(
        cfg.tasks.keys().collect::<Vec<_>>(),
        vec!["build", "dev", "test"]
    );
    assert!(cfg.tasks.values().all(|t| t.command.is_none()));
    let root = ws.project("//").unwrap();
    assert_eq!(root.dir, ".");
    assert_eq!(root.tasks.keys().collect::<Vec<_>>(), vec!["format"]);
    assert_eq!(
        root.tasks["format"].command.as_deref(),
        Some("prettier -w .")
    );
    assert!(!root.tasks["format"].cache);
    assert_eq!(ws.global.inputs, vec!["tsconfig.json"]);
    assert_eq!(ws.global.env, vec!["CI"]);
    assert_eq!(ws.global.pass_env, vec!["HOME"]);
    assert!(!ws.config_files.iter().any(|f| f.ends_with("vx.toml")));
    assert!(
        ws.config_files
            .contains(&"packages/ui/turbo.json".to_string())
    );
}

#[test]
fn turbo_legacy_pipeline() {
    let t = tree(&[
        ("package.json", r#"{"workspaces": ["p/*"]}"#),
        (
            "turbo.json",
            r#"{"pipeline": {"build": {"outputs": ["out/**"]}}}"#,
        ),
        (
            "p/a/package.json",
            r#"{"name": "a", "scripts": {"build": "make"}}"#,
        ),
    ]);
    let ws = load(t.path()).unwrap();
    assert_eq!(
        ws.project("a").unwrap().tasks["build"].outputs,
        vec!["out/**"]
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn unknown_field_has_line_and_pointer() {
    let e = err(&[
        ("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n"),
        (
            "p/a/vx.toml",
            "[tasks.build]\ncommand = \"x\"\ndependsOn = [\"^build\"]\n",
        ),
    ]);
    assert_eq!(e.file.as_deref(), Some(Path::new("p/a/vx.toml")));
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("unknown field `dependsOn`"), "{e}");
    assert!(e.message.contains("[tasks.build]"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("`depends_on`"), "{e}");

    let e = err(&[("vx.toml", "[workspace]\n\n[tasks.b]\ncomand = \"x\"\n")]);
    assert_eq!((e.line, e.column), (Some(4), Some(1)));
    assert_eq!(e.hint.as_deref(), Some("did you mean `command`?"));
    assert!(
        e.to_string()
            .starts_with("vx.toml:4:1: unknown field `comand`"),
        "{e}"
    );

    let e = err(&[("vx.toml", "[workspace]\nzzzz = 1\n")]);
    assert!(
        e.hint
            .as_deref()
            .unwrap()
            .starts_with("expected one of: `members`"),
        "{e}"
    );
}

#[test]
fn malformed_files_have_positions() {
    let e = err(&[("vx.toml", "[workspace]\nmembers = [\"a\"\n")]);
    assert_eq!(e.file.as_deref(), Some(Path::new("vx.toml")));
    assert!(e.line.is_some(), "{e}");

    let e = err(&[
        ("package.json", r#"{"workspaces": ["p/*"]}"#),
        (
            "p/a/package.json",
            "{\n  \"name\": \"a\",\n  \"version\" \"1\"\n}",
        ),
    ]);
    assert_eq!(e.file.as_deref(), Some(Path::new("p/a/package.json")));
    assert_eq!(e.line, Some(3), "{e}");

    let e = err(&[
        ("package.json", r#"{"workspaces": []}"#),
        (
            "turbo.json",
            "{\n  // ok\n  \"tasks\": {\n    \"build\": {\"dependsOn\": [\"^build\"]}\n  },\n  \"globalEnvv\": []\n}",
        ),
    ]);
    assert_eq!(e.file.as_deref(), Some(Path::new("turbo.json")));
    assert_eq!(e.line, Some(6), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `globalEnv`?"));

    let e = err(&[
        ("package.json", r#"{"workspaces": []}"#),
        ("turbo.json", r#"{"tasks": {"build": {"dependson": []}}}"#),
    ]);
    assert_eq!(e.hint.as_deref(), Some("did you mean `dependsOn`?"), "{e}");

    let e = err(&[("pnpm-workspace.yaml", "packages:\n  - [oops\n")]);
    assert_eq!(e.file.as_deref(), Some(Path::new("pnpm-workspace.yaml")));
}

#[test]
fn bad_globs() {
    let e = err(&[(
        "vx.toml",
        "[workspace]\n[tasks.b]\ncommand = \"x\"\ninputs = [\"src/**\", \"../up/**\"]\n",
    )]);
    assert_eq!(e.line, Some(4), "{e}");
    assert!(
        e.message.contains("`../up/**`") && e.message.contains("`inputs` of task `b`"),
        "{e}"
    );

    let e = err(&[(
        "vx.toml",
        "[workspace]\nmembers = [\n  \"ok/*\",\n  \"../outside/*\",\n]\n",
    )]);
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("outside the workspace root"), "{e}");

    let e = err(&[
        ("package.json", r#"{"workspaces": ["p/*"]}"#),
        (
            "turbo.json",
            "{\n\"tasks\": {\"b\": {\n\"outputs\": [\"dist/{a\"]}}}",
        ),
    ]);
    assert_eq!(
        (e.file.as_deref(), e.line),
        (Some(Path::new("turbo.json")), Some(3)),
        "{e}"
    );
}

#[test]
fn duplicate_names_and_cycles() {
    let e = err(&[
        ("package.json", r#"{"workspaces": ["a/*", "b/*"]}"#),
        ("a/x/package.json", r#"{"name": "x"}"#),
        ("b/x/package.json", r#"{"name": "x"}"#),
    ]);
    assert!(
        e.message
            .contains("duplicate project name `x`: `a/x` and `b/x`"),
        "{e}"
    );

    let e = err(&[
        ("package.json", r#"{"workspaces": ["p/*"]}"#),
        (
            "p/a/package.json",
            r#"{"name": "a", "dependencies": {"b": "*"}}"#,
        ),
        (
            "p/b/package.json",
            r#"{"name": "b", "dependencies": {"c": "workspace:*"}}"#,
        ),
        (
            "p/c/package.json",
            r#"{"name": "c", "devDependencies": {"a": "*"}}"#,
        ),
    ]);
    assert!(e.message.contains("a → b → c → a"), "{e}");
}

#[test]
fn unknown_projects() {
    let e = err(&[
        ("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n"),
        ("p/lib/vx.toml", ""),
        ("p/web/vx.toml", "[project]\ndeps = [\"lbi\"]\n"),
    ]);
    assert_eq!(e.file.as_deref(), Some(Path::new("p/web/vx.toml")));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("unknown project `lbi`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `lib`?"));

    let e = err(&[
        ("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n"),
        (
            "p/lib/vx.toml",
            "[tasks.b]\ndepends_on = [\"lib#x\", \"nope#b\"]\n",
        ),
    ]);
    assert!(e.message.contains("unknown project `nope`"), "{e}");

    let e = err(&[
        ("package.json", r#"{"workspaces": ["p/*"]}"#),
        ("p/web/package.json", r#"{"name": "web"}"#),
        ("turbo.json", r#"{"tasks": {"wbe#build": {}}}"#),
    ]);
    assert_eq!(e.hint.as_deref(), Some("did you mean `web`?"), "{e}");
}

#[test]
fn task_rule_violations() {
    let cases: &[(&str, &str)] = &[
        (
            "[tasks.g]\ndepends_on = []\ncache = true\n",
            "group task `g`",
        ),
        (
            "[tasks.g]\ndescription = \"x\"\n",
            "neither `command` nor `depends_on`",
        ),
        (
            "[tasks.p]\ncommand = \"x\"\npersistent = true\ncache = true\n",
            "persistent and cannot be cached",
        ),
        (
            "[tasks.p]\ncommand = \"x\"\ninteractive = true\ncache = true\n",
            "interactive and cannot be cached",
        ),
        (
            "[tasks.p]\ncommand = \"x\"\nready_when = \"up\"\n",
            "without `persistent = true`",
        ),
        (
            "[tasks.p]\ncommand = \"x\"\npersistent = true\nretries = 1\n",
            "cannot set `retries`",
        ),
        (
            "[tasks.p]\ncommand = \"x\"\npersistent = true\nready_when = \"up(\"\n",
            "not a valid regular expression",
        ),
        ("[tasks.\"a#b\"]\ncommand = \"x\"\n", "may not contain `#`"),
        ("[tasks.\"^a\"]\ncommand = \"x\"\n", "may not start with"),
        (
            "[tasks.a]\ncommand = \"x\"\ndepends_on = [\"^a#b\"]\n",
            "invalid dependency",
        ),
        (
            "[tasks.a]\ncommand = \"x\"\ntimeout = \"5 days\"\n",
            "invalid duration",
        ),
        ("[tasks.a]\ncommand = \"  \"\n", "is empty"),
        (
            "[tasks.a]\ncommand = \"x\"\nenv = [\"A-B\"]\n",
            "invalid env name",
        ),
        (
            "[project]\nname = \"x\"\n[tasks.a]\ncommand = \"x\"\n",
            "always named `//`",
        ),
    ];
    for (body, want) in cases {
        let e = err(&[("vx.toml", &format!("[workspace]\n{body}"))]);
        assert!(e.to_string().contains(want), "{body:?}: got {e}");
        assert_eq!(e.file.as_deref(), Some(Path::new("vx.toml")), "{body:?}");
    }
    let e = err(&[
        ("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n"),
        (
            "p/a/vx.toml",
            "[tasks.a]\ncommand = \"x\"\ndepends_on = [\"//#fmt\"]\n",
        ),
    ]);
    assert!(e.message.contains("unknown project `//`"), "{e}");
    assert!(
        e.hint
            .as_deref()
            .unwrap()
            .contains("root config defines tasks"),
        "{e}"
    );
    let e = err(&[("vx.toml", "[workspace]\nconcurrency = 0\n")]);
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn turbo_rule_violations() {
    let base = ("package.json", r#"{"workspaces": ["p/*"]}"#);
    let e = err(&[
        base,
        (
            "turbo.json",
            r#"{"tasks": {"b": {"dependsOn": ["$API_KEY"]}}}"#,
        ),
    ]);
    assert!(e.hint.as_deref().unwrap().contains("`env`"), "{e}");
    let e = err(&[
        base,
        ("turbo.json", r#"{"tasks": {}}"#),
        ("p/a/package.json", r#"{"name": "a"}"#),
        ("p/a/turbo.json", r#"{"extends": ["other"], "tasks": {}}"#),
    ]);
    assert!(e.message.contains("extends"), "{e}");
    assert_eq!(e.file.as_deref(), Some(Path::new("p/a/turbo.json")));
    let e = err(&[base, ("turbo.json", r#"{"tasks": {}, "pipeline": {}}"#)]);
    assert!(e.message.contains("both `tasks` and `pipeline`"), "{e}");
}

#[test]
fn member_vx_toml_may_not_declare_workspace() {
    let e = err(&[
        ("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n"),
        ("p/a/vx.toml", "\n[workspace]\n"),
    ]);
    assert_eq!(
        (e.file.as_deref(), e.line),
        (Some(Path::new("p/a/vx.toml")), Some(2)),
        "{e}"
    );
}

// ---------------------------------------------------------------- find_root

#[test]
fn find_root_claims() {
    let t = tree(&[
        ("package.json", r#"{"workspaces": ["packages/*"]}"#),
        ("packages/a/package.json", r#"{"name": "a"}"#),
        ("packages/a/src/x.ts", ""),
        // a nested workspace listed by the outer one
        (
            "packages/nested/package.json",
            r#"{"name": "n", "workspaces": ["libs/*"]}"#,
        ),
        ("packages/nested/libs/l/package.json", r#"{"name": "l"}"#),
        ("tools/loose/package.json", r#"{"name": "loose"}"#),
        ("other/vx.toml", "[workspace]\nmembers = [\"m/*\"]\n"),
        ("other/m/x/vx.toml", ""),
        ("other/m/x/deep/f", ""),
        ("other/unclaimed/f", ""),
    ]);
    let r = t.path().canonicalize().unwrap();
    let at = |p: &str| find_root(&t.path().join(p)).unwrap();
    assert_eq!(at("."), r);
    assert_eq!(at("packages/a/src"), r);
    assert_eq!(at("packages/nested"), r.join("packages/nested"));
    assert_eq!(at("packages/nested/libs/l"), r.join("packages/nested"));
    assert_eq!(
        at("tools/loose"),
        r,
        "nearest candidate when nothing claims"
    );
    assert_eq!(at("other/m/x/deep"), r.join("other"));
    assert_eq!(at("other/unclaimed"), r.join("other"));
}

#[test]
fn find_root_fallback_and_none() {
    let t = tree(&[("solo/vx.toml", ""), ("solo/src/a", ""), ("empty/x/f", "")]);
    let r = t.path().canonicalize().unwrap();
    assert_eq!(
        find_root(&t.path().join("solo/src")).unwrap(),
        r.join("solo")
    );
    // A per-package turbo.json is not a root.
    let t2 = tree(&[
        ("package.json", r#"{"workspaces": ["p/*"]}"#),
        ("turbo.json", "{}"),
        ("p/a/package.json", r#"{"name": "a"}"#),
        ("p/a/turbo.json", r#"{"extends": ["//"]}"#),
    ]);
    assert_eq!(
        find_root(&t2.path().join("p/a")).unwrap(),
        t2.path().canonicalize().unwrap()
    );
    // Only fails when no manifest exists up to `/`, which a temp dir can't
    // guarantee; check the message through a direct error instead.
    if let Err(e) = find_root(&t.path().join("empty/x")) {
        assert!(e.message.starts_with("no workspace found above"), "{e}");
    }
}

// ---------------------------------------------------------------- scale

#[test]
fn loads_many_packages_fast() {
    let t = tempfile::tempdir().unwrap();
    let n = 1200;
    let mut files = vec![(
        "package.json".to_string(),
        r#"{"workspaces": ["packages/*"]}"#.to_string(),
    )];
    for i in 0..n {
        let dep = if i > 0 {
            format!(
                r#", "dependencies": {{"p{}": "workspace:*", "react": "^18"}}"#,
                i - 1
            )
        } else {
            String::new()
        };
        files.push((
            format!("packages/p{i}/package.json"),
            format!(
                r#"{{"name": "p{i}", "version": "1.0.0", "scripts": {{"build": "tsc"}}{dep}}}"#
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write(t.path(), &refs);
    let start = std::time::Instant::now();
    let ws = load(t.path()).unwrap();
    let took = start.elapsed();
    eprintln!("loaded {n} packages in {took:?}");
    assert_eq!(ws.projects.len(), n);
    assert_eq!(ws.project("p10").unwrap().deps, vec!["p9"]);
    // Generous bound for debug builds on slow CI.
    assert!(took.as_millis() < 3000, "took {took:?}");
}

// ---------------------------------------------------------------- trust (issue 9)

#[test]
fn invalid_utf8_names_file_line_and_column() {
    let t = tree(&[("vx.toml", "[workspace]\nmembers = [\"p/*\"]\n")]);
    fs::create_dir_all(t.path().join("p/a")).unwrap();
    fs::write(
        t.path().join("p/a/vx.toml"),
        b"[tasks.build]\ncommand = \"echo h\xe9llo\"\n",
    )
    .unwrap();
    let e = load(t.path()).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(Path::new("p/a/vx.toml")), "{e}");
    assert_eq!((e.line, e.column), (Some(2), Some(18)), "{e}");
    assert!(e.message.contains("invalid UTF-8 (byte 0xe9)"), "{e}");

    let t = tree(&[("package.json", r#"{"workspaces": []}"#)]);
    fs::write(t.path().join("turbo.json"), b"{\n  \"tasks\": {\xff}\n}").unwrap();
    let e = load(&find_root(t.path()).unwrap()).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(Path::new("turbo.json")), "{e}");
    assert_eq!((e.line, e.column), (Some(2), Some(13)), "{e}");
}

#[test]
fn outputs_overlapping_sources_or_config_are_refused() {
    // (vx.toml task body, message part, line)
    let cases: &[(&str, &str, usize)] = &[
        (
            "command = \"fmt\"\ninputs = [\"src/**\"]\noutputs = [\"src/**\"]\n",
            "`src/**` in `outputs` of task `t` overlaps the input pattern `src/**`",
            4,
        ),
        (
            "command = \"gen\"\noutputs = [\"**\"]\n",
            "`**` in `outputs` of task `t` selects every file of the project",
            3,
        ),
        (
            "command = \"gen\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\",\n  \"*.toml\"]\n",
            "`*.toml` in `outputs` of task `t` selects `vx.toml`",
            5,
        ),
    ];
    for (body, msg, line) in cases {
        let e = err(&[
            ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
            ("p/vx.toml", &format!("[tasks.t]\n{body}")),
        ]);
        assert_eq!(e.file.as_deref(), Some(Path::new("p/vx.toml")), "{e}");
        assert!(e.message.contains(msg), "{e}\nlacks {msg}");
        assert_eq!(e.line, Some(*line), "{e}");
        assert!(
            e.message
                .contains("deletes a task's outputs before it runs")
        );
        assert!(e.hint.is_some());
    }
    // A generator writing next to its sources says so.
    let t = tree(&[
        ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
        (
            "p/vx.toml",
            "[tasks.t]\ncommand = \"gen\"\ninputs = [\"src/**\", \"!src/gen/**\"]\noutputs = [\"src/gen/**\"]\n",
        ),
    ]);
    load(t.path()).unwrap();

    // turbo: the usual patterns load; overlap is refused at its line.
    let t = tree(&[
        ("package.json", r#"{"workspaces": ["p"]}"#),
        (
            "turbo.json",
            r#"{"tasks": {"build": {"inputs": ["$TURBO_DEFAULT$", "!README.md"], "outputs": [".next/**", "!.next/cache/**", "dist/**", "*.tsbuildinfo"]}}}"#,
        ),
        (
            "p/package.json",
            r#"{"name": "p", "scripts": {"build": "b"}}"#,
        ),
    ]);
    load(t.path()).unwrap();
    let e = err(&[
        ("package.json", r#"{"workspaces": ["p"]}"#),
        (
            "turbo.json",
            "{\"tasks\": {\n  \"fmt\": {\"inputs\": [\"src/**\"],\n    \"outputs\": [\"src/**\"]}}}",
        ),
    ]);
    assert_eq!(e.file.as_deref(), Some(Path::new("turbo.json")), "{e}");
    assert!(
        e.message.contains("overlaps the input pattern `src/**`"),
        "{e}"
    );
    assert_eq!(e.line, Some(2), "{e}");
    // Overlap that only appears once a package's turbo.json is merged.
    let e = err(&[
        ("package.json", r#"{"workspaces": ["p"]}"#),
        (
            "turbo.json",
            r#"{"tasks": {"fmt": {"inputs": ["src/**"], "outputs": ["dist/**"]}}}"#,
        ),
        (
            "p/package.json",
            r#"{"name": "p", "scripts": {"fmt": "f"}}"#,
        ),
        (
            "p/turbo.json",
            r#"{"extends": ["//"], "tasks": {"fmt": {"outputs": ["src/**"]}}}"#,
        ),
    ]);
    assert_eq!(e.file.as_deref(), Some(Path::new("p/turbo.json")), "{e}");
    assert!(
        e.message.contains("overlaps the input pattern `src/**`"),
        "{e}"
    );
}

#[test]
fn dangerous_cache_dirs_are_refused_at_their_line() {
    let cases: &[(&str, &str)] = &[
        (".", "is the workspace root"),
        ("./", "is the workspace root"),
        ("..", "contains the workspace"),
        ("/", "is the filesystem root"),
        ("~/", "is your home directory"),
        ("~", "is your home directory"),
        ("packages", "contains project `a`"),
        ("packages/a/src", "inside the sources of project `a`"),
        ("~bob/cache", "`~bob` is not expanded"),
    ];
    for (d, msg) in cases {
        let e = err(&[
            (
                "vx.toml",
                &format!("[workspace]\nmembers = [\"packages/*\"]\ncache_dir = {d:?}\n"),
            ),
            ("packages/a/vx.toml", "[tasks.b]\ncommand = \"true\"\n"),
        ]);
        assert_eq!(e.file.as_deref(), Some(Path::new("vx.toml")), "{d}: {e}");
        assert_eq!((e.line, e.column), (Some(3), Some(13)), "{d}: {e}");
        assert!(e.message.contains(msg), "{d}: {e}\nlacks {msg}");
        assert!(e.hint.as_deref().unwrap().contains(".vx/cache"), "{e}");
    }
    for ok in [".vx/cache", "build-cache", "node_modules/.cache/vx"] {
        let t = tree(&[
            (
                "vx.toml",
                &format!("[workspace]\nmembers = [\"packages/*\"]\ncache_dir = {ok:?}\n"),
            ),
            ("packages/a/vx.toml", "[tasks.b]\ncommand = \"true\"\n"),
        ]);
        let ws = load(t.path()).unwrap();
        assert_eq!(
            ws.defaults.cache_dir,
            Some(t.path().canonicalize().unwrap().join(ok))
        );
    }
}

#[test]
fn workers_section_and_labels() {
    let ws = "[workspace]\nmembers = []\n";
    // Absent: defaults; no root vx.toml: none.
    let t = tree(&[("vx.toml", ws)]);
    assert_eq!(workers_config(t.path()).unwrap(), None);
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(workers_config(empty.path()).unwrap(), None);
    let t = tree(&[(
        "vx.toml",
        &format!(
            "{ws}\n[workers]\nlisten = \"0.0.0.0:7420\"\ntoken = \"s3cret\"\nlease = \"30s\"\nretries = 4\n"
        ),
    )]);
    assert_eq!(
        workers_config(t.path()).unwrap(),
        Some(WorkersConfig {
            listen: Some("0.0.0.0:7420".into()),
            token: Some("s3cret".into()),
            lease_ms: 30_000,
            retries: 4,
        })
    );
    // Bad values: the file, the line and what was expected.
    let cases: &[(&str, &str, &str)] = &[
        ("listen = \"nowhere\"", "vx.toml:5", "is not `host:port`"),
        ("listen = \"::1:80\"", "vx.toml:5", "is not `host:port`"),
        ("token = \"a b\"", "vx.toml:5", "without whitespace"),
        ("lease = 10", "vx.toml:5", "between 1s and 1h"),
        ("lease = \"soon\"", "vx.toml:5", "invalid duration"),
        ("retries = 101", "vx.toml:5", "between 0 and 100"),
        ("retry = 1", "vx.toml", "unknown field `retry`"),
    ];
    for (line, at, want) in cases {
        let t = tree(&[("vx.toml", &format!("{ws}\n[workers]\n{line}\n"))]);
        let e = workers_config(t.path()).unwrap_err().to_string();
        assert!(e.contains(at) && e.contains(want), "{line}: {e}");
        // The workspace load refuses it too.
        assert!(load(t.path()).is_err(), "{line}");
    }
    // Only in the root.
    let e = err(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        ("a/vx.toml", "[workers]\nretries = 1\n"),
    ]);
    assert!(e.to_string().contains("belongs in the root"), "{e}");
    // Task labels: kept sorted and unique; checked; not on a group task.
    let t = tree(&[(
        "vx.toml",
        &format!("{ws}\n[tasks.t]\ncommand = \"x\"\nlabels = [\"linux\", \"gpu\", \"gpu\"]\n"),
    )]);
    let w = load(t.path()).unwrap();
    assert_eq!(w.projects[0].tasks["t"].labels, vec!["gpu", "linux"]);
    let e = err(&[(
        "vx.toml",
        &format!("{ws}\n[tasks.t]\ncommand = \"x\"\nlabels = [\"a b\"]\n"),
    )]);
    assert!(e.to_string().contains("invalid label `a b`"), "{e}");
    let e = err(&[(
        "vx.toml",
        &format!("{ws}\n[tasks.g]\ndepends_on = []\nlabels = [\"gpu\"]\n"),
    )]);
    assert!(e.to_string().contains("cannot set `labels`"), "{e}");
}

#[test]
fn remote_execution_execute_platform_and_task_remote() {
    let ws = "[workspace]\nmembers = []\n";
    let t = tree(&[(
        "vx.toml",
        &format!(
            "{ws}\n[remote_execution]\nendpoint = \"grpc://127.0.0.1:1\"\nexecute = true\nplatform = {{ OSFamily = \"linux\", \"container-image\" = \"docker://x\" }}\n\n[tasks.a]\ncommand = \"x\"\nremote = false\n\n[tasks.b]\ncommand = \"y\"\n"
        ),
    )]);
    let w = load(t.path()).unwrap();
    let re = w.defaults.remote_execution.clone().unwrap();
    assert!(re.execute);
    // Sorted by name (byte order).
    assert_eq!(
        re.platform,
        vec![
            ("OSFamily".to_string(), "linux".to_string()),
            ("container-image".to_string(), "docker://x".to_string()),
        ]
    );
    assert!(!w.projects[0].tasks["a"].remote);
    assert!(w.projects[0].tasks["b"].remote);
    // Default: off, no platform.
    let t = tree(&[(
        "vx.toml",
        &format!("{ws}\n[remote_execution]\nendpoint = \"grpc://127.0.0.1:1\"\n"),
    )]);
    let re = load(t.path()).unwrap().defaults.remote_execution.unwrap();
    assert!(!re.execute && re.platform.is_empty());
    // Bad values: the file, the line and what was expected.
    let cases: &[(&str, &str, &str)] = &[
        ("execute = \"yes\"", "vx.toml:5", "expected a boolean"),
        (
            "platform = { \"a b\" = \"x\" }",
            "vx.toml:5",
            "not a platform property name",
        ),
        (
            "platform = { OSFamily = 1 }",
            "vx.toml:5",
            "expected a string",
        ),
        ("platform = \"linux\"", "vx.toml:5", "expected a map"),
    ];
    for (line, at, want) in cases {
        let t = tree(&[("vx.toml", &format!("{ws}\n[remote_execution]\n{line}\n"))]);
        let e = load(t.path()).unwrap_err().to_string();
        assert!(e.contains(at) && e.contains(want), "{line}: {e}");
    }
    let e = err(&[(
        "vx.toml",
        &format!("{ws}\n[tasks.g]\ndepends_on = []\nremote = false\n"),
    )]);
    assert!(e.to_string().contains("cannot set `remote`"), "{e}");
    let e = err(&[(
        "vx.toml",
        &format!("{ws}\n[tasks.t]\ncommand = \"x\"\nremote = \"no\"\n"),
    )]);
    assert!(
        e.to_string().contains("vx.toml:6") && e.to_string().contains("expected a boolean"),
        "{e}"
    );
}
