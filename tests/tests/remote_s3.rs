//! vx's cache server on an S3 back end: the real `moto_server` (PyPI
//! `moto[server]`, installed by tests/peers/setup.sh) started by the test.
//! Two clones share it through the server; a restarted server still has
//! everything; an existing artifact is never overwritten (S3's
//! `If-None-Match`). Runs without the daemon only (the daemon changes
//! nothing on the server's side and moto is slow to start).

#[path = "remote_support/mod.rs"]
mod remote_support;

use remote_support::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vx_tests::{Mode, basic, in_mode};

const RW: &str = "s3-rw-secret-01";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn vx_against_an_s3_back_end() {
    let Some(python) = vx_tests::peers::python() else {
        vx_tests::peers::skip("vx_against_an_s3_back_end", "PyPI moto[server]");
        return;
    };
    let moto_bin = python.with_file_name("moto_server");
    if !moto_bin.exists() {
        vx_tests::peers::skip("vx_against_an_s3_back_end", "PyPI moto[server]");
        return;
    }
    in_mode(Mode::NoDaemon, || {
        let port = free_port();
        let _moto = Moto(
            Command::new(&moto_bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto_server"),
        );
        let addr = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // CreateBucket.
        let (st, _, body) = http(&addr, "PUT", "/vx-bucket", None, &[], b"");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let store = format!("s3://vx-bucket/ci-cache?endpoint=http://{addr}&region=us-east-1");
        let aws = [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ];
        let mut srv = Server::start(&store, &["--token-rw", RW], &aws);
        let env = remote_env(&srv, RW);
        let a = basic();
        let r = a.run_env(&["test"], &env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            warnings(&r).is_empty(),
            "{:?}\n{}",
            warnings(&r),
            srv.log_text()
        );
        assert_eq!(srv.metric("vx_cache_uploads_total"), 3);
        // The objects are in the bucket under the prefix.
        let (_, _, listing) = http(
            &addr,
            "GET",
            "/vx-bucket?list-type=2&prefix=ci-cache/v1/",
            None,
            &[],
            b"",
        );
        let listing = String::from_utf8_lossy(&listing);
        assert_eq!(listing.matches("<Key>").count(), 6, "{listing}");
        let b = basic();
        let r = b.run_env(&["test"], &env);
        assert!(r.executed().is_empty(), "{}", r.stdout);
        assert!(sources(&r).iter().all(|(_, s)| s == "remote"));
        assert_eq!(
            a.read("packages/app/dist/app.txt"),
            b.read("packages/app/dist/app.txt")
        );
        // Never overwritten: a second upload of an existing hash is 409.
        let key = r.task("lib#build")["key"].as_str().unwrap().to_string();
        let (st, _, _) = srv.http("PUT", &format!("/v1/cache/{key}"), Some(RW), &[], b"other");
        assert_eq!(st, 200, "a new Nx entry (team `_`) is another key space");
        let (st, _, _) = srv.http("PUT", &format!("/v1/cache/{key}"), Some(RW), &[], b"again");
        assert_eq!(st, 409);
        let (_, _, got) = srv.http("GET", &format!("/v1/cache/{key}"), Some(RW), &[], b"");
        assert_eq!(got, b"other");
        // A restarted server still has everything.
        srv.stop();
        let srv = Server::start(&store, &["--token-rw", RW], &aws);
        let env = remote_env(&srv, RW);
        let c = basic();
        let r = c.run_env(&["test"], &env);
        assert!(r.executed().is_empty(), "{}", r.stdout);
    });
}
