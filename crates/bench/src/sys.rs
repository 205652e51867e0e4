//! What the generator reads from the operating system: its own CPU time
//! (so a report shows whether the generator, not the server, was the
//! limit), a server's resident memory, and the open-files limit.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// CPU seconds this process has used, user and system.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTimes {
    /// From `/proc/self/stat` (fields 14 and 15, in clock ticks). Zero where
    /// `/proc` is missing: the report then shows no CPU rather than failing.
    pub fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return Self::default();
        };
        // The command name (field 2) may hold spaces; fields after it are
        // counted from the closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return Self::default();
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0) as f64
                / ticks
        };
        // `rest` starts at field 3 (state): utime is field 14, stime 15.
        Self {
            user_s: field(11),
            system_s: field(12),
        }
    }

    pub fn since(self, start: Self) -> Self {
        Self {
            user_s: (self.user_s - start.user_s).max(0.0),
            system_s: (self.system_s - start.system_s).max(0.0),
        }
    }
}

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(kib * 1024)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Soft `RLIMIT_NOFILE` raised to the hard limit; the soft limit after.
pub fn raise_fd_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let start = CpuTimes::now();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let used = CpuTimes::now().since(start);
        assert!(used.user_s + used.system_s >= 0.0);
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert!(raise_fd_limit().is_some_and(|n| n > 0));
    }
}
