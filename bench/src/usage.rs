//! What processes spent, in units that do not depend on the machine's
//! speed: CPU time and context switches (voluntary and not, summed over
//! every live thread), read from `/proc` (tests/kit/src/process.rs). A
//! thread that exits inside a measured stretch takes its switches with it;
//! the API's and workers' threads live as long as their process.

/// CPU time and context switches of some processes so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User and system CPU time, in microseconds (10 ms resolution).
    pub cpu_micros: u64,
    /// Context switches.
    pub switches: u64,
}

impl Usage {
    /// The usage of processes `pids` so far; a process that has exited
    /// counts nothing.
    pub fn of(pids: impl IntoIterator<Item = u32>) -> Self {
        pids.into_iter().fold(Self::default(), |total, pid| Self {
            cpu_micros: total.cpu_micros + taskflow_testkit::cpu_micros(pid).unwrap_or(0),
            switches: total.switches + taskflow_testkit::context_switches(pid).unwrap_or(0),
        })
    }

    /// What was spent between `before` and this reading.
    pub fn since(self, before: Self) -> Self {
        Self {
            cpu_micros: self.cpu_micros.saturating_sub(before.cpu_micros),
            switches: self.switches.saturating_sub(before.switches),
        }
    }

    /// CPU microseconds per unit of `count` units of work.
    pub fn cpu_micros_per(self, count: usize) -> f64 {
        self.cpu_micros as f64 / count as f64
    }

    /// Context switches per unit of `count` units of work.
    pub fn switches_per(self, count: usize) -> f64 {
        self.switches as f64 / count as f64
    }
}
