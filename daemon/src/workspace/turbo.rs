//! Turborepo compatibility: root `turbo.json` (JSONC), per-package
//! `turbo.json` with `"extends": ["//"]`, commands from `package.json`
//! scripts.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::check::{self, ProjectRef};
use super::guard::{self, Overlap};
use super::text::{Src, json_error, strip_jsonc};
use super::{ConfigError, GlobalConfig, TaskDef};
use crate::globs::Patterns;

const EXTENDS: &str = "$TURBO_EXTENDS$";
const DEFAULT: &str = "$TURBO_DEFAULT$";
const ROOT: &str = "$TURBO_ROOT$/";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct RawRoot {
    #[serde(rename = "$schema")]
    schema: Option<Value>,
    tasks: Option<BTreeMap<String, RawTask>>,
    pipeline: Option<BTreeMap<String, RawTask>>,
    global_dependencies: Option<Vec<String>>,
    global_env: Option<Vec<String>>,
    global_pass_through_env: Option<Vec<String>>,
    global_dot_env: Option<Value>,
    ui: Option<Value>,
    dangerously_disable_package_manager_check: Option<Value>,
    cache_dir: Option<Value>,
    daemon: Option<Value>,
    env_mode: Option<Value>,
    remote_cache: Option<Value>,
    concurrency: Option<Value>,
    no_update_notifier: Option<Value>,
    extends: Option<Value>,
    tags: Option<Value>,
    boundaries: Option<Value>,
    future_flags: Option<Value>,
    experimental_spaces: Option<Value>,
    #[serde(rename = "experimentalUI")]
    experimental_ui: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct RawPackage {
    #[serde(rename = "$schema")]
    schema: Option<Value>,
    extends: Option<Vec<String>>,
    tasks: Option<BTreeMap<String, RawTask>>,
    pipeline: Option<BTreeMap<String, RawTask>>,
    tags: Option<Vec<String>>,
    boundaries: Option<Value>,
}

/// One turbo task entry, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // accepted, not modelled: outputLogs, interruptible, with, ...
pub(crate) struct RawTask {
    depends_on: Option<Vec<String>>,
    inputs: Option<Vec<String>>,
    outputs: Option<Vec<String>>,
    env: Option<Vec<String>>,
    pass_through_env: Option<Vec<String>>,
    cache: Option<bool>,
    persistent: Option<bool>,
    interactive: Option<bool>,
    description: Option<String>,
    output_logs: Option<Value>,
    output_mode: Option<Value>,
    interruptible: Option<Value>,
    with: Option<Value>,
    dot_env: Option<Value>,
}

/// The root `turbo.json`.
#[derive(Debug, Clone)]
pub(crate) struct TurboRoot {
    /// Keys as written: `build`, `web#build`, `//#format`.
    pub tasks: BTreeMap<String, RawTask>,
    pub global: GlobalConfig,
    pub concurrency: Option<usize>,
    /// `envMode`.
    pub env_mode: Option<vx_proto::EnvMode>,
    /// `web#...` keys and `web#task` deps, checked once projects are known.
    pub refs: Vec<ProjectRef>,
    /// Turborepo 1 keys turbo 2 rejects, accepted here with a warning.
    pub warnings: Vec<String>,
}

/// A package's `turbo.json`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TurboPackage {
    pub tasks: BTreeMap<String, RawTask>,
    pub tags: Vec<String>,
    pub refs: Vec<ProjectRef>,
    /// Turborepo 1 keys turbo 2 rejects, accepted here with a warning.
    pub warnings: Vec<String>,
}

/// A task log mode as turbo.json writes it (`outputLogs`, turbo 1's
/// `outputMode`).
fn log_mode(v: &Value) -> Option<vx_proto::OutputLogs> {
    use vx_proto::OutputLogs as L;
    Some(match v.as_str()? {
        "full" => L::Full,
        "hash-only" => L::HashOnly,
        "new-only" => L::NewOnly,
        "errors-only" => L::ErrorsOnly,
        "none" => L::None,
        _ => return None,
    })
}

