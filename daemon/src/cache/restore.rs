//! `cache::restore` — an entry's outputs back into a project: every blob
//! verified and every link checked before the tree is touched, then the
//! current outputs wiped and each file or link written, all confined to the
//! project. Never writes the index (the caller stores the returned stamps).

use super::*;

/// Restores an entry's outputs into `project`: checks everything first
/// (every blob verified, every link's text against its digest and inside
/// the project, no output base behind a symlinked directory), then wipes
/// the current outputs and writes each file (created in place) or link,
/// all confined to `project`. Returns the stamps of what it wrote.
/// [`CacheError::Corrupt`] and [`CacheError::Refused`] leave the tree as it
/// was (the caller treats them as a miss).
pub fn restore(
    store: &Store,
    m: &Manifest,
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<Stamps, CacheError> {
    // Verify every blob before touching the tree, so a corrupt entry leaves
    // the outputs as they were (the task then re-runs and wipes them itself).
    let mut contents = Vec::with_capacity(m.outputs.len());
    for o in &m.outputs {
        if crate::fsx::components(&o.path).is_none() {
            return Err(CacheError::Corrupt(format!(
                "entry {} names {}",
                m.key, o.path
            )));
        }
        if o.is_link() {
            let Some(target) = o.link.as_deref() else {
                return Err(CacheError::Corrupt(format!(
                    "entry {} link {}",
                    m.key, o.path
                )));
            };
            if digest_of(target.as_bytes()) != o.digest {
                return Err(CacheError::Corrupt(format!(
                    "entry {} link {}",
                    m.key, o.path
                )));
            }
            if let Some(why) = link_refusal(&o.path, target) {
                return Err(CacheError::Refused(why));
            }
            contents.push(Vec::new());
        } else {
            contents.push(store.read_verified(&o.digest)?);
        }
    }
    let files = m.outputs.iter().zip(contents).map(|(o, bytes)| {
        let link = o.link.as_deref().filter(|_| o.is_link());
        (o.path.as_str(), o.mode, link, bytes)
    });
    write_checked(project, pats, fence, files)
}

/// Writes outputs already checked (paths confined, blobs verified, links
/// inside the project): wipes the current outputs, then writes each file
/// (`(path, mode, link target, bytes)`) confined to `project`. Returns the
/// stamps of what it wrote.
pub(super) fn write_checked<'a>(
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
    files: impl Iterator<Item = (&'a str, u32, Option<&'a str>, Vec<u8>)>,
) -> Result<Stamps, CacheError> {
    let c = Confined::open_or_create(project)?;
    // Refuses a base behind a symlinked directory before anything is
    // touched; a missing base (outputs deleted) has nothing to wipe.
    wipe_confined(&c, &collect_in(&c, pats, fence, true)?)?;
    let mut stamps = Stamps::new();
    let mut dirs = crate::fsx::DirCache::default();
    for (path, mode, link, bytes) in files {
        // Just wiped: a file is created in place (no temp, no rename) and
        // its stamp comes from the open file, not a second lookup.
        let st = match link {
            Some(target) => {
                c.write_symlink(path, target)?;
                c.lstat(path)?.ok_or_else(|| CacheError::Io {
                    path: project.join(path),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?
            }
            None => c.write_new_file_in(&mut dirs, path, &bytes, mode)?,
        };
        stamps.insert(path.to_string(), (st.size, st.mtime_ns, st.ino));
    }
    Ok(stamps)
}
