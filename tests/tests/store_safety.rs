//! The cache store's writes and its damaged state, end to end (both modes:
//! each test's `::no_daemon` and `::daemon` variants):
//! vx never writes through a symlinked output directory or outside the
//! project, stores symlink outputs as links (and never one pointing
//! outside), `vx cache clean` deletes only what vx created, a damaged
//! `index.redb` or `history.redb` costs one warning and a cold run, a
//! corrupt blob is repaired by the next save, and an unusable cache (or
//! `--no-cache`) still runs.

use std::os::unix::fs::symlink;
use std::path::Path;
use vx_tests::{Run, Ws, daemon_mode, vx_test};

fn warnings(r: &Run) -> Vec<String> {
    r.events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

fn ok(r: &Run) {
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

/// One project `packages/a` whose `build` runs `command` with outputs `dist/**`.
fn one_task(command: &str) -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/a/vx.toml",
            &format!(
                "[tasks.build]\ncommand = {command:?}\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n"
            ),
        ),
        ("packages/a/src/in.txt", "in\n"),
    ])
}

/// The same workspace with its cache dir set to `cache` (absolute).
fn one_task_cache_at(command: &str, cache: &Path) -> Ws {
    let ws = one_task(command);
    ws.write(
        "vx.toml",
        &format!(
            "[workspace]\nmembers = [\"packages/*\"]\ncache_dir = {:?}\n",
            cache.display().to_string()
        ),
    );
    ws
}