/// The warnings for Turborepo 1 keys of one task entry.
fn turbo1_task_keys(src: &Src, key: &str, t: &RawTask, out: &mut Vec<String>) {
    if t.output_mode.is_some() {
        out.push(format!(
            "{}: task `{key}`: `outputMode` is the Turborepo 1 name of `outputLogs` (turbo 2 rejects it); rename it",
            src.file
        ));
    }
    if t.dot_env.is_some() {
        out.push(format!(
            "{}: task `{key}`: `dotEnv` was removed in Turborepo 2 (and is ignored here); list the .env files in `inputs`",
            src.file
        ));
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(src: &Src) -> Result<T, ConfigError> {
    let text = strip_jsonc(&src.text);
    serde_json::from_str(&text).map_err(|e| json_error(src, &e))
}

fn tasks_of(
    src: &Src,
    tasks: Option<BTreeMap<String, RawTask>>,
    pipeline: Option<BTreeMap<String, RawTask>>,
) -> Result<BTreeMap<String, RawTask>, ConfigError> {
    match (tasks, pipeline) {
        (Some(_), Some(_)) => Err(src
            .err_near(
                "pipeline",
                "pipeline",
                "both `tasks` and `pipeline` are set",
            )
            .with_hint("`pipeline` is the Turborepo 1.x name of `tasks`; keep only `tasks`")),
        (t, p) => Ok(t.or(p).unwrap_or_default()),
    }
}

/// Parses the root `turbo.json`.
pub(crate) fn parse_root(src: &Src) -> Result<TurboRoot, ConfigError> {
    let raw: RawRoot = parse_json(src)?;
    let tasks = tasks_of(src, raw.tasks, raw.pipeline)?;
    let mut refs = Vec::new();
    for (key, t) in &tasks {
        let task = match key.split_once('#') {
            Some((proj, task)) => {
                if proj != "//" {
                    check::project_name(proj).map_err(|e| src.err_near(key, key, e))?;
                    refs.push(ProjectRef {
                        file: src.file.clone(),
                        pos: super::text::find_quoted(&src.text, key),
                        name: proj.to_string(),
                        context: format!("task `{key}`"),
                    });
                }
                task
            }
            None => key.as_str(),
        };
        check::task_name(task).map_err(|e| src.err_near(key, key, e))?;
        check_task(src, key, t, &mut refs)?;
    }
    let gi = raw.global_dependencies.unwrap_or_default();
    check_globs(src, &gi, "`globalDependencies`")?;
    let ge = raw.global_env.unwrap_or_default();
    let gp = raw.global_pass_through_env.unwrap_or_default();
    for n in ge.iter().chain(&gp) {
        check::env_name(n, true).map_err(|e| src.err_near(n, n, e))?;
    }
    let concurrency = match raw.concurrency {
        Some(Value::Number(n)) => n.as_u64().filter(|n| *n > 0).map(|n| n as usize),
        Some(Value::String(s)) => concurrency_of(&s),
        _ => None,
    };
    let env_mode = match &raw.env_mode {
        None => None,
        Some(Value::String(m)) if m == "strict" => Some(vx_proto::EnvMode::Strict),
        Some(Value::String(m)) if m == "loose" => Some(vx_proto::EnvMode::Loose),
        Some(v) => {
            return Err(src
                .err_near(
                    "envMode",
                    "envMode",
                    format!("`envMode`: {v} is not an env mode"),
                )
                .with_hint("\"strict\" (the default) or \"loose\""));
        }
    };
    let mut warnings = Vec::new();
    if raw.global_dot_env.is_some() {
        warnings.push(format!(
            "{}: `globalDotEnv` was removed in Turborepo 2 (and is ignored here); list the .env files in `globalDependencies`",
            src.file
        ));
    }
    if raw.experimental_ui.is_some() {
        warnings.push(format!(
            "{}: `experimentalUI` is a Turborepo 1 key (turbo 2 rejects it; its `ui` replaces it); vx ignores it",
            src.file
        ));
    }
    for (key, t) in &tasks {
        turbo1_task_keys(src, key, t, &mut warnings);
    }
    Ok(TurboRoot {
        tasks,
        global: GlobalConfig {
            inputs: gi,
            env: ge,
            pass_env: gp,
            internal: Vec::new(),
        },
        concurrency,
        env_mode,
        refs,
        warnings,
    })
}

/// A concurrency as turbo writes it: a count, or a percentage of the
/// machine's CPUs (`"50%"`, at least 1).
pub(crate) fn concurrency_of(s: &str) -> Option<usize> {
    let s = s.trim();
    match s.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.trim().parse().ok().filter(|p: &f64| *p > 0.0)?;
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            Some(((cpus as f64 * p / 100.0).floor() as usize).max(1))
        }
        None => s.parse::<usize>().ok().filter(|n| *n > 0),
    }
}

