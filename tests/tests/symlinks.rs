//! What gets hashed when inputs are symlinks or have names vx cannot key:
//! a symlink into the workspace is keyed by its target's content (an edit of
//! the target reruns the task), a member reached through a symlinked
//! directory has its files keyed, a symlink out of the workspace is flagged
//! by `--dry`, and a file name that is not UTF-8 is refused by name. Each
//! test runs in both modes (`::no_daemon` / `::daemon`).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use vx_tests::{Ws, vx_test};

const BUILD: &str = r#"[tasks.build]
command = "mkdir -p dist && cat src/* src/lib/* 2>/dev/null > dist/out.txt; echo built"
inputs = ["src/**"]
outputs = ["dist/**"]
"#;

fn ws_with_a() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        ("packages/a/vx.toml", BUILD),
        ("packages/a/src/main.txt", "main\n"),
        ("shared/cfg.txt", "cfg-1\n"),
        ("shared/lib/x.txt", "lib-1\n"),
    ])
}

fn assert_ran(ws: &Ws, id: &str, why: &str) {
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.executed(), vec![id.to_string()], "{why}: {}", r.stdout);
}

fn assert_cached(ws: &Ws, id: &str, why: &str) {
    let r = ws.run(&["build"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.cached(), vec![id.to_string()], "{why}: {}", r.stdout);
}

vx_test!(
    editing_the_target_of_a_symlinked_input_reruns_the_task,
    || {
        // (link inside the project, its target inside the workspace, the file
        // to edit): a file link and a directory link.
        let cases = [
            (
                "packages/a/src/cfg.txt",
                "../../../shared/cfg.txt",
                "shared/cfg.txt",
            ),
            (
                "packages/a/src/lib",
                "../../../shared/lib",
                "shared/lib/x.txt",
            ),
        ];
        for (link, target, edit) in cases {
            let ws = ws_with_a();
            symlink(target, ws.path(link)).unwrap();
            assert_ran(&ws, "a#build", "first run");
            assert_cached(&ws, "a#build", "nothing changed");
            ws.write(edit, "edited, longer than before\n");
            assert_ran(
                &ws,
                "a#build",
                &format!("{edit} (the target of {link}) was edited"),
            );
            assert!(
                ws.read("packages/a/dist/out.txt").contains("edited"),
                "the task saw the edit"
            );
            assert_cached(&ws, "a#build", "nothing changed since");
        }
    }
);

vx_test!(
    a_member_reached_through_a_symlinked_directory_is_keyed_by_its_files,
    || {
        // The member's real directory outside the workspace, and inside it (in
        // a directory the member globs do not match).
        for inside in [false, true] {
            let ws = Ws::new(&[("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n")]);
            let outside = tempfile::tempdir().unwrap();
            let real = if inside {
                ws.path("vendor/b")
            } else {
                outside.path().join("b")
            };
            std::fs::create_dir_all(real.join("src")).unwrap();
            std::fs::write(real.join("vx.toml"), BUILD).unwrap();
            std::fs::write(real.join("src/x.txt"), "x-1\n").unwrap();
            std::fs::create_dir_all(ws.path("packages")).unwrap();
            symlink(&real, ws.path("packages/b")).unwrap();
            assert_ran(&ws, "b#build", "first run");
            assert_cached(&ws, "b#build", "nothing changed");
            std::fs::write(real.join("src/x.txt"), "x-2, edited\n").unwrap();
            assert_ran(
                &ws,
                "b#build",
                &format!("an edit in the linked member (inside: {inside})"),
            );
            // A new file in it counts too.
            std::fs::write(real.join("src/y.txt"), "y\n").unwrap();
            assert_ran(&ws, "b#build", "a new file in the linked member");
            assert_cached(&ws, "b#build", "nothing changed since");
        }
    }
);

vx_test!(a_symlink_out_of_the_workspace_is_flagged_by_dry, || {
    let ws = ws_with_a();
    let outside = tempfile::tempdir().unwrap();
    let far = outside.path().join("far.txt");
    std::fs::write(&far, "far\n").unwrap();
    symlink(&far, ws.path("packages/a/src/far.txt")).unwrap();
    let r = ws.vx(&["run", "--dry", "build"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("packages/a/src/far.txt") && r.stdout.contains("outside the workspace"),
        "{}",
        r.stdout
    );
    let r = ws.vx(&["run", "--dry=json", "build"]);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let warnings = plan["tasks"][0]["warnings"].to_string();
    assert!(warnings.contains("packages/a/src/far.txt"), "{}", r.stdout);
    // A link into the workspace is not flagged.
    let ws = ws_with_a();
    symlink("../../../shared/cfg.txt", ws.path("packages/a/src/cfg.txt")).unwrap();
    let r = ws.vx(&["run", "--dry", "build"]);
    assert!(!r.stdout.contains("warning"), "{}", r.stdout);
    // A dangling link is keyed by its text and runs.
    symlink("nowhere", ws.path("packages/a/src/dangling")).unwrap();
    assert_ran(&ws, "a#build", "a dangling link is an input like any other");
});

vx_test!(an_input_whose_name_is_not_utf8_is_refused_by_name, || {
    let ws = ws_with_a();
    let name = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
    std::fs::write(ws.path("packages/a/src").join(name), "x\n").unwrap();
    let r = ws.run(&["build"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains(r"packages/a/src/bad\\xff.txt") || all.contains(r"packages/a/src/bad\xff.txt"),
        "the error names the path, escaped: {all}"
    );
    assert!(all.contains("not valid UTF-8"), "{all}");
    assert!(!ws.exists("packages/a/dist/out.txt"), "nothing ran");
    // Outside every input set (an ignored directory), such a name is fine.
    std::fs::remove_file(ws.path("packages/a/src").join(name)).unwrap();
    ws.write(".gitignore", "junk/\n");
    std::fs::create_dir_all(ws.path("packages/a/junk")).unwrap();
    std::fs::write(ws.path("packages/a/junk").join(name), "x\n").unwrap();
    assert_ran(&ws, "a#build", "an ignored non-UTF-8 name is not an input");
});

vx_test!(
    a_link_to_a_dependencys_output_is_keyed_by_what_the_dependency_wrote,
    || {
        // a's input is a link to b's output, missing until b#build runs: a's
        // key must see the file b wrote (so the next run is all hits).
        let ws = Ws::new(&[
            ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
            (
                "packages/b/vx.toml",
                "[tasks.build]\ncommand = \"mkdir -p dist && cat src/* > dist/gen.txt\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
            ),
            ("packages/b/src/s.txt", "generated-1\n"),
            (
                "packages/a/vx.toml",
                "[project]\ndeps = [\"b\"]\n\n[tasks.build]\ncommand = \"mkdir -p dist && cat src/* > dist/out.txt\"\ndepends_on = [\"^build\"]\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n",
            ),
            ("packages/a/src/main.txt", "main\n"),
        ]);
        symlink("../../b/dist/gen.txt", ws.path("packages/a/src/gen.txt")).unwrap();
        let r = ws.run(&["build"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert_eq!(r.executed(), vec!["a#build", "b#build"]);
        assert!(ws.read("packages/a/dist/out.txt").contains("generated-1"));
        let r = ws.run(&["build"]);
        assert_eq!(r.cached(), vec!["a#build", "b#build"], "{}", r.stdout);
        ws.write("packages/b/src/s.txt", "generated-2\n");
        let r = ws.run(&["build"]);
        assert_eq!(r.executed(), vec!["a#build", "b#build"], "{}", r.stdout);
        assert!(ws.read("packages/a/dist/out.txt").contains("generated-2"));
        let r = ws.run(&["build"]);
        assert_eq!(r.cached(), vec!["a#build", "b#build"], "{}", r.stdout);
    }
);
