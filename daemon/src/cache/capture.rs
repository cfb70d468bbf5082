//! `cache::capture` — a successful task's outputs into the store: regular
//! files read through a confined, non-following open into blobs, symlinks
//! stored as their link text (refused when they leave the project). Never
//! writes into a project and never commits an entry (the caller does, after
//! every blob is durable).

use super::*;

/// Captures the outputs of a successful run under `project` into blobs;
/// returns the manifest entries. A regular file is read through a confined,
/// non-following open (a file swapped for a link meanwhile is refused, never
/// read through); a symlink is stored as its link text. A link pointing
/// outside the project is refused ([`CacheError::Refused`]: the result is
/// not cached).
pub fn capture(
    store: &Store,
    project: &Path,
    files: &[OnDisk],
) -> Result<Vec<OutputFile>, CacheError> {
    if let Some(f) = files.iter().find(|f| f.non_utf8) {
        return Err(CacheError::Refused(format!(
            "output name is not valid UTF-8: {} — vx refuses such names (it could not restore them exactly); rename it",
            f.rel
        )));
    }
    let c = Confined::open(project)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if f.link {
            let raw = c.read_link(&f.rel)?;
            let Ok(target) = String::from_utf8(raw) else {
                return Err(CacheError::Refused(format!(
                    "output {} is a symlink whose target is not UTF-8",
                    f.rel
                )));
            };
            if let Some(why) = link_refusal(&f.rel, &target) {
                return Err(CacheError::Refused(why));
            }
            out.push(OutputFile {
                path: f.rel.clone(),
                mode: 0o777,
                digest: digest_of(target.as_bytes()),
                kind: OutputKind::Symlink,
                link: Some(target),
            });
            continue;
        }
        let mut file = c.open_read(&f.rel)?;
        let mode = file.metadata().map(|m| m.mode() & 0o7777).unwrap_or(0o644);
        let digest = store.put_reader(&mut file, &f.abs)?;
        out.push(OutputFile {
            path: f.rel.clone(),
            mode,
            digest,
            kind: OutputKind::File,
            link: None,
        });
    }
    Ok(out)
}
