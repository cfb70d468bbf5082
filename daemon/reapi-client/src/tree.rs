//! `tree` — the Merkle trees of remote execution: a job's input root (the
//! `Directory` messages rooted at the workspace root, built from its input
//! files) and the flattening of an output directory's `Tree` back into
//! files and links.
//!
//! The input root follows the spec to the letter, so equal inputs give
//! equal digests on every machine: files, directories and links each
//! sorted by name (UTF-8 bytes), `is_executable` from the mode, no
//! directory that holds nothing (but the working directory, which must
//! exist), every name a plain component (no `.`, `..`, empty or `/`).
//!
//! Never: reads a file itself (the caller's `digest` does), follows a
//! link, or accepts a tree whose digests do not resolve, that nests
//! deeper than [`MAX_DEPTH`] or names a path outside it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use vx_reapi::re::{Digest, Directory, DirectoryNode, FileNode, NodeProperties, SymlinkNode, Tree};
use vxd::cache::remote::{JobInput, JobInputKind};

/// The deepest directory nesting accepted in either direction.
pub const MAX_DEPTH: usize = 256;

/// Where a blob of an input root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An encoded `Directory`.
    Bytes(Vec<u8>),
    /// A file on disk (read, and checked again, when the server lacks it).
    File(PathBuf),
}

/// A built input root: its digest and every blob it names.
#[derive(Debug, Default)]
pub struct InputRoot {
    pub digest: Digest,
    pub blobs: BTreeMap<(String, i64), (Digest, Source)>,
}

#[derive(Default)]
struct Dir {
    files: BTreeMap<String, (Digest, bool)>,
    links: BTreeMap<String, String>,
    dirs: BTreeMap<String, Dir>,
}

/// The components of a relative path, each plain; `None` otherwise.
fn components(path: &str) -> Option<Vec<&str>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&str> = path.split('/').collect();
    parts
        .iter()
        .all(|c| !c.is_empty() && *c != "." && *c != ".." && !c.contains('\0'))
        .then_some(parts)
}

impl Dir {
    fn descend(&mut self, parts: &[&str], whole: &str) -> Result<&mut Dir, String> {
        let mut d = self;
        for c in parts {
            if d.files.contains_key(*c) || d.links.contains_key(*c) {
                return Err(format!("{whole}: {c} is both a file and a directory"));
            }
            d = d.dirs.entry((*c).to_string()).or_default();
        }
        Ok(d)
    }

    fn encode(&self, blobs: &mut BTreeMap<(String, i64), (Digest, Source)>) -> Digest {
        let mut m = Directory::default();
        for (name, (digest, exe)) in &self.files {
            m.files.push(FileNode {
                name: name.clone(),
                digest: Some(digest.clone()),
                is_executable: *exe,
                ..Default::default()
            });
        }
        for (name, d) in &self.dirs {
            m.directories.push(DirectoryNode {
                name: name.clone(),
                digest: Some(d.encode(blobs)),
            });
        }
        for (name, target) in &self.links {
            m.symlinks.push(SymlinkNode {
                name: name.clone(),
                target: target.clone(),
                ..Default::default()
            });
        }
        let (d, bytes) = vx_reapi::digest_of_message(&m);
        blobs.insert(
            (d.hash.clone(), d.size_bytes),
            (d.clone(), Source::Bytes(bytes)),
        );
        d
    }
}

/// Builds the input root of `inputs` (workspace-root-relative paths),
/// making sure `working_directory` exists in it. `digest` gives a file's
/// digest (the caller reads and hashes, or remembers). `Err`: why the
/// inputs cannot form a tree (a bad path, a name that is a file and a
/// directory, a file that cannot be read).
pub fn input_root(
    inputs: &[JobInput],
    working_directory: &str,
    mut digest: impl FnMut(&Path) -> Result<Digest, String>,
) -> Result<InputRoot, String> {
    let mut root = Dir::default();
    let mut blobs = BTreeMap::new();
    let wd = components(working_directory)
        .ok_or_else(|| format!("{working_directory:?} is not a relative path"))?;
    if wd.len() > MAX_DEPTH {
        return Err(format!("{working_directory} nests too deep"));
    }
    root.descend(&wd, working_directory)?;
    for i in inputs {
        let parts = components(&i.path)
            .filter(|p| !p.is_empty() && p.len() <= MAX_DEPTH)
            .ok_or_else(|| format!("{:?} is not a usable input path", i.path))?;
        let (name, dirs) = parts.split_last().expect("not empty");
        let d = root.descend(dirs, &i.path)?;
        if d.dirs.contains_key(*name) {
            return Err(format!("{}: it is both a file and a directory", i.path));
        }
        match &i.kind {
            JobInputKind::File { executable } => {
                let dg = digest(&i.abs)?;
                blobs.insert(
                    (dg.hash.clone(), dg.size_bytes),
                    (dg.clone(), Source::File(i.abs.clone())),
                );
                d.links.remove(*name);
                d.files.insert((*name).to_string(), (dg, *executable));
            }
            JobInputKind::Symlink(t) => {
                d.files.remove(*name);
                d.links.insert((*name).to_string(), t.clone());
            }
        }
    }
    let digest = root.encode(&mut blobs);
    Ok(InputRoot { digest, blobs })
}