/// Parses a package's `turbo.json` (must `"extends": ["//"]`).
pub(crate) fn parse_package(src: &Src) -> Result<TurboPackage, ConfigError> {
    let raw: RawPackage = parse_json(src)?;
    match raw.extends.as_deref() {
        Some([one]) if one == "//" => {}
        Some(other) => {
            let shown = other
                .iter()
                .find(|e| *e != "//")
                .cloned()
                .unwrap_or_default();
            return Err(src
                .err_near(
                    &shown,
                    "extends",
                    format!("unsupported `extends` value {other:?}"),
                )
                .with_hint("a package turbo.json must have `\"extends\": [\"//\"]`"));
        }
        None => {
            return Err(src
                .err("a package turbo.json must extend the root config")
                .with_hint("add `\"extends\": [\"//\"]`"));
        }
    }
    let tasks = tasks_of(src, raw.tasks, raw.pipeline)?;
    let mut refs = Vec::new();
    for (key, t) in &tasks {
        if key.contains('#') {
            return Err(src
                .err_near(
                    key,
                    key,
                    format!("`{key}`: a package turbo.json names tasks without `project#`"),
                )
                .with_hint(format!(
                    "write `\"{}\"`",
                    key.split_once('#').map_or(key.as_str(), |(_, t)| t)
                )));
        }
        check::task_name(key).map_err(|e| src.err_near(key, key, e))?;
        check_task(src, key, t, &mut refs)?;
    }
    let mut tags = Vec::new();
    for t in raw.tags.unwrap_or_default() {
        check::tag(&t).map_err(|e| src.err_near(&t, "tags", e))?;
        tags.push(t);
    }
    tags.sort();
    tags.dedup();
    let mut warnings = Vec::new();
    for (key, t) in &tasks {
        turbo1_task_keys(src, key, t, &mut warnings);
    }
    Ok(TurboPackage {
        tasks,
        tags,
        refs,
        warnings,
    })
}

fn check_globs(src: &Src, list: &[String], what: &str) -> Result<(), ConfigError> {
    for g in list {
        if let Err(e) = Patterns::new(&[g.as_str()]) {
            return Err(src.err_near(g, g, format!("invalid glob `{g}` in {what}: {}", e.reason)));
        }
    }
    Ok(())
}

