//! Shared helpers for the end-to-end tests: build the real binaries once,
//! create fixture workspaces in temp dirs, run `vx` and read its JSON events.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The directory holding the `vx` and `vxd` binaries of this build profile
/// (`target/debug` or `target/release`), built on first use.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let target = profile_dir.parent().expect("target root").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "vx", "-p", "vxd"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd
            .env("CARGO_TARGET_DIR", &target)
            // The runtime value: a target dir shared between checkouts may
            // hold a test binary compiled elsewhere.
            .current_dir(
                std::env::var_os("CARGO_MANIFEST_DIR")
                    .map(PathBuf::from)
                    .filter(|d| d.is_dir())
                    .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
            )
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building vx and vxd failed");
        profile_dir
    })
}

pub fn vx_bin() -> PathBuf {
    bin_dir().join("vx")
}

pub fn vxd_bin() -> PathBuf {
    bin_dir().join("vxd")
}

/// How a test's `vx` commands reach the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `VX_DAEMON=0`: every `vx` runs its own foreground engine.
    NoDaemon,
    /// `VX_DAEMON=1`: `vx` starts (or reuses) the workspace's daemon.
    Daemon,
}

thread_local! {
    /// The mode of the test running on this thread, set by the test fns
    /// [`vx_test!`] generates. Per thread, not per process: libtest runs
    /// tests in parallel threads, so a process-wide setting (an env var)
    /// would leak between a test's two variants.
    static MODE: std::cell::Cell<Option<Mode>> = const { std::cell::Cell::new(None) };
}

/// The mode of the current test: the one its [`vx_test!`] variant set, or,
/// for a plain `#[test]` (the files that drive a fixed mode themselves),
/// `Daemon` if `VX_E2E_DAEMON=1` and `NoDaemon` otherwise.
pub fn mode() -> Mode {
    MODE.with(|m| m.get()).unwrap_or_else(|| {
        if std::env::var("VX_E2E_DAEMON").is_ok_and(|v| v == "1") {
            Mode::Daemon
        } else {
            Mode::NoDaemon
        }
    })
}

/// Whether the current test drives the daemon (see [`mode`]).
pub fn daemon_mode() -> bool {
    mode() == Mode::Daemon
}