/// One entry of a flattened output tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        path: String,
        digest: Digest,
        executable: bool,
        mode: Option<u32>,
    },
    Link {
        path: String,
        target: String,
    },
}

/// The files and links of an output directory's `Tree`, their paths
/// prefixed by `base` (the output path, `""` for the working directory).
/// `Err`: a child the tree does not carry, a bad name, too deep or more
/// than `max_entries`.
/// An output file of a result (an `OutputFile` or a `Tree`'s `FileNode`):
/// its digest checked, its mode from the node properties when sent.
pub fn file_entry(
    path: String,
    digest: Option<&Digest>,
    executable: bool,
    props: Option<&NodeProperties>,
) -> Result<Entry, String> {
    let digest = digest
        .cloned()
        .ok_or_else(|| format!("output {path:?} has no digest"))?;
    vx_reapi::valid(&digest).map_err(|e| e.to_string())?;
    Ok(Entry::File {
        path,
        digest,
        executable,
        mode: props
            .and_then(|p| p.unix_mode.as_ref())
            .map(|m| m.value & 0o7777),
    })
}

pub fn flatten(base: &str, tree: &Tree, max_entries: usize) -> Result<Vec<Entry>, String> {
    let root = tree.root.as_ref().ok_or("the output tree has no root")?;
    let mut children: HashMap<(String, i64), &Directory> = HashMap::new();
    for c in &tree.children {
        let (d, _) = vx_reapi::digest_of_message(c);
        children.insert((d.hash, d.size_bytes), c);
    }
    let mut out = Vec::new();
    let mut stack: Vec<(String, &Directory, usize)> = vec![(base.to_string(), root, 0)];
    let join = |dir: &str, name: &str| -> Result<String, String> {
        if components(name).is_none_or(|c| c.len() != 1) {
            return Err(format!("the output tree names {name:?}"));
        }
        Ok(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        })
    };
    while let Some((dir, d, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err("the output tree nests too deep".into());
        }
        for f in &d.files {
            out.push(file_entry(
                join(&dir, &f.name)?,
                f.digest.as_ref(),
                f.is_executable,
                f.node_properties.as_ref(),
            )?);
        }
        for l in &d.symlinks {
            out.push(Entry::Link {
                path: join(&dir, &l.name)?,
                target: l.target.clone(),
            });
        }
        for sub in &d.directories {
            let dg = sub
                .digest
                .as_ref()
                .ok_or_else(|| format!("output directory {:?} has no digest", sub.name))?;
            let child = children
                .get(&(dg.hash.clone(), dg.size_bytes))
                .ok_or_else(|| format!("the output tree lacks directory {:?}", sub.name))?;
            stack.push((join(&dir, &sub.name)?, child, depth + 1));
        }
        if out.len() > max_entries {
            return Err(format!("the output tree has over {max_entries} entries"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vx_reapi::prost::Message;

    fn file(path: &str, exe: bool) -> JobInput {
        JobInput {
            path: path.into(),
            abs: PathBuf::from(format!("/abs/{path}")),
            kind: JobInputKind::File { executable: exe },
        }
    }

    /// A file's "content" is its absolute path (no disk needed).
    fn content_digest(p: &Path) -> Result<Digest, String> {
        Ok(vx_reapi::digest_of(p.to_string_lossy().as_bytes()))
    }

    fn dir_of(root: &InputRoot, d: &Digest) -> Directory {
        match &root.blobs[&(d.hash.clone(), d.size_bytes)].1 {
            Source::Bytes(b) => Directory::decode(b.as_slice()).unwrap(),
            Source::File(p) => panic!("{p:?} is not a directory"),
        }
    }

    fn sub(root: &InputRoot, d: &Directory, name: &str) -> Directory {
        let n = d.directories.iter().find(|n| n.name == name).unwrap();
        dir_of(root, n.digest.as_ref().unwrap())
    }

    #[test]
    fn sorted_nested_executable_and_deterministic() {
        let inputs = vec![
            file("packages/app/src/z.js", false),
            file("packages/app/build.sh", true),
            file("package.json", false),
            file("packages/app/src/a.js", false),
            file("packages/lib/dist/index.js", false),
            JobInput {
                path: "packages/app/link".into(),
                abs: "/abs/packages/app/link".into(),
                kind: JobInputKind::Symlink("src/a.js".into()),
            },
        ];
        let a = input_root(&inputs, "packages/app", content_digest).unwrap();
        let mut rev = inputs.clone();
        rev.reverse();
        let b = input_root(&rev, "packages/app", content_digest).unwrap();
        assert_eq!(
            a.digest, b.digest,
            "the order of the inputs does not matter"
        );
        let root = dir_of(&a, &a.digest);
        assert_eq!(
            root.files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["package.json"]
        );
        let pk = sub(&a, &root, "packages");
        assert_eq!(
            pk.directories
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["app", "lib"]
        );
        let app = sub(&a, &pk, "app");
        assert_eq!(app.files.len(), 1);
        assert_eq!(app.files[0].name, "build.sh");
        assert!(app.files[0].is_executable);
        assert_eq!(app.symlinks[0].name, "link");
        assert_eq!(app.symlinks[0].target, "src/a.js");
        let src = sub(&a, &app, "src");
        let names: Vec<_> = src.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.js", "z.js"]);
        assert!(!src.files[0].is_executable);
        // Known content: the file node names its bytes' SHA-256.
        assert_eq!(
            src.files[0].digest.as_ref().unwrap(),
            &vx_reapi::digest_of(b"/abs/packages/app/src/a.js")
        );
        assert_eq!(
            a.blobs[&{
                let d = src.files[0].digest.as_ref().unwrap();
                (d.hash.clone(), d.size_bytes)
            }]
                .1,
            Source::File("/abs/packages/app/src/a.js".into())
        );
        // Any change of content, mode or name changes the root.
        let mut exe = inputs.clone();
        exe[0] = file("packages/app/src/z.js", true);
        let c = input_root(&exe, "packages/app", content_digest).unwrap();
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn empty_dirs_omitted_but_the_working_directory() {
        let empty = input_root(&[], "", content_digest).unwrap();
        assert_eq!(
            empty.digest.hash,
            vx_reapi::digest_of_message(&Directory::default()).0.hash
        );
        // A working directory without inputs still exists, empty.
        let r = input_root(&[file("a", false)], "pkg/x", content_digest).unwrap();
        let root = dir_of(&r, &r.digest);
        let x = sub(&r, &sub(&r, &root, "pkg"), "x");
        assert_eq!(x, Directory::default());
        // Nothing else appears: only directories on the way to a file.
        assert_eq!(root.directories.len(), 1);
        assert_eq!(root.files.len(), 1);
        // Exactly the Directory messages and the file are blobs.
        assert_eq!(r.blobs.len(), 4);
    }

    #[test]
    fn bad_paths_refused() {
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/"] {
            assert!(
                input_root(&[file(bad, false)], "", content_digest).is_err(),
                "{bad:?}"
            );
        }
        assert!(input_root(&[], "../x", content_digest).is_err());
        // A name both a file and a directory.
        let clash = [file("a", false), file("a/b", false)];
        assert!(input_root(&clash, "", content_digest).is_err());
        let clash = [file("a/b", false), file("a", false)];
        assert!(input_root(&clash, "", content_digest).is_err());
        // A file that cannot be read.
        let r = input_root(&[file("a", false)], "", |_| Err("gone".to_string()));
        assert_eq!(r.unwrap_err(), "gone");
    }

    #[test]
    fn output_trees_flatten() {
        let leaf = Directory {
            files: vec![FileNode {
                name: "b.js".into(),
                digest: Some(vx_reapi::digest_of(b"b")),
                is_executable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (leaf_d, _) = vx_reapi::digest_of_message(&leaf);
        let root = Directory {
            files: vec![FileNode {
                name: "a.js".into(),
                digest: Some(vx_reapi::digest_of(b"a")),
                ..Default::default()
            }],
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: Some(leaf_d),
            }],
            symlinks: vec![SymlinkNode {
                name: "l".into(),
                target: "a.js".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let tree = Tree {
            root: Some(root.clone()),
            children: vec![leaf.clone()],
        };
        let mut got = flatten("dist", &tree, 100).unwrap();
        got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        let paths: Vec<String> = got
            .iter()
            .map(|e| match e {
                Entry::File { path, .. } | Entry::Link { path, .. } => path.clone(),
            })
            .collect();
        assert_eq!(paths, ["dist/a.js", "dist/sub/b.js", "dist/l"]);
        let top = flatten("", &tree, 100).unwrap();
        assert!(top.iter().any(
            |e| matches!(e, Entry::File { path, executable: true, .. } if path == "sub/b.js")
        ));
        // A missing child, a bad name, too many entries: refused.
        let lacking = Tree {
            root: Some(root.clone()),
            children: vec![],
        };
        assert!(flatten("dist", &lacking, 100).is_err());
        let mut bad = root.clone();
        bad.files[0].name = "../x".into();
        let bad = Tree {
            root: Some(bad),
            children: vec![leaf],
        };
        assert!(flatten("dist", &bad, 100).is_err());
        assert!(flatten("dist", &tree, 1).is_err());
    }
}
