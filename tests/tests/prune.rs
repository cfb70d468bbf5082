//! `vx cache prune` end to end: frees space by least recent use, keeps every
//! remaining entry restorable, and works through the daemon (the `::daemon`
//! variants) as well as without it.

use serde_json::Value;
use vx_tests::{Ws, vx_test};

/// Three independent cached tasks whose outputs are 50 KB (`b`), 200 KB
/// (`c`) and 1 KB (`a`).
fn sized() -> Ws {
    let task = |n: usize| {
        format!(
            "[tasks.build]\ncommand = \"mkdir -p dist && yes $(cat src/seed) | head -c {n} > dist/out.bin && echo built\"\ninputs = [\"src/**\"]\noutputs = [\"dist/**\"]\n"
        )
    };
    let (a, b, c) = (task(1_000), task(50_000), task(200_000));
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\", \"b\", \"c\"]\n"),
        ("a/vx.toml", &a),
        ("a/src/seed", "alpha"),
        ("b/vx.toml", &b),
        ("b/src/seed", "bravo"),
        ("c/vx.toml", &c),
        ("c/src/seed", "charlie"),
    ])
}

fn stats(ws: &Ws) -> Value {
    let r = ws.vx(&["cache", "stats", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn prune(ws: &Ws, args: &[&str]) -> Value {
    let mut a = vec!["cache", "prune", "--json"];
    a.extend_from_slice(args);
    let r = ws.vx(&a);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// Builds `b`, then `c`, then `a`, in that order: `b` is the least recently used.
fn build_in_order(ws: &Ws) {
    for p in ["b", "c", "a"] {
        let r = ws.run(&["build", "--filter", p]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert_eq!(r.executed(), vec![format!("{p}#build")]);
        // distinct creation times, whatever the clock resolution
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

vx_test!(
    prune_by_size_drops_least_recently_used_and_keeps_the_rest_restorable,
    || {
        let ws = sized();
        build_in_order(&ws);
        let outputs: Vec<Vec<u8>> = ["a", "b", "c"]
            .iter()
            .map(|p| std::fs::read(ws.path(&format!("{p}/dist/out.bin"))).unwrap())
            .collect();
        assert_eq!(outputs[2].len(), 200_000);
        let before = stats(&ws);
        assert_eq!(before["entries"], 3);
        let total = before["blob_bytes"].as_u64().unwrap();
        assert!(total > 251_000, "{before}");

        // A dry run lists what would go and changes nothing. 210 kB fits `c`
        // and `a` but not `b` too: the least recently used (`b`) goes, not the
        // largest (`c`).
        let dry = prune(&ws, &["--max-size", "210kB", "--dry-run"]);
        assert_eq!(dry["dry_run"], true);
        assert_eq!(dry["removed"], 1, "{dry}");
        assert_eq!(dry["entries"][0]["task"], "b#build", "{dry}");
        assert_eq!(stats(&ws), before);
        let text = ws.vx(&["cache", "prune", "--max-size", "210kB", "--dry-run"]);
        assert!(
            text.stdout.contains("would remove b#build"),
            "{}",
            text.stdout
        );

        let p = prune(&ws, &["--max-size", "210kB"]);
        assert_eq!(
            (p["removed"].as_u64(), p["kept"].as_u64()),
            (Some(1), Some(2))
        );
        let freed = p["freed_bytes"].as_u64().unwrap();
        assert!(freed >= 50_000, "{p}");
        assert!(p["kept_bytes"].as_u64().unwrap() <= 210_000, "{p}");
        let after = stats(&ws);
        assert_eq!(after["entries"], 2);
        assert_eq!(after["blob_bytes"].as_u64().unwrap(), total - freed);
        assert_eq!(after["blob_bytes"], p["kept_bytes"]);

        // Every kept entry restores byte-identical without executing; the
        // pruned one executes again.
        for p in ["a", "b", "c"] {
            std::fs::remove_dir_all(ws.path(&format!("{p}/dist"))).unwrap();
        }
        let r = ws.run(&["build"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert_eq!(r.executed(), vec!["b#build"]);
        assert_eq!(r.cached(), vec!["a#build", "c#build"]);
        assert_eq!(r.task("a#build")["cache"], "local");
        assert_eq!(r.task("c#build")["cache"], "local");
        for (p, bytes) in ["a", "b", "c"].iter().zip(&outputs) {
            assert_eq!(
                &std::fs::read(ws.path(&format!("{p}/dist/out.bin"))).unwrap(),
                bytes,
                "{p}"
            );
        }
        // b's entry is back; a third run executes nothing.
        assert_eq!(stats(&ws)["entries"], 3);
        assert!(ws.run(&["build"]).executed().is_empty());
        if vx_tests::daemon_mode() {
            // All of the above went through one daemon holding the store open.
            assert!(ws.daemon_status()["runs_served"].as_u64().unwrap() >= 5);
        }
    }
);

vx_test!(prune_by_age, || {
    let ws = sized();
    build_in_order(&ws);
    let p = prune(&ws, &["--max-age", "1d"]);
    assert_eq!(
        (p["removed"].as_u64(), p["kept"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(p["freed_bytes"], 0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let p = prune(&ws, &["--max-age", "1s"]);
    assert_eq!(p["removed"], 3, "{p}");
    let s = stats(&ws);
    assert_eq!(
        (s["entries"].as_u64(), s["blobs"].as_u64()),
        (Some(0), Some(0))
    );
    let r = ws.run(&["build"]);
    assert_eq!(r.executed(), vec!["a#build", "b#build", "c#build"]);
});

vx_test!(prune_rejects_bad_arguments, || {
    let ws = sized();
    let r = ws.vx(&["cache", "prune"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--max-size"), "{}", r.stderr);
    let r = ws.vx(&["cache", "prune", "--max-size", "abc"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("--max-size: expected a size like 500MB or 2GiB, got `abc`"),
        "{}",
        r.stderr
    );
    let r = ws.vx(&["cache", "prune", "--max-age", "30"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--max-age: expected a duration like 30d"),
        "{}",
        r.stderr
    );
    // An empty cache prunes to nothing.
    let p = prune(&ws, &["--max-size", "1G"]);
    assert_eq!(
        (p["removed"].as_u64(), p["kept"].as_u64()),
        (Some(0), Some(0))
    );
});
