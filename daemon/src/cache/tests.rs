//! Unit tests of the store (its submodules together).

use super::*;
use std::os::unix::fs::PermissionsExt;

fn store(d: &Path) -> Store {
    Store::open(&d.join("cache"), Duration::from_secs(1), &mut || {}).unwrap()
}

#[test]
fn blob_round_trip_and_corruption_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let dg = s.put_bytes(b"hello").unwrap();
    assert_eq!(s.read_verified(&dg).unwrap(), b"hello");
    fs::write(s.blob_path(&dg.hash), b"jello").unwrap();
    assert!(matches!(s.read_verified(&dg), Err(CacheError::Corrupt(_))));
    // The corrupt blob was deleted; a missing one is corrupt too.
    assert!(!s.blob_path(&dg.hash).exists());
    assert!(matches!(s.read_verified(&dg), Err(CacheError::Corrupt(_))));
}

#[test]
fn the_empty_log_is_known_without_its_blob_and_others_are_verified() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    assert_eq!(blobs::EMPTY_BLOB_HASH, blake3::hash(b"").to_hex().as_str());
    let empty = s.put_bytes(b"").unwrap();
    assert_eq!(empty.hash, blobs::EMPTY_BLOB_HASH);
    // Its blob gone: the empty log is still the empty log.
    fs::remove_file(s.blob_path(&empty.hash)).unwrap();
    assert_eq!(s.read_log(&empty).unwrap(), b"");
    // A digest that claims a size is never taken for the empty log.
    let sized = Digest {
        hash: empty.hash.clone(),
        size_bytes: 3,
    };
    assert!(matches!(s.read_log(&sized), Err(CacheError::Corrupt(_))));
    // Any other log is read and verified as before.
    let log = s.put_bytes(b"log").unwrap();
    assert_eq!(s.read_log(&log).unwrap(), b"log");
    fs::write(s.blob_path(&log.hash), b"lug").unwrap();
    assert!(matches!(s.read_log(&log), Err(CacheError::Corrupt(_))));
}

#[test]
fn entries_commit_and_drop() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let log = s.put_bytes(b"log").unwrap();
    let m = Manifest {
        version: MANIFEST_VERSION,
        key: "k".repeat(64),
        task: "a#b".into(),
        outputs: vec![],
        log,
        exit_code: 0,
        duration_ms: 1,
        created_at: 0,
    };
    s.put_entry(&m, &Stamps::new());
    s.flush().unwrap();
    assert_eq!(s.get(&m.key).unwrap().unwrap().0, m);
    // and from disk, past the memo
    let s2_memo = s.memo.lock().unwrap().remove(&m.key);
    assert!(s2_memo.is_some());
    assert_eq!(s.get(&m.key).unwrap().unwrap().0, m);
    s.drop_entry(&m.key);
    s.flush().unwrap();
    assert!(s.get(&m.key).unwrap().is_none());
    s.close().unwrap();
}

#[test]
fn restore_writes_copies_and_wipes_strays() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let proj = d.path().join("p");
    fs::create_dir_all(proj.join("dist/sub")).unwrap();
    fs::write(proj.join("dist/sub/a.txt"), "A").unwrap();
    let pats = Patterns::new(&["dist/**"]).unwrap();
    let fence = HashSet::new();
    let files = collect_outputs(&proj, &pats, &fence);
    let outputs = capture(&s, &proj, &files).unwrap();
    let m = Manifest {
        version: MANIFEST_VERSION,
        key: "a".repeat(64),
        task: "p#build".into(),
        outputs,
        log: s.put_bytes(b"").unwrap(),
        exit_code: 0,
        duration_ms: 0,
        created_at: 0,
    };
    fs::write(proj.join("dist/stray.txt"), "S").unwrap();
    let stamps = restore(&s, &m, &proj, &pats, &fence).unwrap();
    assert_eq!(
        fs::read_to_string(proj.join("dist/sub/a.txt")).unwrap(),
        "A"
    );
    assert!(!proj.join("dist/stray.txt").exists());
    let on_disk = collect_outputs(&proj, &pats, &fence);
    assert!(outputs_up_to_date(&m, &stamps, &on_disk));
    // the restored file is not the blob (no hard link)
    let blob = s.blob_path(&m.outputs[0].digest.hash);
    assert_ne!(
        fs::metadata(blob).unwrap().ino(),
        fs::metadata(proj.join("dist/sub/a.txt")).unwrap().ino()
    );
    fs::write(proj.join("dist/extra"), "x").unwrap();
    let on_disk = collect_outputs(&proj, &pats, &fence);
    assert!(!outputs_up_to_date(&m, &stamps, &on_disk));
}

#[test]
fn blobs_are_made_durable_by_the_commit_that_names_them() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let out = s.put_bytes(b"output bytes").unwrap();
    let log = s.put_bytes(b"").unwrap();
    // Written and in place, not yet synced: listed for the writer.
    let listed = s.unsynced.lock().unwrap().clone();
    assert!(listed.contains(&s.blob_path(&out.hash)), "{listed:?}");
    assert!(listed.contains(&s.blob_path(&log.hash)), "{listed:?}");
    let m = Manifest {
        version: MANIFEST_VERSION,
        key: "d".repeat(64),
        task: "p#build".into(),
        outputs: vec![],
        log,
        exit_code: 0,
        duration_ms: 0,
        created_at: 0,
    };
    s.put_entry(&m, &Stamps::new());
    s.flush().unwrap();
    // The commit that holds the entry synced every listed blob first.
    assert!(s.unsynced.lock().unwrap().is_empty());
    let s = reopen(d.path(), s);
    assert_eq!(s.get(&m.key).unwrap().unwrap().0, m);
    assert_eq!(s.read_verified(&out).unwrap(), b"output bytes");
    // The same bytes again (found present) are listed again: another
    // process may have written them and not synced them yet.
    s.put_bytes(b"output bytes").unwrap();
    assert_eq!(s.unsynced.lock().unwrap().len(), 1);
    super::blobs::make_durable(&d.path().join("cache/cas"), &[]).unwrap();
    let listed = s.unsynced.lock().unwrap().clone();
    super::blobs::make_durable(&d.path().join("cache/cas"), &listed).unwrap();
    // A large batch (one syncfs on Linux) and a small one (each file; a
    // pruned one is skipped) both succeed.
    for n in [3, 40] {
        let mut many: Vec<std::path::PathBuf> = (0..n)
            .map(|i| d.path().join(format!("cache/cas/gone-{i}")))
            .collect();
        many.extend(listed.iter().cloned());
        super::blobs::make_durable(&d.path().join("cache/cas"), &many).unwrap();
    }
}

