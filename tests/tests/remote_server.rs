//! The cache server on its own, over HTTP: tokens and roles, namespaces
//! (the CREEP fix), never-overwrite, size caps, turbo's batch query and
//! events, provenance beside each artifact, eviction by size (least
//! recently read first) and by age, `/health`, `/metrics`, and a graceful
//! shutdown that finishes an upload in flight.

#[path = "remote_support/mod.rs"]
mod remote_support;
mod slow_client;

use remote_support::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const RW: &str = "server-rw-0001";
const RO: &str = "server-ro-0001";

fn hash(i: u32) -> String {
    format!("{i:016x}")
}

fn body(i: u32, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j as u32 * 31 + i * 7) as u8).collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn routes_roles_and_caps() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &[
            "--token-rw",
            RW,
            "--token-ro",
            RO,
            "--max-artifact-size",
            "4K",
        ],
        &[],
    );
    let (st, _, b) = srv.http("GET", "/health", None, &[], b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    // (method, path, token, body, status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], u16);
    let cases: &[Case] = &[
        ("GET", "/v8/artifacts/status?slug=acme", None, b"", 401),
        (
            "GET",
            "/v8/artifacts/status?slug=acme",
            Some("wrong-token-x"),
            b"",
            401,
        ),
        ("GET", "/v8/artifacts/status?slug=acme", Some(RO), b"", 200),
        ("GET", "/v8/artifacts/abc123?slug=acme", Some(RO), b"", 404),
        ("PUT", "/v8/artifacts/abc123?slug=acme", Some(RO), b"x", 403),
        (
            "PUT",
            "/v8/artifacts/abc123?slug=acme",
            Some(RW),
            &[7u8; 5000],
            413,
        ),
        ("PUT", "/v8/artifacts/ab..c?slug=acme", Some(RW), b"x", 400),
        ("PUT", "/v8/artifacts/abc123?slug=a/b", Some(RW), b"x", 400),
        (
            "PUT",
            "/v8/artifacts/abc123?slug=acme",
            Some(RW),
            b"first",
            202,
        ),
        (
            "PUT",
            "/v8/artifacts/abc123?slug=acme",
            Some(RW),
            b"second",
            409,
        ),
        ("HEAD", "/v8/artifacts/abc123?slug=acme", Some(RO), b"", 200),
        ("GET", "/v8/artifacts/abc123?slug=other", Some(RO), b"", 404),
        (
            "POST",
            "/v8/artifacts/events?slug=acme",
            Some(RO),
            br#"[{"sessionId":"s","source":"REMOTE","event":"HIT","hash":"abc123","duration":3}]"#,
            200,
        ),
        (
            "POST",
            "/v8/artifacts/events?slug=acme",
            Some(RO),
            b"not json",
            400,
        ),
        ("PUT", "/v1/cache/77aa", Some(RO), b"x", 403),
        ("PUT", "/v1/cache/77aa", Some(RW), b"nx-bytes", 200),
        ("PUT", "/v1/cache/77aa", Some(RW), b"nx-bytes", 409),
        ("GET", "/v1/cache/77aa", None, b"", 401),
    ];
    for (method, path, token, b, want) in cases {
        let (st, _, got) = srv.http(method, path, *token, &[], b);
        assert_eq!(
            st,
            *want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    let (_, h, got) = srv.http("GET", "/v8/artifacts/abc123?slug=acme", Some(RO), &[], b"");
    assert_eq!(got, b"first", "never overwritten");
    assert!(h.iter().any(|(k, _)| k == "x-artifact-duration"));
    let (_, _, got) = srv.http("GET", "/v1/cache/77aa", Some(RO), &[], b"");
    assert_eq!(got, b"nx-bytes");
    // turbo's batch query.
    let (st, _, q) = srv.http(
        "POST",
        "/v8/artifacts?slug=acme",
        Some(RO),
        &[("content-type", "application/json")],
        br#"{"hashes":["abc123","ffff"]}"#,
    );
    assert_eq!(st, 200);
    let q: serde_json::Value = serde_json::from_slice(&q).unwrap();
    assert_eq!(q["abc123"]["size"], 5, "{q}");
    assert!(q["ffff"].is_null(), "{q}");
    // Provenance beside the artifact.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.path().join("v1/default/acme/abc123.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["writer"], "rw0", "{meta}");
    assert_eq!(meta["size"], 5);
    assert_eq!(meta["api"], "turbo");
    // Metrics.
    let (_, _, m) = srv.http("GET", "/metrics", None, &[], b"");
    let m = String::from_utf8_lossy(&m);
    for line in [
        "vx_cache_requests_total{route=\"turbo_put\",status=\"409\"} 1",
        "vx_cache_requests_total{route=\"turbo_put\",status=\"413\"} 1",
        "vx_cache_conflicts_total 2",
        "vx_cache_uploads_total 2",
        "vx_cache_stored_artifacts 2",
        "vx_cache_events_total{source=\"remote\",event=\"hit\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

#[test]
fn namespaces_keep_pull_requests_out_of_main() {
    let store = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        r#"
[[token]]
name = "ci-main"
secret = "main-secret-0001"
role = "write"
namespace = "main"

[[token]]
name = "ci-pr"
secret_env = "PR_SECRET"
role = "write"
namespace = "pr"
read = ["main"]
"#,
    )
    .unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--tokens", tokens.to_str().unwrap()],
        &[("PR_SECRET", "pr-secret-00001")],
    );
    let (main, pr) = (Some("main-secret-0001"), Some("pr-secret-00001"));
    let put = |t, h: &str, b: &[u8]| {
        srv.http("PUT", &format!("/v8/artifacts/{h}?slug=acme"), t, &[], b)
            .0
    };
    let get = |t, h: &str| {
        let (st, _, b) = srv.http("GET", &format!("/v8/artifacts/{h}?slug=acme"), t, &[], b"");
        (st, b)
    };
    assert_eq!(put(main, "aa01", b"good"), 202);
    // A pull request reads main...
    assert_eq!(get(pr, "aa01"), (200, b"good".to_vec()));
    // ...and its upload of the same hash lands in its own namespace.
    assert_eq!(put(pr, "aa01", b"poison"), 202);
    assert_eq!(get(main, "aa01"), (200, b"good".to_vec()));
    assert_eq!(
        get(pr, "aa01"),
        (200, b"good".to_vec()),
        "main is read first"
    );
    // Main never reads what a pull request wrote.
    assert_eq!(put(pr, "bb02", b"poison"), 202);
    assert_eq!(get(main, "bb02").0, 404);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.path().join("v1/pr/acme/bb02.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (meta["writer"].as_str(), meta["namespace"].as_str()),
        (Some("ci-pr"), Some("pr"))
    );
}

#[test]
fn eviction_by_size_keeps_the_most_recently_read() {
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().to_str().unwrap();
    let args = [
        "--token-rw",
        RW,
        "--max-size",
        "3500",
        "--evict-interval",
        "200ms",
    ];
    let mut srv = Server::start(dir, &args, &[]);
    wait_for("the index", || {
        String::from_utf8_lossy(&srv.http("GET", "/health", None, &[], b"").2)
            .contains("\"indexed\":true")
    });
    let put = |srv: &Server, i| {
        srv.http(
            "PUT",
            &format!("/v8/artifacts/{}", hash(i)),
            Some(RW),
            &[],
            &body(i, 1000),
        )
        .0
    };
    let get = |srv: &Server, i| {
        srv.http(
            "GET",
            &format!("/v8/artifacts/{}", hash(i)),
            Some(RW),
            &[],
            b"",
        )
        .0
    };
    for i in 1..=3 {
        assert_eq!(put(&srv, i), 202);
        std::thread::sleep(Duration::from_millis(30));
    }
    // 1 is read last: 2 is now the least recently read.
    assert_eq!(get(&srv, 1), 200);
    std::thread::sleep(Duration::from_millis(30));
    // Restarted: the last reads survive (saved on shutdown).
    srv.stop();
    let srv = Server::start(dir, &args, &[]);
    wait_for("the index", || {
        String::from_utf8_lossy(&srv.http("GET", "/health", None, &[], b"").2)
            .contains("\"indexed\":true")
    });
    assert_eq!(put(&srv, 4), 202);
    wait_for("an eviction", || {
        srv.metric("vx_cache_evictions_total") >= 1
    });
    assert_eq!(get(&srv, 2), 404, "the least recently read goes");
    for i in [1, 3, 4] {
        assert_eq!(get(&srv, i), 200, "{i} kept");
    }
    assert!(srv.metric("vx_cache_stored_bytes") <= 3500);
    assert!(
        !store
            .path()
            .join(format!("v1/default/_/{}.meta.json", hash(2)))
            .exists()
    );
}

#[test]
fn eviction_by_age() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--token-rw", RW, "--ttl", "1s", "--evict-interval", "200ms"],
        &[],
    );
    assert_eq!(
        srv.http("PUT", "/v1/cache/ab12", Some(RW), &[], b"old").0,
        200
    );
    assert_eq!(srv.http("GET", "/v1/cache/ab12", Some(RW), &[], b"").0, 200);
    wait_for("the TTL", || {
        srv.http("GET", "/v1/cache/ab12", Some(RW), &[], b"").0 == 404
    });
    // Counted once the pass ends (the artifact may be gone a moment before).
    wait_for("the eviction metric", || {
        srv.metric("vx_cache_evictions_total") >= 1
    });
}

