//! `package.json` scripts → `vx.toml`: one task per common script, with
//! outputs inferred from the tool the script runs (tsc, tsup, vite, esbuild,
//! next, rollup, webpack, babel) and a TODO where they cannot be.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::emit::{TaskOut, WorkspaceOut};
use super::{FileOut, Translation, read_json, rel_join};
use crate::error::EngineError;

/// What a common script is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Produces files: outputs inferred, `^build` first.
    Build,
    /// Checks (tests, lint, type-check): cached, no outputs.
    Check,
    /// Rewrites sources in place: never cached.
    Format,
    /// Long-running: persistent.
    Serve,
}

/// The common script names and what they are.
const COMMON: &[(&str, Kind)] = &[
    ("build", Kind::Build),
    ("compile", Kind::Build),
    ("test", Kind::Check),
    ("test:unit", Kind::Check),
    ("e2e", Kind::Check),
    ("test:e2e", Kind::Check),
    ("lint", Kind::Check),
    ("typecheck", Kind::Check),
    ("type-check", Kind::Check),
    ("check", Kind::Check),
    ("format", Kind::Format),
    ("fmt", Kind::Format),
    ("dev", Kind::Serve),
    ("start", Kind::Serve),
    ("serve", Kind::Serve),
    ("preview", Kind::Serve),
    ("watch", Kind::Serve),
];

fn kind_of(name: &str) -> Option<Kind> {
    COMMON.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// Outputs inferred from a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inferred {
    pub outputs: Vec<String>,
    /// How they were found (for the task's comment).
    pub how: String,
    /// An assumption the user should check.
    pub assumed: Option<String>,
}

fn unquote(s: &str) -> &str {
    s.trim_matches(|c| c == '"' || c == '\'')
}

/// `dist/` / `./dist` → `dist`.
fn clean_dir(d: &str) -> String {
    let mut d = unquote(d).trim();
    while let Some(r) = d.strip_prefix("./") {
        d = r;
    }
    d.trim_end_matches('/').to_string()
}

/// Collapses `x/..` and `.` components (lexically).
fn normalize(p: &str) -> String {
    let p = clean_dir(p);
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    out.join("/")
}

fn dir_glob(d: &str) -> String {
    format!("{}/**", clean_dir(d))
}

/// The value of `--flag X`, `--flag=X` (any of `names`).
fn flag<'a>(args: &[&'a str], names: &[&str]) -> Option<&'a str> {
    for (i, a) in args.iter().enumerate() {
        for n in names {
            if a == n {
                return args.get(i + 1).copied();
            }
            if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                return Some(v);
            }
        }
    }
    None
}

