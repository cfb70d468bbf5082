//! Args forwarded after `--` are kept only hashed in the run history
//! (`docs/history.md`): never verbatim in `history.redb`, in the recorded
//! argv, or in what `vx history` / `vx last` print. Both daemon modes.

use vx_tests::{Ws, daemon_mode, vx_test};

const SECRET: &str = "s3cr3t-t0ken-value";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

vx_test!(forwarded_args_are_never_recorded_verbatim, || {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"a\"]\n"),
        ("a/vx.toml", "[tasks.test]\ncommand = \"echo testing\"\n"),
    ]);
    let token = format!("--token={SECRET}");
    let r = ws.run(&["a#test", "--", &token, "plain-arg"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The task did get them.
    assert!(r.stdout.contains(SECRET), "{}", r.stdout);

    let last = ws.vx(&["last", "--json"]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert!(!last.stdout.contains(SECRET), "{}", last.stdout);
    let v: serde_json::Value = serde_json::from_str(&last.stdout).expect("last --json");
    let argv: Vec<&str> = v["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    // The command stays readable; the args are one hashed placeholder.
    assert_eq!(
        &argv[1..],
        &["run", "--json", "a#test", "--", argv[5]],
        "{argv:?}"
    );
    assert!(argv[5].contains("2 args hashed"), "{argv:?}");
    assert!(!argv.iter().any(|a| a.contains("plain-arg")), "{argv:?}");

    let list = ws.vx(&["history", "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(!list.stdout.contains(SECRET), "{}", list.stdout);
    let text = ws.vx(&["history"]);
    assert!(!text.stdout.contains(SECRET), "{}", text.stdout);

    // Nor in the file's bytes (a daemon writes them out when it stops).
    if daemon_mode() {
        assert_eq!(ws.vx(&["daemon", "stop"]).code, 0);
    }
    let bytes = std::fs::read(ws.path(".vx/cache/history.redb")).expect("history.redb");
    assert!(contains(&bytes, "a#test"), "the record is not in the file");
    assert!(!contains(&bytes, SECRET), "the secret is in history.redb");
    assert!(!contains(&bytes, "plain-arg"), "an arg is in history.redb");
});