#[test]
fn restore_stamps_what_it_wrote_even_over_a_file_left_in_place() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let proj = d.path().join("p");
    fs::create_dir_all(proj.join("dist")).unwrap();
    fs::write(proj.join("dist/a.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(proj.join("dist/a.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(proj.join("dist/b.txt"), "B").unwrap();
    let pats = Patterns::new(&["dist/**"]).unwrap();
    let fence = HashSet::new();
    let files = collect_outputs(&proj, &pats, &fence);
    let mut outputs = capture(&s, &proj, &files).unwrap();
    // A manifest naming one file twice: the second write finds the first
    // in place and replaces it (the create-in-place path's fallback).
    let dup = outputs[0].clone();
    outputs.push(dup);
    let m = Manifest {
        version: MANIFEST_VERSION,
        key: "e".repeat(64),
        task: "p#build".into(),
        outputs,
        log: s.put_bytes(b"").unwrap(),
        exit_code: 0,
        duration_ms: 0,
        created_at: 0,
    };
    fs::remove_dir_all(proj.join("dist")).unwrap();
    let stamps = restore(&s, &m, &proj, &pats, &fence).unwrap();
    assert_eq!(
        fs::read_to_string(proj.join("dist/a.sh")).unwrap(),
        "#!/bin/sh\n"
    );
    assert_eq!(fs::read_to_string(proj.join("dist/b.txt")).unwrap(), "B");
    let meta = fs::symlink_metadata(proj.join("dist/a.sh")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    // The stamps are the files' own (size, mtime, inode), taken from the
    // open files: the next run finds the outputs up to date by a stat.
    for (rel, (size, mtime_ns, ino)) in &stamps {
        let meta = fs::symlink_metadata(proj.join(rel)).unwrap();
        assert_eq!(
            (*size, *mtime_ns, *ino),
            (
                meta.len(),
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                meta.ino()
            ),
            "{rel}"
        );
    }
    assert_eq!(stamps.len(), 2);
    // No temp file left beside the outputs.
    let names: Vec<String> = fs::read_dir(proj.join("dist"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

const DAY: u64 = 24 * 60 * 60 * 1000;

/// Puts an entry whose outputs are `dist/<name>` files with the given bytes.
fn put(s: &Store, key: char, outputs: &[(&str, &[u8])], log: &[u8], created_at: u64) -> Manifest {
    let outputs = outputs
        .iter()
        .map(|(name, bytes)| OutputFile {
            path: format!("dist/{name}"),
            mode: 0o644,
            digest: s.put_bytes(bytes).unwrap(),
            kind: OutputKind::File,
            link: None,
        })
        .collect();
    let m = Manifest {
        version: MANIFEST_VERSION,
        key: key.to_string().repeat(64),
        task: format!("p#{key}"),
        outputs,
        log: s.put_bytes(log).unwrap(),
        exit_code: 0,
        duration_ms: 0,
        created_at,
    };
    s.put_entry(&m, &Stamps::new());
    m
}

fn has_blob(s: &Store, bytes: &[u8]) -> bool {
    s.blob_path(&digest_of(bytes).hash).exists()
}

/// Reopens the store from disk (no memo, no pending blobs), like a new process.
fn reopen(d: &Path, s: Store) -> Store {
    s.close().unwrap();
    drop(s);
    store(d)
}

/// Every entry left restores byte-identical into a fresh project dir.
fn assert_restores(s: &Store, d: &Path, ms: &[&Manifest], contents: &[&[(&str, &[u8])]]) {
    let pats = Patterns::new(&["dist/**"]).unwrap();
    for (m, files) in ms.iter().zip(contents) {
        let got = s.get(&m.key).unwrap().expect("entry kept");
        let proj = d.join(format!("restore-{}", &m.key[..1]));
        restore(s, &got.0, &proj, &pats, &HashSet::new()).unwrap();
        for (name, bytes) in *files {
            assert_eq!(fs::read(proj.join("dist").join(name)).unwrap(), *bytes);
        }
        assert_eq!(
            s.read_verified(&got.0.log).unwrap().len() as u64,
            got.0.log.size_bytes
        );
    }
}

#[test]
fn prune_by_age_keeps_recently_accessed_entries() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let now = now_ms();
    let old = put(&s, 'a', &[("a", b"AAAA")], b"log-a", now - 10 * DAY);
    let fresh = put(&s, 'b', &[("b", b"BBBB")], b"log-b", now);
    let served = put(&s, 'c', &[("c", b"CCCC")], b"log-c", now - 10 * DAY);
    let s = reopen(d.path(), s);
    // Served long after it was created: its access time is now.
    assert!(s.get(&served.key).unwrap().is_some());
    let s = reopen(d.path(), s); // the access time survives a restart
    let p = s.prune(None, Some(Duration::from_millis(5 * DAY))).unwrap();
    assert_eq!((p.removed, p.kept), (1, 2));
    assert_eq!(p.entries[0].key, old.key);
    assert_eq!(p.freed_bytes, 4 + 5);
    assert_eq!(p.kept_bytes, 2 * (4 + 5));
    assert!(s.get(&old.key).unwrap().is_none());
    assert!(!has_blob(&s, b"AAAA") && !has_blob(&s, b"log-a"));
    assert!(has_blob(&s, b"BBBB") && has_blob(&s, b"CCCC"));
    assert_restores(
        &s,
        d.path(),
        &[&fresh, &served],
        &[&[("b", b"BBBB")], &[("c", b"CCCC")]],
    );
    assert_eq!(s.stats().unwrap(), (2, 4, 2 * (4 + 5)));
}

#[test]
fn prune_by_size_drops_least_recently_accessed_first() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let now = now_ms();
    let (a, b, c) = (vec![b'a'; 1000], vec![b'b'; 1000], vec![b'c'; 1000]);
    let oldest = put(&s, 'a', &[("a", &a)], b"log-a", now - 3 * DAY);
    let middle = put(&s, 'b', &[("b", &b)], b"log-b", now - 2 * DAY);
    let newest = put(&s, 'c', &[("c", &c)], b"log-c", now - DAY);
    // The oldest is served now: it becomes the most recently used.
    s.touch(&oldest.key);
    let s = reopen(d.path(), s);
    let dry = s.prune_dry_run(Some(2100), None).unwrap();
    assert_eq!(dry.entries.len(), 1);
    assert_eq!(s.stats().unwrap().0, 3, "a dry run removes nothing");
    let p = s.prune(Some(2100), None).unwrap();
    assert_eq!(p, dry);
    assert_eq!(p.entries[0].key, middle.key);
    assert_eq!(p.entries[0].bytes, 1005);
    assert_eq!(
        (p.removed, p.kept, p.freed_bytes, p.kept_bytes),
        (1, 2, 1005, 2010)
    );
    assert!(!has_blob(&s, &b));
    // Next the least recently used is `newest` (served a day ago).
    let p = s.prune_dry_run(Some(1500), None).unwrap();
    assert_eq!(p.entries[0].key, newest.key);
    // (restoring serves both: their access times are now)
    assert_restores(
        &s,
        d.path(),
        &[&oldest, &newest],
        &[&[("a", &a)], &[("c", &c)]],
    );
    assert_eq!(s.prune(Some(0), None).unwrap().removed, 2);
    assert_eq!(s.stats().unwrap(), (0, 0, 0));
}

#[test]
fn prune_keeps_a_blob_while_one_entry_names_it() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let now = now_ms();
    let shared: &[u8] = b"shared output bytes";
    let old = put(
        &s,
        'a',
        &[("x", shared), ("own", b"a-only")],
        b"log-a",
        now - 10 * DAY,
    );
    let new = put(&s, 'b', &[("x", shared)], b"log-b", now);
    let p = s.prune(None, Some(Duration::from_millis(DAY))).unwrap();
    assert_eq!(p.entries[0].key, old.key);
    assert_eq!(p.freed_bytes, 6 + 5, "only a's own output and log go");
    assert!(has_blob(&s, shared) && !has_blob(&s, b"a-only"));
    assert_restores(&s, d.path(), &[&new], &[&[("x", shared)]]);
    // Size: dropping `new` frees the shared blob too.
    let p = s.prune(Some(0), None).unwrap();
    assert_eq!(p.freed_bytes, shared.len() as u64 + 5);
    assert!(!has_blob(&s, shared));
}

/// Two handles on one directory stand for two processes (the daemon's
/// long-lived store and a foreground run's).
#[test]
fn two_handles_share_the_index_both_ways_and_memos_follow() {
    let d = tempfile::tempdir().unwrap();
    let daemon = store(d.path());
    let fg = store(d.path());
    let now = now_ms();
    // The daemon stores; the other handle hits at once.
    let a = put(&daemon, 'a', &[("a", b"AAAA")], b"log-a", now);
    daemon.flush().unwrap();
    assert_eq!(fg.get(&a.key).unwrap().unwrap().0, a);
    assert_restores(&fg, d.path(), &[&a], &[&[("a", b"AAAA")]]);
    // The foreground stores; the daemon sees it (no memo of it yet).
    let b = put(&fg, 'b', &[("b", b"BBBB")], b"log-b", now);
    fg.flush().unwrap();
    assert_eq!(daemon.get(&b.key).unwrap().unwrap().0, b);
    // The foreground drops an entry the daemon memoised: the daemon's
    // memo serves it until its next refresh, then the file wins.
    fg.drop_entry(&a.key);
    fg.flush().unwrap();
    assert!(daemon.get(&a.key).unwrap().is_some(), "memoised");
    daemon.refresh();
    assert!(daemon.get(&a.key).unwrap().is_none());
    assert!(daemon.get(&b.key).unwrap().is_some());
    // Its own commits keep its memo (no needless drops).
    let c = put(&daemon, 'c', &[("c", b"CCCC")], b"log-c", now);
    daemon.flush().unwrap();
    daemon.refresh();
    assert_eq!(
        daemon.memo.lock().unwrap().len(),
        2,
        "b and c stay memoised"
    );
    assert_eq!(daemon.get(&c.key).unwrap().unwrap().0, c);
}

#[test]
fn two_writers_at_once_lose_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s1 = store(d.path());
    let s2 = store(d.path());
    let now = now_ms();
    let keys = ['a', 'b', 'c', 'd', 'e', 'f', '0', '1', '2', '3', '4', '5'];
    std::thread::scope(|t| {
        for (i, s) in [&s1, &s2].into_iter().enumerate() {
            let keys = &keys;
            t.spawn(move || {
                for k in keys.iter().skip(i).step_by(2) {
                    let body = format!("out-{k}");
                    put(s, *k, &[("x", body.as_bytes())], b"log", now);
                    s.flush().unwrap();
                }
            });
        }
    });
    let s3 = store(d.path());
    for k in keys {
        let key = k.to_string().repeat(64);
        let e = s3.get(&key).unwrap().expect("every entry of both writers");
        assert_eq!(e.0.key, key);
    }
    assert_eq!(s3.stats().unwrap().0, keys.len() as u64);
}

#[test]
fn clean_beside_an_open_handle_empties_in_place_and_waits_for_runs() {
    let d = tempfile::tempdir().unwrap();
    let daemon = store(d.path());
    let a = put(&daemon, 'a', &[("a", b"AAAA")], b"log-a", now_ms());
    daemon.flush().unwrap();
    assert!(daemon.get(&a.key).unwrap().is_some());
    let dir = d.path().join("cache");
    // A run in progress (any process) holds clean off.
    let lease = daemon.run_lease().unwrap();
    let t = Instant::now();
    let waiting = std::thread::spawn({
        let dir = dir.clone();
        move || clean(&dir).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "clean waits for the run");
    assert!(has_blob(&daemon, b"AAAA"));
    drop(lease);
    let (entries, _) = waiting.join().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(entries, 1);
    // The index the daemon holds was emptied, not deleted.
    assert!(dir.join(INDEX_FILE).exists());
    assert!(!has_blob(&daemon, b"AAAA"));
    daemon.refresh();
    assert!(daemon.get(&a.key).unwrap().is_none());
    // It keeps working: a new entry is seen by a fresh handle.
    let b = put(&daemon, 'b', &[("b", b"BBBB")], b"log-b", now_ms());
    daemon.flush().unwrap();
    assert_eq!(store(d.path()).get(&b.key).unwrap().unwrap().0, b);
    // Without another holder, clean deletes everything as before.
    daemon.close().unwrap();
    drop(daemon);
    clean(&dir).unwrap();
    assert!(!dir.exists());
}

#[test]
fn prune_after_a_crash_sweeps_unreferenced_blobs_and_old_temp_files() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let now = now_ms();
    let gone = put(&s, 'a', &[("a", b"AAAA")], b"log-a", now);
    let kept = put(&s, 'b', &[("b", b"BBBB")], b"log-b", now);
    // A prune that committed the index and died before deleting blobs.
    s.drop_entry(&gone.key);
    let tmp = d.path().join("cache/tmp");
    fs::write(tmp.join("1-1"), b"12345678").unwrap();
    let f = fs::File::options()
        .write(true)
        .open(tmp.join("1-1"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
        .unwrap();
    fs::write(tmp.join("1-2"), b"123").unwrap();
    let s = reopen(d.path(), s);
    assert!(has_blob(&s, b"AAAA"));
    // Unreferenced blobs younger than GRACE may be a save in flight in
    // another process: kept. These were left long ago.
    let p = s.prune(None, None).unwrap();
    assert_eq!((p.removed, p.kept, p.freed_bytes), (0, 1, 8));
    assert!(has_blob(&s, b"AAAA"));
    for b in [&b"AAAA"[..], b"log-a"] {
        let f = fs::File::options()
            .write(true)
            .open(s.blob_path(&digest_of(b).hash))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
            .unwrap();
    }
    fs::write(tmp.join("1-1"), b"12345678").unwrap();
    let f = fs::File::options()
        .write(true)
        .open(tmp.join("1-1"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
        .unwrap();
    let p = s.prune(None, None).unwrap();
    assert_eq!((p.removed, p.kept), (0, 1));
    assert_eq!(p.freed_bytes, 4 + 5 + 8);
    assert!(!has_blob(&s, b"AAAA") && !has_blob(&s, b"log-a"));
    assert!(!tmp.join("1-1").exists() && tmp.join("1-2").exists());
    assert_restores(&s, d.path(), &[&kept], &[&[("b", b"BBBB")]]);
}

#[test]
fn prune_never_deletes_a_blob_whose_entry_is_not_queued_yet() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let entry = |key: char, out: &Digest, log: Digest| {
        let m = Manifest {
            version: MANIFEST_VERSION,
            key: key.to_string().repeat(64),
            task: format!("p#{key}"),
            outputs: vec![OutputFile {
                path: "dist/o".into(),
                mode: 0o644,
                digest: out.clone(),
                kind: OutputKind::File,
                link: None,
            }],
            log,
            exit_code: 0,
            duration_ms: 0,
            created_at: now_ms(),
        };
        s.put_entry(&m, &Stamps::new());
    };
    // Save X in flight: its blobs are stored, its entry not yet queued.
    let out = s.put_bytes(b"in flight").unwrap();
    let log_x = s.put_bytes(b"log").unwrap();
    let p = s.prune(Some(0), None).unwrap();
    assert_eq!((p.removed, p.freed_bytes), (0, 0));
    assert!(has_blob(&s, b"in flight") && has_blob(&s, b"log"));
    // Save Y stores the same output bytes; then X queues its entry.
    assert_eq!(s.put_bytes(b"in flight").unwrap(), out);
    entry('x', &out, log_x);
    let p = s.prune(Some(0), None).unwrap();
    assert_eq!((p.removed, p.freed_bytes), (1, 3), "only X's log goes");
    assert!(has_blob(&s, b"in flight"), "Y's output stays");
    // Y queues its entry: named by an entry now, size pressure drops it.
    let log_y = s.put_bytes(b"log-y").unwrap();
    entry('y', &out, log_y);
    let p = s.prune(Some(0), None).unwrap();
    assert_eq!((p.removed, p.freed_bytes), (1, 9 + 5));
    assert!(!has_blob(&s, b"in flight"));
    assert_eq!(s.stats().unwrap(), (0, 0, 0));
}

#[test]
fn touch_writes_at_most_once_an_hour() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let m = put(&s, 'a', &[], b"log", now_ms() - 2 * TOUCH_EVERY_MS);
    s.flush().unwrap();
    let read = |s: &Store| {
        let tx = s.db.begin_read().unwrap();
        let t = tx.open_table(ACCESS).unwrap();
        t.get(m.key.as_str()).unwrap().map(|v| v.value())
    };
    assert_eq!(read(&s), None, "a new entry's access time is its creation");
    s.get(&m.key).unwrap();
    s.flush().unwrap();
    let first = read(&s).expect("touched");
    std::thread::sleep(Duration::from_millis(5));
    s.get(&m.key).unwrap();
    s.touch(&m.key);
    s.flush().unwrap();
    assert_eq!(
        read(&s),
        Some(first),
        "a second hit within the hour writes nothing"
    );
    s.drop_entry(&m.key);
    s.touch(&m.key);
    s.flush().unwrap();
    assert_eq!(read(&s), None, "no access row outlives its entry");
}

fn manifest(key: char, outputs: Vec<OutputFile>, log: Digest) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        key: key.to_string().repeat(64),
        task: "p#build".into(),
        outputs,
        log,
        exit_code: 0,
        duration_ms: 0,
        created_at: now_ms(),
    }
}

/// A project `p/` beside `elsewhere/x.txt`, and a store.
fn project_with_outside(d: &Path) -> (Store, PathBuf, PathBuf) {
    let s = store(d);
    let proj = d.join("p");
    let elsewhere = d.join("elsewhere");
    fs::create_dir_all(&proj).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("x.txt"), "OUTSIDE").unwrap();
    (s, proj, elsewhere)
}

