//! Config checks that keep vx from destroying a user's files: outputs that
//! would select sources or config (vx deletes a task's outputs before it
//! runs), and cache directories that `vx cache clean` must never be able to
//! remove (the workspace, an ancestor of it, `$HOME`, `/`, a project's
//! sources).
//!
//! Owns: deciding, from patterns and paths alone, whether a config is safe.
//! Never: reads file contents, deletes or creates anything (it only asks the
//! filesystem to canonicalise paths that already exist).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::globs::{Patterns, is_literal};

/// Files an output pattern may never select: a project's config and
/// manifests (and the workspace's, for the root project).
pub(crate) const PROTECTED: &[&str] = &[
    "vx.toml",
    "package.json",
    "turbo.json",
    "pnpm-workspace.yaml",
];

/// Why a task's outputs are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    /// The output pattern at fault, as written.
    pub output: String,
    pub with: OverlapWith,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OverlapWith {
    /// The pattern selects every file of the project.
    Everything,
    /// The pattern selects this config or manifest file.
    Config(&'static str),
    /// The pattern overlaps this declared input pattern.
    Input(String),
}

impl Overlap {
    /// The error message, for `what` (e.g. "`outputs` of task `fmt`").
    pub fn message(&self, what: &str) -> String {
        let o = &self.output;
        let tail = "vx deletes a task's outputs before it runs, so these files would be lost";
        match &self.with {
            OverlapWith::Everything => format!(
                "`{o}` in {what} selects every file of the project, its sources and config included: {tail}"
            ),
            OverlapWith::Config(f) => {
                format!("`{o}` in {what} selects `{f}`, the project's own config: {tail}")
            }
            OverlapWith::Input(i) => {
                format!("`{o}` in {what} overlaps the input pattern `{i}`: {tail}")
            }
        }
    }

    pub fn hint(&self) -> &'static str {
        match &self.with {
            OverlapWith::Input(_) => {
                "a tool that rewrites its sources in place (a formatter) declares no `outputs`; a generator that writes next to its sources excludes what it writes from the inputs with `!pattern`"
            }
            _ => "list only what the task writes, e.g. `dist/**`",
        }
    }
}

/// The include patterns of `list` (negations dropped), as written.
fn includes(list: &[String]) -> impl Iterator<Item = &String> {
    list.iter().filter(|p| !p.starts_with('!'))
}

fn body(p: &str) -> String {
    let mut s = p.strip_prefix('!').unwrap_or(p).trim();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.trim_end_matches('/').to_string()
}

/// The literal leading directories of a pattern (`src/**/*.ts` → `src`).
fn base(p: &str) -> String {
    let b = body(p);
    let mut out: Vec<&str> = Vec::new();
    let comps: Vec<&str> = b.split('/').collect();
    for c in &comps {
        if !is_literal(c) {
            break;
        }
        out.push(c);
    }
    out.join("/")
}