fn check_task(
    src: &Src,
    key: &str,
    t: &RawTask,
    refs: &mut Vec<ProjectRef>,
) -> Result<(), ConfigError> {
    let what = |f: &str| format!("`{f}` of task `{key}`");
    for (field, v) in [
        ("outputLogs", &t.output_logs),
        ("outputMode", &t.output_mode),
    ] {
        if let Some(v) = v
            && log_mode(v).is_none()
        {
            let shown = v.to_string();
            return Err(src
                .err_near(
                    field,
                    field,
                    format!("{}: {shown} is not a log mode", what(field)),
                )
                .with_hint(
                    "one of \"full\", \"hash-only\", \"new-only\", \"errors-only\", \"none\"",
                ));
        }
    }
    for d in t.depends_on.iter().flatten() {
        if d == EXTENDS {
            continue;
        }
        if let Some(var) = d.strip_prefix('$') {
            return Err(src
                .err_near(
                    d,
                    d,
                    format!(
                        "`{d}` in {}: env dependencies in `dependsOn` are not supported",
                        what("dependsOn")
                    ),
                )
                .with_hint(format!("list `{var}` in the task's `env` instead")));
        }
        let form = check::dep_form(d)
            .map_err(|e| src.err_near(d, d, format!("{e} (in {})", what("dependsOn"))))?;
        if let check::DepForm::Explicit { project, .. } = form
            && project != "//"
        {
            refs.push(ProjectRef {
                file: src.file.clone(),
                pos: super::text::find_quoted(&src.text, d),
                name: project.to_string(),
                context: format!("dependency `{d}` of task `{key}`"),
            });
        }
    }
    for i in t.inputs.iter().flatten() {
        if i == EXTENDS || i == DEFAULT {
            continue;
        }
        let neg = i.starts_with('!');
        let body = i.strip_prefix('!').unwrap_or(i);
        let glob = match body.strip_prefix(ROOT) {
            Some(rest) => format!("{}{rest}", if neg { "!" } else { "" }),
            None => i.clone(),
        };
        if glob.contains("$TURBO_") {
            return Err(src.err_near(i, i, format!("unsupported `{i}` in {}", what("inputs"))));
        }
        if let Err(e) = Patterns::new(&[glob.as_str()]) {
            return Err(src.err_near(
                i,
                i,
                format!("invalid glob `{i}` in {}: {}", what("inputs"), e.reason),
            ));
        }
    }
    for o in t.outputs.iter().flatten() {
        if o == EXTENDS {
            continue;
        }
        if let Err(e) = Patterns::new(&[o.as_str()]) {
            return Err(src.err_near(
                o,
                o,
                format!("invalid glob `{o}` in {}: {}", what("outputs"), e.reason),
            ));
        }
    }
    for n in t
        .env
        .iter()
        .flatten()
        .chain(t.pass_through_env.iter().flatten())
    {
        if n == EXTENDS {
            continue;
        }
        check::env_name(n, true).map_err(|e| src.err_near(n, n, e))?;
    }
    // Outputs are deleted before a task runs: they may not select its
    // sources or the package's config (checked again once merged).
    let def = t.to_def(Some(""));
    if let Err(o) = guard::check_outputs(&def.inputs, t.inputs.is_some(), &def.outputs) {
        return Err(src
            .err_near(&o.output, "outputs", o.message(&what("outputs")))
            .with_hint(o.hint()));
    }
    Ok(())
}

fn merge_list(base: &Option<Vec<String>>, over: &Option<Vec<String>>) -> Option<Vec<String>> {
    match over {
        None => base.clone(),
        Some(o) if o.iter().any(|x| x == EXTENDS) => {
            let mut v = base.clone().unwrap_or_default();
            v.extend(o.iter().filter(|x| *x != EXTENDS).cloned());
            Some(v)
        }
        Some(o) => Some(o.clone()),
    }
}

impl RawTask {
    /// `over`'s fields replace `self`'s (field by field).
    fn merged(&self, over: &RawTask) -> RawTask {
        RawTask {
            depends_on: merge_list(&self.depends_on, &over.depends_on),
            inputs: merge_list(&self.inputs, &over.inputs),
            outputs: merge_list(&self.outputs, &over.outputs),
            env: merge_list(&self.env, &over.env),
            pass_through_env: merge_list(&self.pass_through_env, &over.pass_through_env),
            cache: over.cache.or(self.cache),
            persistent: over.persistent.or(self.persistent),
            interactive: over.interactive.or(self.interactive),
            description: over
                .description
                .clone()
                .or_else(|| self.description.clone()),
            output_logs: over
                .output_logs
                .clone()
                .or_else(|| self.output_logs.clone()),
            output_mode: over
                .output_mode
                .clone()
                .or_else(|| self.output_mode.clone()),
            interruptible: None,
            with: None,
            dot_env: None,
        }
    }

