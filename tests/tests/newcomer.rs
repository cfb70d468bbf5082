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

/// Runs `vx <args>` in a pseudo-terminal (python's `pty`); `unset` names
/// env variables removed from the fixture's environment. Returns the code
/// and everything the terminal received.
fn in_pty(ws: &Ws, args: &[&str], unset: &[&str]) -> (i32, String) {
    let script = r#"
import os, pty, signal, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
def give_up(*_):
    os.kill(pid, signal.SIGKILL)
    sys.stdout.write("timed out")
    sys.exit(99)
signal.signal(signal.SIGALRM, give_up)
signal.alarm(60)
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let c = ws.cmd(".", &[]);
    let prog = c.get_program().to_owned();
    let mut py = std::process::Command::new("python3");
    py.arg("-c").arg(script).arg(prog).args(args);
    py.current_dir(ws.root());
    py.env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v
            && !unset.iter().any(|u| k == *u)
        {
            py.env(k, v);
        }
    }
    let out = py.output().expect("python3 with pty");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn slow_pair() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"lib\", \"app\"]\n"),
        (
            "lib/vx.toml",
            "[tasks.build]\ncommand = \"sleep 0.3; echo lib-built\"\n",
        ),
        (
            "app/vx.toml",
            "[project]\ndeps = [\"lib\"]\n[tasks.build]\ncommand = \"sleep 0.3; echo app-built\"\ndepends_on = [\"^build\"]\n",
        ),
    ])
}

const CLEAR: &str = "\r\x1b[2K";

// On a terminal a run shows `[done/total] N cached · running: …`, erased
// before every other line and replaced by the summary.
vx_test!(progress_line_on_a_terminal_replaced_by_the_summary, || {
    let ws = slow_pair();
    let (code, out) = in_pty(&ws, &["run", "build"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("[0/2] 0 cached · running: lib#build"),
        "no progress line:\n{out:?}"
    );
    assert!(
        out.contains("[1/2] 0 cached · running: app#build"),
        "{out:?}"
    );
    let summary = out.find("Tasks:").expect("a summary");
    // The line is erased before the summary, and never drawn after it.
    assert!(out[..summary].contains(CLEAR), "{out:?}");
    assert!(!out[summary..].contains("/2]"), "{:?}", &out[summary..]);
    // What the terminal shows: each line's text after its last erase. No
    // task line shares its row with a progress line.
    for line in out.split("\r\n") {
        let shown = line.rsplit(CLEAR).next().unwrap_or(line);
        if shown.contains("lib-built") || shown.contains("app-built") {
            assert!(!shown.contains("/2]"), "{line:?}");
        }
    }
    // A cached re-run counts its hits.
    let (code, out) = in_pty(&ws, &["run", "build"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Tasks:"), "{out}");
});

vx_test!(progress_line_never_in_pipes_or_json, || {
    let ws = slow_pair();
    let r = ws.vx(&["run", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("\x1b[2K"), "{:?}", r.stdout);
    assert!(!r.stdout.contains("/2]"), "{:?}", r.stdout);
    let (code, out) = in_pty(&ws, &["run", "build", "--json", "--force"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("\x1b[2K"), "{out:?}");
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: Result<Value, _> = serde_json::from_str(line.trim());
        assert!(v.is_ok(), "not JSON in --json on a terminal: {line:?}");
    }
});

// Errors are red on a terminal, plain with NO_COLOR (the fixtures' default)
// and in pipes.
vx_test!(errors_are_coloured_on_a_terminal_only, || {
    let ws = three();
    let (code, out) = in_pty(&ws, &["run", "nope"], &["NO_COLOR"]);
    assert_ne!(code, 0);
    assert!(out.contains("\x1b[1;31mvx: error:\x1b[0m"), "{out:?}");
    let (_, out) = in_pty(&ws, &["run", "nope"], &[]);
    assert!(
        out.contains("vx: error:") && !out.contains("\x1b[1;31m"),
        "{out:?}"
    );
    let r = ws.vx_in(".", &["run", "nope"], &[]);
    assert!(r.stderr.starts_with("vx: error:"), "{:?}", r.stderr);
});

fn tagged() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"pkgs/*\"]\n"),
        (
            "pkgs/core/vx.toml",
            "[project]\ntags = [\"lib\"]\n[tasks.build]\ncommand = \"echo core\"\n",
        ),
        (
            "pkgs/ui/vx.toml",
            "[project]\ndeps = [\"core\"]\ntags = [\"lib\", \"frontend\"]\n[tasks.build]\ncommand = \"echo ui\"\ndepends_on = [\"^build\"]\n",
        ),
        (
            "pkgs/web/vx.toml",
            "[project]\ndeps = [\"ui\"]\ntags = [\"app\"]\n[tasks.build]\ncommand = \"echo web\"\ndepends_on = [\"^build\"]\n",
        ),
        ("pkgs/core/src.txt", "1\n"),
        ("pkgs/ui/src.txt", "1\n"),
        ("pkgs/web/src.txt", "1\n"),
    ])
}