/// Runs `body` with [`mode`] set to `mode` on this thread (restored after,
/// even if `body` panics). Used by [`vx_test!`].
#[doc(hidden)]
pub fn in_mode(mode: Mode, body: impl FnOnce()) {
    struct Restore(Option<Mode>);
    impl Drop for Restore {
        fn drop(&mut self) {
            MODE.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(MODE.with(|m| m.replace(Some(mode))));
    body();
}

/// Declares an end-to-end test that runs in both modes, as two tests named
/// `<name>::no_daemon` and `<name>::daemon` (ripgrep's `rgtest!` idea):
///
/// ```ignore
/// // What the test checks (a plain comment: doc comments on a macro call warn).
/// vx_test!(first_run_then_hit, || {
///     let ws = vx_tests::basic();
///     assert_eq!(ws.run(&["build"]).code, 0);
/// });
/// ```
///
/// The body sees its variant's mode through [`mode`] / [`daemon_mode`], and
/// every [`Ws`] it creates keeps that mode for all its commands (also those
/// made from threads the body spawns). The body is a closure so rustfmt
/// formats it; it must not capture anything. It is expanded inside a module
/// named after the test that glob-imports the test file's items.
#[macro_export]
macro_rules! vx_test {
    ($name:ident, $body:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            const VX_TEST_BODY: fn() = $body;

            #[test]
            fn no_daemon() {
                $crate::in_mode($crate::Mode::NoDaemon, VX_TEST_BODY);
            }

            #[test]
            fn daemon() {
                $crate::in_mode($crate::Mode::Daemon, VX_TEST_BODY);
            }
        }
    };
}

/// A fixture workspace in a temp dir. Each has its own runtime dir (so its
/// daemon socket is private to the test); a daemon it started is stopped
/// when it is dropped. It runs `vx` in the [`mode`] of the test that
/// created it.
pub struct Ws {
    pub dir: tempfile::TempDir,
    pub runtime: tempfile::TempDir,
    /// How its `vx` commands run: the test's [`mode`] when it was created.
    pub mode: Mode,
}

impl Drop for Ws {
    fn drop(&mut self) {
        let sockets = std::fs::read_dir(self.runtime.path().join("vx"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "sock"))
            })
            .unwrap_or(false);
        if sockets && self.root().exists() {
            let _ = self
                .cmd(".", &["daemon", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The outcome of one `vx` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Parsed `--json` events (empty without `--json`).
    pub events: Vec<Value>,
}

impl Run {
    /// The run summary (the last `run_finished` line of `--json` output).
    pub fn summary(&self) -> &Value {
        self.events
            .iter()
            .rev()
            .find(|e| e["type"] == "run_finished")
            .map(|e| &e["summary"])
            .unwrap_or_else(|| panic!("no summary in output:\n{}\n{}", self.stdout, self.stderr))
    }

    /// `status` of a task in the summary (`success`, `cached`, `failed`, `skipped`, ...).
    pub fn status(&self, id: &str) -> String {
        self.task(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn task(&self, id: &str) -> &Value {
        self.summary()["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["id"] == id))
            .unwrap_or_else(|| panic!("task {id} not in summary: {}", self.summary()))
    }

    /// Ids of the tasks that executed (success or failed), sorted.
    pub fn executed(&self) -> Vec<String> {
        let mut v: Vec<String> = self.summary()["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["status"] == "success" || t["status"] == "failed")
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    pub fn cached(&self) -> Vec<String> {
        let mut v: Vec<String> = self.summary()["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["status"] == "cached")
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

impl Ws {
    /// Creates a workspace from `(path, content)` pairs.
    pub fn new(files: &[(&str, &str)]) -> Ws {
        let dir = tempfile::Builder::new()
            .prefix("vx-e2e-")
            .tempdir()
            .expect("tempdir");
        let runtime = tempfile::Builder::new()
            .prefix("vx-rt-")
            .tempdir()
            .expect("tempdir");
        let ws = Ws {
            dir,
            runtime,
            mode: mode(),
        };
        for (p, c) in files {
            ws.write(p, c);
        }
        ws
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write fixture file");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// A `vx` command in `subdir` with a clean, deterministic environment,
    /// in this workspace's [`mode`](Ws::mode) (`VX_DAEMON=0` or `1`).
    pub fn cmd(&self, subdir: &str, args: &[&str]) -> Command {
        let mut c = Command::new(vx_bin());
        c.args(args)
            .current_dir(self.path(subdir))
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("HOME", self.root())
            .env("NO_COLOR", "1")
            .env("VX_DAEMON_BIN", vxd_bin())
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env(
                "VX_DAEMON",
                match self.mode {
                    Mode::NoDaemon => "0",
                    Mode::Daemon => "1",
                },
            )
            .stdin(Stdio::null());
        c
    }

    fn finish(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            events,
        }
    }

    /// Runs `vx <args>` at the root.
    pub fn vx(&self, args: &[&str]) -> Run {
        self.vx_in(".", args, &[])
    }

    /// Runs `vx <args>` in `subdir` with extra env vars.
    pub fn vx_in(&self, subdir: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(subdir, args);
        for (k, v) in env {
            c.env(k, v);
        }
        Self::finish(c.output().expect("run vx"))
    }

    /// `vx <args>` at the root with the daemon enabled.
    pub fn vx_daemon(&self, args: &[&str]) -> Run {
        self.vx_in(".", args, &[("VX_DAEMON", "1")])
    }

    /// `vx daemon status --json`.
    pub fn daemon_status(&self) -> Value {
        let r = self.vx(&["daemon", "status", "--json"]);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("status: {e}: {}{}", r.stdout, r.stderr))
    }

    /// `vx run <args> --json` at the root.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut a = vec!["run", "--json"];
        a.extend_from_slice(args);
        self.vx_in(".", &a, env)
    }

    /// Runs `git` in the workspace.
    pub fn git(&self, args: &[&str]) {
        let st = Command::new("git")
            .args(args)
            .current_dir(self.root())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run git");
        assert!(st.success(), "git {args:?} failed");
    }

    /// Every file under the cache dir with its bytes (to prove nothing changed).
    pub fn cache_listing(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, u64)>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if let Ok(m) = e.metadata() {
                    out.push((
                        p.strip_prefix(base)
                            .unwrap_or(&p)
                            .to_string_lossy()
                            .into_owned(),
                        m.len(),
                    ));
                }
            }
        }
        walk(&self.path(".vx/cache"), self.root(), &mut out);
        out.sort();
        out
    }
}

/// One project `p` whose `use` reads an output (`gen/a.txt`, not ignored) of
/// its own `gen`, which also writes the ignored `dist/a.txt`.
pub fn gen_use() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"p\"]\n"),
        (".gitignore", "dist\n"),
        (
            "p/vx.toml",
            r#"[tasks.gen]
command = "mkdir -p gen dist && cp src/a.txt gen/a.txt && cp src/a.txt dist/a.txt"
inputs = ["src/**"]
outputs = ["gen/**", "dist/**"]

[tasks.use]
command = "cat gen/a.txt > used.txt"
depends_on = ["gen"]
inputs = ["gen/**"]
outputs = ["used.txt"]
"#,
        ),
        ("p/src/a.txt", "A\n"),
    ])
}

/// A two-project vx.toml workspace: `lib#build` → `app#build` → `app#test`.
pub fn basic() -> Ws {
    Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"packages/*\"]\n"),
        (
            "packages/lib/vx.toml",
            r#"[tasks.build]
command = "mkdir -p dist && cat src/*.txt > dist/out.txt && echo built lib"
inputs = ["src/**"]
outputs = ["dist/**"]
"#,
        ),
        ("packages/lib/src/a.txt", "lib-a\n"),
        ("packages/lib/src/b.txt", "lib-b\n"),
        (
            "packages/app/vx.toml",
            r#"[project]
deps = ["lib"]

[tasks.build]
command = "mkdir -p dist && cat ../lib/dist/out.txt src/*.txt > dist/app.txt && echo built app"
depends_on = ["^build"]
inputs = ["src/**"]
outputs = ["dist/**"]

[tasks.test]
command = "test -s dist/app.txt && echo tested"
depends_on = ["build"]
inputs = ["src/**"]
outputs = []
"#,
        ),
        ("packages/app/src/main.txt", "app-main\n"),
    ])
}

