//! `cache::outputs` — a task's outputs on disk: finding them (never
//! through a symlinked directory or into a nested project), wiping them,
//! their stamps and whether they are exactly what vx last wrote. Every
//! deletion goes through [`crate::fsx::Confined`]. Never reads or writes the
//! store.

use super::*;

/// One output on disk: a regular file or a symlink (of any target).
#[derive(Debug, Clone)]
pub struct OnDisk {
    /// Project-relative path.
    pub rel: String,
    pub abs: PathBuf,
    pub stat: FileStat,
    /// A symlink (captured and restored as a link, never followed).
    pub link: bool,
    /// Its name is not UTF-8 (`rel` is escaped, see `hash::escape_path`):
    /// vx can neither key, store nor wipe it, so such a result is never
    /// cached (capture refuses it by name).
    pub non_utf8: bool,
}

/// Finds the outputs the patterns select under `project` (not
/// gitignore-filtered): regular files and symlinks, never looking through a
/// symlinked directory (a base directory reached through one selects
/// nothing; [`wipe_outputs`] and [`restore`] refuse it). `fence` holds
/// project-relative directories of nested projects, which are never entered.
pub fn collect_outputs(project: &Path, pats: &Patterns, fence: &HashSet<String>) -> Vec<OnDisk> {
    if pats.is_empty() {
        return Vec::new();
    }
    let Ok(c) = Confined::open(project) else {
        return Vec::new();
    };
    collect_in(&c, pats, fence, false).unwrap_or_default()
}

