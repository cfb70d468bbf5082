//! vx with a REAPI server as its remote cache (`[remote_execution]`,
//! `VX_REAPI_*`), end to end with the real binaries: against a real
//! BuildGrid (PyPI `buildgrid`, started here with an in-memory config) and
//! against vx's own cache server. Two clones of one fixture: the second
//! runs nothing and gets byte-identical outputs — a file over 4 MiB
//! (ByteStream), an executable, a symlink — and the replayed log. An
//! unreachable server, and a read-only token, are one warning each.

#[path = "remote_support/mod.rs"]
mod remote_support;

use remote_support::{Server, sources, warnings};
use std::os::unix::fs::PermissionsExt;
use vx_tests::peers::buildgrid::{Buildgrid, Services};
use vx_tests::{Ws, vx_test};

const RW: &str = "reapi-client-rw-1";
const RO: &str = "reapi-client-ro-1";

/// The fixture: `lib#build` (a 5 MB file, an executable, a link) →
/// `app#build` → `app#test`; `extra` goes into the root `vx.toml`.
fn fixture(extra: &str) -> Ws {
    Ws::new(&[
        (
            "vx.toml",
            &format!("[workspace]\nmembers = [\"packages/*\"]\n{extra}"),
        ),
        (
            "packages/lib/vx.toml",
            r#"[tasks.build]
command = "mkdir -p dist && cat src/*.txt > dist/out.txt && yes lib-line | head -c 5000000 > dist/big.bin && printf '#!/bin/sh\necho hi\n' > dist/run.sh && chmod 755 dist/run.sh && ln -sf out.txt dist/link.txt && echo built lib"
inputs = ["src/**"]
outputs = ["dist/**"]
"#,
        ),
        ("packages/lib/src/a.txt", "lib-a\n"),
        (
            "packages/app/vx.toml",
            r#"[project]
deps = ["lib"]

[tasks.build]
command = "mkdir -p dist && cat ../lib/dist/out.txt src/*.txt > dist/app.txt && echo built app"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = ["dist/**"]

[tasks.test]
command = "test -s dist/app.txt && echo tested"
depends_on = ["build"]
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/app/src/main.txt", "app-main\n"),
    ])
}

const FILES: &[&str] = &[
    "packages/lib/dist/out.txt",
    "packages/lib/dist/big.bin",
    "packages/lib/dist/run.sh",
    "packages/app/dist/app.txt",
];

/// Runs `test` in a fresh clone; checks it succeeded.
fn clone_run(extra: &str, env: &[(&str, &str)]) -> (Ws, vx_tests::Run) {
    let ws = fixture(extra);
    let r = ws.run_env(&["test"], env);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    (ws, r)
}

/// The second clone is all remote hits with the first's bytes.
fn check_second_clone(a: &Ws, b: &Ws, r2: &vx_tests::Run) {
    assert!(r2.executed().is_empty(), "{}", r2.stdout);
    assert!(warnings(r2).is_empty(), "{:?}", warnings(r2));
    for (id, src) in sources(r2) {
        assert_eq!(src, "remote", "{id}");
    }
    for f in FILES {
        assert!(
            std::fs::read(a.path(f)).unwrap() == std::fs::read(b.path(f)).unwrap(),
            "{f} differs"
        );
    }
    assert_eq!(
        std::fs::metadata(b.path("packages/lib/dist/big.bin"))
            .unwrap()
            .len(),
        5_000_000
    );
    let mode = std::fs::metadata(b.path("packages/lib/dist/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(b.path("packages/lib/dist/link.txt")).unwrap(),
        std::path::Path::new("out.txt")
    );
    assert!(
        r2.events
            .iter()
            .any(|e| e["type"] == "task_output" && e["line"] == "built lib" && e["replay"] == true),
        "the log is replayed: {}",
        r2.stdout
    );
}

vx_test!(two_clones_hit_through_buildgrid, || {
    let bg = match Buildgrid::start(Services::Cache, 0) {
        Ok(bg) => bg,
        Err(peer) => return vx_tests::peers::skip("two_clones_hit_through_buildgrid", peer),
    };
    let ep = bg.endpoint();
    let env = [("VX_REAPI_ENDPOINT", ep.as_str())];
    let (a, r1) = clone_run("", &env);
    assert_eq!(r1.executed().len(), 3, "{}", r1.stdout);
    assert!(
        warnings(&r1).is_empty(),
        "{:?}\n{}",
        warnings(&r1),
        bg.log()
    );
    let (b, r2) = clone_run("", &env);
    check_second_clone(&a, &b, &r2);
    // A changed input executes again (and the rest still hits).
    b.write("packages/app/src/main.txt", "changed\n");
    let r3 = b.run_env(&["test"], &env);
    assert_eq!(
        r3.executed(),
        vec!["app#build", "app#test"],
        "{}",
        r3.stdout
    );
});

vx_test!(two_clones_hit_through_our_server, || {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--token-rw", RW, "--token-ro", RO],
        &[],
    );
    // Configured in vx.toml this time; the token from the named variable.
    let cfg = format!(
        "\n[remote_execution]\nendpoint = \"grpc://{}\"\ninstance_name = \"ci/main\"\ntoken_env = \"CACHE_TOKEN\"\nheaders = {{ \"x-vx-test\" = \"${{CACHE_TOKEN}}-seen\" }}\n",
        srv.addr
    );
    let (a, r1) = clone_run(&cfg, &[("CACHE_TOKEN", RW)]);
    assert_eq!(r1.executed().len(), 3, "{}", r1.stdout);
    assert!(warnings(&r1).is_empty(), "{:?}", warnings(&r1));
    // Stored under the instance, in the token's namespace.
    let ac = store.path().join("reapi/ac/default/ci/main");
    assert_eq!(
        std::fs::read_dir(&ac).map(|d| d.count()).unwrap_or(0),
        3,
        "{}",
        srv.log_text()
    );
    let (b, r2) = clone_run(&cfg, &[("CACHE_TOKEN", RW)]);
    check_second_clone(&a, &b, &r2);
    // A read-only token hits, and its one refused upload is one warning.
    let (c, r) = clone_run(&cfg, &[("CACHE_TOKEN", RO)]);
    assert!(r.executed().is_empty(), "{}", r.stdout);
    c.write("packages/app/src/main.txt", "changed\n");
    let r = c.run_env(&["test"], &[("CACHE_TOKEN", RO)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["app#build", "app#test"]);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("not uploading"), "{w:?}");
    assert_eq!(std::fs::read_dir(&ac).unwrap().count(), 3);
    // `VX_REAPI_ENDPOINT=off` turns it off for a run.
    let d = fixture(&cfg);
    let r = d.run_env(
        &["test"],
        &[("CACHE_TOKEN", RW), ("VX_REAPI_ENDPOINT", "off")],
    );
    assert_eq!(r.executed().len(), 3);
});

vx_test!(an_unreachable_reapi_server_is_one_warning, || {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("grpc://{}", l.local_addr().unwrap());
    drop(l);
    let ws = fixture("");
    let r = ws.run_env(
        &["test"],
        &[
            ("VX_REAPI_ENDPOINT", ep.as_str()),
            ("VX_REMOTE_CACHE_TIMEOUT_MS", "5000"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed().len(), 3);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains(&ep), "{w:?}");
});

#[test]
fn a_bad_endpoint_is_a_config_error_with_its_line() {
    let ws = fixture("\n[remote_execution]\nendpoint = \"ftp://nope\"\n");
    let r = ws.run(&["test"]);
    assert_ne!(r.code, 0);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("vx.toml:5"), "{all}");
    assert!(all.contains("grpc://HOST:PORT"), "{all}");
}

vx_test!(execute_against_a_cache_only_server_is_one_warning, || {
    // vx's own server answers the cache services only: with `execute = true`
    // the executor declines once per run, naming the server, and every task
    // runs here with correct outputs (and is cached through it as usual).
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(store.path().to_str().unwrap(), &["--token-rw", RW], &[]);
    let cfg = format!(
        "\n[remote_execution]\nendpoint = \"grpc://{}\"\ntoken_env = \"CACHE_TOKEN\"\nexecute = true\nplatform = {{ OSFamily = \"linux\" }}\n",
        srv.addr
    );
    let (a, r) = clone_run(&cfg, &[("CACHE_TOKEN", RW)]);
    assert_eq!(r.executed().len(), 3, "{}", r.stdout);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&srv.addr.to_string()) && w[0].contains("no execution capability"),
        "{w:?}"
    );
    for e in r.events.iter().filter(|e| e["type"] == "task_started") {
        assert!(e["worker"].is_null(), "ran here: {e}");
    }
    for t in r.summary()["tasks"].as_array().unwrap() {
        assert!(t["worker"].is_null(), "{t}");
    }
    assert_eq!(a.read("packages/app/dist/app.txt"), "lib-a\napp-main\n");
    // `VX_REAPI_EXECUTE=0` wins over the file: no warning (a changed input
    // makes a task run).
    a.write("packages/app/src/main.txt", "changed\n");
    let r = a.run_env(&["test"], &[("CACHE_TOKEN", RW), ("VX_REAPI_EXECUTE", "0")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.executed(), vec!["app#build", "app#test"]);
    assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
    // And `VX_REAPI_EXECUTE=1` alone turns it on: the one warning again.
    a.write("packages/app/src/main.txt", "changed again\n");
    let r = a.run_env(&["test"], &[("CACHE_TOKEN", RW), ("VX_REAPI_EXECUTE", "1")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(warnings(&r).len(), 1, "{:?}", warnings(&r));
    assert_eq!(
        a.read("packages/app/dist/app.txt"),
        "lib-a\nchanged again\n"
    );
});