#[test]
fn restore_and_wipe_never_write_through_a_symlinked_output_dir() {
    let d = tempfile::tempdir().unwrap();
    let (s, proj, elsewhere) = project_with_outside(d.path());
    // The entry was made with a real dist/.
    fs::create_dir_all(proj.join("dist")).unwrap();
    fs::write(proj.join("dist/x.txt"), "CACHED").unwrap();
    let pats = Patterns::new(&["dist/**"]).unwrap();
    let fence = HashSet::new();
    let files = collect_outputs(&proj, &pats, &fence);
    let m = manifest(
        'a',
        capture(&s, &proj, &files).unwrap(),
        s.put_bytes(b"").unwrap(),
    );
    // Now dist is a link to a directory outside the project.
    fs::remove_dir_all(proj.join("dist")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, proj.join("dist")).unwrap();
    let e = restore(&s, &m, &proj, &pats, &fence).unwrap_err();
    assert!(
        e.to_string()
            .contains("dist is a symlink; vx never writes through symlinks"),
        "{e}"
    );
    let e = wipe_outputs(&proj, &pats, &fence).unwrap_err();
    assert!(e.to_string().contains("is a symlink"), "{e}");
    assert_eq!(
        fs::read_to_string(elsewhere.join("x.txt")).unwrap(),
        "OUTSIDE"
    );
    assert!(collect_outputs(&proj, &pats, &fence).is_empty());
    // A manifest naming a path through the link (no base to check) is
    // refused at the write.
    let any = Patterns::new(&["**/*.txt"]).unwrap();
    assert!(restore(&s, &m, &proj, &any, &fence).is_err());
    assert_eq!(
        fs::read_to_string(elsewhere.join("x.txt")).unwrap(),
        "OUTSIDE"
    );
}

