//! Packaging through the real binaries and scripts: the completion scripts
//! (`vx completions SHELL`: the bash one loads in a real `bash` and completes
//! `vx ru` to `run`), the man pages (`vx __man DIR`, rendered by `man -l` when
//! man is installed), `packaging/install.sh` into a prefix (twice: it is
//! idempotent), and the `.deb` of `packaging/deb.sh`, extracted with
//! `dpkg-deb -x` into a temporary root whose `vx` then runs tasks with the
//! `vxd` beside it.
//!
//! The scripts take the binaries this test build made (`--bin-dir`), so no
//! release build is needed here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vx_tests::{Mode, Ws, bin_dir, vx_bin, vx_test};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn vx_out(args: &[&str]) -> String {
    let out = Command::new(vx_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vx");
    assert!(
        out.status.success(),
        "vx {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// What the bash completion script at `script` offers for the command line
/// `words` (the last word is the one being completed), asked the way bash's
/// programmable completion asks: the function `complete -p vx` names, called
/// with COMP_WORDS / COMP_CWORD / COMP_LINE / COMP_POINT set.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let cur = words[cword];
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let body = format!(
        r#"set -u
source "$1" || {{ echo "script failed to load" >&2; exit 3; }}
spec=$(complete -p vx) || {{ echo "no completion registered for vx" >&2; exit 4; }}
fn=$(printf '%s\n' "$spec" | sed -n 's/.* -F \([^ ]*\).*/\1/p')
[ -n "$fn" ] || {{ echo "no -F function in: $spec" >&2; exit 5; }}
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
"$fn" vx '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        words = quoted.join(" "),
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &body, "bash"])
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash completion for {words:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Asserts the completion script at `script` completes like vx's should.
fn assert_bash_completes(script: &Path) {
    assert_eq!(bash_complete(script, &["vx", "ru"]), ["run"], "vx ru<TAB>");
    assert_eq!(
        bash_complete(script, &["vx", "cache", "p"]),
        ["prune"],
        "vx cache p<TAB>"
    );
    let shells = bash_complete(script, &["vx", "completions", ""]);
    for s in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(shells.iter().any(|w| w == s), "{s} not offered: {shells:?}");
    }
    let opts = bash_complete(script, &["vx", "run", "--fi"]);
    assert_eq!(opts, ["--filter"], "vx run --fi<TAB>");
}

// `vx completions bash` loads in bash and completes verbs, subcommands,
// values and options; the other shells' scripts are produced (and
// syntax-checked by their shell when it is installed).
vx_test!(completion_scripts, || {
    let dir = tempfile::tempdir().expect("tempdir");
    let bash = dir.path().join("vx.bash");
    std::fs::write(&bash, vx_out(&["completions", "bash"])).expect("write script");
    assert_bash_completes(&bash);

    for (shell, marker, check) in [
        ("zsh", "#compdef vx", Some(("zsh", "-n"))),
        ("fish", "complete -c vx", Some(("fish", "--no-execute"))),
        ("elvish", "edit:completion:arg-completer[vx]", None),
        ("powershell", "Register-ArgumentCompleter", None),
    ] {
        let script = vx_out(&["completions", shell]);
        assert!(
            script.contains(marker),
            "{shell} script lacks `{marker}`:\n{script}"
        );
        assert!(script.contains("prune"), "{shell} script misses `prune`");
        if let Some((bin, flag)) = check {
            if have(bin) {
                let f = dir.path().join(format!("vx.{shell}"));
                std::fs::write(&f, &script).expect("write script");
                let st = Command::new(bin).arg(flag).arg(&f).status().expect(bin);
                assert!(st.success(), "{bin} {flag} rejects the {shell} script");
                if shell == "fish" {
                    // fish completes like bash: `vx ru` offers exactly `run`.
                    let out = Command::new("fish")
                        .arg("-c")
                        .arg(format!("source '{}'; complete -C 'vx ru'", f.display()))
                        .stdin(Stdio::null())
                        .output()
                        .expect("run fish");
                    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter_map(|l| l.split('\t').next().map(str::to_string))
                        .collect();
                    assert_eq!(got, ["run"], "fish: vx ru<TAB>");
                }
            } else {
                println!("{bin} is not installed: the {shell} script is checked for content only");
            }
        }
    }

    let bad = Command::new(vx_bin())
        .args(["completions", "tcsh"])
        .output()
        .expect("run vx");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("powershell"));
});

