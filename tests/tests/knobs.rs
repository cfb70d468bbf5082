//! `VX_*` knobs of scope "run" (proto/src/knobs.rs): the invoking client's
//! value counts, under a daemon as without one, and never the value the
//! daemon inherited from the client that started it. Each test runs in both
//! modes (`vx_test!`); in the daemon variant the first command starts the
//! daemon with a value that later commands do not have.

use serde_json::Value;
use vx_tests::{Ws, vx_test};

fn app() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            concat!(
                "[project]\nname = \"app\"\n",
                "[tasks.build]\n",
                "command = \"echo built\"\n",
                "[tasks.slow]\n",
                "command = \"exec sleep 1000\"\n",
                "persistent = true\n",
                "ready_when = \"never printed\"\n",
                "timeout = \"1500ms\"\n",
            ),
        ),
    ])
}

fn runs_in_history(ws: &Ws, env: &[(&str, &str)]) -> usize {
    let r = ws.vx_in(".", &["history", "--json"], env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    v["runs"].as_array().map(Vec::len).unwrap_or(0)
}

fn forced(ws: &Ws, env: &[(&str, &str)]) {
    let r = ws.run_env(&["build", "--force"], env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

// History retention is the recording run's: a daemon started with
// `VX_HISTORY_MAX_RUNS=1` keeps every run of clients without it, and a
// client's own value is applied to its run.
vx_test!(history_retention_is_the_recording_clients, || {
    let ws = app();
    forced(&ws, &[("VX_HISTORY_MAX_RUNS", "1")]);
    forced(&ws, &[]);
    forced(&ws, &[]);
    assert_eq!(
        runs_in_history(&ws, &[]),
        3,
        "a run without VX_HISTORY_MAX_RUNS keeps the default retention"
    );
    forced(&ws, &[("VX_HISTORY_MAX_RUNS", "2")]);
    assert_eq!(
        runs_in_history(&ws, &[]),
        2,
        "the recording client's VX_HISTORY_MAX_RUNS applies"
    );
});

fn ready_notices(ws: &Ws, env: &[(&str, &str)]) -> usize {
    let r = ws.run_env(&["slow"], env);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    r.events
        .iter()
        .filter(|e| {
            e["type"] == "warning"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("app#slow is not ready yet"))
        })
        .count()
}

// `VX_READY_NOTICE_MS` is the invoking client's: a client asking for a
// notice after 200 ms gets one, even from a daemon that was started without
// the variable; a client without it gets none within the 1.5 s timeout,
// even from a daemon started with it.
vx_test!(ready_notice_delay_is_the_invoking_clients, || {
    let ws = app();
    // Under the daemon this first command starts it, with the variable.
    assert_eq!(ready_notices(&ws, &[("VX_READY_NOTICE_MS", "200")]), 1);
    assert_eq!(
        ready_notices(&ws, &[]),
        0,
        "default is 10 s, not the daemon's"
    );
    let ws = app();
    // A daemon started without it.
    forced(&ws, &[]);
    assert_eq!(ready_notices(&ws, &[("VX_READY_NOTICE_MS", "200")]), 1);
});
