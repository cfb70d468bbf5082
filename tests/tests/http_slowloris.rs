//! The daemon's HTTP door against slowloris: a connection that trickles
//! its request head, or sends nothing, is closed after the header timeout
//! (15 s; bounded here generously), while normal requests are served
//! meanwhile. Only a daemon serves HTTP.

#[path = "http_support/mod.rs"]
mod http_support;
mod slow_client;

use http_support::server;
use std::time::Duration;
use vx_tests::{basic, daemon_mode, vx_test};

vx_test!(slow_request_heads_are_cut, || {
    if !daemon_mode() {
        return; // only a daemon serves HTTP
    }
    let ws = basic();
    let srv = server(&ws);
    let bound = Duration::from_secs(90);
    let (head, trickle) = slow_client::partial_get("/version");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("a trickled head", head, trickle),
        ("nothing sent", Vec::new(), Vec::new()),
    ];
    let slow = slow_client::start_all(&srv.addr, cases, bound);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(srv.get("/version").status, 200);
        std::thread::sleep(Duration::from_secs(2));
    }
    for (what, t) in slow {
        assert_eq!(t.join().unwrap(), slow_client::Ended::Closed, "{what}");
    }
    assert_eq!(srv.get("/version").status, 200);
});