/// Files (relative path, content) under `dir`, sorted; links as `-> target`.
fn tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(d: &Path, base: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((rel, format!("-> {}", t.display())));
            } else if md.is_dir() {
                walk(&p, base, out);
            } else {
                out.push((
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Stops the daemon (so the next command starts a new one that opens the
/// files afresh); nothing without one.
fn stop_daemon(ws: &Ws) {
    if daemon_mode() {
        let r = ws.vx(&["daemon", "stop"]);
        ok(&r);
    }
}

fn daemon_still_up(ws: &Ws) {
    if daemon_mode() {
        let st = ws.daemon_status();
        assert_eq!(st["running"], true, "{st}");
    }
}

vx_test!(
    restore_and_wipe_never_write_through_a_symlinked_output_dir,
    || {
        let ws = one_task("mkdir -p dist && echo built > dist/x.txt");
        ok(&ws.run(&["build"]));
        // dist becomes a link to a directory outside the workspace.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("x.txt"), "OUTSIDE\n").unwrap();
        std::fs::write(elsewhere.path().join("keep.txt"), "KEEP\n").unwrap();
        let before = tree(elsewhere.path());
        std::fs::remove_dir_all(ws.path("packages/a/dist")).unwrap();
        symlink(elsewhere.path(), ws.path("packages/a/dist")).unwrap();
        // A cache hit (restore), then --force (wipe before exec), twice each.
        for args in [
            &["build"][..],
            &["build"],
            &["build", "--force"],
            &["build", "--force"],
        ] {
            let r = ws.run(args);
            assert_ne!(r.code, 0, "{args:?}: {}\n{}", r.stdout, r.stderr);
            let all = format!("{}{}", r.stdout, r.stderr);
            assert!(
                all.contains("packages/a/dist is a symlink; vx never writes through symlinks"),
                "{args:?}: {all}"
            );
            assert_eq!(tree(elsewhere.path()), before, "{args:?}: wrote outside");
        }
        assert!(
            std::fs::symlink_metadata(ws.path("packages/a/dist"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        daemon_still_up(&ws);
    }
);

vx_test!(symlink_outputs_are_restored_as_links, || {
    let ws = one_task(
        "mkdir -p dist/sub && echo real > dist/real.txt && ln -sf real.txt dist/link.txt && ln -sfn ../src dist/sub/srclink",
    );
    ok(&ws.run(&["build"]));
    let built = tree(&ws.path("packages/a/dist"));
    assert!(
        built.contains(&("link.txt".into(), "-> real.txt".into())),
        "{built:?}"
    );
    std::fs::remove_dir_all(ws.path("packages/a/dist")).unwrap();
    let r = ws.run(&["build"]);
    ok(&r);
    assert_eq!(r.cached(), vec!["a#build"]);
    assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
    assert_eq!(tree(&ws.path("packages/a/dist")), built);
    let md = std::fs::symlink_metadata(ws.path("packages/a/dist/link.txt")).unwrap();
    assert!(md.file_type().is_symlink(), "restored as a regular file");
    // The next run finds the restored links up to date.
    let r = ws.run(&["build"]);
    assert_eq!(r.cached(), vec!["a#build"]);
});

vx_test!(
    a_symlink_output_pointing_outside_is_never_cached_and_never_read,
    || {
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("secret.txt");
        std::fs::write(&secret_file, "TOP-SECRET-BYTES\n").unwrap();
        let ws = one_task(&format!(
            "mkdir -p dist && echo ok > dist/ok.txt && ln -sf {} dist/leak",
            secret_file.display()
        ));
        for _ in 0..2 {
            let r = ws.run(&["build"]);
            ok(&r);
            // Not cached: it executes every time, with a warning naming the link.
            assert_eq!(r.executed(), vec!["a#build"]);
            let w = warnings(&r);
            assert!(
                w.iter()
                    .any(|m| m.contains("not cached") && m.contains("dist/leak")),
                "{w:?}"
            );
        }
        for (f, _) in ws.cache_listing() {
            let bytes = std::fs::read(ws.path(&f)).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("TOP-SECRET-BYTES"),
                "{f} holds the link target's bytes"
            );
        }
    }
);

vx_test!(cache_clean_deletes_only_what_vx_created, || {
    let cache = tempfile::tempdir().unwrap();
    let users: &[(&str, &str)] = &[
        ("notes.txt", "mine\n"),
        ("photos/a.jpg", "jpeg\n"),
        ("tmp/draft.txt", "draft\n"),
        ("cas/mine.txt", "mine too\n"),
    ];
    for (p, c) in users {
        let f = cache.path().join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    let ws = one_task_cache_at("mkdir -p dist && echo built > dist/x.txt", cache.path());
    ok(&ws.run(&["build"]));
    assert!(cache.path().join("index.redb").exists());
    let r = ws.vx(&["cache", "clean"]);
    ok(&r);
    let left = tree(cache.path());
    let want: Vec<(String, String)> = users
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(
        left, want,
        "clean removed a user's file or left one of its own"
    );
    // The store still works afterwards.
    let r = ws.run(&["build"]);
    ok(&r);
    daemon_still_up(&ws);
});

/// Zeroes every 4 KiB page of a redb file but its header page (which pages
/// hold live data depends on the commits before; a shared, multi-writer
/// file moves them around, so a page or two may all be free).
fn zero_pages(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let end = b.len();
    b[4096..end].fill(0);
    std::fs::write(p, b).unwrap();
}

fn garbage(p: &Path) {
    let b: Vec<u8> = (0..40_000u32).map(|i| (i * 31 + 7) as u8).collect();
    std::fs::write(p, b).unwrap();
}

vx_test!(a_damaged_index_costs_one_warning_and_a_cold_run, || {
    for (what, damage) in [("zeroed", zero_pages as fn(&Path)), ("garbage", garbage)] {
        let ws = one_task("mkdir -p dist && echo built > dist/x.txt");
        ok(&ws.run(&["build"]));
        stop_daemon(&ws);
        damage(&ws.path(".vx/cache/index.redb"));
        let r = ws.run(&["build"]);
        ok(&r);
        assert_eq!(r.executed(), vec!["a#build"], "{what}: a cold run");
        let w = warnings(&r);
        let about: Vec<_> = w.iter().filter(|m| m.contains("index")).collect();
        assert_eq!(about.len(), 1, "{what}: one warning: {w:?}");
        assert!(about[0].contains("damaged"), "{what}: {w:?}");
        assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
        // The rebuilt index works: the next run is a hit without a warning.
        let r = ws.run(&["build"]);
        ok(&r);
        assert_eq!(r.cached(), vec!["a#build"], "{what}");
        assert!(warnings(&r).is_empty(), "{what}: {:?}", warnings(&r));
        daemon_still_up(&ws);
        // Damaged again: clean still works.
        stop_daemon(&ws);
        damage(&ws.path(".vx/cache/index.redb"));
        let r = ws.vx(&["cache", "clean"]);
        ok(&r);
        assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
        assert!(!ws.exists(".vx/cache/index.redb"), "{what}");
        ok(&ws.run(&["build"]));
        daemon_still_up(&ws);
    }
});

vx_test!(a_damaged_history_never_fails_a_run, || {
    for (what, damage) in [("zeroed", zero_pages as fn(&Path)), ("garbage", garbage)] {
        let ws = one_task("mkdir -p dist && echo built > dist/x.txt");
        ok(&ws.run(&["build"]));
        stop_daemon(&ws);
        damage(&ws.path(".vx/cache/history.redb"));
        for n in 0..3 {
            let r = ws.run(&["build", "--force"]);
            ok(&r);
            assert!(!r.stderr.contains("panicked"), "{what} #{n}: {}", r.stderr);
            let about: Vec<_> = warnings(&r)
                .into_iter()
                .filter(|m| m.contains("history"))
                .collect();
            // One warning, on the first run only; then a new history.
            assert_eq!(about.len(), usize::from(n == 0), "{what} #{n}: {about:?}");
        }
        let r = ws.vx(&["history", "--json"]);
        ok(&r);
        daemon_still_up(&ws);
    }
});

vx_test!(
    a_same_size_corrupt_blob_is_replaced_by_the_next_save,
    || {
        let ws = one_task("mkdir -p dist && echo built-output > dist/x.txt");
        ok(&ws.run(&["build"]));
        let good = std::fs::read(ws.path("packages/a/dist/x.txt")).unwrap();
        // Corrupt the output's blob with bytes of the same size.
        let blob = ws
            .cache_listing()
            .into_iter()
            .map(|(f, _)| ws.path(&f))
            .find(|p| p.to_string_lossy().contains("/cas/") && std::fs::read(p).unwrap() == good)
            .expect("the output's blob");
        let mut bad = good.clone();
        bad.iter_mut().for_each(|b| *b = b'X');
        std::fs::write(&blob, &bad).unwrap();
        // A miss with a warning, and a re-execution.
        std::fs::remove_dir_all(ws.path("packages/a/dist")).unwrap();
        let r = ws.run(&["build"]);
        ok(&r);
        assert_eq!(r.executed(), vec!["a#build"]);
        assert!(
            warnings(&r).iter().any(|m| m.contains("corrupt")),
            "{:?}",
            warnings(&r)
        );
        // Then a hit with the right bytes and no warning.
        std::fs::remove_dir_all(ws.path("packages/a/dist")).unwrap();
        let r = ws.run(&["build"]);
        ok(&r);
        assert_eq!(r.cached(), vec!["a#build"]);
        assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
        assert_eq!(
            std::fs::read(ws.path("packages/a/dist/x.txt")).unwrap(),
            good
        );
    }
);

vx_test!(an_unusable_cache_dir_still_runs_uncached, || {
    // A cache dir that cannot be created (its parent is a regular file):
    // unusable for root as much as for anyone.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("file"), "not a dir\n").unwrap();
    let cache = outside.path().join("file/cache");
    let ws = one_task_cache_at("mkdir -p dist && echo built > dist/x.txt", &cache);
    let r = ws.run(&["build", "--no-cache"]);
    ok(&r);
    assert_eq!(r.executed(), vec!["a#build"]);
    // (The history, in the same dir, says it cannot record the run.)
    assert!(
        !warnings(&r).iter().any(|m| m.contains("the cache at")),
        "--no-cache asked for it: {:?}",
        warnings(&r)
    );
    for _ in 0..2 {
        let r = ws.run(&["build"]);
        ok(&r);
        assert_eq!(r.executed(), vec!["a#build"]);
        let w = warnings(&r);
        assert!(
            w.iter()
                .any(|m| m.contains("cannot be used") && m.contains("running without it")),
            "{w:?}"
        );
    }
    assert_eq!(ws.read("packages/a/dist/x.txt"), "built\n");
    daemon_still_up(&ws);
});

vx_test!(a_read_only_cache_dir_still_runs_with_no_cache, || {
    // Permissions do not bind root; this case needs an ordinary user.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    let ws = one_task("mkdir -p dist && echo built > dist/x.txt");
    ok(&ws.run(&["build"]));
    stop_daemon(&ws);
    let cache = ws.path(".vx/cache");
    let set_mode = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    for f in ["index.redb", "history.redb"] {
        set_mode(&cache.join(f), 0o444);
    }
    set_mode(&cache, 0o555);
    let r = ws.run(&["build", "--no-cache"]);
    let r2 = ws.run(&["build"]);
    set_mode(&cache, 0o755);
    for f in ["index.redb", "history.redb"] {
        set_mode(&cache.join(f), 0o644);
    }
    ok(&r);
    ok(&r2);
});
