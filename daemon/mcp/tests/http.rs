//! Streamable HTTP: [`vxd_mcp::streamable_http_on`] served on a loopback
//! port, driven by the real Python `mcp` client (tests/tests/mcp_client.py
//! from the peers venv, which tests/peers/setup.sh installs). The engine
//! is the no-daemon one, in this process.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn answer(call: &Value) -> Value {
    serde_json::from_str(call["text"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {call}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_serves_the_tools_to_a_real_client() {
    let python = repo().join("tests/peers/.venv/bin/python");
    if !python.is_file() {
        eprintln!(
            "SKIP streamable_http_serves_the_tools_to_a_real_client: the Python `mcp` package is not installed here (tests/peers/setup.sh installs it; .ci/run calls it)"
        );
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(ws.path()).unwrap();
    write(
        &root,
        "vx.toml",
        "[workspace]\nmembers = [\"packages/*\"]\n",
    );
    write(
        &root,
        "packages/lib/vx.toml",
        r#"[tasks.build]
command = "mkdir -p dist && cat src/*.txt > dist/out.txt && echo built lib"
inputs = ["src/**"]
outputs = ["dist/**"]

[tasks.fail]
command = "echo the reason it failed >&2; exit 4"
inputs = ["src/**"]
outputs = []

[tasks.long]
command = "echo $$ > ../../long.pid && exec sleep 60"
cache = false
"#,
    );
    write(&root, "packages/lib/src/a.txt", "a\n");

    let stopping = tokio_util::sync::CancellationToken::new();
    let app =
        vxd_mcp::streamable_http_on(vxd::server::Ctx::stdio(), root.clone(), stopping.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let stop = stopping.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });

    let cfg = json!({
        "url": format!("http://{addr}/"),
        "calls": [
            {"tool": "list_projects"},
            {"tool": "run_tasks", "args": {"tasks": "lib#build"}},
            {"tool": "run_tasks", "args": {"tasks": "lib#build"}},
            {"tool": "cache_stats"},
            {"tool": "run_tasks", "args": {"tasks": "lib#fail"}},
            {"tool": "explain_task", "args": {"task": "lib#biuld"}},
        ],
        "cancel": {
            "tool": "run_tasks",
            "args": {"tasks": "lib#long"},
            "marker": root.join("long.pid").to_string_lossy(),
            "timeout": 30,
        },
    });
    let file = root.join(".vx-mcp-test.json");
    std::fs::write(&file, cfg.to_string()).unwrap();
    let out = tokio::process::Command::new(&python)
        .arg(repo().join("tests/tests/mcp_client.py"))
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stdout}\n{stderr}");
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(v["server"], "vx");
    assert_eq!(v["tools"].as_array().unwrap().len(), 8);
    let c = v["calls"].as_array().unwrap();
    assert_eq!(answer(&c[0])["projects"][0]["name"], "lib", "{}", c[0]);
    let first = answer(&c[1]);
    assert_eq!(first["counts"]["executed"], 1, "{first}");
    let second = answer(&c[2]);
    assert_eq!(
        second["counts"]["cached"], 1,
        "the second run is a hit: {second}"
    );
    assert_eq!(answer(&c[3])["entries"], 1);
    assert_eq!(c[4]["is_error"], true);
    let failed = answer(&c[4]);
    assert!(
        failed["failed"][0]["log_tail"]
            .as_str()
            .unwrap()
            .contains("the reason it failed"),
        "{failed}"
    );
    assert!(
        c[5]["text"]
            .as_str()
            .unwrap()
            .contains("did you mean lib#build"),
        "{}",
        c[5]
    );
    assert_eq!(v["cancel"]["started"], true, "{v}");
    assert_eq!(
        v["cancel"]["stopped"], true,
        "the cancelled run's process lives on: {v}"
    );

    stopping.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
}
