//! The cache server's REAPI side, driven over gRPC on its one port: CAS
//! writes are hashed and refused when their bytes are not their digest
//! (batches and ByteStream); tokens rule (no token, read-only tokens);
//! ActionCache entries need their Action and blobs in the CAS first, are
//! never overwritten and stay in their namespace (the CREEP rule);
//! ByteStream uploads resume after a cut; HTTP still answers on the same
//! port. And real Bazel (Debian `bazel-bootstrap`) gets a remote cache hit
//! from it after `bazel clean`.

#[path = "remote_support/mod.rs"]
mod remote_support;

use remote_support::*;
use std::process::Command;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vx_reapi::bs::byte_stream_client::ByteStreamClient;
use vx_reapi::bs::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use vx_reapi::re::action_cache_client::ActionCacheClient;
use vx_reapi::re::batch_update_blobs_request::Request as Upload;
use vx_reapi::re::capabilities_client::CapabilitiesClient;
use vx_reapi::re::content_addressable_storage_client::ContentAddressableStorageClient;
use vx_reapi::re::*;

const RW: &str = "reapi-rw-0001";
const RO: &str = "reapi-ro-0001";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An interceptor sending `token` as the bearer token.
fn auth(
    token: Option<&str>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
    let v: Option<MetadataValue<Ascii>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    move |mut r: Request<()>| {
        if let Some(v) = &v {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

async fn channel(srv: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", srv.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect over gRPC")
}

fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 * 131 + seed as u32) as u8)
        .collect()
}

fn upload(d: &Digest, data: &[u8]) -> Upload {
    Upload {
        digest: Some(d.clone()),
        data: data.to_vec(),
        ..Default::default()
    }
}

#[test]
fn cas_writes_are_verified_and_tokens_rule() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--token-rw", RW, "--token-ro", RO],
        &[],
    );
    rt().block_on(async {
        let ch = channel(&srv).await;
        let mut cas = ContentAddressableStorageClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let good = blob(1, 1000);
        let d = vx_reapi::digest_of(&good);
        let tampered = {
            let mut b = good.clone();
            b[500] ^= 0x5a;
            b
        };
        // Wrong bytes for the digest: refused, nothing stored.
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&d, &tampered)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.responses[0].status.as_ref().unwrap().code,
            Code::InvalidArgument as i32,
            "{r:?}"
        );
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![d.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert_eq!(missing, vec![d.clone()]);
        // The right bytes: stored, found, read back.
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&d, &good)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0, "{r:?}");
        let r = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![d.clone(), vx_reapi::digest_of(b"never stored")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.responses[0].data, good);
        assert_eq!(
            r.responses[1].status.as_ref().unwrap().code,
            Code::NotFound as i32
        );
        // A batch over the limit is refused as a whole.
        let big = blob(2, 5 << 20);
        let e = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&vx_reapi::digest_of(&big), &big)],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.code(),
                Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
            ),
            "{e:?}"
        );
        // ByteStream: a large upload with one flipped byte is refused.
        let mut bs = ByteStreamClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let bd = vx_reapi::digest_of(&big);
        let mut bad = big.clone();
        bad[3 << 20] ^= 1;
        let e = bs
            .write(tokio_stream::iter(writes(&bd, "u-bad", &bad, 0, true)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![bd.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert_eq!(missing.len(), 1, "a refused upload stores nothing");
        // Tokens: none, and read-only.
        let mut anon = ContentAddressableStorageClient::with_interceptor(ch.clone(), auth(None));
        let e = anon
            .find_missing_blobs(FindMissingBlobsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let mut ro = ContentAddressableStorageClient::with_interceptor(ch.clone(), auth(Some(RO)));
        let other = blob(3, 10);
        let e = ro
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&vx_reapi::digest_of(&other), &other)],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let r = ro
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![d.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.responses[0].data, good, "a read token reads");
        let mut ac_ro = ActionCacheClient::with_interceptor(ch.clone(), auth(Some(RO)));
        let e = ac_ro
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(d.clone()),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // Capabilities: SHA-256, the batch limit, updates by token.
        for (token, can) in [(RW, true), (RO, false)] {
            let mut c = CapabilitiesClient::with_interceptor(ch.clone(), auth(Some(token)));
            let caps = c
                .get_capabilities(GetCapabilitiesRequest::default())
                .await
                .unwrap()
                .into_inner();
            let cc = caps.cache_capabilities.unwrap();
            assert_eq!(
                cc.digest_functions,
                vec![digest_function::Value::Sha256 as i32]
            );
            assert!(cc.max_batch_total_size_bytes > 0);
            assert_eq!(
                cc.action_cache_update_capabilities.unwrap().update_enabled,
                can
            );
        }
    });
    // HTTP/1.1 still answers on the same port.
    let (st, _, _) = srv.http("GET", "/health", None, &[], b"");
    assert_eq!(st, 200);
    let (st, _, _) = srv.http("GET", "/v8/artifacts/abc?slug=x", Some(RW), &[], b"");
    assert_eq!(st, 404);
}