#[test]
fn non_utf8_output_names_are_refused_by_name_and_never_wiped() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let (s, proj, _elsewhere) = project_with_outside(d.path());
    fs::create_dir_all(proj.join("dist")).unwrap();
    let bad = proj
        .join("dist")
        .join(std::ffi::OsStr::from_bytes(b"\xff.txt"));
    let bad2 = proj
        .join("dist")
        .join(std::ffi::OsStr::from_bytes(b"\xfe.txt"));
    fs::write(&bad, "a").unwrap();
    fs::write(&bad2, "b").unwrap();
    fs::write(proj.join("dist/ok.txt"), "ok").unwrap();
    let pats = Patterns::new(&["dist/**"]).unwrap();
    let fence = HashSet::new();
    let files = collect_outputs(&proj, &pats, &fence);
    // Two such names stay two entries (never merged by a lossy name).
    assert_eq!(files.iter().filter(|f| f.non_utf8).count(), 2);
    let err = capture(&s, &proj, &files).unwrap_err().to_string();
    assert!(
        err.contains("not valid UTF-8") && err.contains("dist/\\x"),
        "{err}"
    );
    wipe_outputs(&proj, &pats, &fence).unwrap();
    assert!(
        bad.exists() && bad2.exists(),
        "vx never touches a name it cannot address"
    );
    assert!(!proj.join("dist/ok.txt").exists());
}

