//! A slowloris client for the end-to-end tests of the HTTP edges: it opens
//! a TCP connection, sends `prefix` and then trickles one byte of `trickle`
//! a second (never completing a request head), and reports whether the
//! server closed the connection within `bound`. Generous bounds only: it
//! asserts that a cut happens, not when.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How a slow connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The server closed it (EOF or reset), after this long.
    Closed,
    /// Still open at the bound.
    StillOpen,
}

/// Sends `prefix`, then one byte of `trickle` (cycled) a second, until the
/// server closes the connection or `bound` passes.
pub fn slow_request(addr: &str, prefix: &[u8], trickle: &[u8], bound: Duration) -> Ended {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    if !prefix.is_empty() && s.write_all(prefix).is_err() {
        return Ended::Closed;
    }
    let t0 = Instant::now();
    let mut next = trickle.iter().cycle();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < bound {
        match s.read(&mut buf) {
            Ok(0) => return Ended::Closed,
            // An answer (a 408, say) is fine: what counts is the close.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ended::Closed,
        }
        if let Some(b) = next.next()
            && s.write_all(&[*b]).is_err()
        {
            return Ended::Closed;
        }
    }
    Ended::StillOpen
}

/// Starts one [`slow_request`] per case `(what, prefix, trickle)`, each on
/// its own thread; join each to learn how it [`Ended`].
pub fn start_all(
    addr: &str,
    cases: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
    bound: Duration,
) -> Vec<(&'static str, std::thread::JoinHandle<Ended>)> {
    cases
        .into_iter()
        .map(|(what, prefix, trickle)| {
            let addr = addr.to_string();
            (
                what,
                std::thread::spawn(move || slow_request(&addr, &prefix, &trickle, bound)),
            )
        })
        .collect()
}

/// A request head that never ends: `GET path`, a Host header, then a
/// header value trickled forever.
pub fn partial_get(path: &str) -> (Vec<u8>, Vec<u8>) {
    (
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").into_bytes(),
        b"a".to_vec(),
    )
}
