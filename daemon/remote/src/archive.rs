//! `archive` — an [`Artifact`] as turbo packs one: a `tar` stream (paths
//! relative to the workspace root, the project's directory first; mode
//! kept, uid 0, mtime 0) compressed with `zstd`, the task's log at
//! `<project>/.turbo/turbo-<task>.log`.
//!
//! Unpacking is the hostile side: it stops past [`Limits::max_unpacked`]
//! bytes or [`Limits::max_entries`] entries (a zstd bomb), and refuses an
//! entry whose path is not UTF-8, absolute, holds `..` or `.` or an empty
//! component, lies outside the task's project, or that is neither a
//! regular file, a directory nor a symlink (hard links, devices, FIFOs).
//! A symlink's target is checked by the engine (inside the project).
//! Never touches the filesystem.

use crate::Limits;
use std::io::{self, Read};
use vxd::cache::remote::{Artifact, ArtifactBody, ArtifactFile, ArtifactId};

/// The log's path in the archive, relative to the project.
pub fn log_name(task: &str) -> String {
    format!(".turbo/turbo-{}.log", task.replace(':', "$colon$"))
}

fn in_project(project_dir: &str, rel: &str) -> String {
    if project_dir == "." || project_dir.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{rel}", project_dir.trim_end_matches('/'))
    }
}

/// Packs an artifact (tar + zstd level 3, with the frame's content
/// checksum, so flipped bytes never unpack silently).
pub fn pack(a: &Artifact, id: &ArtifactId) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
    enc.include_checksum(true)?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for f in &a.files {
        let path = in_project(id.project_dir, &f.path);
        match &f.body {
            ArtifactBody::File(bytes) => {
                let mut h = header(tar::EntryType::Regular, f.mode, bytes.len() as u64);
                tar.append_data(&mut h, &path, bytes.as_slice())?;
            }
            ArtifactBody::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, &path, target)?;
            }
        }
    }
    let log = in_project(id.project_dir, &log_name(id.task));
    let mut h = header(tar::EntryType::Regular, 0o644, a.log.len() as u64);
    tar.append_data(&mut h, &log, a.log.as_slice())?;
    tar.into_inner()?.finish()
}

/// A reader that fails once more than `left` bytes have been read.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other("unpacks to more than the size cap"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Whether `p` is a plain relative path: no leading `/`, no `.`, `..` or
/// empty component.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Unpacks an archive fetched for `id` into an artifact (project-relative
/// paths). `Err`: why it is refused.
pub fn unpack(body: &[u8], id: &ArtifactId, limits: &Limits) -> Result<Artifact, String> {
    let dec = zstd::stream::read::Decoder::new(body).map_err(|e| format!("not zstd: {e}"))?;
    let capped = Capped {
        inner: dec,
        left: limits.max_unpacked,
    };
    let mut ar = tar::Archive::new(capped);
    let prefix = if id.project_dir == "." || id.project_dir.is_empty() {
        String::new()
    } else {
        format!("{}/", id.project_dir.trim_end_matches('/'))
    };
    let log = log_name(id.task);
    let mut out = Artifact::default();
    let entries = ar
        .entries()
        .map_err(|e| format!("a corrupt archive: {e}"))?;
    read_entries(entries, &prefix, &log, limits, &mut out)?;
    // Read to the end of the frame: its checksum is verified there.
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| format!("a corrupt archive: {e}"))?;
    Ok(out)
}

