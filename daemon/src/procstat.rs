//! `procstat` — what a task's process tree costs.
//!
//! Owns: sampling a process group from `/proc` (Linux): its CPU time (user +
//! system of every live member, plus what members already reaped from their
//! children — so a shell's finished commands count) and its resident memory
//! (the sum over members), keeping the maximum of each over the samples.
//! Samples are periodic, so a process tree that lives less than one period
//! is not measured (reported as unknown, never as zero).
//!
//! Never: signals or waits for processes (`exec` does).

use std::fs;

/// Measurements of one process group over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ms: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// Accumulates samples of one process group.
#[derive(Debug, Default)]
pub struct Sampler {
    usage: Usage,
    tick_ms: f64,
    page: u64,
}

impl Sampler {
    pub fn new() -> Sampler {
        // SAFETY: sysconf only reads configuration values.
        let (tck, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Sampler {
            usage: Usage::default(),
            tick_ms: if tck > 0 { 1000.0 / tck as f64 } else { 10.0 },
            page: if page > 0 { page as u64 } else { 4096 },
        }
    }

    /// Reads every process of group `pgid` once.
    pub fn sample(&mut self, pgid: i32) {
        if pgid <= 0 {
            return;
        }
        let Ok(rd) = fs::read_dir("/proc") else {
            return;
        };
        let (mut ticks, mut pages, mut seen) = (0u64, 0u64, false);
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = fs::read_to_string(format!("/proc/{name}/stat")) else {
                continue;
            };
            if let Some(s) = parse_stat(&stat)
                && s.pgrp == pgid
            {
                seen = true;
                ticks += s.utime + s.stime + s.cutime + s.cstime;
                pages += s.rss_pages;
            }
        }
        if !seen {
            return;
        }
        let cpu = (ticks as f64 * self.tick_ms) as u64;
        let rss = pages * self.page;
        self.usage.cpu_ms = Some(self.usage.cpu_ms.unwrap_or(0).max(cpu));
        self.usage.peak_rss_bytes = Some(self.usage.peak_rss_bytes.unwrap_or(0).max(rss));
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }
}

struct Stat {
    pgrp: i32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after the last `)`.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), so field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    Some(Stat {
        pgrp: num(5)? as i32,
        utime: num(14)?.max(0) as u64,
        stime: num(15)?.max(0) as u64,
        cutime: num(16)?.max(0) as u64,
        cstime: num(17)?.max(0) as u64,
        rss_pages: num(24)?.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 1 0 100 1000000 512 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.pgrp, 1234);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (250, 50, 7, 3));
        assert_eq!(s.rss_pages, 512);
    }

    #[test]
    fn samples_our_own_group() {
        let mut s = Sampler::new();
        // SAFETY: getpgrp has no preconditions.
        let pgid = unsafe { libc::getpgrp() };
        s.sample(pgid);
        let u = s.usage();
        assert!(u.peak_rss_bytes.unwrap_or(0) > 0, "{u:?}");
        assert!(u.cpu_ms.is_some());
        s.sample(-1);
        assert_eq!(s.usage(), u);
    }
}
