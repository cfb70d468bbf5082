//! Bad input: one clear error naming the file (and line), exit 1, nothing
//! runs and the cache is untouched.

use vx_tests::{Ws, basic, vx_test};

/// Breaks a working (and cached) workspace with `edit`, then checks that
/// `vx run build` fails with a message containing every `expect` string,
/// runs nothing and leaves the cache byte-for-byte as it was.
fn check(edit: &[(&str, &str)], args: &[&str], expect: &[&str]) {
    let ws = basic();
    assert_eq!(ws.run(&["build"]).code, 0);
    // A daemon writes the run's history record just after answering (a
    // durable commit that grows the file): a reader waits for it.
    assert_eq!(ws.vx(&["last"]).code, 0);
    let cache_before = ws.cache_listing();
    for (p, c) in edit {
        ws.write(p, c);
    }
    std::fs::remove_dir_all(ws.path("packages/lib/dist")).unwrap();
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    let r = ws.vx(&a);
    assert_eq!(
        r.code, 1,
        "expected exit 1\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    for e in expect {
        assert!(r.stderr.contains(e), "stderr lacks {e:?}:\n{}", r.stderr);
    }
    assert!(
        !ws.exists("packages/lib/dist"),
        "a task ran despite the error"
    );
    assert_eq!(ws.cache_listing(), cache_before, "the cache changed");
}

vx_test!(unknown_field_names_file_line_and_suggestion, || {
    check(
        &[(
            "packages/lib/vx.toml",
            "[tasks.build]\ncommand = \"true\"\noutptus = [\"dist/**\"]\n",
        )],
        &["build"],
        &["packages/lib/vx.toml:3", "outptus", "outputs"],
    );
});

vx_test!(malformed_toml, || {
    check(
        &[("packages/app/vx.toml", "[tasks.build\ncommand = 1\n")],
        &["build"],
        &["packages/app/vx.toml:1"],
    );
});

vx_test!(malformed_json_manifest, || {
    check(
        &[(
            "packages/lib/package.json",
            "{\n  \"name\": \"lib\",\n  \"version\": \n}\n",
        )],
        &["build"],
        &["packages/lib/package.json:4"],
    );
});

vx_test!(bad_glob, || {
    check(
        &[(
            "packages/lib/vx.toml",
            "[tasks.build]\ncommand = \"true\"\ninputs = [\"src/[\"]\noutputs = []\n",
        )],
        &["build"],
        &["packages/lib/vx.toml", "src/["],
    );
});

vx_test!(unknown_task_has_a_suggestion, || {
    check(&[], &["biuld"], &["biuld", "did you mean `build`"]);
});

vx_test!(unknown_dependency_task, || {
    check(
        &[(
            "packages/lib/vx.toml",
            "[tasks.build]\ncommand = \"true\"\ndepends_on = [\"codegne\"]\n[tasks.codegen]\ncommand = \"true\"\n",
        )],
        &["build"],
        &["packages/lib/vx.toml", "codegne", "codegen"],
    );
});

vx_test!(duplicate_project_names, || {
    check(
        &[(
            "packages/lib2/vx.toml",
            "[project]\nname = \"lib\"\n[tasks.build]\ncommand = \"true\"\n",
        )],
        &["build"],
        &["lib", "packages/lib", "packages/lib2"],
    );
});

vx_test!(package_cycle_shows_its_path, || {
    check(
        &[(
            "packages/lib/vx.toml",
            "[project]\ndeps = [\"app\"]\n[tasks.build]\ncommand = \"true\"\n",
        )],
        &["build"],
        &["cycle", "app", "lib"],
    );
});

vx_test!(task_cycle_shows_its_path, || {
    check(
        &[(
            "packages/lib/vx.toml",
            "[tasks.build]\ncommand = \"true\"\ndepends_on = [\"gen\"]\n[tasks.gen]\ncommand = \"true\"\ndepends_on = [\"build\"]\n",
        )],
        &["build"],
        &["cycle", "lib#build", "lib#gen"],
    );
});

vx_test!(no_workspace_at_all, || {
    let ws = Ws::new(&[("empty/.keep", "")]);
    let r = ws.vx_in("empty", &["run", "build"], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no workspace"), "{}", r.stderr);
});