/// Processes whose working directory is inside `root` (`pid: cmdline`),
/// to check that nothing a test started is left behind.
pub fn processes_in(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(root)
        {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

/// xorshift64*: a deterministic, dependency-free generator for the
/// randomised tests (`differential.rs`, `trust_property.rs`), so a seed
/// replays a case exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    /// One of a few short words.
    pub fn word(&mut self) -> &'static str {
        const W: &[&str] = &[
            "alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta",
        ];
        W[self.below(W.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_mode_sets_the_threads_mode_and_restores_it() {
        let outer = mode();
        in_mode(Mode::Daemon, || {
            assert!(daemon_mode());
            in_mode(Mode::NoDaemon, || assert_eq!(mode(), Mode::NoDaemon));
            assert_eq!(mode(), Mode::Daemon);
            // Another thread has its own (default) mode.
            let theirs = std::thread::spawn(mode).join().unwrap();
            assert_eq!(theirs, outer);
        });
        assert_eq!(mode(), outer);
        let panicked = std::panic::catch_unwind(|| in_mode(Mode::Daemon, || panic!("body")));
        assert!(panicked.is_err());
        assert_eq!(mode(), outer, "restored after a panicking body");
    }

    #[test]
    fn a_workspace_takes_the_mode_of_the_test_creating_it() {
        in_mode(Mode::Daemon, || assert_eq!(Ws::new(&[]).mode, Mode::Daemon));
        in_mode(Mode::NoDaemon, || {
            assert_eq!(Ws::new(&[]).mode, Mode::NoDaemon)
        });
    }
}

/// The real peers some end-to-end tests drive (a browser, MCP clients, an
/// OTLP receiver, an S3 server, turbo), installed by `tests/peers/setup.sh`
/// (which `.ci/run` calls). A test whose peer is missing calls
/// [`peers::skip`]: it prints why and how to install it, never silently.
pub mod peers {
    use std::path::{Path, PathBuf};

    pub mod buildgrid;

    /// `tests/peers/`.
    pub fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
    }

    /// The peers venv's python, when `setup.sh` made it.
    pub fn python() -> Option<PathBuf> {
        let p = dir().join(".venv/bin/python");
        p.is_file().then_some(p)
    }

    /// `tests/peers/node_modules/.bin/<tool>`, when installed.
    pub fn npm_bin(tool: &str) -> Option<PathBuf> {
        let p = dir().join("node_modules/.bin").join(tool);
        p.exists().then_some(p)
    }

    /// `tests/peers/node_modules`, when any npm peer is installed.
    pub fn node_modules() -> Option<PathBuf> {
        let p = dir().join("node_modules");
        p.is_dir().then_some(p)
    }

    /// An executable on PATH (Debian's `chromium`, `turbo`).
    pub fn on_path(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Says loudly that a test skips because `peer` is missing.
    pub fn skip(test: &str, peer: &str) {
        eprintln!(
            "SKIP {test}: {peer} is not installed here (tests/peers/setup.sh installs it; .ci/run calls it)"
        );
    }
}

/// Resident memory of a process (`VmRSS`), in bytes; 0 when it is gone.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Runs `f` while sampling process `pid`'s RSS every `every`; returns what
/// `f` returned and the peak seen (before, during and right after).
pub fn peak_rss_while<T>(pid: u32, every: std::time::Duration, f: impl FnOnce() -> T) -> (T, u64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss(pid)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    peak.fetch_max(rss(pid), Ordering::Relaxed);
    (out, peak.load(Ordering::Relaxed))
}