#[test]
fn symlink_outputs_are_stored_and_restored_as_links() {
    let d = tempfile::tempdir().unwrap();
    let (s, proj, _elsewhere) = project_with_outside(d.path());
    fs::create_dir_all(proj.join("dist")).unwrap();
    fs::write(proj.join("dist/real.txt"), "REAL").unwrap();
    std::os::unix::fs::symlink("real.txt", proj.join("dist/link.txt")).unwrap();
    std::os::unix::fs::symlink("../src", proj.join("dist/dirlink")).unwrap();
    let pats = Patterns::new(&["dist/**"]).unwrap();
    let fence = HashSet::new();
    let files = collect_outputs(&proj, &pats, &fence);
    let outputs = capture(&s, &proj, &files).unwrap();
    let link = outputs.iter().find(|o| o.path == "dist/link.txt").unwrap();
    assert_eq!(link.kind, OutputKind::Symlink);
    assert_eq!(link.link.as_deref(), Some("real.txt"));
    assert_eq!(link.digest, digest_of(b"real.txt"));
    // No blob holds the target's bytes twice: only real.txt's.
    assert!(
        outputs
            .iter()
            .any(|o| o.path == "dist/dirlink" && o.is_link())
    );
    let m = manifest('b', outputs, s.put_bytes(b"").unwrap());
    fs::remove_dir_all(proj.join("dist")).unwrap();
    let stamps = restore(&s, &m, &proj, &pats, &fence).unwrap();
    let md = fs::symlink_metadata(proj.join("dist/link.txt")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(
        fs::read_link(proj.join("dist/link.txt")).unwrap(),
        Path::new("real.txt")
    );
    assert_eq!(
        fs::read_link(proj.join("dist/dirlink")).unwrap(),
        Path::new("../src")
    );
    assert_eq!(
        fs::read_to_string(proj.join("dist/link.txt")).unwrap(),
        "REAL"
    );
    let on_disk = collect_outputs(&proj, &pats, &fence);
    assert!(outputs_up_to_date(&m, &stamps, &on_disk));
}

#[test]
fn symlinks_pointing_outside_are_neither_cached_nor_restored() {
    let d = tempfile::tempdir().unwrap();
    let (s, proj, elsewhere) = project_with_outside(d.path());
    fs::create_dir_all(proj.join("dist")).unwrap();
    for target in ["../../elsewhere/x.txt", "/etc/passwd"] {
        let l = proj.join("dist/leak");
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink(target, &l).unwrap();
        let pats = Patterns::new(&["dist/**"]).unwrap();
        let files = collect_outputs(&proj, &pats, &HashSet::new());
        let e = capture(&s, &proj, &files).unwrap_err();
        assert!(matches!(e, CacheError::Refused(_)), "{e}");
        // Nothing of the target got into the store.
        assert!(!has_blob(&s, b"OUTSIDE"));
    }
    // A manifest from elsewhere naming such a link: refused before any write.
    let target = "../../elsewhere/x.txt".to_string();
    let m = manifest(
        'c',
        vec![OutputFile {
            path: "dist/leak".into(),
            mode: 0o777,
            digest: digest_of(target.as_bytes()),
            kind: OutputKind::Symlink,
            link: Some(target),
        }],
        s.put_bytes(b"").unwrap(),
    );
    fs::remove_file(proj.join("dist/leak")).unwrap();
    fs::write(proj.join("dist/keep"), "K").unwrap();
    let pats = Patterns::new(&["dist/**"]).unwrap();
    let e = restore(&s, &m, &proj, &pats, &HashSet::new()).unwrap_err();
    assert!(matches!(e, CacheError::Refused(_)), "{e}");
    assert!(
        proj.join("dist/keep").exists(),
        "a refused restore wipes nothing"
    );
    assert_eq!(
        fs::read_to_string(elsewhere.join("x.txt")).unwrap(),
        "OUTSIDE"
    );
}

#[test]
fn a_same_size_corrupt_blob_is_deleted_on_read_and_replaced_on_save() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    // put_file over a corrupt blob replaces it.
    let src = d.path().join("src.txt");
    fs::write(&src, "hello").unwrap();
    let dg = s.put_file(&src).unwrap();
    fs::write(s.blob_path(&dg.hash), "jello").unwrap();
    assert_eq!(s.put_file(&src).unwrap(), dg);
    assert_eq!(s.read_verified(&dg).unwrap(), b"hello");
    // put_bytes over a corrupt blob replaces it.
    fs::write(s.blob_path(&dg.hash), "jello").unwrap();
    assert_eq!(s.put_bytes(b"hello").unwrap(), dg);
    assert_eq!(s.read_verified(&dg).unwrap(), b"hello");
    // A read that finds it corrupt deletes it.
    fs::write(s.blob_path(&dg.hash), "jello").unwrap();
    assert!(matches!(s.read_verified(&dg), Err(CacheError::Corrupt(_))));
    assert!(!s.blob_path(&dg.hash).exists());
}