fn read_entries<R: Read>(
    entries: tar::Entries<'_, R>,
    prefix: &str,
    log: &str,
    limits: &Limits,
    out: &mut Artifact,
) -> Result<(), String> {
    for (n, e) in entries.enumerate() {
        if n >= limits.max_entries {
            return Err(format!("more than {} entries", limits.max_entries));
        }
        let mut e = e.map_err(|e| format!("a corrupt archive: {e}"))?;
        let raw = e.path_bytes().into_owned();
        let Ok(path) = String::from_utf8(raw) else {
            return Err("an entry's path is not UTF-8".into());
        };
        let trimmed = path.trim_end_matches('/');
        if !plain_relative(trimmed) {
            return Err(format!("an entry names the path {path:?}"));
        }
        let kind = e.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let Some(rel) = trimmed.strip_prefix(prefix) else {
            return Err(format!("the entry {path:?} is outside the task's project"));
        };
        let rel = rel.to_string();
        let mode = e.header().mode().unwrap_or(0o644);
        if kind.is_symlink() {
            let target = e
                .link_name_bytes()
                .map(|t| t.into_owned())
                .ok_or_else(|| format!("the link {path:?} has no target"))?;
            let Ok(target) = String::from_utf8(target) else {
                return Err(format!("the link {path:?} has a target that is not UTF-8"));
            };
            if target.starts_with('/') || target.is_empty() {
                return Err(format!("the link {path:?} points to {target:?}"));
            }
            out.files.push(ArtifactFile {
                path: rel,
                mode: 0o777,
                body: ArtifactBody::Symlink(target),
            });
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(format!(
                "the entry {path:?} is neither a file, a directory nor a symlink"
            ));
        }
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes)
            .map_err(|err| format!("a corrupt archive ({path}): {err}"))?;
        if rel == log {
            out.log = bytes;
        } else {
            out.files.push(ArtifactFile {
                path: rel,
                mode,
                body: ArtifactBody::File(bytes),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(dir: &'a str) -> ArtifactId<'a> {
        ArtifactId {
            key: "k",
            project_dir: dir,
            task: "build:prod",
        }
    }

    fn sample() -> Artifact {
        Artifact {
            files: vec![
                ArtifactFile {
                    path: "dist/a.js".into(),
                    mode: 0o755,
                    body: ArtifactBody::File(b"hello".to_vec()),
                },
                ArtifactFile {
                    path: "dist/l".into(),
                    mode: 0o777,
                    body: ArtifactBody::Symlink("a.js".into()),
                },
                ArtifactFile {
                    path: format!("dist/{}", "x".repeat(150)),
                    mode: 0o644,
                    body: ArtifactBody::File(Vec::new()),
                },
            ],
            log: b"line 1\nline 2\n".to_vec(),
            duration_ms: 0,
        }
    }

    #[test]
    fn round_trip() {
        for dir in [".", "packages/a"] {
            let a = sample();
            let body = pack(&a, &id(dir)).unwrap();
            assert_eq!(&body[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
            let back = unpack(&body, &id(dir), &Limits::default()).unwrap();
            assert_eq!(back, a, "{dir}");
        }
    }

    /// A raw tar with one entry of the given path/type (bypassing the
    /// tar crate's own path checks), zstd-compressed.
    fn crafted(path: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        {
            let raw = h.as_old_mut();
            raw.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(data);
        t.resize(t.len().div_ceil(512) * 512, 0);
        t.extend_from_slice(&[0u8; 1024]);
        zstd::encode_all(t.as_slice(), 3).unwrap()
    }

    #[test]
    fn refusals() {
        use tar::EntryType as T;
        let cases: &[(&str, T, Option<&str>)] = &[
            ("packages/a/../../etc/x", T::Regular, None),
            ("/etc/passwd", T::Regular, None),
            ("packages/b/dist/x", T::Regular, None),
            ("packages/a/./x", T::Regular, None),
            ("packages/a/dist/l", T::Symlink, Some("/etc/passwd")),
            ("packages/a/dist/h", T::Link, Some("packages/a/x")),
            ("packages/a/dist/dev", T::Char, None),
        ];
        for (path, kind, link) in cases {
            let body = crafted(path, *kind, *link, b"x");
            assert!(
                unpack(&body, &id("packages/a"), &Limits::default()).is_err(),
                "{path} {kind:?} accepted"
            );
        }
        // Not zstd, or not a tar.
        assert!(unpack(b"garbage", &id("."), &Limits::default()).is_err());
        let not_tar = zstd::encode_all(&[1u8; 700][..], 3).unwrap();
        assert!(unpack(&not_tar, &id("."), &Limits::default()).is_err());
    }

    #[test]
    fn zstd_bomb_stops_at_the_cap() {
        let a = Artifact {
            files: vec![ArtifactFile {
                path: "dist/zeros".into(),
                mode: 0o644,
                body: ArtifactBody::File(vec![0u8; 8 << 20]),
            }],
            ..Default::default()
        };
        let body = pack(&a, &id(".")).unwrap();
        assert!(body.len() < 64 << 10, "compressed to {}", body.len());
        let small = Limits {
            max_unpacked: 1 << 20,
            ..Limits::default()
        };
        let err = unpack(&body, &id("."), &small).unwrap_err();
        assert!(err.contains("cap"), "{err}");
        assert!(unpack(&body, &id("."), &Limits::default()).is_ok());
    }
}
