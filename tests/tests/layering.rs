//! The house rules, checked: which crate may link what (on the resolved,
//! transitive dependency graph), and that only the transport edge knows
//! JSON-RPC codes. Which engine module may use which is checked next to the
//! code (`daemon/src/lib.rs`, `layering`: the allowed edges, a DAG).
//! docs/ARCHITECTURE.md states the same rules as absences; these tests keep
//! them true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `cargo metadata` of the workspace, with the resolved graph.
fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Package name → names of the packages it links (normal dependencies only,
/// not dev or build), closed transitively.
fn linked_closure(meta: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut direct: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let me = name_of[node["id"].as_str().unwrap()].to_string();
        let deps = direct.entry(me).or_default();
        for d in node["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                deps.insert(name_of[d["pkg"].as_str().unwrap()].to_string());
            }
        }
    }
    let mut closed = BTreeMap::new();
    for start in direct.keys() {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(p) = todo.pop() {
            for d in direct.get(&p).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        closed.insert(start.clone(), seen);
    }
    closed
}

/// Crates that are transports or exporters: they live in their own crates or
/// behind features, never in what the engine links.
const TRANSPORTS: &[&str] = &[
    "axum",
    "hyper",
    "tonic",
    "rmcp",
    "object_store",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry-otlp",
    "reqwest",
];

#[test]
fn crates_link_only_what_they_may() {
    let meta = metadata();
    let linked = linked_closure(&meta);
    let of = |p: &str| {
        linked
            .get(p)
            .unwrap_or_else(|| panic!("package {p} is in the workspace"))
    };
    // (package, crate it must never link, why)
    let rules: &[(&str, &str, &str)] = &[
        (
            "vx",
            "vxd",
            "the client talks to the engine only over the wire",
        ),
        ("vx", "tokio", "the client stays thin and tokio-free"),
        ("vx", "redb", "the client never opens the engine's stores"),
        ("vx-proto", "tokio", "the contract is plain data"),
        (
            "vx-proto",
            "vxd-engine",
            "the contract depends on nothing of ours",
        ),
        ("vx-proto", "vxd", "the contract depends on nothing of ours"),
        (
            "vx",
            "vxd-engine",
            "the client talks to the engine only over the wire",
        ),
        ("vx-proto", "vx", "the contract depends on nothing of ours"),
        (
            "vx-cache-server",
            "vxd-engine",
            "the cache server stands alone: it never links the engine",
        ),
        (
            "vx-cache-server",
            "vx-proto",
            "the cache server speaks only HTTP",
        ),
        (
            "vx-reapi",
            "vxd-engine",
            "the REAPI protos are shared by the server and the client: they link neither",
        ),
        (
            "vx-reapi",
            "vx-cache-server",
            "the REAPI protos are shared by the server and the client: they link neither",
        ),
        (
            "vx-reapi",
            "vx-proto",
            "the REAPI protos know nothing of vx's own protocol",
        ),
        (
            "vxd-engine",
            "vxd-reapi",
            "the engine reaches a REAPI server only through the remote-cache seam",
        ),
        ("vxd-engine", "vx-reapi", "the engine links no gRPC protos"),
        ("vxd-engine", "prost", "the engine links no gRPC protos"),
        (
            "vxd-reapi",
            "vx-cache-server",
            "the REAPI client and the cache server share only vx-reapi",
        ),
        (
            "vxd-engine",
            "vxd-workers",
            "the engine knows worker links only as engine::distribute values: the gRPC transport attaches from daemon/bin",
        ),
        (
            "vx",
            "vxd-workers",
            "`vx worker` execs `vxd worker`: the client links no transport",
        ),
    ];
    let mut broken = Vec::new();
    for (pkg, never, why) in rules {
        if of(pkg).contains(*never) {
            broken.push(format!("{pkg} links {never} ({why})"));
        }
    }
    for t in TRANSPORTS {
        if of("vxd-engine").contains(*t) {
            broken.push(format!(
                "the engine (vxd-engine) links the transport crate {t}: put it in its own crate under daemon/ (assembled by daemon/bin) or behind a feature"
            ));
        }
    }
    // The worker links' transport is where tonic may be: it links the
    // engine and tonic, and only the `vxd` binary links it.
    for needed in ["tonic", "prost", "vxd-engine"] {
        if !of("vxd-workers").contains(needed) {
            broken.push(format!(
                "vxd-workers does not link {needed}: the worker-link transport (gRPC) moved? update this test and docs/ARCHITECTURE.md"
            ));
        }
    }
    for (pkg, deps) in &linked {
        if pkg != "vxd" && pkg != "vxd-workers" && deps.contains("vxd-workers") {
            broken.push(format!(
                "{pkg} links vxd-workers: only the vxd binary (daemon/bin) assembles the transports"
            ));
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// The top-level module of `daemon/src` a file belongs to (`engine/keys.rs`
/// → `engine`); `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read daemon/src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Only the transport edge knows JSON-RPC: error codes and `RpcError` appear
/// nowhere else in the engine.
#[test]
fn only_the_edge_knows_json_rpc() {
    let src = repo().join("daemon/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under daemon/src");
        if rel.starts_with("server") || module_of(rel).is_none() {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("codes::") || code.contains("RpcError") {
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "JSON-RPC codes outside daemon/src/server:\n{}",
        found.join("\n")
    );
}