/// One concrete name a glob component matches (`*.js` → `x.js`).
fn concrete(comp: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = comp.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                if out.is_empty() || !out.ends_with('x') {
                    out.push('x');
                }
                i += 1;
            }
            '?' => {
                out.push('x');
                i += 1;
            }
            '[' => {
                let close = chars[i + 1..].iter().position(|&c| c == ']');
                match close {
                    Some(n) => {
                        let class = &chars[i + 1..i + 1 + n];
                        match class.first() {
                            Some('!' | '^') | None => out.push('_'),
                            Some(&c) => out.push(c),
                        }
                        i += n + 2;
                    }
                    None => i = chars.len(),
                }
            }
            '{' => {
                // The first alternative, up to the matching `}`.
                let mut depth = 0usize;
                let mut end = chars.len();
                for (j, &c) in chars.iter().enumerate().skip(i) {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let inner: String = chars[i + 1..end.min(chars.len())].iter().collect();
                let mut d = 0usize;
                let mut first = String::new();
                for c in inner.chars() {
                    match c {
                        '{' => d += 1,
                        '}' => d = d.saturating_sub(1),
                        ',' if d == 0 => break,
                        _ => {}
                    }
                    first.push(c);
                }
                out.push_str(&concrete(&first));
                i = end + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    if out.is_empty() { "x".to_string() } else { out }
}

/// A few concrete relative paths a pattern selects (`src/**` → `src/x`,
/// `src`; a literal `dist` → `dist`, `dist/x`).
fn probes(p: &str) -> Vec<String> {
    let b = body(p);
    let comps: Vec<&str> = b.split('/').filter(|c| !c.is_empty()).collect();
    let mut out = Vec::new();
    for keep_globstar in [false, true] {
        let parts: Vec<String> = comps
            .iter()
            .filter(|c| keep_globstar || **c != "**")
            .map(|c| {
                if *c == "**" {
                    "x".to_string()
                } else {
                    concrete(c)
                }
            })
            .collect();
        let path = if parts.is_empty() {
            "x".to_string()
        } else {
            parts.join("/")
        };
        if !out.contains(&path) {
            out.push(path.clone());
        }
        let tail = format!("{path}/x");
        if (is_literal(&b) || comps.last() == Some(&"**")) && !out.contains(&tail) {
            out.push(tail);
        }
    }
    out
}

fn one(p: &str) -> Option<Patterns> {
    Patterns::new(&[p]).ok()
}

/// Checks one task's outputs against its declared inputs and the project's
/// config files. `inputs_declared` is false when the inputs are the default
/// (`**`): outputs are then only kept off the config and off "everything".
/// Conservative: two patterns overlap when a concrete path built from one
/// is selected by the other. Input patterns without a literal base directory
/// (`**`, `**/*.ts`) are left out: outputs are subtracted from such inputs
/// (the usual `inputs = ["**"]`, `outputs = ["dist/**"]`).
pub(crate) fn check_outputs(
    inputs: &[String],
    inputs_declared: bool,
    outputs: &[String],
) -> Result<(), Overlap> {
    // A turbo repo checks the same few definitions once per package (3,000
    // times at 1,000 packages), and each check compiles glob sets: answer
    // repeats from a small memo (cleared when it grows, so a long-lived
    // daemon reloading edited configs keeps it bounded).
    type Memo = HashMap<(Vec<String>, bool, Vec<String>), Result<(), Overlap>>;
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    let key = (inputs.to_vec(), inputs_declared, outputs.to_vec());
    let memo = MEMO.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return hit;
    }
    let result = check_outputs_uncached(inputs, inputs_declared, outputs);
    if let Ok(mut m) = memo.lock() {
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(key, result.clone());
    }
    result
}

