//! Table-driven tests of the translators; every generated config is loaded
//! with the workspace loader and graph `vx run` uses.

use std::collections::BTreeMap;

use super::testutil::{repo, write_and_load};
use super::{nx, scripts, translate};
use crate::workspace::{TaskDef, Workspace};
use vx_proto::init::InitSource;

/// The tasks with a command, per `project#task`, as the engine sees them
/// (only the fields that decide what runs and what is keyed).
fn runnable(ws: &Workspace) -> BTreeMap<String, TaskDef> {
    let mut out = BTreeMap::new();
    for p in &ws.projects {
        for (n, d) in &p.tasks {
            if d.command.is_some() {
                let mut d = d.clone();
                // turbo mode marks scripts (npm_* env); the translation
                // spells the env out with `define` where a script reads it.
                d.npm_script = false;
                d.define.clear();
                d.root_inputs.clear();
                out.insert(format!("{}#{n}", p.name), d);
            }
        }
    }
    out
}

const PKGS: &[(&str, &str)] = &[
    (
        "package.json",
        r#"{"name":"r","private":true,"workspaces":["p/*"],"scripts":{"fmt":"echo f"}}"#,
    ),
    (
        "p/a/package.json",
        r#"{"name":"a","dependencies":{"b":"*"},"scripts":{"build":"echo a","test":"echo ta","dev":"echo d"}}"#,
    ),
    (
        "p/b/package.json",
        r#"{"name":"b","dependencies":{"c":"*"},"scripts":{"test":"echo tb","lint":"echo lb"}}"#,
    ),
    (
        "p/c/package.json",
        r#"{"name":"c","scripts":{"build":"echo c","lint":"echo lc"}}"#,
    ),
];

#[test]
fn turbo_translation_gives_the_engine_the_same_tasks() {
    // Each turbo.json: the generated vx.toml files must give every runnable
    // task the same definition turbo mode gives it.
    let cases: &[(&str, &str)] = &[
        (
            "plain",
            r#"{"tasks":{"build":{"dependsOn":["^build"],"outputs":["dist/**"]},"test":{"dependsOn":["build"]}}}"#,
        ),
        (
            "inputs and env",
            r#"{"globalEnv":["G"],"globalPassThroughEnv":["P"],"tasks":{"build":{"inputs":["$TURBO_DEFAULT$","!*.md"],"outputs":["dist/**","!dist/x/**"],"env":["E_*"],"passThroughEnv":["HOME"]}}}"#,
        ),
        (
            "overrides",
            r#"{"tasks":{"build":{"outputs":["dist/**"]},"a#build":{"outputs":["out/**"],"cache":false},"lint":{}}}"#,
        ),
        (
            "transit",
            r#"{"tasks":{"topo":{"dependsOn":["^topo"]},"lint":{"dependsOn":["^topo"]},"build":{"dependsOn":["^build"]}}}"#,
        ),
        (
            "explicit deps",
            r#"{"tasks":{"build":{},"test":{"dependsOn":["c#build","build"]},"//#fmt":{"cache":false,"dependsOn":["a#build"]}}}"#,
        ),
        (
            "persistent",
            r#"{"tasks":{"dev":{"persistent":true,"cache":false,"dependsOn":["^build"]},"build":{}}}"#,
        ),
        (
            "pipeline 1.x",
            r#"{"pipeline":{"build":{"dependsOn":["^build"]},"test":{"cache":false}}}"#,
        ),
        (
            "root input",
            r#"{"tasks":{"build":{"inputs":["src/**","$TURBO_ROOT$/tsconfig.json"]}}}"#,
        ),
    ];
    for (name, turbo) in cases {
        let mut files = PKGS.to_vec();
        files.push(("turbo.json", turbo));
        files.push((
            "p/c/turbo.json",
            r#"{"extends":["//"],"tags":["lib"],"tasks":{"lint":{"env":["$TURBO_EXTENDS$","LINT_X"]}}}"#,
        ));
        let d = repo(&files);
        let before = crate::workspace::load(d.path()).unwrap();
        let t = translate(d.path(), InitSource::Turbo).unwrap();
        std::fs::remove_file(d.path().join("turbo.json")).unwrap();
        std::fs::remove_file(d.path().join("p/c/turbo.json")).unwrap();
        let after = write_and_load(d.path(), &t);
        assert_eq!(runnable(&before), runnable(&after), "{name}");
        let g1 = crate::graph::TaskGraph::build(&before).unwrap();
        let g2 = crate::graph::TaskGraph::build(&after).unwrap();
        // Same closure for every runnable task (edges through no-op nodes).
        for id in runnable(&before).keys() {
            let c = |g: &crate::graph::TaskGraph, ws: &Workspace| {
                let n = g.get(id).unwrap();
                let mut v: Vec<String> = g
                    .closure([n])
                    .into_iter()
                    .filter(|&i| g.nodes[i].def.command.is_some())
                    .map(|i| g.nodes[i].id.clone())
                    .collect();
                v.sort();
                let _ = ws;
                v
            };
            assert_eq!(c(&g1, &before), c(&g2, &after), "{name}: closure of {id}");
        }
        assert_eq!(after.project("c").unwrap().tags, vec!["lib"], "{name}");
        if *name == "root input" {
            assert_eq!(after.global.inputs, vec!["tsconfig.json"], "{name}");
            assert!(
                t.untranslated
                    .iter()
                    .any(|i| i.item.contains("$TURBO_ROOT$"))
            );
        }
    }
}

