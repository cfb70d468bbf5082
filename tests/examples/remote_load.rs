//! Load generator for the remote cache benchmark (tests/bench/remote-cache.sh):
//! CONCURRENCY threads, each with one keep-alive HTTP/1.1 connection, PUT
//! COUNT distinct artifacts of SIZE bytes to a turbo `/v8/artifacts` server,
//! then GET them all back; prints one JSON line of requests/s and MB/s per
//! phase. std only, so the client costs the same against every server.
//!
//!     remote_load ADDR TOKEN SIZE COUNT CONCURRENCY [LABEL]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).ok();
        Conn {
            w: s.try_clone().expect("clone"),
            r: BufReader::with_capacity(1 << 16, s),
        }
    }

    /// One request; returns (status, body bytes read).
    fn call(&mut self, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, usize) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nx-artifact-duration: 10\r\n\r\n",
            body.len()
        );
        self.w.write_all(head.as_bytes()).expect("write");
        self.w.write_all(body).expect("write body");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut len, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.contains("chunked") {
                    chunked = true;
                }
            }
        }
        if method == "HEAD" {
            return (status, 0);
        }
        let mut sink = vec![0u8; 1 << 16];
        let mut total = 0;
        let mut read_n = |r: &mut BufReader<TcpStream>, mut n: usize| {
            while n > 0 {
                let k = r.read(&mut sink[..n.min(1 << 16)]).expect("body");
                assert!(k > 0, "connection closed");
                n -= k;
            }
        };
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line).expect("chunk size");
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                read_n(&mut self.r, n + 2);
                if n == 0 {
                    break;
                }
                total += n;
            }
        } else {
            read_n(&mut self.r, len);
            total = len;
        }
        (status, total)
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        eprintln!("usage: remote_load ADDR TOKEN SIZE COUNT CONCURRENCY [LABEL]");
        std::process::exit(2);
    }
    let (addr, token) = (a[1].clone(), a[2].clone());
    let size: usize = a[3].parse().expect("SIZE");
    let count: usize = a[4].parse().expect("COUNT");
    let conc: usize = a[5].parse().expect("CONCURRENCY");
    let label = a.get(6).cloned().unwrap_or_default();
    let salt = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let body: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 131 % 251) as u8).collect());
    let run = |method: &'static str| {
        let next = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let hs: Vec<_> = (0..conc)
            .map(|_| {
                let (next, errors, bytes, body) =
                    (next.clone(), errors.clone(), bytes.clone(), body.clone());
                let (addr, token) = (addr.clone(), token.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::new(&addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        let path = format!("/v8/artifacts/{:016x}{:08x}?slug=bench", salt, i);
                        let (st, n) = if method == "PUT" {
                            let r = c.call("PUT", &path, &token, &body);
                            (r.0, body.len())
                        } else {
                            c.call("GET", &path, &token, b"")
                        };
                        if !(200..300).contains(&st) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        } else {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("worker");
        }
        let secs = t0.elapsed().as_secs_f64();
        (
            count as f64 / secs,
            bytes.load(Ordering::Relaxed) as f64 / secs / 1e6,
            errors.load(Ordering::Relaxed),
        )
    };
    let put = run("PUT");
    let get = run("GET");
    println!(
        "{{\"server\":\"{label}\",\"size\":{size},\"count\":{count},\"concurrency\":{conc},\"put_per_s\":{:.0},\"put_mb_s\":{:.1},\"put_errors\":{},\"get_per_s\":{:.0},\"get_mb_s\":{:.1},\"get_errors\":{}}}",
        put.0, put.1, put.2, get.0, get.1, get.2
    );
}