    /// The task definition; `script: None` makes a no-op node (a package
    /// without the script: turbo's transit node), which is still keyed by
    /// the package's inputs and its upstream keys, and executes nothing.
    fn to_def(&self, script: Option<&str>) -> TaskDef {
        let strip = |v: &Option<Vec<String>>| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for x in v.iter().flatten() {
                if x != EXTENDS && !out.contains(x) {
                    out.push(x.clone());
                }
            }
            out
        };
        let mut def = TaskDef {
            command: script.map(str::to_string),
            npm_script: script.is_some(),
            description: self.description.clone(),
            depends_on: strip(&self.depends_on),
            outputs: strip(&self.outputs),
            env: strip(&self.env),
            pass_env: strip(&self.pass_through_env),
            persistent: self.persistent.unwrap_or(false),
            interactive: self.interactive.unwrap_or(false),
            output_logs: self
                .output_logs
                .as_ref()
                .or(self.output_mode.as_ref())
                .and_then(log_mode),
            ..TaskDef::default()
        };
        if self.inputs.is_some() {
            def.inputs.clear();
            for i in strip(&self.inputs) {
                if i == DEFAULT {
                    if !def.inputs.iter().any(|x| x == "**") {
                        def.inputs.insert(0, "**".to_string());
                    }
                    continue;
                }
                let neg = i.starts_with('!');
                let body = i.strip_prefix('!').unwrap_or(&i);
                match body.strip_prefix(ROOT) {
                    Some(rest) => def
                        .root_inputs
                        .push(format!("{}{rest}", if neg { "!" } else { "" })),
                    None => def.inputs.push(i.clone()),
                }
            }
        }
        if script.is_none() {
            // Nothing runs: nothing to keep alive, nothing to give a terminal.
            def.persistent = false;
            def.interactive = false;
        }
        def.cache = self.cache.unwrap_or(true) && !def.persistent && !def.interactive;
        def
    }
}

/// The tasks of package `name` (its scripts, the root config, and its own
/// turbo.json). Every task the configs name is defined, as in turbo: one
/// without a script in this package is a no-op node (`command: None`) that
/// still takes part in keys, so a transit node like
/// `"topo": {"dependsOn": ["^topo"]}` carries its package's sources to the
/// tasks that depend on it. Err: a task whose merged outputs overlap its
/// inputs or the package's config (see `guard`).
pub(crate) fn package_tasks(
    root: &TurboRoot,
    name: &str,
    own: Option<&TurboPackage>,
    scripts: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, TaskDef>, (String, Overlap)> {
    let prefix = format!("{name}#");
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for k in root.tasks.keys() {
        if !k.contains('#') {
            names.insert(k);
        } else if let Some(t) = k.strip_prefix(&prefix) {
            names.insert(t);
        }
    }
    if let Some(own) = own {
        names.extend(own.tasks.keys().map(String::as_str));
    }
    let mut out = BTreeMap::new();
    for t in names {
        let script = scripts.get(t).map(String::as_str);
        // A root `pkg#task` entry replaces the generic `task` for that
        // package (turbo 2.x resolves it so: nothing is inherited).
        let mut def = match root.tasks.get(&format!("{prefix}{t}")) {
            Some(o) => o.clone(),
            None => root.tasks.get(t).cloned().unwrap_or_default(),
        };
        if let Some(o) = own.and_then(|p| p.tasks.get(t)) {
            def = def.merged(o);
        }
        let merged = def.to_def(script);
        if merged.command.is_some() {
            guard::check_outputs(&merged.inputs, def.inputs.is_some(), &merged.outputs)
                .map_err(|o| (t.to_string(), o))?;
        }
        out.insert(t.to_string(), merged);
    }
    Ok(out)
}

/// Whether the root config defines root (`//#task`) tasks.
pub(crate) fn has_root_tasks(root: &TurboRoot) -> bool {
    root.tasks.keys().any(|k| k.starts_with("//#"))
}

/// Root-project tasks (`//#task`), commands from the root package.json (a
/// task without a script is a no-op node, as in packages).
pub(crate) fn root_tasks(
    root: &TurboRoot,
    scripts: &BTreeMap<String, String>,
) -> BTreeMap<String, TaskDef> {
    let mut out = BTreeMap::new();
    for (k, t) in &root.tasks {
        if let Some(name) = k.strip_prefix("//#") {
            out.insert(
                name.to_string(),
                t.to_def(scripts.get(name).map(String::as_str)),
            );
        }
    }
    out
}
