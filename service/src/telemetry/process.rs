//! The `process_*` metrics every `/metrics` ends with, read from
//! `/proc/self` at scrape time (benchmarks quote them next to message
//! rates), and the closing of an OpenMetrics text.

use std::fmt::Write;

/// Ends an OpenMetrics text (as `prometheus_client` encodes it) with the
/// process figures and the trace export figures, keeping `# EOF` last.
pub fn finish_openmetrics(out: &mut String) {
    let body_end = out.rfind("# EOF").unwrap_or(out.len());
    out.truncate(body_end);
    process_metrics(out);
    super::export::render(out);
    out.push_str("# EOF\n");
}

/// Appends `process_*` metrics read from `/proc/self` (Linux); elsewhere,
/// or if `/proc` is unreadable, they are left out.
pub fn process_metrics(out: &mut String) {
    if let Some(cpu) = cpu_seconds() {
        let _ = writeln!(
            out,
            "# TYPE process_cpu_seconds counter\n# HELP process_cpu_seconds CPU time used by this process\nprocess_cpu_seconds_total {cpu:.3}"
        );
    }
    if let Some(rss) = rss_bytes() {
        let _ = writeln!(
            out,
            "# TYPE process_resident_memory_bytes gauge\n# HELP process_resident_memory_bytes Resident set size\nprocess_resident_memory_bytes {rss}"
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds = dir.count();
        let _ = writeln!(
            out,
            "# TYPE process_open_fds gauge\n# HELP process_open_fds Open file descriptors\nprocess_open_fds {fds}"
        );
    }
}

/// User + system CPU seconds: `/proc/self/stat` fields 14 and 15, in clock
/// ticks of 1/100 s (USER_HZ is 100 on every mainstream Linux build).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields resume after ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident set size in bytes, from `VmRSS` in `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