#[test]
fn a_damaged_index_is_moved_aside_and_rebuilt_empty_once() {
    for (what, damage) in damages() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let s = store(d.path());
        let m = put(&s, 'a', &[("o", b"out")], b"log", now_ms());
        s.save_file_index(vec![]);
        s.close().unwrap();
        drop(s);
        // An older moved-aside file is cleaned up: at most one is kept.
        fs::write(dir.join("index.redb.broken-1"), "old").unwrap();
        damage(&dir.join("index.redb"));
        let s = Store::open(&dir, Duration::from_secs(1), &mut || {})
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(s.get(&m.key).unwrap().is_none(), "{what}");
        assert_eq!(s.stats().unwrap().0, 0, "{what}");
        let notices = take_notice(&dir);
        assert_eq!(notices.len(), 1, "{what}: {notices:?}");
        assert!(notices[0].contains("damaged"), "{what}: {}", notices[0]);
        assert!(take_notice(&dir).is_empty());
        let broken: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("index.redb.broken-")
            })
            .collect();
        assert_eq!(broken.len(), 1, "{what}");
        assert!(!dir.join("index.redb.broken-1").exists(), "{what}");
        // The new index works and survives a reopen.
        put(&s, 'b', &[("o", b"out2")], b"log", now_ms());
        let s = reopen(d.path(), s);
        assert_eq!(s.stats().unwrap().0, 1, "{what}");
        assert!(take_notice(&dir).is_empty(), "{what}");
    }
}

#[test]
fn clean_deletes_only_the_store_layout() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cache");
    // The user's files, some with names like vx's.
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::create_dir_all(dir.join("cas/zz")).unwrap();
    fs::create_dir_all(dir.join("docs")).unwrap();
    let users = [
        "notes.txt",
        "docs/a.md",
        "tmp/draft.txt",
        "cas/zz/mine",
        "index.redb.bak",
    ];
    for f in users {
        fs::write(dir.join(f), f).unwrap();
    }
    let s = store(d.path());
    put(&s, 'a', &[("o", b"out")], b"log", now_ms());
    s.close().unwrap();
    drop(s);
    fs::write(dir.join("tmp/123-4"), "stale vx temp").unwrap();
    let (entries, bytes) = clean(&dir).unwrap();
    assert_eq!(entries, 1);
    assert!(bytes > 0);
    for f in users {
        assert_eq!(fs::read_to_string(dir.join(f)).unwrap(), f, "{f} kept");
    }
    for f in ["index.redb", "tmp/123-4", ".gitignore"] {
        assert!(!dir.join(f).exists(), "{f} removed");
    }
    assert!(blob_files(&dir).is_empty());
    // A cache dir holding only vx's files goes entirely.
    let s = store(d.path());
    s.close().unwrap();
    drop(s);
    let only = d.path().join("only");
    fs::create_dir_all(&only).unwrap();
    let s = Store::open(&only, Duration::from_secs(1), &mut || {}).unwrap();
    put(&s, 'b', &[("o", b"x")], b"l", now_ms());
    s.close().unwrap();
    drop(s);
    clean(&only).unwrap();
    assert!(!only.exists());
}

#[test]
fn prune_never_deletes_files_vx_did_not_name() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cache");
    let s = store(d.path());
    fs::write(dir.join("tmp/notes.txt"), "mine").unwrap();
    fs::create_dir_all(dir.join("cas/zz")).unwrap();
    fs::write(dir.join("cas/zz/mine"), "mine").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 3600);
    for f in ["tmp/notes.txt", "cas/zz/mine"] {
        fs::File::options()
            .write(true)
            .open(dir.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    s.prune(Some(0), Some(Duration::ZERO)).unwrap();
    assert!(dir.join("tmp/notes.txt").exists());
    assert!(dir.join("cas/zz/mine").exists());
}

#[test]
fn an_ephemeral_store_keeps_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::ephemeral(&d.path().join("ro")).unwrap();
    assert!(s.is_ephemeral());
    assert!(s.put_bytes(b"x").is_err());
    assert!(s.get(&"a".repeat(64)).unwrap().is_none());
    assert!(!d.path().join("ro").exists());
}