// `vx __man DIR` writes vx.1 and one page per verb, each with its examples;
// `man -l` renders them when man is installed.
vx_test!(man_pages, || {
    let dir = tempfile::tempdir().expect("tempdir");
    let man = dir.path().join("man1");
    let listed = vx_out(&["__man", man.to_str().expect("utf-8 path")]);
    for page in [
        "vx.1",
        "vx-run.1",
        "vx-watch.1",
        "vx-cache-prune.1",
        "vx-daemon-stop.1",
    ] {
        assert!(
            man.join(page).is_file(),
            "{page} not written; listed:\n{listed}"
        );
        assert!(listed.contains(page), "{page} not listed:\n{listed}");
    }
    assert!(
        !man.join("vx-__man.1").exists() && !man.join("vx-help.1").exists(),
        "hidden and help verbs get no page"
    );
    let run = std::fs::read_to_string(man.join("vx-run.1")).expect("read vx-run.1");
    assert!(run.contains(".SH EXAMPLES"), "{run}");
    assert!(run.contains("\\-\\-filter"), "{run}");

    if !have("man") {
        println!("man is not installed: skipping the `man -l` rendering check");
        return;
    }
    for (page, want) in [
        ("vx.1", "SUBCOMMANDS"),
        ("vx-run.1", "vx run build"),
        ("vx-run.1", "--filter"),
    ] {
        let out = Command::new("man")
            .arg("-l")
            .arg(man.join(page))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Plain text: drop overstrike bold/underline if the pager kept them.
        let plain: String = {
            let mut s = String::new();
            for c in text.chars() {
                if c == '\u{8}' {
                    s.pop();
                } else {
                    s.push(c);
                }
            }
            s
        };
        assert!(
            plain.contains(want),
            "man -l {page} lacks `{want}`:\n{plain}"
        );
        assert!(plain.contains("NAME"), "man -l {page}:\n{plain}");
    }
});

