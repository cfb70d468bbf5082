//! `fsx` — confined filesystem access below one directory (a project).
//!
//! A [`Confined`] holds a descriptor of its root and resolves every path one
//! component at a time with `openat(…, O_NOFOLLOW | O_DIRECTORY)` from it, so
//! an operation can neither go through a symlinked directory nor leave the
//! root, whatever the path text says or a concurrent rename does: the check
//! and the use are the same descriptor, not a string compared first and a
//! path opened later. Paths are plain relative paths (`a/b/c`): an absolute
//! path, an empty, `.` or `..` component is refused before any system call.
//!
//! Owns: validating relative paths, creating parent directories (once per
//! directory for a batch of writes, [`DirCache`]; the root's own descriptor
//! is borrowed, never duplicated), installing a
//! file or a symlink atomically (temp sibling + `renameat`), unlinking a
//! non-directory, removing an empty directory, reading a file or a link text
//! without following a link, `lstat`, and finding the first symlinked
//! directory on a path.
//!
//! Never: follows a symlink in a parent directory or at the leaf (a link at
//! the leaf is replaced or unlinked as a link, never written through),
//! accepts a path that could leave the root, or decides which paths are
//! outputs (that is `cache`).

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Why a confined operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FsxError {
    /// Absolute, empty, or with a `.`/`..` component.
    #[error("{0:?} is not a plain relative path inside {1}")]
    BadPath(String, PathBuf),
    /// A directory on the way is a symlink: vx never writes through it.
    #[error("output path {0} is a symlink; vx never writes through symlinks")]
    Symlink(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FsxError {
    /// Whether the path (or a directory on it) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsxError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What is at a path, without following a link there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// `lstat` of a path, as far as vx needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lstat {
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
}

fn lstat_of(st: &rustix::fs::Stat) -> Lstat {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    #[allow(clippy::unnecessary_cast)]
    Lstat {
        kind,
        size: st.st_size as u64,
        mtime_ns: (st.st_mtime as i64) * 1_000_000_000 + st.st_mtime_nsec as i64,
        ino: st.st_ino as u64,
        mode: (st.st_mode as u32) & 0o7777,
    }
}

/// Splits a plain relative path into its components; `None` when it is
/// absolute, empty, or has an empty, `.` or `..` component.
pub fn components(rel: &str) -> Option<Vec<&str>> {
    if rel.is_empty() || rel.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0'))
    {
        return None;
    }
    Some(parts)
}

/// Whether the link text `target` of a symlink at `rel` (a plain relative
/// path below the root) resolves lexically to a path inside the root. An
/// absolute target never does (it would also tie the cache to a checkout
/// path).
pub fn link_stays_inside(rel: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let Some(parts) = components(rel) else {
        return false;
    };
    // Depth of the link's directory below the root.
    let mut depth = parts.len() as i64 - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// A directory below a [`Confined`] root, opened without following a link:
/// the root itself is borrowed (no `dup` per operation), a subdirectory is
/// its own descriptor.
pub enum Dir<'a> {
    Root(BorrowedFd<'a>),
    Sub(OwnedFd),
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Root(fd) => *fd,
            Dir::Sub(fd) => fd.as_fd(),
        }
    }
}

/// Parent directories already opened below one [`Confined`], by their
/// relative path (see [`Confined::write_new_file_in`]).
#[derive(Default)]
pub struct DirCache<'a>(std::collections::HashMap<String, Dir<'a>>);