/// A speed probe, not a test: the cost of opening and reading through a
/// 3,000-entry index in the shared (multi-writer) mode vs redb's exclusive
/// mode, and of 3,000 look-ups with a read transaction each (what
/// `Store::get` did before it shared one) and in one. Build redb without
/// debug assertions (`--config 'profile.dev.package.redb.debug-assertions=false'`
/// or `--release`): with them, every open walks all pages, and in the shared
/// mode the first read transaction then reads them all again. Run with `cargo test -p vxd --lib open_probe -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn open_probe() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let log = s.put_bytes(b"log").unwrap();
    let keys: Vec<String> = (0..3000).map(|i| format!("{i:064}")).collect();
    for k in &keys {
        let m = Manifest {
            version: MANIFEST_VERSION,
            key: k.clone(),
            task: format!("p{k}#build"),
            outputs: vec![],
            log: log.clone(),
            exit_code: 0,
            duration_ms: 1,
            created_at: now_ms(),
        };
        s.put_entry(&m, &Stamps::new());
    }
    s.close().unwrap();
    drop(s);
    let path = d.path().join("cache").join(INDEX_FILE);
    let raw = |db: redb::Database, what: &str, round: usize| {
        let t = Instant::now();
        let tx = db.begin_read().unwrap();
        for t in [ENTRIES, STAMPS, FILES] {
            read_through(&tx, t).unwrap();
        }
        read_through(&tx, ACCESS).unwrap();
        drop(tx);
        let read = t.elapsed();
        let t = Instant::now();
        for k in &keys {
            let tx = db.begin_read().unwrap();
            let e = tx.open_table(ENTRIES).unwrap();
            assert!(e.get(k.as_str()).unwrap().is_some());
        }
        let each = t.elapsed();
        let t = Instant::now();
        let tx = db.begin_read().unwrap();
        let e = tx.open_table(ENTRIES).unwrap();
        for k in &keys {
            assert!(e.get(k.as_str()).unwrap().is_some());
        }
        let one = t.elapsed();
        eprintln!(
            "round {round} {what}: read-through {read:?}, 3000 gets with a read tx each {each:?}, in one read tx {one:?}"
        );
    };
    for round in 0..3 {
        let t = Instant::now();
        let db = open_shared(&path).unwrap();
        eprintln!("round {round} shared: open {:?}", t.elapsed());
        raw(db, "shared", round);
        let t = Instant::now();
        let db = redb::Database::create(&path).unwrap();
        eprintln!("round {round} exclusive: open {:?}", t.elapsed());
        raw(db, "exclusive", round);
        let t = Instant::now();
        let s = store(d.path());
        let opened = t.elapsed();
        let t = Instant::now();
        for k in &keys {
            assert!(s.get(k).unwrap().is_some());
        }
        eprintln!(
            "round {round} Store: open {opened:?}, 3000 gets {:?}",
            t.elapsed()
        );
        s.close().unwrap();
        drop(s);
    }
}

/// A run that looks entries up while it saves others (every cold run) must
/// not pin the pages each save frees: the shared read transaction is let go
/// after each commit, so the index stays about the size of its entries
/// (held across the commits, these 1,000 saves grew it to 17 MiB).
#[test]
fn look_ups_between_saves_do_not_grow_the_index() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let log = s.put_bytes(b"log").unwrap();
    for i in 0..1000u32 {
        let mut m = manifest('a', Vec::new(), log.clone());
        m.key = format!("{i:064}");
        s.put_entry(&m, &Stamps::new());
        // A look-up of a key nobody has: it reads through the shared
        // read transaction while the writer commits the save above.
        assert!(s.get(&format!("{:064}", i + 1_000_000)).unwrap().is_none());
        std::thread::sleep(Duration::from_millis(1));
    }
    s.flush().unwrap();
    let size = std::fs::metadata(d.path().join("cache").join(INDEX_FILE))
        .unwrap()
        .len();
    assert!(size < 4 << 20, "index.redb grew to {} KiB", size >> 10);
}

/// Stamps re-written as a restore goes (one per task, as they come) share
/// commits: every commit of the shared file is durable, so one commit per
/// stamp would cost a lock and two fsyncs per task. Each commit that writes
/// stamps bumps the generation once, which counts them.
#[test]
fn stamps_written_one_by_one_share_commits() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let log = s.put_bytes(b"log").unwrap();
    for i in 0..200u32 {
        let mut m = manifest('a', Vec::new(), log.clone());
        m.key = format!("{i:064}");
        s.put_entry(&m, &Stamps::new());
    }
    s.flush().unwrap();
    let before = index::generation_of(&s.db).unwrap_or(0);
    for i in 0..200u32 {
        s.put_stamps(&format!("{i:064}"), &Stamps::new());
        // A restore's pace: a task's outputs between two stamps.
        std::thread::sleep(Duration::from_millis(1));
    }
    s.flush().unwrap();
    let commits = index::generation_of(&s.db).unwrap_or(0) - before;
    assert!(
        (1..=20).contains(&commits),
        "200 stamps took {commits} commits"
    );
}

/// `removals` (what a daemon's per-task memo of hits compares) moves on
/// every drop, re-stamp, replaced entry and clear — its own at once,
/// another handle's at the next refresh — and never on an addition.
#[test]
fn removals_move_on_drops_restamps_replaces_and_clears_never_on_additions() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let log = s.put_bytes(b"log").unwrap();
    let entry = |c: char| {
        let mut m = manifest('a', Vec::new(), log.clone());
        m.key = c.to_string().repeat(64);
        m
    };
    let (a, b) = (entry('a'), entry('b'));
    let moved = |s: &Store, before: u64| {
        s.flush().unwrap();
        s.refresh();
        s.removals() != before
    };
    let r = s.removals();
    s.put_entry(&a, &Stamps::new());
    s.put_entry(&b, &Stamps::new());
    assert!(!moved(&s, r), "additions moved removals");
    let r = s.removals();
    s.put_stamps(&a.key, &Stamps::new());
    assert!(moved(&s, r), "a re-stamp did not move removals");
    let r = s.removals();
    s.put_entry(&a, &Stamps::new());
    assert!(moved(&s, r), "a replaced entry did not move removals");
    let r = s.removals();
    s.drop_entry(&b.key);
    assert!(s.removals() != r, "a drop did not move removals at once");
    // (Its commit moves the row, which this handle's next refresh counts too.)
    s.flush().unwrap();
    s.refresh();
    // Another handle on the same index: its drop and its clear are seen
    // at this one's next refresh.
    let other = Store::open(&d.path().join("cache"), Duration::from_secs(5), &mut || {}).unwrap();
    let r = s.removals();
    other.put_entry(&b, &Stamps::new());
    other.flush().unwrap();
    assert!(!moved(&s, r), "another handle's addition moved removals");
    other.drop_entry(&b.key);
    other.flush().unwrap();
    assert!(moved(&s, r), "another handle's drop was not seen");
    let r = s.removals();
    other.clear().unwrap();
    assert!(moved(&s, r), "another handle's clear was not seen");
}

