//! What is generated from the one clap definition of the command line
//! (`Cli` in main.rs): the examples every verb's `--help` shows, the shell
//! completion scripts (`vx completions SHELL`), the man pages (`vx __man DIR`)
//! and the generated part of docs/cli.md (`vx __cli-doc`).
//!
//! It owns the example table and the renderers; it never parses arguments
//! itself beyond [`parse`] (which is clap's), never talks to an engine and
//! never describes an option twice: help, completions, man pages and
//! docs/cli.md all come from `Cli::command()`.

use crate::Cli;
use anyhow::{Context, Result};
use clap::{Command, CommandFactory, FromArgMatches};
use std::fmt::Write as _;
use std::path::Path;

/// Examples per command path (`""` is `vx` itself, `"cache prune"` is
/// `vx cache prune`): each line is `command` then `#` and what it does. Every
/// visible command must have a row here or its own `after_help` with an
/// `Examples:` block in its derive attributes (a unit test checks it), and a
/// row must name an existing command.
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "",
        &[
            ("vx run build", "build every project that declares `build`"),
            (
                "vx run test --filter web...",
                "test web and its dependencies",
            ),
            ("vx history", "the recent runs"),
        ],
    ),
    (
        "run",
        &[
            ("vx run build", "build every project that declares `build`"),
            (
                "vx run web#build",
                "one project's task (and its dependencies)",
            ),
            (
                "vx run test --filter './apps/*'",
                "the projects under apps/",
            ),
            (
                "vx run test --affected=main",
                "only what changed since main",
            ),
            ("vx run build --dry", "the plan with predicted cache hits"),
            (
                "vx run build --distribute",
                "run on the attached workers too (`vx worker`)",
            ),
            (
                "vx run test -- --verbose",
                "forward arguments to the requested tasks",
            ),
        ],
    ),
    (
        "ls",
        &[
            ("vx ls", "every project and its tasks"),
            ("vx ls --filter web --json", "one project's tasks, as JSON"),
        ],
    ),
    (
        "schema",
        &[(
            "vx schema > vx.schema.json",
            "the JSON Schema of vx.toml, for an editor",
        )],
    ),
    (
        "init",
        &[
            (
                "vx init",
                "write vx.toml from turbo.json, nx.json or package.json scripts",
            ),
            (
                "vx init --from scripts --dry-run",
                "show what it would write, from the scripts only",
            ),
        ],
    ),
    (
        "watch",
        &[
            (
                "vx watch build",
                "rebuild what each change affects, until Ctrl-C",
            ),
            (
                "vx watch test --filter web --debounce 300",
                "one project, slower debounce",
            ),
        ],
    ),
    (
        "cache",
        &[
            ("vx cache stats", "entries and size of the local cache"),
            ("vx cache prune --max-size 2GiB", "keep at most 2 GiB"),
        ],
    ),
    (
        "cache stats",
        &[("vx cache stats --json", "the figures as JSON")],
    ),
    (
        "cache clean",
        &[("vx cache clean", "delete the local cache")],
    ),
    (
        "cache serve",
        &[(
            "vx cache serve --listen 0.0.0.0:4280 --store /srv/vx-cache --token-rw \"$CACHE_TOKEN\"",
            "serve a remote cache from a directory",
        )],
    ),
    (
        "cache prune",
        &[
            (
                "vx cache prune --max-age 30d",
                "drop entries unused for 30 days",
            ),
            (
                "vx cache prune --max-size 500MB --dry-run",
                "show what would go",
            ),
        ],
    ),
    (
        "daemon",
        &[
            ("vx daemon status", "is a daemon serving this workspace?"),
            ("vx daemon restart", "stop it and start a fresh one"),
        ],
    ),
    (
        "ui",
        &[
            ("vx ui", "open the insights dashboard (prints its URL)"),
            ("vx ui --no-open", "only print the dashboard's URL"),
        ],
    ),
    (
        "daemon status",
        &[("vx daemon status --json", "the daemon's state as JSON")],
    ),
    (
        "daemon start",
        &[("vx daemon start", "start the workspace's daemon now")],
    ),
    (
        "daemon stop",
        &[
            ("vx daemon stop", "ask the daemon to exit"),
            (
                "vx daemon stop --force",
                "SIGTERM, then SIGKILL, without asking",
            ),
        ],
    ),
    (
        "daemon restart",
        &[("vx daemon restart", "stop the daemon and start a new one")],
    ),
    (
        "daemon logs",
        &[(
            "vx daemon logs -n 50",
            "the last 50 lines of .vx/daemon.log",
        )],
    ),
    (
        "history",
        &[
            ("vx history", "the 20 most recent runs"),
            (
                "vx history web#build -n 5",
                "one task's last 5 rows and statistics",
            ),
        ],
    ),
    (
        "last",
        &[
            ("vx last", "the summary of the latest run"),
            ("vx last --failed", "the latest failed run"),
        ],
    ),
    (
        "why",
        &[
            ("vx why web#build", "why web#build's key changed"),
            ("vx why build --run 3f2a", "the key it had in run 3f2a…"),
        ],
    ),
    (
        "info",
        &[(
            "vx info",
            "workspace, cache, history and daemon at a glance",
        )],
    ),
    (
        "events",
        &[
            ("vx events", "follow every run of the daemon"),
            (
                "vx events --task web#build --json",
                "one task's events as NDJSON",
            ),
        ],
    ),
    ("ps", &[("vx ps", "the tasks of the runs in progress")]),
    (
        "worker",
        &[
            (
                "vx worker --connect http://10.0.0.5:7000 --capacity 4",
                "run the coordinator's tasks in this checkout (token in VX_WORKER_TOKEN)",
            ),
            (
                "vx worker --connect http://10.0.0.5:7000 --label gpu",
                "also take the tasks that require the label gpu",
            ),
        ],
    ),
    (
        "mcp",
        &[(
            "vx mcp",
            "serve MCP on stdio; agents launch it (`claude mcp add vx -- vx mcp`, docs/mcp.md)",
        )],
    ),
    (
        "plugins",
        &[
            (
                "vx plugins",
                "the daemon's plugins, their state and last error",
            ),
            ("vx plugins --json", "as JSON"),
        ],
    ),
    (
        "graph",
        &[
            ("vx graph build", "what `vx run build` would involve"),
            ("vx graph test --filter web --json", "as JSON"),
        ],
    ),
    (
        "explain",
        &[
            (
                "vx explain web#build",
                "its key part by part, and hit or miss",
            ),
            (
                "vx explain test -- --ci",
                "with the arguments a run would forward",
            ),
        ],
    ),
    (
        "log",
        &[
            ("vx log web#build", "the stored log of its current key"),
            ("vx log build --run 3f2a", "the log from run 3f2a…"),
        ],
    ),
    (
        "completions",
        &[
            (
                "vx completions bash > ~/.local/share/bash-completion/completions/vx",
                "bash",
            ),
            (
                "vx completions zsh > ~/.zfunc/_vx",
                "zsh (with ~/.zfunc on $fpath)",
            ),
            (
                "vx completions fish > ~/.config/fish/completions/vx.fish",
                "fish",
            ),
        ],
    ),
];