/// `compilerOptions.outDir` / `noEmit` of a tsconfig (following one `extends`
/// to a relative file).
fn tsconfig(dir: &Path, file: &str) -> (Option<String>, bool) {
    let path = dir.join(file);
    let path = if path.is_dir() {
        path.join("tsconfig.json")
    } else {
        path
    };
    let Ok(Some(v)) = read_json(&path) else {
        return (None, false);
    };
    let opts = v.get("compilerOptions");
    let out = opts
        .and_then(|o| o.get("outDir"))
        .and_then(Value::as_str)
        .map(clean_dir);
    let no_emit = opts
        .and_then(|o| o.get("noEmit"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if out.is_none()
        && !no_emit
        && let Some(ext) = v.get("extends").and_then(Value::as_str)
        && ext.starts_with('.')
        && let Some(parent) = path.parent()
    {
        let (o, n) = tsconfig(parent, ext);
        // outDir in an extended config is relative to that config.
        let rel = Path::new(ext).parent().unwrap_or(Path::new(""));
        let o = o.map(|o| normalize(&rel.join(o).to_string_lossy()));
        return (o, n);
    }
    (out, no_emit)
}

/// Splits a shell script into simple commands (on `&&`, `||`, `;`, `|`).
fn segments(script: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for tok in script.split_whitespace() {
        if matches!(tok, "&&" | "||" | ";" | "|" | "&") {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        let (tok, ends) = match tok.strip_suffix(';') {
            Some(t) => (t, true),
            None => (tok, false),
        };
        if !tok.is_empty() {
            cur.push(tok);
        }
        if ends {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

/// The tool of a simple command and its arguments (env assignments and
/// runners such as `npx`, `pnpm exec`, `cross-env` skipped).
fn tool<'a>(seg: &[&'a str]) -> Option<(&'a str, Vec<&'a str>)> {
    let mut i = 0;
    while i < seg.len() {
        let t = seg[i];
        if t.contains('=') && !t.starts_with('-') {
            i += 1;
            continue;
        }
        match t {
            "npx" | "bunx" | "cross-env" | "dotenv" | "env" => i += 1,
            "pnpm" | "yarn" | "bun"
                if seg
                    .get(i + 1)
                    .is_some_and(|n| *n == "exec" || *n == "dlx" || *n == "x") =>
            {
                i += 2
            }
            _ => break,
        }
    }
    let first = seg.get(i)?;
    let name = first.rsplit('/').next().unwrap_or(first);
    Some((name, seg[i + 1..].to_vec()))
}

/// Infers a script's outputs; `None` when no known tool writes files.
pub(crate) fn infer_outputs(script: &str, dir: &Path) -> Option<Inferred> {
    let mut outputs: Vec<String> = Vec::new();
    let mut hows: Vec<String> = Vec::new();
    let mut assumed: Option<String> = None;
    let mut known = false;
    let add = |o: String, outputs: &mut Vec<String>| {
        if !outputs.contains(&o) {
            outputs.push(o);
        }
    };
    for seg in segments(script) {
        let Some((name, args)) = tool(&seg) else {
            continue;
        };
        match name {
            "tsc" => {
                known = true;
                if args.contains(&"--noEmit") {
                    hows.push("tsc --noEmit (writes nothing)".into());
                    continue;
                }
                if let Some(d) = flag(&args, &["--outDir"]) {
                    add(dir_glob(d), &mut outputs);
                    hows.push("tsc --outDir".into());
                    continue;
                }
                let cfg = flag(&args, &["-p", "--project"])
                    .or_else(|| {
                        let b = args.iter().position(|a| *a == "-b" || *a == "--build")?;
                        args.get(b + 1).copied().filter(|a| !a.starts_with('-'))
                    })
                    .unwrap_or("tsconfig.json");
                match tsconfig(dir, cfg) {
                    (_, true) => hows.push(format!("tsc ({cfg}: noEmit, writes nothing)")),
                    (Some(o), _) => {
                        add(format!("{o}/**"), &mut outputs);
                        hows.push(format!("tsc ({cfg} outDir)"));
                    }
                    (None, _) => {
                        add("dist/**".into(), &mut outputs);
                        hows.push("tsc".into());
                        assumed = Some(format!(
                            "{cfg} sets no outDir (tsc then writes next to the sources): dist/** is a guess"
                        ));
                    }
                }
            }
            "tsup" => {
                known = true;
                let d = flag(&args, &["-d", "--out-dir"]).unwrap_or("dist");
                add(dir_glob(d), &mut outputs);
                hows.push("tsup".into());
            }
            "vite" | "vitepress" | "astro" if args.first() == Some(&"build") => {
                known = true;
                let d = flag(&args, &["--outDir"]).unwrap_or("dist");
                add(dir_glob(d), &mut outputs);
                hows.push(format!("{name} build"));
            }
            "esbuild" => {
                if let Some(d) = flag(&args, &["--outdir"]) {
                    known = true;
                    add(dir_glob(d), &mut outputs);
                    hows.push("esbuild --outdir".into());
                } else if let Some(f) = flag(&args, &["--outfile"]) {
                    known = true;
                    add(clean_dir(f), &mut outputs);
                    hows.push("esbuild --outfile".into());
                }
            }
            "next" if args.first() == Some(&"build") => {
                known = true;
                add(".next/**".into(), &mut outputs);
                add("!.next/cache/**".into(), &mut outputs);
                hows.push("next build".into());
            }
            "rollup" => {
                known = true;
                match (
                    flag(&args, &["-d", "--dir"]),
                    flag(&args, &["-o", "--file"]),
                ) {
                    (Some(d), _) => add(dir_glob(d), &mut outputs),
                    (None, Some(f)) => add(clean_dir(f), &mut outputs),
                    (None, None) => {
                        add("dist/**".into(), &mut outputs);
                        assumed = Some(
                            "rollup's output comes from its config: dist/** is a guess".into(),
                        );
                    }
                }
                hows.push("rollup".into());
            }
            "webpack" => {
                known = true;
                let d = flag(&args, &["-o", "--output-path"]).unwrap_or("dist");
                add(dir_glob(d), &mut outputs);
                hows.push("webpack".into());
            }
            "babel" => {
                if let Some(d) = flag(&args, &["-d", "--out-dir"]) {
                    known = true;
                    add(dir_glob(d), &mut outputs);
                    hows.push("babel --out-dir".into());
                }
            }
            _ => {}
        }
    }
    known.then(|| Inferred {
        outputs,
        how: hows.join(", "),
        assumed,
    })
}

/// The `scripts` of a package.json.
pub(crate) fn scripts_of(v: &Value) -> BTreeMap<String, String> {
    v.get("scripts")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// One script as a task (`None`: not a common script).
pub(crate) fn script_task(
    name: &str,
    script: &str,
    dir: &Path,
    any_build: bool,
    from: &str,
) -> Option<TaskOut> {
    let kind = kind_of(name)?;
    let mut t = TaskOut {
        name: name.to_string(),
        comments: vec![format!("from {from} \"scripts.{name}\"")],
        command: Some(script.to_string()),
        ..TaskOut::default()
    };
    let after_build = || any_build.then(|| vec!["^build".to_string()]);
    match kind {
        Kind::Build => {
            t.depends_on = after_build();
            match infer_outputs(script, dir) {
                Some(inf) => {
                    t.comments
                        .push(format!("outputs: inferred from {}", inf.how));
                    if let Some(a) = inf.assumed {
                        t.todos.push(format!("check the outputs: {a}"));
                    }
                    t.outputs = (!inf.outputs.is_empty()).then_some(inf.outputs);
                    t.cache = Some(true);
                }
                None => {
                    t.todos.push(
                        "vx could not tell what this script writes: list it in `outputs` and set `cache = true`".into(),
                    );
                    t.cache = Some(false);
                }
            }
        }
        Kind::Check => {
            if matches!(
                name,
                "test" | "test:unit" | "typecheck" | "type-check" | "e2e" | "test:e2e"
            ) {
                t.depends_on = after_build();
            }
            if let Some(inf) = infer_outputs(script, dir)
                && !inf.outputs.is_empty()
            {
                t.comments
                    .push(format!("outputs: inferred from {}", inf.how));
                t.outputs = Some(inf.outputs);
            }
            if script.contains("--watch") {
                t.persistent = true;
            } else {
                t.cache = Some(true);
            }
        }
        Kind::Format => t.cache = Some(false),
        Kind::Serve => t.persistent = true,
    }
    Some(t)
}

pub(crate) fn translate(root: &Path) -> Result<Translation, EngineError> {
    let ws = crate::workspace::load(root)?;
    let mut t = Translation::default();
    let single = ws.projects.len() == 1 && ws.projects[0].dir == ".";
    let mut scripts: Vec<(String, String, BTreeMap<String, String>)> = Vec::new();
    for p in &ws.projects {
        if p.name == "//" {
            continue;
        }
        let file = rel_join(&p.dir, "package.json");
        let v = read_json(&root.join(&file))?.unwrap_or(Value::Null);
        scripts.push((p.dir.clone(), file, scripts_of(&v)));
    }
    let any_build = scripts.iter().any(|(_, _, s)| s.contains_key("build"));
    let mut files = Vec::new();
    for (dir, file, s) in &scripts {
        let mut tasks = Vec::new();
        let mut other = Vec::new();
        for (name, script) in s {
            match script_task(name, script, &root.join(dir), any_build, "package.json") {
                Some(task) => tasks.push(task),
                None => other.push(name.clone()),
            }
        }
        if !other.is_empty() {
            t.note(
                file,
                format!("scripts: {}", other.join(", ")),
                "not a common task name: add a [tasks.<name>] by hand if vx should run it",
            );
        }
        files.push(FileOut {
            path: rel_join(dir, "vx.toml"),
            header: vec![format!("Generated by `vx init` from {file} scripts.")],
            tasks,
            ..FileOut::default()
        });
    }
    if single {
        if let Some(f) = files.first_mut() {
            f.header.push(
                "A vx.toml without [workspace]: this directory is a single-project workspace."
                    .into(),
            );
        }
        t.files = files;
        return Ok(t);
    }
    let root_pkg = read_json(&root.join("package.json"))?.unwrap_or(Value::Null);
    let root_scripts = scripts_of(&root_pkg);
    if !root_scripts.is_empty() {
        t.note(
            "package.json",
            format!(
                "scripts: {}",
                root_scripts.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            "root scripts of a workspace usually run the packages' tasks (`vx run` does that): add a root [tasks.<name>] by hand for the ones that do real work",
        );
    }
    let mut all = vec![FileOut {
        path: "vx.toml".into(),
        header: vec!["Generated by `vx init` from package.json scripts.".into()],
        workspace: Some(WorkspaceOut {
            comments: vec![
                "members: the package manager's (pnpm-workspace.yaml or package.json \"workspaces\")".into(),
            ],
            ..WorkspaceOut::default()
        }),
        ..FileOut::default()
    }];
    all.extend(files.into_iter().filter(|f| !f.tasks.is_empty()));
    t.files = all;
    Ok(t)
}