/// `outputs_in_place` is `outputs_up_to_date` of `collect_outputs`, case by
/// case: every change it must notice, and the shapes it leaves to the
/// general way.
#[test]
fn outputs_in_place_equals_the_general_check() {
    use std::os::unix::ffi::OsStrExt;
    type Change = fn(&Path);
    let cases: &[(&str, &[&str], Change, bool)] = &[
        ("unchanged", &["dist/**"], |_| {}, true),
        (
            "a stray file",
            &["dist/**"],
            |p| fs::write(p.join("dist/new.txt"), "N").unwrap(),
            false,
        ),
        (
            "a stray file deeper",
            &["dist/**"],
            |p| {
                fs::create_dir_all(p.join("dist/sub/deeper")).unwrap();
                fs::write(p.join("dist/sub/deeper/x"), "X").unwrap();
            },
            false,
        ),
        (
            "an output deleted",
            &["dist/**"],
            |p| fs::remove_file(p.join("dist/out.txt")).unwrap(),
            false,
        ),
        (
            "an output rewritten, other size",
            &["dist/**"],
            |p| fs::write(p.join("dist/sub/a.txt"), "AA").unwrap(),
            false,
        ),
        (
            "an output's mtime moved",
            &["dist/**"],
            |p| {
                let f = fs::File::options()
                    .write(true)
                    .open(p.join("dist/out.txt"))
                    .unwrap();
                f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(7))
                    .unwrap();
            },
            false,
        ),
        (
            "a link output made a file",
            &["dist/**"],
            |p| {
                fs::remove_file(p.join("dist/link")).unwrap();
                fs::write(p.join("dist/link"), "out").unwrap();
            },
            false,
        ),
        (
            "a fifo is never an output",
            &["dist/**"],
            |p| {
                let c = std::ffi::CString::new(p.join("dist/fifo").as_os_str().as_bytes()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            },
            true,
        ),
        (
            "a nested project's files are not",
            &["dist/**"],
            |p| {
                fs::create_dir_all(p.join("dist/nested")).unwrap();
                fs::write(p.join("dist/nested/own.txt"), "O").unwrap();
            },
            true,
        ),
        (
            "a name that is not UTF-8",
            &["dist/**"],
            |p| {
                fs::write(
                    p.join("dist").join(std::ffi::OsStr::from_bytes(b"bad\xff")),
                    "x",
                )
                .unwrap();
            },
            false,
        ),
        (
            "the base made a link",
            &["dist/**"],
            |p| {
                fs::rename(p.join("dist"), p.join("real")).unwrap();
                std::os::unix::fs::symlink("real", p.join("dist")).unwrap();
            },
            false,
        ),
        (
            "the base deleted",
            &["dist/**"],
            |p| fs::remove_dir_all(p.join("dist")).unwrap(),
            false,
        ),
        (
            "an unselected file",
            &["dist/**/*.txt"],
            |p| fs::write(p.join("dist/x.js"), "J").unwrap(),
            true,
        ),
        (
            "a selected one",
            &["dist/**/*.txt"],
            |p| fs::write(p.join("dist/x.txt"), "J").unwrap(),
            false,
        ),
        (
            "two bases, one changed",
            &["dist/**", "out.log"],
            |p| fs::write(p.join("out.log"), "LL").unwrap(),
            false,
        ),
        (
            "two bases, unchanged",
            &["dist/**", "out.log"],
            |_| {},
            true,
        ),
        (
            "a deeper base (general way)",
            &["dist/sub/**"],
            |p| fs::write(p.join("dist/sub/b"), "B").unwrap(),
            false,
        ),
        (
            "no base (general way)",
            &["**/*.txt"],
            |p| fs::write(p.join("top.txt"), "T").unwrap(),
            false,
        ),
    ];
    for (what, patterns, change, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let proj = d.path().join("p");
        fs::create_dir_all(proj.join("dist/sub")).unwrap();
        fs::write(proj.join("dist/out.txt"), "out").unwrap();
        fs::write(proj.join("dist/sub/a.txt"), "A").unwrap();
        fs::write(proj.join("out.log"), "L").unwrap();
        std::os::unix::fs::symlink("out.txt", proj.join("dist/link")).unwrap();
        let pats = Patterns::new(patterns).unwrap();
        let fence: HashSet<String> = ["dist/nested".to_string()].into();
        let files = collect_outputs(&proj, &pats, &fence);
        assert!(!files.is_empty(), "{what}");
        let m = Manifest {
            version: MANIFEST_VERSION,
            key: "a".repeat(64),
            task: "p#build".into(),
            outputs: capture(&s, &proj, &files).unwrap(),
            log: s.put_bytes(b"").unwrap(),
            exit_code: 0,
            duration_ms: 0,
            created_at: 0,
        };
        let stamps = stamps_of(&files);
        assert!(
            outputs_in_place(&proj, &pats, &fence, &m, &stamps),
            "{what}: before"
        );
        change(&proj);
        let general = outputs_up_to_date(&m, &stamps, &collect_outputs(&proj, &pats, &fence));
        assert_eq!(general, *want, "{what}: the general check");
        assert_eq!(
            outputs_in_place(&proj, &pats, &fence, &m, &stamps),
            *want,
            "{what}"
        );
    }
}