fn sh(script: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// install.sh puts both binaries, the completions and the man pages into the
// prefix; a second run replaces them without complaint; the installed
// completion loads; the installed vx runs a task with the installed vxd.
vx_test!(install_sh_into_a_prefix, || {
    let prefix = tempfile::tempdir().expect("tempdir");
    let p = prefix.path().to_str().expect("utf-8 path");
    let bins = bin_dir().to_str().expect("utf-8 path");
    let first = sh("packaging/install.sh", &["--bin-dir", bins, "--prefix", p]);
    assert!(first.contains("installed into"), "{first}");
    let second = sh("packaging/install.sh", &["--bin-dir", bins, "--prefix", p]);
    assert_eq!(
        first.lines().count(),
        second.lines().count(),
        "idempotent:\n{first}\n---\n{second}"
    );
    for f in [
        "bin/vx",
        "bin/vxd",
        "share/bash-completion/completions/vx",
        "share/zsh/site-functions/_vx",
        "share/fish/vendor_completions.d/vx.fish",
        "share/man/man1/vx.1",
        "share/man/man1/vx-run.1",
    ] {
        assert!(
            prefix.path().join(f).is_file(),
            "{f} not installed:\n{second}"
        );
    }
    assert_bash_completes(&prefix.path().join("share/bash-completion/completions/vx"));
    runs_a_task_with(&prefix.path().join("bin"));
});

// packaging/deb.sh builds a .deb with a correct control file; extracted
// with `dpkg-deb -x` into a temporary root, its vx answers --version and
// --help and runs a task with the vxd next to it.
vx_test!(deb_extracts_and_runs, || {
    if !have("dpkg-deb") {
        println!("dpkg-deb is not installed (not a Debian system): skipping the .deb check");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let bins = bin_dir().to_str().expect("utf-8 path");
    let o = out.path().to_str().expect("utf-8 path");
    // `--compress none`: xz takes minutes on the debug binaries.
    let printed = sh(
        "packaging/deb.sh",
        &["--bin-dir", bins, "--out", o, "--compress", "none"],
    );
    let deb = PathBuf::from(printed.lines().last().expect("deb path").trim());
    assert!(deb.is_file(), "no .deb at {}", deb.display());

    let field = |name: &str| -> String {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(name)
            .output()
            .expect("dpkg-deb -f");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "vx");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .expect("dpkg");
    assert_eq!(
        field("Architecture"),
        String::from_utf8_lossy(&arch.stdout).trim()
    );
    assert!(
        field("Depends").starts_with("libc6"),
        "{}",
        field("Depends")
    );
    assert!(!field("Maintainer").is_empty());
    assert!(!field("Description").is_empty());

    let root = tempfile::tempdir().expect("tempdir");
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .status()
        .expect("dpkg-deb -x");
    assert!(st.success(), "dpkg-deb -x failed");
    for f in [
        "usr/bin/vx",
        "usr/bin/vxd",
        "usr/share/bash-completion/completions/vx",
        "usr/share/zsh/vendor-completions/_vx",
        "usr/share/fish/vendor_completions.d/vx.fish",
        "usr/share/man/man1/vx.1.gz",
        "usr/share/man/man1/vx-run.1.gz",
    ] {
        assert!(root.path().join(f).is_file(), "{f} not in the .deb");
    }
    let vx = root.path().join("usr/bin/vx");
    let version = Command::new(&vx)
        .arg("--version")
        .output()
        .expect("vx --version");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("vx {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(&vx).arg("--help").output().expect("vx --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("run") && help.contains("Examples:"), "{help}");
    assert_bash_completes(&root.path().join("usr/share/bash-completion/completions/vx"));
    runs_a_task_with(&root.path().join("usr/bin"));
});

/// The `vx` in `bin` (with no `VX_DAEMON_BIN`: it must find the `vxd` beside
/// it) runs a task of a fixture workspace, in the test's mode.
fn runs_a_task_with(bin: &Path) {
    let ws = Ws::new(&[
        ("vx.toml", "[workspace]\nmembers = [\"app\"]\n"),
        (
            "app/vx.toml",
            "[project]\nname = \"app\"\n[tasks.build]\ncommand = \"echo packaged-build\"\n",
        ),
    ]);
    let vx = |args: &[&str]| {
        Command::new(bin.join("vx"))
            .args(args)
            .current_dir(ws.root())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", ws.root())
            .env("NO_COLOR", "1")
            .env("XDG_RUNTIME_DIR", ws.runtime.path())
            .env("VX_DAEMON", if ws.mode == Mode::Daemon { "1" } else { "0" })
            .stdin(Stdio::null())
            .output()
            .expect("run the installed vx")
    };
    let r = vx(&["run", "build"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(r.status.success(), "{text}");
    assert!(text.contains("packaged-build"), "{text}");
    if ws.mode == Mode::Daemon {
        // The daemon is the packaged vxd, found beside the packaged vx.
        let st = vx(&["daemon", "status", "--json"]);
        let s = String::from_utf8_lossy(&st.stdout);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"));
        assert_eq!(v["running"], true, "{s}");
        let pid = v["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {s}"));
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("daemon exe");
        let want = bin.join("vxd").canonicalize().expect("packaged vxd");
        assert_eq!(exe, want, "the daemon runs another vxd");
        // Stop it with the binary that started it, before its directory goes.
        let _ = vx(&["daemon", "stop"]);
    }
}
