//! A real BuildGrid (PyPI `buildgrid`, `bgd server start`) for the REAPI
//! tests, on a free loopback port, and everything it needs: for remote
//! *execution*, a private PostgreSQL (BuildGrid 0.4.4's scheduler runs on
//! nothing else; Debian's `postgresql`, started from `initdb` in a temp dir)
//! and N bots (`tests/peers/reapi_bot.py`: BuildGrid ships none). Every
//! process is started in its own process group and the group is killed
//! when the [`Buildgrid`] is dropped (no orphans); their logs are kept for
//! failure messages. What is missing (bgd, the bot's python, postgres)
//! comes back as `Err(peer)` for [`super::skip`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One child in its own process group; the group is killed on drop.
struct Proc {
    child: Child,
    /// The signal that asks it to stop (then SIGKILL after a grace period).
    stop: i32,
}

impl Proc {
    fn spawn(mut c: Command, log: &Path, stop: i32) -> Proc {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(log).expect("log file");
        c.stdin(Stdio::null())
            .stdout(f.try_clone().expect("log file"))
            .stderr(f)
            .process_group(0);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", c.get_program()));
        Proc { child, stop }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pg = self.child.id() as i32;
        // SAFETY: signals to a process group this value started.
        unsafe { libc::kill(-pg, self.stop) };
        let t0 = Instant::now();
        while self.exited().is_none() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (children the leader left behind).
        unsafe { libc::kill(-pg, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, then released for the peer to take).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> Result<bool, String>) {
    let t0 = Instant::now();
    loop {
        match ready() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => panic!("{what}: {e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not ready after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Debian's PostgreSQL server binaries (`initdb`, `postgres`).
fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop().or_else(|| {
        let d = super::on_path("initdb")?.parent()?.to_path_buf();
        d.join("postgres").is_file().then_some(d)
    })
}

/// PostgreSQL refuses to run as root: as root, it runs as the `postgres`
/// user (`setpriv`), owning its data dir.
fn pg_user() -> Result<Option<(u32, u32)>, &'static str> {
    // SAFETY: plain libc calls; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return Err("a `postgres` user (to run PostgreSQL as, not root)");
        }
        Ok(Some(((*pw).pw_uid, (*pw).pw_gid)))
    }
}

fn pg_command(bin: &Path, user: Option<(u32, u32)>) -> Command {
    match user {
        None => Command::new(bin),
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(bin);
            c
        }
    }
}

/// A private PostgreSQL cluster on a free loopback port (trust auth, user
/// `bgd`), in a temp dir.
struct Postgres {
    _proc: Proc,
    url: String,
}

impl Postgres {
    fn start(dir: &Path) -> Result<Postgres, &'static str> {
        let bin = pg_bin().ok_or("PostgreSQL (Debian `postgresql`: initdb, postgres)")?;
        let user = pg_user()?;
        let data = dir.join("pg");
        std::fs::create_dir(&data).expect("mkdir pg");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown");
        }
        let out = pg_command(&bin.join("initdb"), user)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "bgd", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(dir)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = dir.join("postgres.log");
        let mut c = pg_command(&bin.join("postgres"), user);
        c.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .current_dir(dir);
        // SIGINT: PostgreSQL's "fast" shutdown.
        let mut proc = Proc::spawn(c, &log, libc::SIGINT);
        wait_until("postgres", 60, || {
            if let Some(st) = proc.exited() {
                return Err(format!("exited ({st}):\n{}", read(&log)));
            }
            Ok(read(&log).contains("ready to accept connections"))
        });
        Ok(Postgres {
            _proc: proc,
            url: format!("postgresql+psycopg2://bgd@127.0.0.1:{port}/postgres"),
        })
    }
}

/// What the server offers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Services {
    /// ActionCache, CAS, ByteStream (in memory).
    Cache,
    /// Those, and Execution + Operations + Bots on a PostgreSQL scheduler.
    Execution,
}

