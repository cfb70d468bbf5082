//! `vxd` — the vx engine and the servers that expose it.
//!
//! The modules follow the pipeline; each owns one concept (see its doc
//! comment and `docs/ARCHITECTURE.md`): `workspace` → `graph` → `hash` →
//! `cache` → `exec` (+ `procstat`, `persist` for long-running tasks);
//! `model` is the loaded workspace and its files, `error` and `sink` what
//! every stage fails with and emits into; kept hot by `state` (daemon),
//! remembered by `history` (read back by `inspect`, rendered by `profile`),
//! orchestrated by `engine` (its `Engine` façade; `engine::watch` loops it;
//! `engine::replay` answers a repeat request from memory under the daemon),
//! exposed by `server`. Module edges only point down this list's layers
//! (`docs/ARCHITECTURE.md`, "Layering"): no import circles.

pub mod bus;
pub mod cache;
pub mod engine;
pub mod error;
pub mod exec;
pub mod fsx;
pub mod globs;
pub mod graph;
pub mod hash;
pub mod history;
pub mod hooks;
pub mod init;
pub mod inspect;
pub mod mem;
pub mod model;
pub mod persist;
pub mod plugins;
pub mod procstat;
pub mod profile;
pub mod query;
pub mod server;
pub mod sink;
pub mod state;
pub mod telemetry;
/// `vx watch`'s loop lives in the engine (it drives the engine's runs).
pub use engine::watch;
pub mod workspace;

#[cfg(test)]
mod knob_defaults {
    use std::time::Duration;
    use vx_proto::knobs::{self, Knob};

    /// The defaults `docs/cli.md` states (from `vx_proto::knobs`) are the
    /// ones the engine applies.
    #[test]
    fn the_tables_defaults_are_the_engines() {
        let ms = |d: Duration| d.as_millis().to_string();
        let cases: [(Knob, String); 6] = [
            (knobs::KILL_GRACE_MS, ms(crate::exec::DEFAULT_KILL_GRACE)),
            (
                knobs::READY_NOTICE_MS,
                ms(crate::persist::DEFAULT_READY_NOTICE),
            ),
            (knobs::CACHE_LOCK_TIMEOUT_MS, ms(crate::cache::OPEN_WAIT)),
            (
                knobs::HISTORY_MAX_RUNS,
                crate::history::DEFAULT_MAX_RUNS.to_string(),
            ),
            (
                knobs::HISTORY_MAX_AGE_DAYS,
                crate::history::DEFAULT_MAX_AGE_DAYS.to_string(),
            ),
            (
                knobs::DAEMON_IDLE_TIMEOUT,
                format!("{}h", crate::server::daemon::DEFAULT_IDLE.as_secs() / 3600),
            ),
        ];
        for (k, code) in cases {
            assert_eq!(k.default, code, "{}: table vs engine default", k.name);
        }
    }
}

/// The module edges form a DAG, and each module uses only the modules its
/// row allows (`docs/ARCHITECTURE.md`, "Layering"). A new edge is added to
/// the table on purpose — and the table is checked for cycles — never by
/// accident.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Module → the crate modules it may name (`crate::x`), lowest first.
    const ALLOWED: &[(&str, &[&str])] = &[
        ("fsx", &[]),
        ("globs", &[]),
        ("hooks", &[]),
        ("mem", &[]),
        ("procstat", &[]),
        ("profile", &[]),
        ("sink", &[]),
        ("telemetry", &[]),
        ("hash", &["globs"]),
        ("exec", &["procstat"]),
        ("workspace", &["globs", "hash"]),
        ("cache", &["fsx", "globs", "hash"]),
        ("history", &["cache"]),
        ("persist", &["exec", "sink"]),
        ("error", &["cache", "globs", "workspace"]),
        ("graph", &["error", "globs", "workspace"]),
        ("model", &["error", "globs", "graph", "hash", "workspace"]),
        ("state", &["cache", "error", "hash", "model", "workspace"]),
        ("init", &["error", "graph", "workspace"]),
        (
            "inspect",
            &[
                "cache",
                "error",
                "globs",
                "history",
                "model",
                "state",
                "workspace",
            ],
        ),
        (
            "engine",
            &[
                "cache",
                "error",
                "exec",
                "globs",
                "graph",
                "hash",
                "history",
                "hooks",
                "inspect",
                "mem",
                "model",
                "persist",
                "profile",
                "sink",
                "state",
                "telemetry",
                "workspace",
            ],
        ),
        ("bus", &["engine"]),
        ("plugins", &["bus", "hooks"]),
        (
            "query",
            &[
                "bus",
                "engine",
                "graph",
                "history",
                "inspect",
                "state",
                "workspace",
            ],
        ),
        (
            "server",
            &[
                "bus",
                "engine",
                "error",
                "exec",
                "history",
                "init",
                "inspect",
                "mem",
                "plugins",
                "query",
                "state",
                "workspace",
            ],
        ),
    ];

    /// The crate modules a source text names: `crate::x` and
    /// `crate::{x, y::z}` (comments included: a doc link is an edge too).
    fn named(text: &str) -> BTreeSet<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut out = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names of the group.
                let mut depth = 0;
                let mut start = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            start = false;
                            out.insert(ident(&group[j..]));
                        }
                        _ => {}
                    }
                }
            } else {
                out.insert(ident(rest));
            }
        }
        out.retain(|m| !m.is_empty());
        out
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn module_edges_follow_the_layering_and_form_a_dag() {
        let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut bad = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap();
            let top = rel.components().next().unwrap().as_os_str();
            let module = top.to_str().unwrap().trim_end_matches(".rs");
            if module == "lib" || module == "main" {
                continue;
            }
            let Some(may) = allowed.get(module) else {
                bad.push(format!("{module}: not in the layering table"));
                continue;
            };
            let text = std::fs::read_to_string(f).unwrap();
            for m in named(&text) {
                if m != module && !may.contains(&m.as_str()) {
                    bad.push(format!("{}: uses crate::{m}", rel.display()));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "edges outside the layering:\n{}",
            bad.join("\n")
        );
        // The table is a DAG: every module's uses come before it.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (m, uses) in ALLOWED {
            for u in *uses {
                assert!(seen.contains(u), "{m} uses {u}, which is not below it");
            }
            seen.insert(m);
        }
    }

    #[test]
    fn named_modules_are_read_from_paths_and_groups() {
        let cases: &[(&str, &[&str])] = &[
            ("use crate::cache::Store;", &["cache"]),
            (
                "use crate::{cache, graph::{self, X}, hash};",
                &["cache", "graph", "hash"],
            ),
            (
                "x = crate::model::cache_dir(&ws); // [`crate::sink::Events`]",
                &["model", "sink"],
            ),
            ("no edges here", &[]),
        ];
        for (text, want) in cases {
            let got: Vec<String> = named(text).into_iter().collect();
            assert_eq!(got, want.to_vec(), "{text}");
        }
    }
}
