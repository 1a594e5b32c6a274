//! Small helpers the `make bench` programs share: sizes and rates from the
//! environment, percentiles, a process's resident memory.

use std::time::Duration;

/// `name` from the environment as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The knit-apiserver binary a bench runs: `KNIT_APISERVER_BIN`, or the
/// one beside the bench's own target directory.
pub fn apiserver_bin() -> String {
    std::env::var("KNIT_APISERVER_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .to_owned();
        dir.join("knit-apiserver").display().to_string()
    })
}

/// The churn rates to measure, in updates per second:
/// `KNIT_BENCH_CHURN_RATES` (comma-separated; empty measures no churn),
/// default 200 and 1,000.
pub fn churn_rates() -> Vec<f64> {
    std::env::var("KNIT_BENCH_CHURN_RATES")
        .unwrap_or_else(|_| "200,1000".into())
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.trim()
                .parse()
                .expect("KNIT_BENCH_CHURN_RATES: updates per second, comma-separated")
        })
        .collect()
}

/// The `q` quantile (0 to 1) of `sorted`; zero when it is empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Resident memory of process `pid` in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had, in KiB (0 when it is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    field_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        field,
    )
}

/// `field` (e.g. `VmRSS:`) of one `/proc/<pid>/status` text, in KiB.
fn field_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    /// Both figures from one snapshot of the status file: the kernel
    /// computes VmHWM as at least the VmRSS it prints beside it. (Two
    /// reads raced other test threads allocating between them.)
    #[test]
    fn this_process_has_resident_memory() {
        let pid = std::process::id();
        assert!(rss_kib(pid) > 0);
        assert!(peak_rss_kib(pid) > 0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            field_kib(&status, "VmHWM:") >= field_kib(&status, "VmRSS:"),
            "{status}"
        );
    }
}
