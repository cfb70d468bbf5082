//! What the HTTP end-to-end tests share: finding a daemon's HTTP server
//! (through `vx ui --no-open`, which reads the discovery file), a minimal
//! HTTP/1.0 client over `std::net` (the body ends when the server closes,
//! so streams need no chunked decoding), and readers for SSE and NDJSON.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use vx_tests::Ws;

/// A daemon's HTTP server.
pub struct Server {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub token: String,
}

/// Starts the workspace's daemon and finds its server.
pub fn server(ws: &Ws) -> Server {
    let r = ws.vx_daemon(&["daemon", "start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ws.vx_daemon(&["ui", "--no-open"]);
    assert_eq!(r.code, 0, "vx ui: {}", r.stderr);
    let url = r.stdout.trim();
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not a URL: {url}"));
    let (addr, token) = rest
        .split_once("/?token=")
        .unwrap_or_else(|| panic!("no token in {url}"));
    Server {
        addr: addr.to_string(),
        token: token.to_string(),
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Sends a request; `headers` replace the defaults (`Host` is this
    /// server's unless given).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> TcpStream {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the daemon's HTTP server");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.0\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let s = self.send(method, path, headers, body);
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        let mut body = Vec::new();
        r.read_to_end(&mut body).unwrap();
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        let a = self.auth();
        self.request("GET", path, &[("Authorization", &a)], b"")
    }

    /// One JSON-RPC call (or batch) through `POST /rpc`.
    pub fn rpc(&self, body: &Value) -> Value {
        let a = self.auth();
        let r = self.request(
            "POST",
            "/rpc",
            &[("Authorization", &a), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Opens an event stream (`/events` or `/stream`), returns once the
    /// server answered (its position in the feed is fixed by then).
    pub fn open_stream(&self, path: &str, extra: &[(&str, &str)]) -> Stream {
        let a = self.auth();
        let mut h = vec![("Authorization", a.as_str())];
        h.extend_from_slice(extra);
        let s = self.send("GET", path, &h, b"");
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        assert_eq!(status, 200, "{path}: {headers:?}");
        Stream { r }
    }
}

/// Reads the status line and headers.
pub fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            break;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// An open event stream.
pub struct Stream {
    pub r: BufReader<TcpStream>,
}

/// One SSE event: its `id:` (if any) and its data as JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<u64>,
    pub data: Value,
}

impl Stream {
    /// The next SSE event with data (comments and `retry:` skipped).
    pub fn next_sse(&mut self) -> Option<Event> {
        let mut id = None;
        let mut data = String::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).ok()? == 0 {
                return None;
            }
            let l = l.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() {
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("SSE data not JSON ({e}): {data}"));
                    return Some(Event { id, data });
                }
                continue;
            }
            if let Some(v) = l.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = l.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// The next NDJSON line (blank heartbeats skipped).
    pub fn next_line(&mut self) -> Option<Value> {
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).ok()? == 0 {
                return None;
            }
            if l.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")),
            );
        }
    }

    /// SSE events up to and including the `run.finished` of `run_id`.
    pub fn sse_until_finished(&mut self, run_id: Option<&str>) -> Vec<Event> {
        let mut got = Vec::new();
        while let Some(e) = self.next_sse() {
            let done = e.data["method"] == "run.finished"
                && run_id.is_none_or(|r| e.data["params"]["run_id"] == r);
            got.push(e);
            if done {
                return got;
            }
        }
        panic!("the stream ended before run.finished; got {got:#?}");
    }
}

/// The `p` project's `n` tasks printing `lines` lines each (`p#all`
/// depends on them all), and a `slow` task that waits for `gate` to exist.
pub fn generated(n: usize, lines: usize) -> Ws {
    let mut toml = String::new();
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("t{i:04}");
        toml.push_str(&format!(
            "[tasks.{name}]\ncommand = \"for n in $(seq 1 {lines}); do echo {name} line $n lorem ipsum dolor sit amet; done\"\ninputs = [\"src/**\"]\noutputs = []\n\n"
        ));
        all.push(format!("\"{name}\""));
    }
    toml.push_str(&format!("[tasks.all]\ndepends_on = [{}]\n", all.join(", ")));
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        ("packages/p/vx.toml", &toml),
        ("packages/p/src/a.txt", "a\n"),
    ])
}