// docs/config.md says tags are for filters: `tag:NAME` (a glob) selects the
// projects with that tag, and combines with `!` and `...`.
vx_test!(tag_filters_select_by_tag, || {
    let ws = tagged();
    let ids = |r: &vx_tests::Run| {
        let mut v: Vec<String> = r.summary()["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let r = ws.run(&["build", "--filter", "tag:frontend"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(ids(&r), ["core#build", "ui#build"]);
    let r = ws.run(&["build", "--filter", "tag:lib", "--filter", "!core"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.executed().contains(&"ui#build".to_string()));
    assert!(!r.executed().contains(&"web#build".to_string()));
    let r = ws.run(&["build", "--filter", "...tag:frontend", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), ["core#build", "ui#build", "web#build"]);
    let r = ws.vx(&["run", "build", "--filter", "tag:fronted"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("matched no project (did you mean `frontend`?)"),
        "{}",
        r.stderr
    );
});

// turbo's git-range filters: `[REF]` the projects changed since the merge
// base with REF, `...[REF]` with their dependents.
vx_test!(git_range_filters, || {
    let ws = tagged();
    ws.git(&["init", "-q", "-b", "main"]);
    ws.git(&["add", "-A"]);
    ws.git(&["commit", "-q", "-m", "init"]);
    ws.write("pkgs/ui/src.txt", "2\n");
    ws.git(&["commit", "-q", "-am", "ui"]);
    let r = ws.vx(&["ls", "--json", "--filter", "[HEAD^1]"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    let names: Vec<&str> = v["projects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["ui"]);
    let r = ws.run(&["build", "--filter", "...[HEAD^1]"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut requested: Vec<String> = r.summary()["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    requested.sort();
    // ui and its dependent web (and core, a dependency of ui#build).
    assert_eq!(requested, ["core#build", "ui#build", "web#build"]);
    // Nothing changed since HEAD: nothing runs, and that is no error.
    let r = ws.vx(&["run", "build", "--filter", "[HEAD]"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("nothing affected since [HEAD]"),
        "{}",
        r.stderr
    );
});

// `vx watch --help` lists no option that `vx watch` refuses.
vx_test!(watch_help_lists_only_what_watch_takes, || {
    let ws = three();
    let r = ws.vx(&["watch", "--help"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for refused in ["--dry", "--graph", "--summarize", "--profile", "--report"] {
        assert!(!r.stdout.contains(refused), "{refused} in:\n{}", r.stdout);
        let r = ws.vx(&["run", "--help"]);
        assert!(r.stdout.contains(refused), "vx run --help lacks {refused}");
    }
    assert!(r.stdout.contains("--debounce"), "{}", r.stdout);
    let r = ws.vx(&["watch", "build", "--dry"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("use `vx run`"), "{}", r.stderr);
});

// An ambiguous task name in `vx history` suggests a `project#task`, not
// another verb.
vx_test!(history_suggests_its_own_verb, || {
    let ws = three();
    let r = ws.vx(&["history", "build"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("e.g. `a#build`"), "{}", r.stderr);
    assert!(!r.stderr.contains("vx why"), "{}", r.stderr);
});

// A member glob that matches nothing, or a member directory without a
// config, is explained when a task is not found.
vx_test!(members_without_projects_are_explained, || {
    let ws = Ws::new(&[
        (
            "vx.toml",
            "[workspace]\nmembers = [\"pkgs/*\", \"tools/*\"]\n",
        ),
        ("pkgs/a/vx.toml", "[tasks.build]\ncommand = \"true\"\n"),
        ("pkgs/b/README.md", "no config here\n"),
    ]);
    let r = ws.vx(&["run", "test"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("note: member glob `tools/*` matches no directory"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("note: `pkgs/b` matches the member globs but has no vx.toml or package.json"),
        "{}",
        r.stderr
    );
});

// A project's vx.toml with no workspace root above it: the unknown project
// it names gets a hint towards a root `[workspace]`, not towards itself.
vx_test!(missing_root_vx_toml_is_explained, || {
    let ws = Ws::new(&[
        (
            "packages/app/vx.toml",
            "[project]\ndeps = [\"lib\"]\n[tasks.build]\ncommand = \"true\"\n",
        ),
        (
            "packages/lib/vx.toml",
            "[tasks.build]\ncommand = \"true\"\n",
        ),
        ("package.json", "{}\n"),
    ]);
    let r = ws.vx_in("packages/app", &["run", "build"], &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unknown project `lib`"), "{}", r.stderr);
    assert!(
        r.stderr.contains("add a vx.toml with `[workspace]`"),
        "{}",
        r.stderr
    );
});

// `--graph=FILE` writes the format its extension names; an image needs
// Graphviz `dot`, and without it the error says so and writes nothing.
vx_test!(graph_file_formats, || {
    let ws = basic();
    let r = ws.vx(&["run", "build", "--graph=g.json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&ws.read("g.json")).expect("g.json is JSON");
    assert_eq!(v["tasks"].as_array().map(Vec::len), Some(2));
    let r = ws.vx(&["run", "build", "--graph=g.dot"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(ws.read("g.dot").starts_with("digraph vx {"));
    let r = ws.vx(&["run", "build", "--graph=g.html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let html = ws.read("g.html");
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("<code>app#build</code>"), "{html}");
    let r = ws.vx(&["run", "build", "--graph=g.txt"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unknown format `.txt`"), "{}", r.stderr);

    // No `dot` on PATH: a clear error, no file.
    let bin = tempfile::tempdir().expect("tempdir");
    let mut c = ws.cmd(".", &["run", "build", "--graph=g.png"]);
    c.env("PATH", bin.path());
    let out = c.output().expect("run vx");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("needs Graphviz `dot`"), "{err}");
    assert!(!ws.exists("g.png"));

    // A `dot` on PATH renders it (a stand-in that records its argument).
    let fake = bin.path().join("dot");
    std::fs::write(&fake, "#!/bin/sh\necho \"rendered $1\"\ncat\n").expect("write fake dot");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = ws.cmd(".", &["run", "build", "--graph=g.png"]);
    c.env("PATH", path);
    let out = c.output().expect("run vx");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = ws.read("g.png");
    assert!(png.starts_with("rendered -Tpng\ndigraph vx {"), "{png}");
});

// An uncached task's start line says so, as the summary's `disabled` does;
// a cacheable one says `cache miss`.
vx_test!(uncached_label_matches_the_summary, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
        (
            "p/vx.toml",
            "[tasks.fmt]\ncommand = \"echo fmt\"\ncache = false\n[tasks.build]\ncommand = \"echo build\"\ninputs = [\"**\"]\noutputs = []\n",
        ),
    ]);
    let r = ws.vx(&["run", "fmt", "build"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("p:fmt │ executing (cache disabled)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("p:build │ cache miss, executing"),
        "{}",
        r.stdout
    );
    let r = ws.run(&["fmt", "build", "--force"]);
    assert_eq!(r.task("p#fmt")["cache"], "disabled");
    let started: Vec<&Value> = r
        .events
        .iter()
        .filter(|e| e["type"] == "task_started")
        .collect();
    let fmt = started
        .iter()
        .find(|e| e["id"] == "p#fmt")
        .expect("fmt started");
    assert_eq!(fmt["uncached"], true);
    let build = started
        .iter()
        .find(|e| e["id"] == "p#build")
        .expect("build started");
    assert!(build.get("uncached").is_none(), "{build}");
});
