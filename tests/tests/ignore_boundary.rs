//! Which `.gitignore` files decide a workspace's inputs: those inside the
//! git repository that holds the workspace (or, with no repository, inside
//! the workspace), never one above it. A dotfiles repo in `$HOME` whose
//! `~/.gitignore` is `*` must not make every input of a workspace below it
//! ignored (every key would then ignore every edit: a wrong hit on each
//! change). Each test runs in both modes (`vx_test!`).

use vx_tests::{Ws, vx_test};

const BUILD: &str = r#"[tasks.build]
command = "mkdir -p dist && cat src/* > dist/out.txt"
inputs = ["src/**"]
outputs = ["dist/**"]
"#;

/// A workspace one level down (`ws/`), below a directory whose
/// `.gitignore` ignores everything; `git` says whether `ws/` is a git
/// repository root (it is then the boundary; else the workspace root is).
fn below_ignore_all(git: bool) -> Ws {
    let mut files = vec![
        (".gitignore", "*\n"),
        ("ws/vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        ("ws/packages/a/vx.toml", BUILD),
        ("ws/packages/a/src/x.txt", "one\n"),
    ];
    if git {
        files.push(("ws/.git/HEAD", "ref: refs/heads/main\n"));
    }
    Ws::new(&files)
}

fn run(ws: &Ws) -> vx_tests::Run {
    let r = ws.vx_in("ws", &["run", "--json", "build"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    r
}

vx_test!(
    an_ignore_file_above_the_boundary_does_not_hide_inputs,
    || {
        for git in [true, false] {
            let ws = below_ignore_all(git);
            let r = run(&ws);
            assert_eq!(r.executed(), vec!["a#build"], "first run (git: {git})");
            let r = run(&ws);
            assert_eq!(r.cached(), vec!["a#build"], "unchanged (git: {git})");
            ws.write("ws/packages/a/src/x.txt", "two\n");
            let r = run(&ws);
            assert_eq!(
                r.executed(),
                vec!["a#build"],
                "an edited source reruns (git: {git}): {}",
                r.stdout
            );
            assert_eq!(ws.read("ws/packages/a/dist/out.txt"), "two\n");
            // A new source file is an input too.
            ws.write("ws/packages/a/src/y.txt", "three\n");
            let r = run(&ws);
            assert_eq!(
                r.executed(),
                vec!["a#build"],
                "a new source reruns (git: {git})"
            );
            assert_eq!(ws.read("ws/packages/a/dist/out.txt"), "two\nthree\n");
        }
    }
);

vx_test!(
    an_ignore_file_inside_the_repository_above_the_workspace_still_applies,
    || {
        // The repository root is the temp dir; the workspace is `ws/` in it.
        // `ws/../.gitignore` is inside the repository: it applies.
        let ws = Ws::new(&[
            (".git/HEAD", "ref: refs/heads/main\n"),
            (".gitignore", "*.gen\n"),
            ("ws/vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
            ("ws/packages/a/vx.toml", BUILD),
            ("ws/packages/a/src/x.txt", "one\n"),
        ]);
        let r = run(&ws);
        assert_eq!(r.executed(), vec!["a#build"], "first run");
        ws.write("ws/packages/a/src/noise.gen", "ignored\n");
        let r = run(&ws);
        assert_eq!(
            r.cached(),
            vec!["a#build"],
            "an ignored file is no input: {}",
            r.stdout
        );
        ws.write("ws/packages/a/src/x.txt", "two\n");
        let r = run(&ws);
        assert_eq!(r.executed(), vec!["a#build"], "an edited source reruns");
    }
);

vx_test!(
    an_ignore_file_between_the_workspace_root_and_a_project_applies_when_it_changes,
    || {
        // `packages/.gitignore` is above project `a` (the walk of `a` adds it
        // itself) and inside the workspace: the daemon sees it change.
        let ws = below_ignore_all(true);
        assert_eq!(run(&ws).executed(), vec!["a#build"], "first run");
        ws.write("ws/packages/a/src/n.gen", "gen-1\n");
        assert_eq!(run(&ws).executed(), vec!["a#build"], "a new input");
        ws.write("ws/packages/.gitignore", "*.gen\n");
        let r = run(&ws);
        assert_eq!(
            r.cached(),
            vec!["a#build"],
            "n.gen ignored: the first key again: {}",
            r.stdout
        );
        assert_eq!(ws.read("ws/packages/a/dist/out.txt"), "one\n");
        ws.write("ws/packages/a/src/n.gen", "gen-2\n");
        let r = run(&ws);
        assert_eq!(
            r.cached(),
            vec!["a#build"],
            "an ignored file is no input: {}",
            r.stdout
        );
        std::fs::remove_file(ws.path("ws/packages/.gitignore")).unwrap();
        let r = run(&ws);
        assert_eq!(
            r.executed(),
            vec!["a#build"],
            "n.gen is an input again: {}",
            r.stdout
        );
        assert_eq!(ws.read("ws/packages/a/dist/out.txt"), "gen-2\none\n");
    }
);

/// A workspace whose `global_inputs` select files git ignores, in ignored
/// directories (`local/` is ignored as a whole).
fn ignored_global_inputs() -> Ws {
    Ws::new(&[
        (".gitignore", "local/\nsecret/\ndist/\n"),
        (
            "vx.toml",
            "[workspace]\nmembers = [\"packages/*\"]\nglobal_inputs = [\"local/**/*.env\", \"secret/**\"]\n",
        ),
        ("packages/a/vx.toml", BUILD),
        ("packages/a/src/x.txt", "one\n"),
        ("local/deep/app.env", "A=1\n"),
    ])
}

// An edit of a gitignored global input inside an ignored directory, and a
// new one in an ignored directory that did not exist, re-run the task
// (the daemon watches the ignored directories such files live in: without
// that, its hot state missed both and served a stale hit).
vx_test!(
    a_global_input_in_an_ignored_directory_is_seen_when_edited_or_created,
    || {
        let ws = ignored_global_inputs();
        let r = ws.run(&["a#build"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.executed(), ["a#build"]);
        let r = ws.run(&["a#build"]);
        assert_eq!(r.executed(), Vec::<String>::new(), "a repeat run is a hit");
        ws.write("local/deep/app.env", "A=2\n");
        let r = ws.run(&["a#build"]);
        assert_eq!(r.executed(), ["a#build"], "the edited global input");
        let r = ws.run(&["a#build"]);
        assert_eq!(r.executed(), Vec::<String>::new());
        ws.write("secret/new/key.txt", "k\n");
        let r = ws.run(&["a#build"]);
        assert_eq!(r.executed(), ["a#build"], "the new global input");
        ws.write("local/other/b.env", "B=1\n");
        let r = ws.run(&["a#build"]);
        assert_eq!(r.executed(), ["a#build"], "a new file in a new ignored dir");
    }
);