/// [`collect_outputs`] below an open project. With `refuse`, an output
/// base vx could only write through a symlinked directory (`dist ->
/// /elsewhere` for `dist/**`) is an error naming the link (a base that is
/// itself a selected symlink, a literal pattern naming a link, is an output
/// like any other); without, it selects nothing. One `lstat` per base,
/// relative to the project's descriptor: a missing base (outputs deleted)
/// costs nothing more.
pub(super) fn collect_in(
    c: &Confined,
    pats: &Patterns,
    fence: &HashSet<String>,
    refuse: bool,
) -> Result<Vec<OnDisk>, CacheError> {
    let mut out = Vec::new();
    if pats.is_empty() {
        return Ok(out);
    }
    let project = c.root();
    let bases = pats.bases().unwrap_or(&[]);
    let whole = [String::new()];
    let bases = if pats.bases().is_none() {
        &whole[..]
    } else {
        bases
    };
    let mut seen = HashSet::new();
    for base in bases {
        if base.is_empty() {
            // (As before: a project dir that is itself a link is not
            // walked for patterns that can match anywhere.)
            if fs::symlink_metadata(project).is_ok_and(|m| m.is_dir()) {
                walk_outputs(project, "", pats, fence, &mut out, &mut seen, false);
            }
            continue;
        }
        let kind = match c.lstat(base) {
            Ok(Some(st)) => st.kind,
            // Nothing there, or a regular file on the way: nothing to
            // collect, nothing written through.
            Ok(None) => continue,
            Err(crate::fsx::FsxError::Io { source, .. })
                if source.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                continue;
            }
            Err(e @ crate::fsx::FsxError::Symlink(_)) if refuse => return Err(e.into()),
            Err(crate::fsx::FsxError::Symlink(_)) => continue,
            Err(e) if refuse => return Err(e.into()),
            Err(_) => continue,
        };
        let start = project.join(base);
        match kind {
            crate::fsx::Kind::Dir => {
                walk_outputs(&start, base, pats, fence, &mut out, &mut seen, false)
            }
            crate::fsx::Kind::Symlink if refuse && !pats.matches(base) => {
                return Err(crate::fsx::FsxError::Symlink(start).into());
            }
            _ => {
                if pats.matches(base)
                    && seen.insert(base.clone())
                    && let Ok(md) = fs::symlink_metadata(&start)
                {
                    push_file(&start, base.clone(), &md, &mut out, false);
                }
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

pub(super) fn push_file(
    abs: &Path,
    rel: String,
    md: &fs::Metadata,
    out: &mut Vec<OnDisk>,
    non_utf8: bool,
) {
    let link = md.file_type().is_symlink();
    if link || md.is_file() {
        out.push(OnDisk {
            rel,
            abs: abs.to_path_buf(),
            stat: FileStat::of(md),
            link,
            non_utf8,
        });
    }
}

pub(super) fn walk_outputs(
    dir: &Path,
    rel_dir: &str,
    pats: &Patterns,
    fence: &HashSet<String>,
    out: &mut Vec<OnDisk>,
    seen: &mut HashSet<String>,
    non_utf8: bool,
) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let file_name = e.file_name();
        let (name, bad) = match file_name.to_str() {
            Some(n) => (n.to_owned(), non_utf8),
            None => (crate::hash::escape_path(Path::new(&file_name)), true),
        };
        let rel = if rel_dir.is_empty() {
            name.clone()
        } else {
            format!("{rel_dir}/{name}")
        };
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_dir() {
            if rel_dir.is_empty() && (name == ".git" || name == ".vx" || name == "node_modules") {
                continue;
            }
            if fence.contains(&rel) {
                continue;
            }
            walk_outputs(&e.path(), &rel, pats, fence, out, seen, bad);
        } else if pats.matches(&rel) && seen.insert(rel.clone()) {
            push_file(&e.path(), rel, &md, out, bad);
        }
    }
}

/// Deletes the outputs the patterns select (a symlink is unlinked, never
/// followed), and the directories that became empty because of it. Every
/// deletion is confined to `project`; an output base reached through a
/// symlinked directory is refused with an error naming it.
pub fn wipe_outputs(
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<(), CacheError> {
    if pats.is_empty() {
        return Ok(());
    }
    let c = match Confined::open(project) {
        Ok(c) => c,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    wipe_confined(&c, &collect_in(&c, pats, fence, true)?)
}

pub(super) fn wipe_confined(c: &Confined, files: &[OnDisk]) -> Result<(), CacheError> {
    let mut dirs = HashSet::new();
    // A name vx cannot address exactly (not UTF-8) is left alone.
    for f in files.iter().filter(|f| !f.non_utf8) {
        c.remove_file(&f.rel)?;
        let mut d = f.rel.as_str();
        while let Some((parent, _)) = d.rsplit_once('/') {
            dirs.insert(parent.to_string());
            d = parent;
        }
    }
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        c.remove_dir_if_empty(&d); // fails (and stays) when not empty
    }
    Ok(())
}

/// Stamps for the files as they are on disk now.
pub fn stamps_of(files: &[OnDisk]) -> Stamps {
    files
        .iter()
        .map(|f| (f.rel.clone(), (f.stat.size, f.stat.mtime_ns, f.stat.ino)))
        .collect()
}

/// Whether the outputs on disk are exactly what vx last wrote for this
/// entry on this machine: same set of files and links, each with its
/// recorded size, mtime and inode.
pub fn outputs_up_to_date(m: &Manifest, stamps: &Stamps, on_disk: &[OnDisk]) -> bool {
    if on_disk.len() != m.outputs.len() || stamps.len() != m.outputs.len() {
        return false;
    }
    on_disk.iter().zip(&m.outputs).all(|(d, o)| {
        d.rel == o.path
            && d.link == o.is_link()
            && d.stat.size == o.digest.size_bytes
            && stamps.get(&d.rel) == Some(&(d.stat.size, d.stat.mtime_ns, d.stat.ino))
    })
}

/// Whether the outputs on disk are exactly what vx last wrote for this
/// entry: `outputs_up_to_date(m, stamps, &collect_outputs(project, pats,
/// fence))`, the check of every hit whose outputs may be in place, with
/// fewer system calls when every base of `pats` is one directory name
/// (`dist/**`): each name is looked up from its directory's descriptor
/// (one component, not the whole path) and nothing is allocated per file
/// but its relative name. Any other shape, or a project that cannot be
/// opened, takes the general way.
pub fn outputs_in_place(
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
    m: &Manifest,
    stamps: &Stamps,
) -> bool {
    let general = || outputs_up_to_date(m, stamps, &collect_outputs(project, pats, fence));
    if pats.is_empty() {
        return general();
    }
    let Some(bases) = pats.bases() else {
        return general();
    };
    if bases
        .iter()
        .any(|b| b.is_empty() || b.contains('/') || b == "." || b == "..")
    {
        return general();
    }
    use rustix::fd::AsFd;
    use rustix::fs::{AtFlags, Mode, OFlags};
    let Ok(dir) = rustix::fs::open(
        project,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return general();
    };
    let mut out: Vec<(String, FileStat, bool)> = Vec::new();
    let mut seen = HashSet::new();
    for base in bases {
        // As `collect_outputs`: a base that does not exist selects nothing;
        // a directory is walked; anything else is a candidate itself.
        let Ok(st) = rustix::fs::statat(&dir, base.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match Kind::of(&st) {
            Kind::Dir => walk_at(
                dir.as_fd(),
                base.as_bytes(),
                base,
                pats,
                fence,
                &mut out,
                &mut seen,
            ),
            kind => {
                if pats.matches(base) && seen.insert(base.clone()) && kind != Kind::Other {
                    out.push((base.clone(), stat_of(&st), kind == Kind::Link));
                }
            }
        }
    }
    if out.len() != m.outputs.len() || stamps.len() != m.outputs.len() {
        return false;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.iter().zip(&m.outputs).all(|((rel, stat, link), o)| {
        *rel == o.path
            && *link == o.is_link()
            && stat.size == o.digest.size_bytes
            && stamps.get(rel) == Some(&(stat.size, stat.mtime_ns, stat.ino))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link,
    /// A fifo, socket or device: never an output.
    Other,
}

impl Kind {
    fn of(st: &rustix::fs::Stat) -> Kind {
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Symlink => Kind::Link,
            _ => Kind::Other,
        }
    }
}

/// [`FileStat::of`] for a `stat` made through a descriptor.
fn stat_of(st: &rustix::fs::Stat) -> FileStat {
    FileStat {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        ino: st.st_ino,
        mode: st.st_mode,
    }
}

/// [`walk_outputs`] from the directory `name` of `parent` (`rel_dir`
/// relative to the project, never empty here), through descriptors.
fn walk_at(
    parent: rustix::fd::BorrowedFd<'_>,
    name: &[u8],
    rel_dir: &str,
    pats: &Patterns,
    fence: &HashSet<String>,
    out: &mut Vec<(String, FileStat, bool)>,
    seen: &mut HashSet<String>,
) {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use std::os::unix::ffi::OsStrExt;
    let Ok(cname) = std::ffi::CString::new(name) else {
        return;
    };
    let Ok(fd) = rustix::fs::openat(
        parent,
        cname.as_c_str(),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(mut entries) = rustix::fs::Dir::new(fd) else {
        return;
    };
    let mut subdirs: Vec<(Vec<u8>, String)> = Vec::new();
    while let Some(Ok(e)) = entries.read() {
        let raw = e.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let rel = match std::str::from_utf8(raw) {
            Ok(n) => format!("{rel_dir}/{n}"),
            Err(_) => format!(
                "{rel_dir}/{}",
                crate::hash::escape_path(Path::new(std::ffi::OsStr::from_bytes(raw)))
            ),
        };
        let Ok(here) = entries.fd() else { return };
        let Ok(st) = rustix::fs::statat(here, e.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match Kind::of(&st) {
            Kind::Dir => {
                if !fence.contains(&rel) {
                    subdirs.push((raw.to_vec(), rel));
                }
            }
            kind => {
                if pats.matches(&rel) && seen.insert(rel.clone()) && kind != Kind::Other {
                    out.push((rel, stat_of(&st), kind == Kind::Link));
                }
            }
        }
    }
    let Ok(here) = entries.fd() else { return };
    for (raw, rel) in subdirs {
        walk_at(here, &raw, &rel, pats, fence, out, seen);
    }
}

/// Why a symlink output at `rel` with link text `target` may not be cached
/// or restored, if it may not.
pub(super) fn link_refusal(rel: &str, target: &str) -> Option<String> {
    (!crate::fsx::link_stays_inside(rel, target)).then(|| {
        format!("output {rel} is a symlink to {target:?}, outside the project; vx never restores such a link")
    })
}
