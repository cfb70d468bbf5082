//! Shared by the `remote*` end-to-end tests: the real `vx-cache-server`
//! binary (built once), started on a free loopback port and stopped
//! (SIGTERM, drained) when dropped; a tiny HTTP/1.1 client for poking it;
//! and the environment that points `vx` at it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `vx-cache-server` of this build profile, built on first use.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = vx_tests::bin_dir();
        let target = dir.parent().expect("target root").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "vx-cache-server"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building vx-cache-server failed");
        dir.join("vx-cache-server")
    })
    .clone()
}

/// A running `vx-cache-server`.
pub struct Server {
    pub url: String,
    pub addr: String,
    child: Option<Child>,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Server {
    /// Starts the server on `store` with `args` (tokens, …) and `env`.
    pub fn start(store: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let logdir = tempfile::tempdir().expect("tempdir");
        let log = logdir.path().join("server.log");
        let mut c = Command::new(server_bin());
        c.args(["--listen", "127.0.0.1:0", "--store", store])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("start vx-cache-server");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read the listening line");
        let Some(url) = line.trim().strip_prefix("vx-cache-server listening on ") else {
            let _ = child.wait();
            panic!(
                "vx-cache-server did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let url = url.to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Server {
            url,
            addr,
            child: Some(child),
            log,
            _logdir: logdir,
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// SIGTERM and wait (the server drains and saves its state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t0 = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("vx-cache-server did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request to the server: (status, headers lowercased, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        http(&self.addr, method, path, token, headers, body)
    }

    /// A value of `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        let (_, _, b) = self.http("GET", "/metrics", None, &[], b"");
        String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.write_all(body).expect("send body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let hdrs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, hdrs, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// The environment pointing `vx` at a server.
pub fn remote_env<'a>(srv: &'a Server, token: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("VX_REMOTE_CACHE_URL", srv.url.as_str()),
        ("VX_REMOTE_CACHE_TOKEN", token),
        ("VX_REMOTE_CACHE_TEAM", "acme"),
    ]
}

/// The artifacts (not their `.meta.json`) under a directory store.
pub fn artifacts(store: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if !p.to_string_lossy().ends_with(".meta.json") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&store.join("v1"), &mut out);
    out.sort();
    out
}

/// Warnings of a `--json` run.
pub fn warnings(r: &vx_tests::Run) -> Vec<String> {
    r.events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

/// `cache` of each task in a run's summary, by id.
pub fn sources(r: &vx_tests::Run) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r.summary()["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_string(),
                t["cache"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Requests the server answered on `route` (any status).
pub fn requests(srv: &Server, route: &str) -> u64 {
    let (_, _, m) = srv.http("GET", "/metrics", None, &[], b"");
    let prefix = format!("vx_cache_requests_total{{route=\"{route}\",");
    String::from_utf8_lossy(&m)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Usage events the server received, by source and event.
pub fn events(srv: &Server, source: &str, event: &str) -> u64 {
    let (_, _, m) = srv.http("GET", "/metrics", None, &[], b"");
    let line = format!("vx_cache_events_total{{source=\"{source}\",event=\"{event}\"}} ");
    String::from_utf8_lossy(&m)
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Requests the server answered on `route` with `status`.
pub fn requests_with(srv: &Server, route: &str, status: u16) -> u64 {
    srv.metric(&format!(
        "vx_cache_requests_total{{route=\"{route}\",status=\"{status}\"}}"
    ))
}