#[test]
fn shutdown_finishes_an_upload_in_flight() {
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().to_str().unwrap();
    let mut srv = Server::start(dir, &["--token-rw", RW], &[]);
    let data = body(9, 200_000);
    let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "PUT /v8/artifacts/{} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {RW}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        hash(9),
        data.len()
    )
    .unwrap();
    s.write_all(&data[..100_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.terminate();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&data[100_000..]).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    srv.stop();
    let srv = Server::start(dir, &["--token-rw", RW], &[]);
    let (st, _, got) = srv.http(
        "GET",
        &format!("/v8/artifacts/{}", hash(9)),
        Some(RW),
        &[],
        b"",
    );
    assert_eq!(st, 200);
    assert_eq!(got, data);
}

// Slowloris: connections that trickle a request head, send nothing, or
// trickle the HTTP/2 preface are closed after the header timeout, while a
// normal request (HTTP/1.1 and gRPC-free HTTP/2 alike) is served meanwhile.
#[test]
fn slow_request_heads_are_cut() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--token-rw", RW, "--header-timeout", "2s"],
        &[],
    );
    let bound = Duration::from_secs(40);
    let (head, trickle) = slow_client::partial_get("/health");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("a trickled HTTP/1.1 head", head, trickle),
        ("nothing sent", Vec::new(), Vec::new()),
        (
            "a trickled HTTP/2 preface",
            Vec::new(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "a trickled second request on a kept-alive connection",
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nX-Slow: "
                .to_vec(),
            b"b".to_vec(),
        ),
    ];
    let slow = slow_client::start_all(&srv.addr, cases, bound);
    // Served while the slow ones hang on.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(srv.http("GET", "/health", None, &[], b"").0, 200);
    assert_eq!(
        srv.http("PUT", "/v1/cache/ab34", Some(RW), &[], b"fine").0,
        200
    );
    for (what, t) in slow {
        assert_eq!(t.join().unwrap(), slow_client::Ended::Closed, "{what}");
    }
    assert_eq!(
        srv.http("GET", "/v1/cache/ab34", Some(RW), &[], b"").2,
        b"fine"
    );
}