/// A directory that every operation stays below.
pub struct Confined {
    root: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

impl Confined {
    /// Opens `root` (the root itself is trusted: it is the project directory
    /// the workspace names).
    pub fn open(root: &Path) -> Result<Confined, FsxError> {
        let fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsxError::Io {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Confined {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    /// [`Confined::open`], creating `root` (and its parents) first when it
    /// does not exist.
    pub fn open_or_create(root: &Path) -> Result<Confined, FsxError> {
        match Confined::open(root) {
            Err(e) if e.is_not_found() => {
                fs::create_dir_all(root).map_err(|source| FsxError::Io {
                    path: root.to_path_buf(),
                    source,
                })?;
                Confined::open(root)
            }
            r => r,
        }
    }

    pub fn root(&self) -> &Path {
        &self.path
    }

    fn abs(&self, parts: &[&str]) -> PathBuf {
        let mut p = self.path.clone();
        p.extend(parts);
        p
    }

    fn split<'a>(&self, rel: &'a str) -> Result<Vec<&'a str>, FsxError> {
        components(rel).ok_or_else(|| FsxError::BadPath(rel.to_string(), self.path.clone()))
    }

    /// Opens the directory `parts` below the root, never through a link;
    /// creates missing ones when `create`.
    fn dir(&self, parts: &[&str], create: bool) -> Result<Dir<'_>, FsxError> {
        let mut cur = Dir::Root(self.root.as_fd());
        for (i, c) in parts.iter().enumerate() {
            let at = || self.abs(&parts[..=i]);
            let mut r = rustix::fs::openat(&cur, *c, DIR_FLAGS, Mode::empty());
            if create && r.as_ref().err() == Some(&rustix::io::Errno::NOENT) {
                match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => {
                        return Err(FsxError::Io {
                            path: at(),
                            source: e.into(),
                        });
                    }
                }
                r = rustix::fs::openat(&cur, *c, DIR_FLAGS, Mode::empty());
            }
            cur = match r {
                Ok(fd) => Dir::Sub(fd),
                Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                    let is_link = rustix::fs::statat(&cur, *c, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| lstat_of(&st).kind == Kind::Symlink);
                    return Err(if is_link {
                        FsxError::Symlink(at())
                    } else {
                        FsxError::Io {
                            path: at(),
                            source: e.into(),
                        }
                    });
                }
                Err(e) => {
                    return Err(FsxError::Io {
                        path: at(),
                        source: e.into(),
                    });
                }
            };
        }
        Ok(cur)
    }

    /// The parent directory of `rel` and its last component.
    fn parent<'a>(&self, rel: &'a str, create: bool) -> Result<(Dir<'_>, &'a str), FsxError> {
        let parts = self.split(rel)?;
        let (leaf, dirs) = parts.split_last().expect("components are never empty");
        Ok((self.dir(dirs, create)?, leaf))
    }

    fn tmp_name(leaf: &str) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(".vx-tmp-{}-{n}-{leaf}", std::process::id())
    }

    /// Writes `bytes` to `rel` with permission bits `mode`, creating parent
    /// directories: a temp sibling renamed over the leaf (a link at the leaf
    /// is replaced, never written through).
    pub fn write_file(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<(), FsxError> {
        let (dir, leaf) = self.parent(rel, true)?;
        let tmp = Self::tmp_name(leaf);
        let io_err = |source: io::Error| FsxError::Io {
            path: self.path.join(rel),
            source,
        };
        let r = (|| -> io::Result<()> {
            let fd = rustix::fs::openat(
                &dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let mut f = fs::File::from(fd);
            f.write_all(bytes)?;
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))?;
            drop(f);
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, leaf)?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(io_err(e));
        }
        Ok(())
    }

    /// Writes `bytes` to `rel` (permission bits `mode`, parent directories
    /// created) where nothing is expected to be (a restore, right after its
    /// wipe): the leaf is created directly (`O_EXCL`, never through a link),
    /// with no temp file and no rename; if something is there after all, it
    /// is replaced as [`Confined::write_file`] does. Returns the `lstat` of
    /// what was written, taken from the open file (no second path walk).
    pub fn write_new_file(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<Lstat, FsxError> {
        self.write_new_file_in(&mut DirCache::default(), rel, bytes, mode)
    }

    /// [`Confined::write_new_file`], opening (and creating) each parent
    /// directory once per `dirs`: several files written into one directory
    /// walk its path once, not once per file.
    pub fn write_new_file_in<'c>(
        &'c self,
        dirs: &mut DirCache<'c>,
        rel: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Lstat, FsxError> {
        let parts = self.split(rel)?;
        let (leaf, above) = parts.split_last().expect("components are never empty");
        let key = above.join("/");
        let dir = match dirs.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.dir(above, true)?),
        };
        let io_err = |source: io::Error| FsxError::Io {
            path: self.path.join(rel),
            source,
        };
        let fd = match rustix::fs::openat(
            &*dir,
            *leaf,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => {
                self.write_file(rel, bytes, mode)?;
                return self
                    .lstat(rel)?
                    .ok_or_else(|| io_err(io::Error::from(io::ErrorKind::NotFound)));
            }
            Err(e) => return Err(io_err(e.into())),
        };
        let r = (|| -> io::Result<Lstat> {
            let mut f = fs::File::from(fd);
            f.write_all(bytes)?;
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))?;
            Ok(lstat_of(&rustix::fs::fstat(&f)?))
        })();
        r.map_err(|e| {
            // Never leave a half-written output behind under its real name.
            let _ = rustix::fs::unlinkat(&*dir, *leaf, AtFlags::empty());
            io_err(e)
        })
    }

    /// Makes `rel` a symlink with the link text `target`, creating parent
    /// directories (a temp link renamed over the leaf).
    pub fn write_symlink(&self, rel: &str, target: &str) -> Result<(), FsxError> {
        let (dir, leaf) = self.parent(rel, true)?;
        let tmp = Self::tmp_name(leaf);
        let r = rustix::fs::symlinkat(target, &dir, tmp.as_str())
            .and_then(|()| rustix::fs::renameat(&dir, tmp.as_str(), &dir, leaf));
        if let Err(e) = r {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(FsxError::Io {
                path: self.path.join(rel),
                source: e.into(),
            });
        }
        Ok(())
    }

    /// Unlinks the non-directory at `rel` (a link is removed as a link).
    /// `Ok(false)` when it (or a directory on the way) does not exist.
    pub fn remove_file(&self, rel: &str) -> Result<bool, FsxError> {
        let (dir, leaf) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dir, leaf, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(FsxError::Io {
                path: self.path.join(rel),
                source: e.into(),
            }),
        }
    }

    /// Removes the directory `rel` if it is empty (and a real directory);
    /// whether it did.
    pub fn remove_dir_if_empty(&self, rel: &str) -> bool {
        match self.parent(rel, false) {
            Ok((dir, leaf)) => rustix::fs::unlinkat(&dir, leaf, AtFlags::REMOVEDIR).is_ok(),
            Err(_) => false,
        }
    }

    /// Opens the regular file at `rel` for reading, never through a link.
    pub fn open_read(&self, rel: &str) -> Result<fs::File, FsxError> {
        let (dir, leaf) = self.parent(rel, false)?;
        match rustix::fs::openat(
            &dir,
            leaf,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(fs::File::from(fd)),
            Err(rustix::io::Errno::LOOP) => Err(FsxError::Symlink(self.path.join(rel))),
            Err(e) => Err(FsxError::Io {
                path: self.path.join(rel),
                source: e.into(),
            }),
        }
    }

    /// The link text of the symlink at `rel` (its bytes).
    pub fn read_link(&self, rel: &str) -> Result<Vec<u8>, FsxError> {
        let (dir, leaf) = self.parent(rel, false)?;
        rustix::fs::readlinkat(&dir, leaf, Vec::new())
            .map(|c| c.into_bytes())
            .map_err(|e| FsxError::Io {
                path: self.path.join(rel),
                source: e.into(),
            })
    }

    /// `lstat` of `rel`; `Ok(None)` when it does not exist.
    pub fn lstat(&self, rel: &str) -> Result<Option<Lstat>, FsxError> {
        let (dir, leaf) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(lstat_of(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(FsxError::Io {
                path: self.path.join(rel),
                source: e.into(),
            }),
        }
    }

    /// The first existing component of `rel` (a directory path, or the
    /// leaf too when `leaf` is set) that is a symlink, as an absolute path.
    /// Stops at the first missing component.
    pub fn first_symlink(&self, rel: &str, leaf: bool) -> Result<Option<PathBuf>, FsxError> {
        let parts = self.split(rel)?;
        let n = if leaf { parts.len() } else { parts.len() - 1 };
        match self.dir(&parts[..n], false) {
            Ok(_) => Ok(None),
            Err(FsxError::Symlink(p)) => Ok(Some(p)),
            Err(e) if e.is_not_found() => Ok(None),
            // A regular file where a directory was expected: nothing to
            // write through.
            Err(FsxError::Io { source, .. })
                if source.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root `proj/` beside an `outside/` dir, with:
    /// `real/` (dir), `real/f` (file), `link_dir -> ../outside`,
    /// `inner_link -> real`, `leaf_link -> ../outside/x.txt`.
    fn fixture() -> (tempfile::TempDir, Confined) {
        let d = tempfile::tempdir().unwrap();
        let proj = d.path().join("proj");
        let outside = d.path().join("outside");
        fs::create_dir_all(proj.join("real")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(proj.join("real/f"), "F").unwrap();
        fs::write(outside.join("x.txt"), "OUTSIDE").unwrap();
        symlink("../outside", proj.join("link_dir")).unwrap();
        symlink("real", proj.join("inner_link")).unwrap();
        symlink("../outside/x.txt", proj.join("leaf_link")).unwrap();
        let c = Confined::open(&proj).unwrap();
        (d, c)
    }

    fn outside_untouched(d: &tempfile::TempDir) {
        let o = d.path().join("outside");
        let mut names: Vec<_> = fs::read_dir(&o)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["x.txt"]);
        assert_eq!(fs::read_to_string(o.join("x.txt")).unwrap(), "OUTSIDE");
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        Symlink,
        BadPath,
    }

    fn classify(r: Result<(), FsxError>) -> Want {
        match r {
            Ok(()) => Want::Ok,
            Err(FsxError::Symlink(_)) => Want::Symlink,
            Err(FsxError::BadPath(..)) => Want::BadPath,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn write_file_never_leaves_the_root_or_follows_a_directory_link() {
        let cases: &[(&str, Want)] = &[
            ("new.txt", Want::Ok),
            ("real/g", Want::Ok),
            ("a/b/c/deep.txt", Want::Ok),
            // The leaf link is replaced by a file, the outside target untouched.
            ("leaf_link", Want::Ok),
            ("link_dir/x.txt", Want::Symlink),
            ("link_dir/new/y.txt", Want::Symlink),
            ("inner_link/g", Want::Symlink),
            ("../outside/x.txt", Want::BadPath),
            ("real/../../outside/x.txt", Want::BadPath),
            ("/tmp/abs.txt", Want::BadPath),
            ("./new.txt", Want::BadPath),
            ("a//b", Want::BadPath),
            ("", Want::BadPath),
        ];
        for (rel, want) in cases {
            let (d, c) = fixture();
            let got = classify(c.write_file(rel, b"NEW", 0o644));
            assert_eq!(&got, want, "write_file({rel:?})");
            outside_untouched(&d);
            if *want == Want::Ok {
                let p = c.root().join(rel);
                assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
                assert_eq!(fs::read(&p).unwrap(), b"NEW", "{rel}");
            }
        }
    }

    #[test]
    fn write_symlink_remove_and_read_are_confined() {
        // (operation, path, expected)
        type Op = fn(&Confined, &str) -> Result<(), FsxError>;
        let sym: Op = |c, r| c.write_symlink(r, "real/f");
        let rm: Op = |c, r| c.remove_file(r).map(|_| ());
        let read: Op = |c, r| c.open_read(r).map(|_| ());
        let cases: &[(&str, Op, &str, Want)] = &[
            ("symlink", sym, "l", Want::Ok),
            ("symlink", sym, "leaf_link", Want::Ok),
            ("symlink", sym, "link_dir/l", Want::Symlink),
            ("symlink", sym, "../l", Want::BadPath),
            ("remove", rm, "real/f", Want::Ok),
            ("remove", rm, "missing/f", Want::Ok),
            ("remove", rm, "leaf_link", Want::Ok),
            ("remove", rm, "link_dir/x.txt", Want::Symlink),
            ("remove", rm, "inner_link/f", Want::Symlink),
            ("remove", rm, "/etc/passwd", Want::BadPath),
            ("remove", rm, "real/../../outside/x.txt", Want::BadPath),
            ("read", read, "real/f", Want::Ok),
            ("read", read, "leaf_link", Want::Symlink),
            ("read", read, "link_dir/x.txt", Want::Symlink),
            ("read", read, "../outside/x.txt", Want::BadPath),
        ];
        for (what, op, rel, want) in cases {
            let (d, c) = fixture();
            assert_eq!(&classify(op(&c, rel)), want, "{what}({rel:?})");
            outside_untouched(&d);
        }
        // A removed leaf link is gone as a link; its target stays.
        let (d, c) = fixture();
        assert!(c.remove_file("leaf_link").unwrap());
        assert!(fs::symlink_metadata(c.root().join("leaf_link")).is_err());
        outside_untouched(&d);
        // A written link reads back as its text, not its target's bytes.
        c.write_symlink("l", "real/f").unwrap();
        assert_eq!(c.read_link("l").unwrap(), b"real/f");
        assert_eq!(c.lstat("l").unwrap().unwrap().kind, Kind::Symlink);
        assert_eq!(c.lstat("link_dir").unwrap().unwrap().kind, Kind::Symlink);
        assert!(matches!(
            c.lstat("link_dir/x.txt"),
            Err(FsxError::Symlink(_))
        ));
        assert_eq!(c.lstat("nope/x").unwrap(), None);
    }

    // A batch of new files walks each parent directory's path once (one
    // cached descriptor per directory), and stays as confined as one write.
    #[test]
    fn new_files_in_a_batch_open_each_directory_once_and_stay_confined() {
        let (d, c) = fixture();
        let mut dirs = DirCache::default();
        for rel in ["dist/a", "dist/b", "dist/sub/c", "top", "real/g"] {
            let st = c
                .write_new_file_in(&mut dirs, rel, rel.as_bytes(), 0o644)
                .unwrap();
            assert_eq!(fs::read(c.root().join(rel)).unwrap(), rel.as_bytes());
            assert_eq!(c.lstat(rel).unwrap(), Some(st), "{rel}");
        }
        let mut opened: Vec<&str> = dirs.0.keys().map(String::as_str).collect();
        opened.sort();
        assert_eq!(opened, vec!["", "dist", "dist/sub", "real"]);
        for (rel, want) in [
            ("link_dir/x.txt", Want::Symlink),
            ("inner_link/new", Want::Symlink),
            ("../outside/y", Want::BadPath),
        ] {
            let got = classify(
                c.write_new_file_in(&mut dirs, rel, b"NEW", 0o644)
                    .map(|_| ()),
            );
            assert_eq!(got, want, "{rel}");
        }
        outside_untouched(&d);
        // Something already at the leaf is replaced, never written through.
        let st = c
            .write_new_file_in(&mut dirs, "leaf_link", b"NEW", 0o600)
            .unwrap();
        assert_eq!(st.kind, Kind::File);
        outside_untouched(&d);
    }

    #[test]
    fn first_symlink_names_the_link_on_the_way() {
        let (_d, c) = fixture();
        let root = c.root().to_path_buf();
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("real/f", true, None),
            ("link_dir", true, Some("link_dir")),
            ("link_dir", false, None),
            ("link_dir/a/b", false, Some("link_dir")),
            ("inner_link/f", false, Some("inner_link")),
            ("missing/x", true, None),
            ("real/f/under_a_file", true, None),
        ];
        for (rel, leaf, want) in cases {
            assert_eq!(
                c.first_symlink(rel, *leaf).unwrap(),
                want.map(|w| root.join(w)),
                "{rel} leaf={leaf}"
            );
        }
        assert!(matches!(
            c.first_symlink("../x", true),
            Err(FsxError::BadPath(..))
        ));
    }

    #[test]
    fn remove_dir_only_when_empty_and_real() {
        let (_d, c) = fixture();
        assert!(!c.remove_dir_if_empty("real"));
        assert!(!c.remove_dir_if_empty("link_dir"));
        fs::remove_file(c.root().join("real/f")).unwrap();
        assert!(c.remove_dir_if_empty("real"));
    }

    #[test]
    fn link_targets_inside_and_outside() {
        let cases: &[(&str, &str, bool)] = &[
            ("dist/l", "a.txt", true),
            ("dist/l", "../src/a.txt", true),
            ("dist/l", "../../x", false),
            ("l", "../x", false),
            ("l", "/etc/passwd", false),
            ("dist/sub/l", "../../src/./a", true),
            ("dist/l", "sub/../../../x", false),
            ("dist/l", "", false),
        ];
        for (rel, target, inside) in cases {
            assert_eq!(link_stays_inside(rel, target), *inside, "{rel} -> {target}");
        }
    }
}