fn check_outputs_uncached(
    inputs: &[String],
    inputs_declared: bool,
    outputs: &[String],
) -> Result<(), Overlap> {
    let Ok(out) = Patterns::new(outputs) else {
        return Ok(()); // invalid globs are reported by their own check
    };
    if out.is_empty() {
        return Ok(());
    }
    let culprit = |path: &str| -> String {
        includes(outputs)
            .find(|o| one(o).is_some_and(|m| m.matches(path)))
            .cloned()
            .unwrap_or_else(|| outputs.join(", "))
    };
    if ["x", "x/y/z", "x.js", ".x"].iter().all(|p| out.matches(p)) {
        return Err(Overlap {
            output: culprit("x/y/z"),
            with: OverlapWith::Everything,
        });
    }
    for f in PROTECTED {
        if out.matches(f) {
            return Err(Overlap {
                output: culprit(f),
                with: OverlapWith::Config(f),
            });
        }
    }
    if !inputs_declared {
        return Ok(());
    }
    let Ok(inp) = Patterns::new(inputs) else {
        return Ok(());
    };
    // Inputs with a literal base, negations kept in order.
    let based: Vec<&String> = inputs
        .iter()
        .filter(|i| i.starts_with('!') || !base(i).is_empty())
        .collect();
    let Ok(based_inp) = Patterns::new(&based) else {
        return Ok(());
    };
    let input_culprit = |path: &str| -> String {
        includes(inputs)
            .filter(|i| !base(i).is_empty())
            .find(|i| one(i).is_some_and(|m| m.matches(path)))
            .cloned()
            .unwrap_or_else(|| inputs.join(", "))
    };
    for o in includes(outputs) {
        for p in probes(o) {
            if based_inp.matches(&p) && out.matches(&p) {
                return Err(Overlap {
                    output: o.clone(),
                    with: OverlapWith::Input(input_culprit(&p)),
                });
            }
        }
    }
    for i in includes(inputs).filter(|i| !base(i).is_empty()) {
        for p in probes(i) {
            if inp.matches(&p) && out.matches(&p) {
                return Err(Overlap {
                    output: culprit(&p),
                    with: OverlapWith::Input(i.clone()),
                });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// cache directory

/// `p` with `.` and `..` resolved lexically (`p` absolute).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `p` (absolute) with symlinks resolved as far as it exists.
pub(crate) fn real(p: &Path) -> PathBuf {
    let p = lexical(p);
    let mut existing = p.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return lexical(&out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return p,
        }
    }
}

/// A project directory, for the cache-dir check.
pub(crate) struct ProjectDir<'a> {
    pub name: &'a str,
    /// Root-relative, `.` for the root project.
    pub dir: &'a str,
}

/// Why a cache directory is refused (`None`: it is fine). `dir` is the
/// configured directory made absolute; `root` the canonical workspace root.
pub(crate) fn cache_dir_problem(
    root: &Path,
    dir: &Path,
    home: Option<&Path>,
    projects: &[ProjectDir<'_>],
) -> Option<String> {
    let dir = real(dir);
    let shown = dir.display();
    if dir.parent().is_none() {
        return Some(format!("{shown} is the filesystem root"));
    }
    if dir == root {
        return Some(format!("{shown} is the workspace root"));
    }
    if root.starts_with(&dir) {
        return Some(format!("{shown} contains the workspace"));
    }
    if let Some(home) = home.map(real) {
        if dir == home {
            return Some(format!("{shown} is your home directory"));
        }
        if home.starts_with(&dir) {
            return Some(format!("{shown} contains your home directory"));
        }
    }
    let rel = dir.strip_prefix(root).ok()?;
    let rel: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    // It may not hold a project...
    for p in projects.iter().filter(|p| p.dir != ".") {
        let pd: Vec<&str> = p.dir.split('/').collect();
        if pd.len() >= rel.len() && pd.iter().zip(&rel).all(|(a, b)| *a == b) {
            return Some(format!(
                "{shown} contains project `{}` (`{}`)",
                p.name, p.dir
            ));
        }
    }
    // ...nor be one of a project's sources (what the walk would hash).
    let owner = projects
        .iter()
        .filter(|p| {
            p.dir == "." || {
                let pd: Vec<&str> = p.dir.split('/').collect();
                pd.len() < rel.len() && pd.iter().zip(&rel).all(|(a, b)| *a == b)
            }
        })
        .max_by_key(|p| if p.dir == "." { 0 } else { p.dir.len() + 1 })?;
    let depth = if owner.dir == "." {
        0
    } else {
        owner.dir.split('/').count()
    };
    let skipped = rel[depth..]
        .iter()
        .any(|c| crate::hash::ALWAYS_SKIPPED.contains(&c.as_str()));
    if skipped {
        return None;
    }
    Some(format!(
        "{shown} is inside the sources of project `{}` (`{}`)",
        owner.name, owner.dir
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn output_overlap_table() {
        // (inputs, inputs declared, outputs, expected: None ok / Some(culprit, with))
        use OverlapWith::*;
        type Case<'a> = (
            &'a [&'a str],
            bool,
            &'a [&'a str],
            Option<(&'a str, OverlapWith)>,
        );
        let cases: &[Case] = &[
            (
                &["src/**"],
                true,
                &["src/**"],
                Some(("src/**", Input("src/**".into()))),
            ),
            (
                &["src/*.js"],
                true,
                &["src/*.js"],
                Some(("src/*.js", Input("src/*.js".into()))),
            ),
            (
                &["src"],
                true,
                &["src/out.js"],
                Some(("src/out.js", Input("src".into()))),
            ),
            (
                &["src/**"],
                true,
                &["src/gen/**"],
                Some(("src/gen/**", Input("src/**".into()))),
            ),
            (&["src/**", "!src/gen/**"], true, &["src/gen/**"], None),
            (&["src/**"], true, &["**"], Some(("**", Everything))),
            (&["**"], false, &["**"], Some(("**", Everything))),
            (&["**"], false, &["**/*"], Some(("**/*", Everything))),
            (&["**"], false, &["*"], Some(("*", Config("vx.toml")))),
            (
                &["**"],
                false,
                &["*.json"],
                Some(("*.json", Config("package.json"))),
            ),
            (
                &["**"],
                false,
                &["dist", "vx.toml"],
                Some(("vx.toml", Config("vx.toml"))),
            ),
            (&["**"], true, &["dist/**"], None),
            (
                &["**", "!README.md"],
                true,
                &[".next/**", "!.next/cache/**"],
                None,
            ),
            (&["**"], false, &["dist/**", "*.tsbuildinfo"], None),
            (&["src/**/*.ts"], true, &["src/**/*.js"], None),
            (&["src/**"], true, &["dist/**", "types/**"], None),
            (&["src/**", "tsconfig.json"], true, &["dist/**"], None),
            (
                &["src/**"],
                true,
                &["{src,lib}/**"],
                Some(("{src,lib}/**", Input("src/**".into()))),
            ),
            (
                &["lib/**"],
                true,
                &["{src,lib}/**"],
                Some(("{src,lib}/**", Input("lib/**".into()))),
            ),
            (&["**/*.ts"], true, &["**/*.d.ts"], None),
            (&["src/**"], true, &[], None),
        ];
        for (inputs, declared, outputs, want) in cases {
            let got = check_outputs(&s(inputs), *declared, &s(outputs));
            let want = want.clone().map(|(o, w)| Overlap {
                output: o.to_string(),
                with: w,
            });
            assert_eq!(got.err(), want, "inputs {inputs:?} outputs {outputs:?}");
        }
    }

    #[test]
    fn probes_are_concrete() {
        assert_eq!(probes("src/**"), vec!["src", "src/x", "src/x/x"]);
        assert_eq!(probes("src/*.{js,ts}"), vec!["src/x.js"]);
        assert_eq!(probes("dist"), vec!["dist", "dist/x"]);
        assert_eq!(
            probes("a/[bc]?/**/*.d.ts"),
            vec!["a/bx/x.d.ts", "a/bx/x/x.d.ts"]
        );
    }

    #[test]
    fn cache_dir_table() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap().join("ws");
        std::fs::create_dir_all(root.join("packages/a/src")).unwrap();
        let home = t.path().canonicalize().unwrap().join("home/me");
        let projects = [
            ProjectDir {
                name: "//",
                dir: ".",
            },
            ProjectDir {
                name: "a",
                dir: "packages/a",
            },
        ];
        let no_root_project = [ProjectDir {
            name: "a",
            dir: "packages/a",
        }];
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("/", true, Some("filesystem root")),
            (".", true, Some("is the workspace root")),
            ("./", true, Some("is the workspace root")),
            ("packages/..", true, Some("is the workspace root")),
            ("..", true, Some("contains the workspace")),
            ("../home", true, Some("contains your home directory")),
            ("../home/me", true, Some("is your home directory")),
            ("packages", true, Some("contains project `a`")),
            ("packages", false, Some("contains project `a`")),
            ("packages/a", true, Some("contains project `a`")),
            (
                "packages/a/src",
                true,
                Some("inside the sources of project `a`"),
            ),
            ("packages/a/node_modules/.cache/vx", true, None),
            ("cache", true, Some("inside the sources of project `//`")),
            ("cache", false, None),
            (".vx/cache", true, None),
            ("node_modules/.cache/vx", true, None),
            ("../elsewhere/cache", true, None),
            ("../home/me/.cache/vx", true, None),
        ];
        for (d, with_root, want) in cases {
            let abs = root.join(d);
            let ps: &[ProjectDir] = if *with_root {
                &projects
            } else {
                &no_root_project
            };
            let got = cache_dir_problem(&root, &abs, Some(&home), ps);
            match want {
                None => assert_eq!(got, None, "{d}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{d}: {got:?} lacks {w:?}"
                ),
            }
        }
        // A symlink to the workspace is the workspace.
        std::os::unix::fs::symlink(&root, t.path().join("link")).unwrap();
        let got = cache_dir_problem(&root, &t.path().join("link"), None, &projects);
        assert!(got.is_some_and(|g| g.contains("workspace root")));
    }
}