/// The `Examples:` block for one command path, if it has a row.
fn examples_for(path: &str) -> Option<String> {
    let (_, rows) = EXAMPLES.iter().find(|(p, _)| *p == path)?;
    let width = rows.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut s = String::from("Examples:\n");
    for (cmd, what) in rows.iter() {
        // `what` stays on the command's line while it fits in 100 columns.
        if width + what.len() + 7 <= 100 {
            let _ = writeln!(s, "  {cmd:width$}   # {what}");
        } else {
            let _ = writeln!(s, "  # {what}\n  {cmd}");
        }
    }
    Some(s.trim_end().to_string())
}

/// Attaches the examples to `cmd` and, recursively, its subcommands.
fn with_examples(mut cmd: Command, path: &str) -> Command {
    if let Some(ex) = examples_for(path) {
        cmd = cmd.after_help(ex);
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |s| with_examples(s, &sub_path));
    }
    cmd
}

/// The full command line definition: `Cli` with its examples.
pub fn command() -> Command {
    with_examples(Cli::command(), "")
}

/// Parses the process's arguments (exits with clap's message on an error,
/// or after printing `--help` / `--version`).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = command();
    clap_complete::generate(shell, &mut cmd, "vx", &mut std::io::stdout());
}

/// Writes `vx.1` and one page per visible subcommand (`vx-run.1`,
/// `vx-cache-prune.1`, …) into `dir` (created if missing); returns the
/// file names written. Each page is clap_mangen's (name, synopsis,
/// description, options, subcommands, version) with the examples as an
/// EXAMPLES section.
pub fn man_pages(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Without the examples: clap_mangen would fill them into an EXTRA section.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut names = Vec::new();
    for (path, cmd) in visible(&root) {
        let man = clap_mangen::Man::new(cmd.clone())
            .source(concat!("vx ", env!("CARGO_PKG_VERSION")))
            .manual("vx manual");
        let name = man.get_filename();
        let mut page: Vec<u8> = Vec::new();
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        man.render_options_section(&mut page)?;
        if cmd
            .get_subcommands()
            .any(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            man.render_subcommands_section(&mut page)?;
        }
        if let Some((_, rows)) = EXAMPLES.iter().find(|(p, _)| *p == path.join(" ")) {
            page.extend_from_slice(b".SH EXAMPLES\n");
            for (line, what) in rows.iter() {
                page.extend_from_slice(
                    format!(
                        ".TP\n\\fB{}\\fR\n{}\n",
                        roff_escape(line),
                        roff_escape(what)
                    )
                    .as_bytes(),
                );
            }
        } else if cmd.get_after_help().is_some() {
            // Examples written in the derive attributes (`after_help`).
            man.render_extra_section(&mut page)?;
        }
        if cmd.get_version().is_some() {
            man.render_version_section(&mut page)?;
        }
        let file = dir.join(&name);
        std::fs::write(&file, &page).with_context(|| format!("cannot write {}", file.display()))?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Text for a roff line: backslashes and hyphens escaped, and a leading
/// `.` or `'` (a control character) neutralised.
fn roff_escape(s: &str) -> String {
    let mut out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// Every visible command, depth first: (path words, command).
fn visible(cmd: &Command) -> Vec<(Vec<String>, Command)> {
    fn walk(cmd: &Command, path: Vec<String>, out: &mut Vec<(Vec<String>, Command)>) {
        out.push((path.clone(), cmd.clone()));
        // clap's generated `help` subcommands are not verbs of vx.
        let verbs = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help");
        for s in verbs {
            let mut p = path.clone();
            p.push(s.get_name().to_string());
            walk(s, p, out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, Vec::new(), &mut out);
    out
}

/// The generated "Commands" reference of docs/cli.md (between its
/// `<!-- commands:start -->` / `<!-- commands:end -->` markers): every
/// visible command with its synopsis, options and examples.
pub fn markdown() -> String {
    let mut root = command().disable_help_subcommand(true);
    root.build();
    let mut out = String::new();
    for (path, mut cmd) in visible(&root) {
        let full = std::iter::once("vx".to_string())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(out, "### `{full}`\n");
        if let Some(about) = cmd.get_about() {
            let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
        }
        // Built, a subcommand's usage names it as typed: `vx cache prune ...`.
        let usage = cmd.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage:").trim().to_string();
        let _ = writeln!(out, "```\n{usage}\n```\n");
        let rows: Vec<String> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            // A global option is listed once, with `vx` itself.
            .filter(|a| path.is_empty() || !a.is_global_set())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter_map(|a| {
                let flag = if let Some(l) = a.get_long() {
                    format!("--{l}")
                } else if let Some(s) = a.get_short() {
                    format!("-{s}")
                } else {
                    // A positional: its value name.
                    let v = a.get_value_names().and_then(|v| v.first().cloned())?;
                    return Some(format!(
                        "| `{v}` | {} |",
                        a.get_help()
                            .map(|h| sentence(&h.to_string()))
                            .unwrap_or_default()
                    ));
                };
                let short = match (a.get_long(), a.get_short()) {
                    (Some(_), Some(s)) => format!(", `-{s}`"),
                    _ => String::new(),
                };
                let takes_value = a.get_action().takes_values();
                let value = if takes_value {
                    let v = a
                        .get_value_names()
                        .and_then(|v| v.first().map(|s| s.to_string()))
                        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
                    let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
                    if optional {
                        format!("[={v}]")
                    } else {
                        format!(" {v}")
                    }
                } else {
                    String::new()
                };
                let mut help = a
                    .get_help()
                    .map(|h| sentence(&h.to_string()))
                    .unwrap_or_default();
                let possible: Vec<String> = if takes_value {
                    a.get_possible_values()
                        .iter()
                        .filter(|p| !p.is_hide_set())
                        .map(|p| format!("`{}`", p.get_name()))
                        .collect()
                } else {
                    Vec::new()
                };
                if !possible.is_empty() && possible.len() <= 8 {
                    let _ = write!(help, " One of {}.", possible.join(", "));
                }
                if let Some(d) = a.get_default_values().first().filter(|_| takes_value) {
                    let _ = write!(help, " Default `{}`.", d.to_string_lossy());
                }
                Some(format!("| `{flag}{value}`{short} | {} |", help.trim()))
            })
            .collect();
        if !rows.is_empty() {
            let _ = writeln!(out, "| argument | meaning |\n|---|---|");
            for r in rows {
                let _ = writeln!(out, "{r}");
            }
            out.push('\n');
        }
        let ex =
            examples_for(&path.join(" ")).or_else(|| cmd.get_after_help().map(|h| h.to_string()));
        if let Some(ex) = ex {
            let body: Vec<&str> = ex
                .lines()
                .skip_while(|l| l.trim() != "Examples:")
                .skip(1)
                .map(|l| l.trim_start())
                .collect();
            let _ = writeln!(out, "Examples:\n\n```\n{}\n```\n", body.join("\n").trim());
        }
    }
    out.trim_end().to_string() + "\n"
}

/// [`one_line`], ending with a full stop.
fn sentence(s: &str) -> String {
    let s = one_line(s);
    if s.is_empty() || s.ends_with('.') {
        s
    } else {
        s + "."
    }
}

/// Help text on one line, `|` escaped for a markdown table.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_visible_command_has_an_example_and_every_example_a_command() {
        let mut root = command();
        root.build();
        let all = visible(&root);
        let paths: Vec<String> = all.iter().map(|(p, _)| p.join(" ")).collect();
        let missing: Vec<&String> = all
            .iter()
            .zip(&paths)
            .filter(|((_, cmd), p)| {
                examples_for(p).is_none()
                    && !cmd
                        .get_after_help()
                        .is_some_and(|h| h.to_string().contains("Examples:\n  vx "))
            })
            .map(|(_, p)| p)
            .collect();
        assert!(
            missing.is_empty(),
            "commands without an example (a row in client/src/cli.rs EXAMPLES, or \
             `after_help = \"Examples:\\n  vx ...\"` on the verb): {missing:?}"
        );
        for (p, rows) in EXAMPLES {
            assert!(
                paths.iter().any(|q| q == p),
                "EXAMPLES names no command: `{p}`"
            );
            assert!(!rows.is_empty(), "`{p}` has an empty example list");
            for (cmd, _) in rows.iter() {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                assert!(
                    words.first() == Some(&"vx") && cmd.starts_with(format!("vx {p}").trim_end()),
                    "example `{cmd}` is not a `vx {p}` command"
                );
            }
        }
    }

    #[test]
    fn every_example_parses() {
        for (_, rows) in EXAMPLES {
            for (line, _) in rows.iter() {
                // Shell words, without redirections; quotes are stripped.
                let words: Vec<String> = line
                    .split_whitespace()
                    .take_while(|w| *w != ">")
                    .map(|w| w.trim_matches('\'').to_string())
                    .collect();
                let r = command().try_get_matches_from(&words);
                assert!(r.is_ok(), "example `{line}` does not parse: {:?}", r.err());
            }
        }
    }

    #[test]
    fn help_shows_examples() {
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("run")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("Examples:\n  vx run build"), "{help}");
    }
}