/// A ByteStream write of `data[from..]` in 64 KiB pieces.
fn writes(d: &Digest, uuid: &str, data: &[u8], from: usize, finish: bool) -> Vec<WriteRequest> {
    let name = vx_reapi::write_resource("", uuid, d);
    let mut v = Vec::new();
    let mut off = from;
    while off < data.len() {
        let end = (off + vx_reapi::CHUNK).min(data.len());
        v.push(WriteRequest {
            resource_name: name.clone(),
            write_offset: off as i64,
            finish_write: finish && end == data.len(),
            data: data[off..end].to_vec(),
        });
        off = end;
    }
    v
}

#[test]
fn bytestream_uploads_resume_and_read_back() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(store.path().to_str().unwrap(), &["--token-rw", RW], &[]);
    rt().block_on(async {
        let ch = channel(&srv).await;
        let mut bs = ByteStreamClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let big = blob(7, (6 << 20) + 123);
        let d = vx_reapi::digest_of(&big);
        let name = vx_reapi::write_resource("", "u-1", &d);
        // The first half, then the stream ends without finish_write.
        let half = 3 << 20;
        let e = bs
            .write(tokio_stream::iter(writes(
                &d,
                "u-1",
                &big[..half],
                0,
                false,
            )))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let st = bs
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((st.committed_size, st.complete), (half as i64, false));
        // A write that does not continue where the upload stands is refused.
        let e = bs
            .write(tokio_stream::iter(writes(&d, "u-1", &big, half + 1, true)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // Resumed from the committed size.
        let r = bs
            .write(tokio_stream::iter(writes(&d, "u-1", &big, half, true)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.committed_size, d.size_bytes);
        let st = bs
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(st.complete);
        // An upload of a blob already there ends at once.
        let r = bs
            .write(tokio_stream::iter(writes(&d, "u-2", &big, 0, true)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.committed_size, d.size_bytes);
        // Read back whole, in pieces of at most 64 KiB, and a range.
        let mut s = bs
            .read(ReadRequest {
                resource_name: vx_reapi::read_resource("", &d),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            assert!(m.data.len() <= vx_reapi::CHUNK);
            got.extend_from_slice(&m.data);
        }
        assert!(got == big, "read back differs");
        let mut s = bs
            .read(ReadRequest {
                resource_name: vx_reapi::read_resource("", &d),
                read_offset: 100,
                read_limit: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            got.extend_from_slice(&m.data);
        }
        assert_eq!(got, big[100..1100].to_vec());
    });
    // Flip a byte of the stored blob: a whole read ends in DATA_LOSS, a
    // batch read calls it missing.
    let f = walk_files(&store.path().join("reapi/cas"));
    assert_eq!(f.len(), 1, "{f:?}");
    let mut b = std::fs::read(&f[0]).unwrap();
    b[10] ^= 1;
    std::fs::write(&f[0], &b).unwrap();
    rt().block_on(async {
        let ch = channel(&srv).await;
        let mut bs = ByteStreamClient::with_interceptor(ch, auth(Some(RW)));
        let big = blob(7, (6 << 20) + 123);
        let d = vx_reapi::digest_of(&big);
        let mut s = bs
            .read(ReadRequest {
                resource_name: vx_reapi::read_resource("", &d),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut err = None;
        loop {
            match s.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err.map(|e| e.code()), Some(Code::DataLoss));
    });
}

fn walk_files(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn action_results_need_their_blobs_and_are_never_overwritten() {
    let store = tempfile::tempdir().unwrap();
    let tokens = store.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        r#"
[[token]]
name = "main"
secret = "main-secret-0001"
role = "write"
namespace = "main"

[[token]]
name = "pr"
secret = "pr-secret-00001"
role = "write"
namespace = "pr"
read = ["main"]
"#,
    )
    .unwrap();
    let data = store.path().join("data");
    let srv = Server::start(
        data.to_str().unwrap(),
        &["--tokens", tokens.to_str().unwrap()],
        &[],
    );
    rt().block_on(async {
        let ch = channel(&srv).await;
        let client = |t: &str| {
            (
                ActionCacheClient::with_interceptor(ch.clone(), auth(Some(t))),
                ContentAddressableStorageClient::with_interceptor(ch.clone(), auth(Some(t))),
            )
        };
        let (mut ac_main, mut cas_main) = client("main-secret-0001");
        let (mut ac_pr, mut cas_pr) = client("pr-secret-00001");
        let (action, action_bytes) = vx_reapi::digest_of_message(&Action {
            salt: b"test".to_vec(),
            ..Default::default()
        });
        let out_main = b"built by main".to_vec();
        let out_pr = b"poisoned by a pull request".to_vec();
        let result = |bytes: &[u8]| ActionResult {
            output_files: vec![OutputFile {
                path: "out.txt".into(),
                digest: Some(vx_reapi::digest_of(bytes)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let update = |r: ActionResult| UpdateActionResultRequest {
            action_digest: Some(action.clone()),
            action_result: Some(r),
            ..Default::default()
        };
        let get = || GetActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        };
        // The result before its Action is in the CAS: refused.
        let e = ac_main
            .update_action_result(update(result(&out_main)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("not in the CAS"), "{e:?}");
        cas_main
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&action, &action_bytes)],
                ..Default::default()
            })
            .await
            .unwrap();
        // Its output not in the CAS yet: refused too.
        let e = ac_main
            .update_action_result(update(result(&out_main)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        for (cas, bytes) in [(&mut cas_main, &out_main), (&mut cas_pr, &out_pr)] {
            cas.batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&vx_reapi::digest_of(bytes), bytes)],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        ac_main
            .update_action_result(update(result(&out_main)))
            .await
            .unwrap();
        // Never overwritten: a second result gets the first back.
        let back = ac_main
            .update_action_result(update(result(&out_pr)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(back, result(&out_main));
        // The PR token's update lands in its own namespace; lookups by
        // either token still see main's result.
        ac_pr
            .update_action_result(update(result(&out_pr)))
            .await
            .unwrap();
        for ac in [&mut ac_main, &mut ac_pr] {
            let r = ac.get_action_result(get()).await.unwrap().into_inner();
            assert_eq!(r, result(&out_main));
        }
        // An action only the PR built is visible to the PR, never to main.
        let (a2, a2_bytes) = vx_reapi::digest_of_message(&Action {
            salt: b"pr-only".to_vec(),
            ..Default::default()
        });
        cas_pr
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![upload(&a2, &a2_bytes)],
                ..Default::default()
            })
            .await
            .unwrap();
        ac_pr
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(a2.clone()),
                action_result: Some(result(&out_pr)),
                ..Default::default()
            })
            .await
            .unwrap();
        let g2 = || GetActionResultRequest {
            action_digest: Some(a2.clone()),
            ..Default::default()
        };
        assert!(ac_pr.get_action_result(g2()).await.is_ok());
        let e = ac_main.get_action_result(g2()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // An absolute link target is refused.
        let e = ac_main
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(a2.clone()),
                action_result: Some(ActionResult {
                    output_symlinks: vec![OutputSymlink {
                        path: "l".into(),
                        target: "/etc/passwd".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    });
    // Its blob gone from the store, main's entry is a miss.
    for p in walk_files(&data.join("reapi/cas")) {
        if std::fs::read(&p).unwrap() == b"built by main" {
            std::fs::remove_file(&p).unwrap();
        }
    }
    rt().block_on(async {
        let ch = channel(&srv).await;
        let mut ac = ActionCacheClient::with_interceptor(ch, auth(Some("main-secret-0001")));
        let (action, _) = vx_reapi::digest_of_message(&Action {
            salt: b"test".to_vec(),
            ..Default::default()
        });
        let e = ac
            .get_action_result(GetActionResultRequest {
                action_digest: Some(action),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
}

/// Stops Bazel's server when dropped (a panicking test too).
struct BazelServer {
    bazel: std::path::PathBuf,
    root: std::path::PathBuf,
    ws: std::path::PathBuf,
}

impl BazelServer {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bazel);
        c.arg(format!("--output_user_root={}", self.root.display()))
            .args(["--nohome_rc", "--max_idle_secs=120"])
            .args(args)
            .current_dir(&self.ws);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run bazel");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "bazel {args:?} failed:\n{text}");
        text
    }
}

impl Drop for BazelServer {
    fn drop(&mut self) {
        let _ = self.cmd(&["shutdown"]).output();
    }
}

#[test]
fn bazel_gets_a_remote_cache_hit() {
    let Some(bazel) = vx_tests::peers::on_path("bazel") else {
        vx_tests::peers::skip(
            "bazel_gets_a_remote_cache_hit",
            "bazel (Debian bazel-bootstrap)",
        );
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(store.path().to_str().unwrap(), &["--token-rw", RW], &[]);
    let scratch = tempfile::tempdir().unwrap();
    let ws = scratch.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("WORKSPACE"), "").unwrap();
    std::fs::write(
        ws.join("BUILD"),
        r#"genrule(
    name = "hello",
    srcs = ["in.txt"],
    outs = ["hello.txt"],
    cmd = "cat $(location in.txt) > $@ && echo from-bazel >> $@",
)
"#,
    )
    .unwrap();
    std::fs::write(ws.join("in.txt"), "input\n").unwrap();
    let b = BazelServer {
        bazel,
        root: scratch.path().join("output_user_root"),
        ws: ws.clone(),
    };
    let cache = format!("--remote_cache=grpc://{}", srv.addr);
    let header = format!("--remote_header=authorization=Bearer {RW}");
    let build = [
        "build",
        "//:hello",
        cache.as_str(),
        header.as_str(),
        "--incompatible_strict_action_env",
        "--noshow_progress",
    ];
    let first = b.run(&build);
    assert!(!first.contains("remote cache hit"), "{first}");
    let out = std::fs::read_to_string(ws.join("bazel-bin/hello.txt")).unwrap();
    assert_eq!(out, "input\nfrom-bazel\n");
    // What Bazel stored: its Action result, under the default namespace.
    let ac = walk_files(&store.path().join("reapi/ac/default"));
    assert!(
        !ac.is_empty(),
        "no ActionCache entry:\n{first}\n{}",
        srv.log_text()
    );
    b.run(&["clean"]);
    assert!(!ws.join("bazel-bin/hello.txt").exists());
    let second = b.run(&build);
    assert!(
        second.contains("remote cache hit"),
        "no remote cache hit:\n{second}\n{}",
        srv.log_text()
    );
    let out = std::fs::read_to_string(ws.join("bazel-bin/hello.txt")).unwrap();
    assert_eq!(out, "input\nfrom-bazel\n");
    drop(b);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn indexed(srv: &Server) {
    wait_until("the index", || {
        String::from_utf8_lossy(&srv.http("GET", "/health", None, &[], b"").2)
            .contains("\"indexed\":true")
    });
}

// `--max-size` counts CAS blobs and ActionCache entries and evicts the
// least recently used: a result whose output blob was evicted is then a
// miss (NOT_FOUND) though the entry itself is still stored; `/metrics`
// counts every call by service, method and outcome, and the bytes moved.
#[test]
fn eviction_covers_reapi_objects_and_metrics_count_calls() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &[
            "--token-rw",
            RW,
            "--max-size",
            "25000",
            "--evict-interval",
            "200ms",
        ],
        &[],
    );
    indexed(&srv);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
    let (action, out) = rt().block_on(async {
        let ch = channel(&srv).await;
        let mut cas = ContentAddressableStorageClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let mut ac = ActionCacheClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let mut bs = ByteStreamClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let put = |d: &Digest, b: &[u8]| BatchUpdateBlobsRequest {
            requests: vec![upload(d, b)],
            ..Default::default()
        };
        let (action, action_bytes) = vx_reapi::digest_of_message(&Action {
            salt: b"evict".to_vec(),
            ..Default::default()
        });
        cas.batch_update_blobs(put(&action, &action_bytes))
            .await
            .unwrap();
        pause();
        let out = blob(3, 10_000);
        let od = vx_reapi::digest_of(&out);
        cas.batch_update_blobs(put(&od, &out)).await.unwrap();
        pause();
        ac.update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.clone()),
            action_result: Some(ActionResult {
                output_files: vec![OutputFile {
                    path: "out.bin".into(),
                    digest: Some(od.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        pause();
        let get = GetActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        };
        ac.get_action_result(get.clone()).await.unwrap();
        pause();
        // Two more blobs push the total past 25,000 bytes: the Action (never
        // used since) and then the output go; the entry, used as recently
        // as its output, is kept.
        let fill: Vec<Vec<u8>> = (10..12).map(|i| blob(i, 10_000)).collect();
        for f in &fill {
            cas.batch_update_blobs(put(&vx_reapi::digest_of(f), f))
                .await
                .unwrap();
            pause();
        }
        wait_until("an eviction", || {
            srv.metric("vx_cache_evictions_total") >= 2
        });
        let e = ac.get_action_result(get.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: vec![
                    od.clone(),
                    vx_reapi::digest_of(&fill[0]),
                    vx_reapi::digest_of(&fill[1]),
                ],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert_eq!(missing, vec![od.clone()]);
        // Read one filler back through ByteStream (bytes out).
        let mut s = bs
            .read(ReadRequest {
                resource_name: vx_reapi::read_resource("", &vx_reapi::digest_of(&fill[1])),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            got.extend(m.data);
        }
        assert_eq!(got, fill[1]);
        (action, out)
    });
    let _ = out;
    assert!(srv.metric("vx_cache_stored_bytes") <= 25_000);
    // The entry is still stored: the miss came from its evicted output.
    assert!(
        store
            .path()
            .join(format!("reapi/ac/default/_/{}", action.hash))
            .exists()
    );
    let m = |labels: &str| srv.metric(&format!("vx_cache_reapi_calls_total{{{labels}}}"));
    assert_eq!(
        m(r#"service="ActionCache",method="GetActionResult",code="OK""#),
        1
    );
    assert_eq!(
        m(r#"service="ActionCache",method="GetActionResult",code="NOT_FOUND""#),
        1
    );
    assert_eq!(
        m(r#"service="ActionCache",method="UpdateActionResult",code="OK""#),
        1
    );
    assert_eq!(
        m(r#"service="ContentAddressableStorage",method="BatchUpdateBlobs",code="OK""#),
        4
    );
    wait_until("the Read counted", || {
        m(r#"service="ByteStream",method="Read",code="OK""#) == 1
    });
    let b = |labels: &str| srv.metric(&format!("vx_cache_reapi_bytes_total{{{labels}}}"));
    assert!(
        b(r#"service="ContentAddressableStorage",method="BatchUpdateBlobs",direction="in""#)
            >= 30_000
    );
    assert_eq!(
        b(r#"service="ByteStream",method="Read",direction="out""#),
        10_000
    );
}

// `--ttl` removes CAS blobs by age like artifacts.
#[test]
fn the_ttl_removes_cas_blobs() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--token-rw", RW, "--ttl", "1s", "--evict-interval", "200ms"],
        &[],
    );
    indexed(&srv);
    rt().block_on(async {
        let ch = channel(&srv).await;
        let mut cas = ContentAddressableStorageClient::with_interceptor(ch, auth(Some(RW)));
        let b = blob(9, 500);
        let d = vx_reapi::digest_of(&b);
        cas.batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload(&d, &b)],
            ..Default::default()
        })
        .await
        .unwrap();
        let find = FindMissingBlobsRequest {
            blob_digests: vec![d.clone()],
            ..Default::default()
        };
        let n = cas.find_missing_blobs(find.clone()).await.unwrap();
        assert!(n.into_inner().missing_blob_digests.is_empty());
        let t0 = std::time::Instant::now();
        loop {
            let n = cas.find_missing_blobs(find.clone()).await.unwrap();
            if n.into_inner().missing_blob_digests == vec![d.clone()] {
                break;
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the TTL");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}

/// A compressed ByteStream upload of `z` (the zstd form of a blob of
/// digest `d`), in pieces of `piece` bytes with REAPI's offsets.
fn zstd_writes(d: &Digest, uuid: &str, z: &[u8], piece: usize) -> Vec<WriteRequest> {
    let name = format!(
        "uploads/{uuid}/compressed-blobs/zstd/{}/{}",
        d.hash, d.size_bytes
    );
    let n = z.chunks(piece).count();
    z.chunks(piece)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * piece) as i64,
            finish_write: i + 1 == n,
            data: c.to_vec(),
        })
        .collect()
}

// Compressed blobs (zstd) through a real zstd encoder: advertised, written
// and read through ByteStream `compressed-blobs/zstd/` and the batch calls;
// the digest is of the uncompressed bytes and is verified; a zstd bomb is
// refused at the declared size and nothing is stored.
#[test]
fn zstd_compressed_blobs() {
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(store.path().to_str().unwrap(), &["--token-rw", RW], &[]);
    rt().block_on(async {
        let ch = channel(&srv).await;
        let caps = CapabilitiesClient::with_interceptor(ch.clone(), auth(Some(RW)))
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .cache_capabilities
            .unwrap();
        let zstd_id = compressor::Value::Zstd as i32;
        assert!(caps.supported_compressors.contains(&zstd_id), "{caps:?}");
        assert!(caps.supported_batch_update_compressors.contains(&zstd_id));
        let mut bs = ByteStreamClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let mut cas = ContentAddressableStorageClient::with_interceptor(ch.clone(), auth(Some(RW)));
        let present = |cas: &mut ContentAddressableStorageClient<_>, d: &Digest| {
            let req = FindMissingBlobsRequest {
                blob_digests: vec![d.clone()],
                ..Default::default()
            };
            let mut cas = cas.clone();
            async move {
                cas.find_missing_blobs(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .missing_blob_digests
                    .is_empty()
            }
        };
        // A 3 MiB compressible blob, uploaded compressed in 64 KiB pieces.
        let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i / 7 % 97) as u8).collect();
        let d = vx_reapi::digest_of(&big);
        let z = zstd::encode_all(&big[..], 3).unwrap();
        assert!(z.len() < big.len() / 4);
        let r = bs
            .write(tokio_stream::iter(zstd_writes(&d, "z-1", &z, 64 << 10)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.committed_size, z.len() as i64);
        assert!(present(&mut cas, &d).await);
        // Again: already there, `-1`.
        let r = bs
            .write(tokio_stream::iter(zstd_writes(&d, "z-2", &z, 64 << 10)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.committed_size, -1);
        // Stored uncompressed: a plain read gives the bytes.
        let read_all = |name: String, offset: i64, limit: i64| {
            let mut bs = bs.clone();
            async move {
                let mut s = bs
                    .read(ReadRequest {
                        resource_name: name,
                        read_offset: offset,
                        read_limit: limit,
                    })
                    .await?
                    .into_inner();
                let mut got = Vec::new();
                while let Some(m) = s.message().await? {
                    got.extend(m.data);
                }
                Ok::<_, Status>(got)
            }
        };
        assert_eq!(
            read_all(vx_reapi::read_resource("", &d), 0, 0)
                .await
                .unwrap(),
            big
        );
        // A compressed read decompresses (with a real decoder) to the blob;
        // its offset is an uncompressed one.
        let zname = format!("compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes);
        let got = read_all(zname.clone(), 0, 0).await.unwrap();
        assert!(got.len() < big.len() / 4);
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), big);
        let got = read_all(zname.clone(), 1000, 0).await.unwrap();
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), &big[1000..]);
        let e = read_all(zname, 0, 10).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // A zstd bomb: 64 MiB of zeros declared as 1,000 bytes. Refused,
        // nothing stored.
        let zeros = vx_reapi::digest_of(&[0u8; 1000]);
        let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 3).unwrap();
        let e = bs
            .write(tokio_stream::iter(zstd_writes(
                &zeros,
                "z-3",
                &bomb,
                64 << 10,
            )))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("past the digest"), "{e:?}");
        assert!(!present(&mut cas, &zeros).await);
        // Other bytes under the digest: refused once decompressed.
        let other: Vec<u8> = big.iter().map(|b| b ^ 1).collect();
        let e = bs
            .write(tokio_stream::iter(zstd_writes(
                &d_of_len(&d),
                "z-4",
                &zstd::encode_all(&other[..], 3).unwrap(),
                64 << 10,
            )))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // Batches: a compressed update, and a read that takes zstd.
        let small = blob(42, 100_000);
        let sd = vx_reapi::digest_of(&small);
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![Upload {
                    digest: Some(sd.clone()),
                    data: zstd::encode_all(&small[..], 3).unwrap(),
                    compressor: zstd_id,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0, "{r:?}");
        let r = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: vec![sd.clone()],
                acceptable_compressors: vec![zstd_id],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got = &r.responses[0];
        assert_eq!(got.compressor, zstd_id);
        assert_eq!(zstd::decode_all(&got.data[..]).unwrap(), small);
        // A compressed batch blob that decompresses past its digest.
        let r = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![Upload {
                    digest: Some(zeros.clone()),
                    data: zstd::encode_all(&vec![0u8; 5000][..], 3).unwrap(),
                    compressor: zstd_id,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.responses[0].status.as_ref().unwrap().code,
            Code::InvalidArgument as i32,
            "{r:?}"
        );
        assert!(!present(&mut cas, &zeros).await);
    });
    assert!(
        srv.metric(
            r#"vx_cache_reapi_calls_total{service="ByteStream",method="Write",code="INVALID_ARGUMENT"}"#
        ) >= 2
    );
}

/// A digest of the same size but a hash no blob in the test has.
fn d_of_len(d: &Digest) -> Digest {
    Digest {
        hash: "ab".repeat(32),
        size_bytes: d.size_bytes,
    }
}