#[test]
fn turbo_keys_without_meaning_are_reported() {
    let mut files = PKGS.to_vec();
    files.push((
        "turbo.json",
        r#"{"ui":"tui","cacheDir":".turbo","envMode":"loose","tasks":{"build":{"outputLogs":"hash-only","with":["x"],"dotEnv":[".env"]}}}"#,
    ));
    let d = repo(&files);
    let t = translate(d.path(), InitSource::Turbo).unwrap();
    let items: Vec<&str> = t.untranslated.iter().map(|i| i.item.as_str()).collect();
    for want in [
        "ui",
        "cacheDir",
        "envMode",
        "tasks.build.outputLogs",
        "tasks.build.with",
        "tasks.build.dotEnv",
    ] {
        assert!(items.contains(&want), "{want}: {items:?}");
    }
    assert!(
        t.untranslated
            .iter()
            .all(|i| i.file == "turbo.json" && !i.reason.is_empty())
    );
}

#[test]
fn scripts_outputs_are_inferred_from_the_tool() {
    let d = repo(&[
        ("tsconfig.json", r#"{"compilerOptions":{"outDir":"build"}}"#),
        (
            "tsconfig.emitless.json",
            r#"{"compilerOptions":{"noEmit":true}}"#,
        ),
        ("tsconfig.child.json", r#"{"extends":"./cfg/base.json"}"#),
        (
            "cfg/base.json",
            r#"{"compilerOptions":{"outDir":"../out"}}"#,
        ),
        ("tsconfig.none.json", r#"{}"#),
    ]);
    // (script, outputs, assumption expected); None: no known tool.
    let cases: &[(&str, Option<&[&str]>, bool)] = &[
        ("tsc", Some(&["build/**"]), false),
        ("tsc --outDir ./lib/", Some(&["lib/**"]), false),
        ("tsc --noEmit", Some(&[]), false),
        ("tsc -p tsconfig.emitless.json", Some(&[]), false),
        ("tsc -p tsconfig.child.json", Some(&["out/**"]), false),
        ("tsc -p tsconfig.none.json", Some(&["dist/**"]), true),
        ("tsup src/index.ts --format esm", Some(&["dist/**"]), false),
        ("tsup -d out", Some(&["out/**"]), false),
        ("vite build", Some(&["dist/**"]), false),
        ("vite build --outDir=public", Some(&["public/**"]), false),
        ("vite", None, false),
        (
            "esbuild src/a.ts --bundle --outdir=dist/esm",
            Some(&["dist/esm/**"]),
            false,
        ),
        (
            "esbuild src/a.ts --outfile=out.js",
            Some(&["out.js"]),
            false,
        ),
        ("esbuild src/a.ts", None, false),
        ("next build", Some(&[".next/**", "!.next/cache/**"]), false),
        ("next dev", None, false),
        (
            "NODE_ENV=production npx next build",
            Some(&[".next/**", "!.next/cache/**"]),
            false,
        ),
        (
            "rm -rf dist && tsc && cp README.md dist/",
            Some(&["build/**"]),
            false,
        ),
        ("rollup -c", Some(&["dist/**"]), true),
        ("rollup -c -d lib", Some(&["lib/**"]), false),
        ("webpack --mode production", Some(&["dist/**"]), false),
        ("babel src -d lib", Some(&["lib/**"]), false),
        ("pnpm exec tsup", Some(&["dist/**"]), false),
        ("node build.js", None, false),
        ("make", None, false),
    ];
    for (script, want, assumed) in cases {
        let got = scripts::infer_outputs(script, d.path());
        match (want, &got) {
            (None, None) => {}
            (Some(w), Some(g)) => {
                assert_eq!(
                    g.outputs,
                    w.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "{script}"
                );
                assert_eq!(g.assumed.is_some(), *assumed, "{script}: {g:?}");
            }
            _ => panic!("{script}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn scripts_translation_loads_and_marks_what_it_cannot_infer() {
    let d = repo(&[
        (
            "package.json",
            r#"{"name":"r","private":true,"workspaces":["p/*"],"scripts":{"ci":"turbo run build"}}"#,
        ),
        (
            "p/a/package.json",
            r#"{"name":"a","dependencies":{"b":"*"},"scripts":{"build":"vite build","dev":"vite","test":"vitest run","format":"prettier -w .","release":"x"}}"#,
        ),
        (
            "p/b/package.json",
            r#"{"name":"b","scripts":{"build":"node make.js","lint":"eslint ."}}"#,
        ),
        ("p/c/package.json", r#"{"name":"c"}"#),
    ]);
    let t = translate(d.path(), InitSource::Scripts).unwrap();
    let ws = write_and_load(d.path(), &t);
    let a = &ws.project("a").unwrap().tasks;
    assert_eq!(a["build"].outputs, vec!["dist/**"]);
    assert!(a["build"].cache);
    assert_eq!(a["build"].depends_on, vec!["^build"]);
    assert!(a["dev"].persistent);
    assert!(a["test"].cache);
    assert!(!a["format"].cache);
    assert!(!a.contains_key("release"));
    let b = &ws.project("b").unwrap().tasks;
    assert!(!b["build"].cache, "unknown outputs: not cached");
    let text = t
        .files
        .iter()
        .find(|f| f.path == "p/b/vx.toml")
        .unwrap()
        .render();
    assert!(
        text.contains("# TODO: vx could not tell what this script writes"),
        "{text}"
    );
    assert!(
        !t.files.iter().any(|f| f.path == "p/c/vx.toml"),
        "no tasks, no file"
    );
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.file == "p/a/package.json" && i.item == "scripts: release")
    );
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.file == "package.json" && i.item == "scripts: ci")
    );
}

#[test]
fn scripts_translation_of_a_single_package() {
    let d = repo(&[(
        "package.json",
        r#"{"name":"solo","scripts":{"build":"tsup","test":"node --test"}}"#,
    )]);
    let t = translate(d.path(), InitSource::Scripts).unwrap();
    assert_eq!(t.files.len(), 1);
    assert!(t.files[0].workspace.is_none());
    let ws = write_and_load(d.path(), &t);
    assert_eq!(ws.projects.len(), 1);
    assert_eq!(ws.projects[0].tasks["build"].outputs, vec!["dist/**"]);
}

const NX: &str = r#"{
  "namedInputs": {
    "default": ["{projectRoot}/**/*", "sharedGlobals"],
    "production": ["default", "!{projectRoot}/**/*.spec.ts", "!{projectRoot}/jest.config.ts"],
    "sharedGlobals": ["{workspaceRoot}/babel.config.json", {"runtime": "node -v"}]
  },
  "targetDefaults": {
    "build": {"dependsOn": ["^build"], "inputs": ["production", "^production"], "outputs": ["{projectRoot}/dist"], "cache": true},
    "@nx/jest:jest": {"inputs": ["default", "^production", {"env": "CI"}], "cache": true},
    "e2e": {"dependsOn": [{"target": "build", "projects": "dependencies"}, {"target": "serve", "projects": ["web"]}]}
  },
  "plugins": []
}"#;

#[test]
fn nx_translation_maps_targets() {
    let d = repo(&[
        ("nx.json", NX),
        ("package.json", r#"{"name":"ws","private":true}"#),
        (
            "libs/a/project.json",
            r#"{"name":"a","tags":["scope:a"],"targets":{
            "build":{"executor":"nx:run-commands","options":{"command":"tsc -p {projectRoot}","cwd":"{projectRoot}"}},
            "test":{"executor":"@nx/jest:jest","options":{"jestConfig":"libs/a/jest.config.ts"}},
            "pub":{"executor":"nx:run-script","options":{"script":"release"},"dependsOn":["build","missing"]}}}"#,
        ),
        (
            "libs/a/package.json",
            r#"{"name":"@ws/a","scripts":{"release":"npm publish","check":"echo c"}}"#,
        ),
        (
            "apps/web/project.json",
            r#"{"name":"web","implicitDependencies":["a","!nope"],"targets":{
            "build":{"command":"vite build apps/web","outputs":["{workspaceRoot}/dist/apps/web","{projectRoot}/.cache"]},
            "serve":{"command":"vite","continuous":true},
            "deploy":{"executor":"nx:run-commands","options":{"commands":["echo 1","echo 2"],"cwd":"apps/web"},"dependsOn":[{"target":"build","projects":["a","web"]}]},
            "all":{"executor":"nx:noop","dependsOn":["build","deploy"]}}}"#,
        ),
        (
            "apps/web-e2e/project.json",
            r#"{"name":"web-e2e","implicitDependencies":["web"],"targets":{
            "e2e":{"command":"echo e2e","options":{"cwd":"apps/web-e2e"}}}}"#,
        ),
    ]);
    let t = translate(d.path(), InitSource::Nx).unwrap();
    let ws = write_and_load(d.path(), &t);
    assert_eq!(ws.global.inputs, vec!["babel.config.json"]);
    let a = ws.project("a").unwrap();
    assert_eq!(a.tags, vec!["scope:a"]);
    // build: targetDefaults by name; {projectRoot} tokens; inputs from named inputs.
    let b = &a.tasks["build"];
    assert_eq!(b.command.as_deref(), Some("tsc -p libs/a"));
    assert_eq!(b.depends_on, vec!["^build"]);
    assert_eq!(b.outputs, vec!["dist"]);
    assert_eq!(
        b.inputs,
        vec!["**", "!**/*.spec.ts", "!jest.config.ts", "!dist"]
    );
    assert!(b.cache);
    // an executor vx cannot run: a group task, with a TODO and a report line.
    assert!(a.tasks["test"].command.is_none());
    assert_eq!(a.tasks["test"].env, vec!["CI"]);
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.file == "libs/a/project.json"
                && i.item == "targets.test.executor \"@nx/jest:jest\"")
    );
    // run-script; a dependency on a target nobody has is dropped and reported.
    assert_eq!(a.tasks["pub"].command.as_deref(), Some("npm publish"));
    assert_eq!(a.tasks["pub"].depends_on, vec!["build"]);
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.item == "targets.pub.dependsOn missing")
    );
    // package.json scripts are targets too.
    assert_eq!(a.tasks["check"].command.as_deref(), Some("echo c"));
    // project name differs from package.json name: written.
    let af = t.files.iter().find(|f| f.path == "libs/a/vx.toml").unwrap();
    assert_eq!(af.name.as_deref(), Some("a"));

    let web = ws.project("web").unwrap();
    assert_eq!(web.deps, vec!["a"]);
    let wb = &web.tasks["build"];
    assert_eq!(
        wb.command.as_deref(),
        Some("cd ../.. && vite build apps/web")
    );
    assert_eq!(wb.outputs, vec![".cache"]);
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.item.contains("{workspaceRoot}/dist/apps/web"))
    );
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.item == "implicitDependencies \"!nope\"")
    );
    assert!(web.tasks["serve"].persistent);
    assert_eq!(
        web.tasks["deploy"].command.as_deref(),
        Some("echo 1 && echo 2")
    );
    assert_eq!(web.tasks["deploy"].depends_on, vec!["a#build", "web#build"]);
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.item == "targets.deploy.options.commands")
    );
    assert!(web.tasks["all"].command.is_none());
    let e2e = &ws.project("web-e2e").unwrap().tasks["e2e"];
    assert_eq!(e2e.depends_on, vec!["^build", "web#serve"]);
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.item.contains("\"runtime\""))
    );
    assert!(
        t.untranslated
            .iter()
            .any(|i| i.file == "nx.json" && i.item == "plugins")
    );
}

#[test]
fn nx_helpers() {
    // (project dir, root-relative path, project-relative)
    let cases: &[(&str, &str, &str)] = &[
        ("apps/web", "apps", ".."),
        ("apps/web", ".", "../.."),
        ("apps/web", "apps/web", "."),
        ("apps/web", "libs/x", "../../libs/x"),
        (".", "libs/x", "libs/x"),
    ];
    for (dir, to, want) in cases {
        assert_eq!(nx::rel_path_for_test(dir, to), *want, "{dir} → {to}");
    }
}
