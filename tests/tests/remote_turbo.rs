//! The REAL turbo (npm `turbo`, installed by tests/peers/setup.sh) against
//! vx's cache server: turbo's second run after wiping `.turbo` and `dist`
//! is a full remote hit; in signed mode the server verifies turbo's
//! `x-artifact-tag`, and a wrong key is refused by turbo (a miss) and by the
//! server (the upload is rejected, nothing stored).

#[path = "remote_support/mod.rs"]
mod remote_support;

use remote_support::*;
use std::path::Path;
use std::process::Command;

const TOKEN: &str = "turbo-token-0001";

fn repo(dir: &Path, signed: bool) {
    let w = |rel: &str, s: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w(
        "package.json",
        r#"{ "name": "root", "private": true, "packageManager": "npm@11.19.1", "workspaces": ["packages/*"] }"#,
    );
    w(
        "turbo.json",
        &format!(
            r#"{{ {} "tasks": {{ "build": {{ "outputs": ["dist/**"] }} }} }}"#,
            if signed {
                r#""remoteCache": { "signature": true },"#
            } else {
                ""
            }
        ),
    );
    w(
        "packages/a/package.json",
        r#"{ "name": "a", "version": "1.0.0", "scripts": { "build": "mkdir -p dist && cat src/in.txt > dist/out.txt && echo built-a" } }"#,
    );
    w("packages/a/src/in.txt", "hello from a\n");
    w(".gitignore", "node_modules\n.turbo\ndist\n");
    git(dir, &["init", "-q"]);
    commit(dir);
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap();
    assert!(st.success());
}

fn commit(dir: &Path) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "x"]);
}

fn wipe(dir: &Path) {
    for d in [
        ".turbo",
        "packages/a/.turbo",
        "packages/a/dist",
        "node_modules/.cache",
    ] {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
}

/// `turbo run build` against the server; (success, stdout+stderr).
fn turbo(turbo: &Path, dir: &Path, srv: &Server, key: Option<&str>) -> (bool, String) {
    let mut c = Command::new(turbo);
    c.args([
        "run", "build", "--api", &srv.url, "--token", TOKEN, "--team", "acme",
    ])
    .current_dir(dir)
    .env("TURBO_TELEMETRY_DISABLED", "1")
    .env("DO_NOT_TRACK", "1")
    .env("TURBO_NO_UPDATE_NOTIFIER", "1")
    .env_remove("TURBO_REMOTE_CACHE_SIGNATURE_KEY");
    if let Some(k) = key {
        c.env("TURBO_REMOTE_CACHE_SIGNATURE_KEY", k);
    }
    let out = c.output().expect("run turbo");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn real_turbo_gets_full_remote_hits_from_our_server() {
    let Some(bin) = vx_tests::peers::npm_bin("turbo") else {
        vx_tests::peers::skip(
            "real_turbo_gets_full_remote_hits_from_our_server",
            "npm turbo",
        );
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(store.path().to_str().unwrap(), &["--token-rw", TOKEN], &[]);
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path(), false);
    let (ok, out) = turbo(&bin, dir.path(), &srv, None);
    assert!(ok, "{out}");
    assert!(out.contains("built-a"), "{out}");
    assert_eq!(
        artifacts(store.path()).len(),
        1,
        "{out}\n{}",
        srv.log_text()
    );
    let first = std::fs::read(dir.path().join("packages/a/dist/out.txt")).unwrap();
    wipe(dir.path());
    let (ok, out) = turbo(&bin, dir.path(), &srv, None);
    assert!(ok, "{out}");
    assert!(out.contains("FULL TURBO"), "{out}");
    assert!(out.contains("cache hit"), "{out}");
    assert_eq!(
        std::fs::read(dir.path().join("packages/a/dist/out.txt")).unwrap(),
        first
    );
    assert!(srv.metric("vx_cache_hits_total") >= 1);
    // turbo's own status check and usage events are the reference for
    // vx's: the server takes them with the schema vx's client is held to
    // (a malformed event would be a 400).
    assert!(requests(&srv, "status") >= 1, "{}", srv.log_text());
    assert!(events(&srv, "remote", "hit") >= 1, "{}", srv.log_text());
    assert_eq!(requests(&srv, "events"), requests_with(&srv, "events", 200));
}

#[test]
fn real_turbo_signed_mode_and_wrong_keys() {
    let Some(bin) = vx_tests::peers::npm_bin("turbo") else {
        vx_tests::peers::skip("real_turbo_signed_mode_and_wrong_keys", "npm turbo");
        return;
    };
    let k1 = "turbo-signing-key-one-0123456789abcdef";
    let k2 = "turbo-signing-key-two-0123456789abcdef";
    let store = tempfile::tempdir().unwrap();
    let srv = Server::start(
        store.path().to_str().unwrap(),
        &["--token-rw", TOKEN, "--signature-key-env", "SIGNING_KEY"],
        &[("SIGNING_KEY", k1)],
    );
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path(), true);
    // turbo's signed upload verifies on our server: it is stored, tag kept.
    let (ok, out) = turbo(&bin, dir.path(), &srv, Some(k1));
    assert!(ok, "{out}");
    assert_eq!(
        artifacts(store.path()).len(),
        1,
        "{out}\n{}",
        srv.log_text()
    );
    assert_eq!(srv.metric("vx_cache_bad_signatures_total"), 0);
    // The right key: a full remote hit (turbo verified our returned tag).
    wipe(dir.path());
    let (ok, out) = turbo(&bin, dir.path(), &srv, Some(k1));
    assert!(ok && out.contains("FULL TURBO"), "{out}");
    // A wrong key: turbo refuses the artifact and executes.
    wipe(dir.path());
    let (ok, out) = turbo(&bin, dir.path(), &srv, Some(k2));
    assert!(ok, "{out}");
    assert!(!out.contains("FULL TURBO"), "{out}");
    assert!(out.contains("built-a"), "{out}");
    // ... and our server refuses its uploads (a new hash, signed with k2).
    std::fs::write(dir.path().join("packages/a/src/in.txt"), "changed\n").unwrap();
    commit(dir.path());
    let (ok, out) = turbo(&bin, dir.path(), &srv, Some(k2));
    assert!(ok, "{out}");
    assert!(
        srv.metric("vx_cache_bad_signatures_total") >= 1,
        "{}",
        srv.log_text()
    );
    assert_eq!(artifacts(store.path()).len(), 1);
}