/// A running BuildGrid server (and, for [`Services::Execution`], its
/// PostgreSQL and bots). Field order is drop order: bots, then the server,
/// then PostgreSQL, then the temp dir.
pub struct Buildgrid {
    bots: Vec<(String, Proc)>,
    _server: Proc,
    _pg: Option<Postgres>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The BuildGrid configuration for `services` on `port`.
pub fn config(port: u16, services: Services, sql: &str) -> String {
    let mut s = format!(
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
storages:
  - !lru-storage &cas
    size: 256MB
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 1024
    allow-updates: true
    cache-failed-actions: false
"#
    );
    let mut services_yaml = String::from(
        "      - !action-cache\n        cache: *ac\n      - !cas\n        storage: *cas\n      - !bytestream\n        storage: *cas\n",
    );
    if services == Services::Execution {
        // Short polls and keepalives: a test's actions are assigned at once
        // and a lost bot's lease goes back to the queue within seconds.
        s.push_str(&format!(
            r#"connections:
  - !sql-connection &sql
    connection-string: {sql}
    pool-size: 5
    pool-timeout: 30
    max-overflow: 10
schedulers:
  - !sql-scheduler &sched
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: 30
    poll-interval: 0.2
    bot-poll-interval: 0.2
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily]
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.2
        priority-assignment-percentage: 100
"#
        ));
        services_yaml.push_str(
            "      - !execution\n        scheduler: *sched\n        endpoints: [execution, operations]\n      - !bots\n        scheduler: *sched\n",
        );
    }
    s.push_str("instances:\n  - name: \"\"\n    services:\n");
    s.push_str(&services_yaml);
    s
}

fn venv_bin(name: &str) -> Result<PathBuf, &'static str> {
    let p = super::dir().join(".venv/bin").join(name);
    p.is_file().then_some(p).ok_or(match name {
        "bgd" => "buildgrid (bgd)",
        _ => "the peers' Python venv",
    })
}

impl Buildgrid {
    /// Starts the server with `services` and, for execution, `bots` bots
    /// (each connected before this returns).
    pub fn start(services: Services, bots: usize) -> Result<Buildgrid, &'static str> {
        let bgd = venv_bin("bgd")?;
        let dir = tempfile::Builder::new()
            .prefix("vx-bgd-")
            .tempdir()
            .expect("tempdir");
        let (pg, sql) = if services == Services::Execution {
            venv_bin("python")?;
            let pg = Postgres::start(dir.path())?;
            let out = Command::new(&bgd)
                .args(["migrate", "apply", &pg.url])
                .output()
                .expect("run bgd migrate");
            assert!(
                out.status.success(),
                "bgd migrate apply failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let url = pg.url.clone();
            (Some(pg), url)
        } else {
            (None, String::new())
        };
        let port = free_port();
        let cfg = dir.path().join("bgd.yml");
        std::fs::write(&cfg, config(port, services, &sql)).expect("write bgd.yml");
        let mut c = Command::new(&bgd);
        c.args(["server", "start"]).arg(&cfg);
        let log = dir.path().join("bgd.log");
        let mut server = Proc::spawn(c, &log, libc::SIGTERM);
        wait_until("bgd", 90, || {
            if let Some(st) = server.exited() {
                return Err(format!("exited ({st}):\n{}", read(&log)));
            }
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        });
        let mut bg = Buildgrid {
            bots: Vec::new(),
            _server: server,
            _pg: pg,
            port,
            dir,
        };
        for _ in 0..bots {
            bg.start_bot();
        }
        Ok(bg)
    }

    /// Starts one more bot (`reapi-bot-<n>`) and waits until its session
    /// is created; returns its id.
    pub fn start_bot(&mut self) -> String {
        let id = format!("reapi-bot-{}", self.bots.len() + 1);
        let log = self.dir.path().join(format!("{id}.log"));
        let python = venv_bin("python").expect("the venv's python");
        let mut c = Command::new(python);
        c.arg(super::dir().join("reapi_bot.py"))
            .args(["--remote", &format!("127.0.0.1:{}", self.port)])
            .args(["--bot-id", &id, "--property", "OSFamily=linux"]);
        let mut p = Proc::spawn(c, &log, libc::SIGTERM);
        wait_until(&format!("bot {id}"), 60, || {
            if let Some(st) = p.exited() {
                return Err(format!("exited ({st}):\n{}", read(&log)));
            }
            Ok(read(&log).contains("bot session"))
        });
        self.bots.push((id.clone(), p));
        id
    }

    /// Stops every bot (SIGTERM, then the group is killed).
    pub fn stop_bots(&mut self) {
        self.bots.clear();
    }

    /// `grpc://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("bgd.log"))
    }

    /// The log of bot `id` (empty for an unknown id).
    pub fn bot_log(&self, id: &str) -> String {
        if !id.starts_with("reapi-bot-") || id.contains('/') {
            return String::new();
        }
        read(&self.dir.path().join(format!("{id}.log")))
    }

    /// Every bot's log, each under a header naming it.
    pub fn bot_logs(&self) -> String {
        let mut ids: Vec<String> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
            .filter(|n| n.starts_with("reapi-bot-"))
            .collect();
        ids.sort();
        ids.iter()
            .map(|id| {
                format!(
                    "== {id}\n{}",
                    read(&self.dir.path().join(format!("{id}.log")))
                )
            })
            .collect()
    }

    /// The server's and the bots' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "== bgd (tail)\n{}\n{}",
            tail(&self.log(), 60),
            self.bot_logs()
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
