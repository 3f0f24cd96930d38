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

/// Context switches of every thread of a process so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextSwitches {
    /// The thread gave up its core to wait (`voluntary_ctxt_switches`).
    pub voluntary: u64,
    /// The scheduler took the core from the thread while it could still
    /// run, to give another task a turn (`nonvoluntary_ctxt_switches`).
    pub involuntary: u64,
}

impl ContextSwitches {
    /// Both kinds together.
    pub fn total(self) -> u64 {
        self.voluntary + self.involuntary
    }
}

/// Context switches of every live thread of process `pid` so far; `None`
/// once it has exited. A thread that exits while it is read counts
/// nothing, rather than making the whole reading fail.
pub fn context_switches(pid: u32) -> Option<ContextSwitches> {
    let mut total = ContextSwitches::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Some(status) = task
            .ok()
            .and_then(|task| std::fs::read_to_string(task.path().join("status")).ok())
        else {
            continue;
        };
        for line in status.lines() {
            let count =
                |field: &str| -> Option<u64> { line.strip_prefix(field)?.trim().parse().ok() };
            if let Some(count) = count("voluntary_ctxt_switches:") {
                total.voluntary += count;
            } else if let Some(count) = count("nonvoluntary_ctxt_switches:") {
                total.involuntary += count;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads come and go in a process (tokio's blocking pool lets idle
    /// ones exit): one exiting while the others are read must not turn
    /// the whole process's reading into nothing, which the bench then
    /// counted as 0.
    #[test]
    fn threads_exiting_while_they_are_read_do_not_void_the_reading() {
        let pid = std::process::id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(|| ())).collect();
                    threads.into_iter().for_each(|t| t.join().unwrap());
                }
            })
        };
        let readings = (0..3000)
            .filter(|_| context_switches(pid).is_none())
            .count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
        assert_eq!(
            readings, 0,
            "readings of a live process that came back empty"
        );
    }

    #[test]
    fn a_thread_that_sleeps_counts_voluntary_switches() {
        let pid = std::process::id();
        let before = context_switches(pid).expect("this process is alive");
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let after = context_switches(pid).expect("this process is alive");
        assert!(
            after.voluntary >= before.voluntary + 20,
            "20 sleeps, {before:?} then {after:?}"
        );
        assert!(after.involuntary >= before.involuntary);
        assert_eq!(after.total(), after.voluntary + after.involuntary);
    }
}
