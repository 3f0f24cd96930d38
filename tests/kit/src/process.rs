//! Readings of a process's memory, CPU time and context switches from
//! `/proc` (Linux).

/// The `VmHWM` (peak) or `VmRSS` (current) line of `pid`'s status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The peak resident memory of process `pid` so far, in bytes; `None` once
/// it has exited.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// The resident memory of process `pid` now, in bytes; `None` once it has
/// exited.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Context switches (voluntary and not) of every thread of process `pid`
/// so far; `None` once it has exited.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// CPU time (user and system) process `pid` has used so far, in
/// microseconds, at the kernel's clock-tick resolution (10 ms here).
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let (user, system) = user_and_system_cpu_micros(pid)?;
    Some(user + system)
}

/// User and system CPU time process `pid` has used so far, apart, in
/// microseconds, at the kernel's clock-tick resolution (10 ms here).
pub fn user_and_system_cpu_micros(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends at the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let micros = |index: usize| Some(fields.get(index)?.parse::<u64>().ok()? * 10_000);
    Some((micros(11)?, micros(12)?))
}

/// The processes on this machine whose command name (`/proc/<pid>/comm`)
/// is `name`: PostgreSQL's server and backends (`postgres`), or Redis
/// (`redis-server`).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}
