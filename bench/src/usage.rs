//! What processes spent, in units that do not depend on the machine's
//! speed: CPU time and context switches (voluntary and not, summed over
//! every live thread), read from `/proc` (tests/kit/src/process.rs). A
//! thread that exits inside a measured stretch takes its switches with it;
//! the API's and workers' threads live as long as their process.

use std::collections::BTreeMap;

/// CPU time and context switches of some processes so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User and system CPU time, in microseconds (10 ms resolution).
    pub cpu_micros: u64,
    /// Context switches, of both kinds.
    pub switches: u64,
    /// Of them, those where the scheduler took the core away to give
    /// another process a turn (preemptions), rather than a thread waiting.
    pub involuntary_switches: u64,
}

impl Usage {
    /// The usage of processes `pids` so far; a process that has exited
    /// counts nothing.
    pub fn of(pids: impl IntoIterator<Item = u32>) -> Self {
        pids.into_iter()
            .map(|pid| {
                let switches = taskflow_testkit::context_switches(pid).unwrap_or_default();
                Self {
                    cpu_micros: taskflow_testkit::cpu_micros(pid).unwrap_or(0),
                    switches: switches.total(),
                    involuntary_switches: switches.involuntary,
                }
            })
            .sum()
    }

    /// What was spent between `before` and this reading.
    pub fn since(self, before: Self) -> Self {
        Self {
            cpu_micros: self.cpu_micros.saturating_sub(before.cpu_micros),
            switches: self.switches.saturating_sub(before.switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(before.involuntary_switches),
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

    /// Involuntary context switches per unit of `count` units of work.
    pub fn involuntary_switches_per(self, count: usize) -> f64 {
        self.involuntary_switches as f64 / count as f64
    }
}

/// The usage of several processes together.
impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Self>>(usages: I) -> Self {
        usages.fold(Self::default(), |total, usage| Self {
            cpu_micros: total.cpu_micros + usage.cpu_micros,
            switches: total.switches + usage.switches,
            involuntary_switches: total.involuntary_switches + usage.involuntary_switches,
        })
    }
}

/// What each process of one program on this machine has spent so far:
/// PostgreSQL's (`postgres`: backends, WAL writer, checkpointer…) or
/// Redis's (`redis-server`). Kept per process, so that a backend starting
/// or ending inside a measured stretch takes nothing from the others.
#[derive(Debug, Clone, Default)]
pub struct ServerUsage(BTreeMap<u32, Usage>);

impl ServerUsage {
    /// The usage so far of every process whose command name is `name`.
    pub fn of(name: &str) -> Self {
        Self(
            taskflow_testkit::pids_named(name)
                .into_iter()
                .map(|pid| (pid, Usage::of([pid])))
                .collect(),
        )
    }

    /// What was spent between `before` and this reading, by the processes
    /// alive now (one that ended in between counts nothing).
    pub fn since(&self, before: &Self) -> Usage {
        self.0
            .iter()
            .map(|(pid, now)| now.since(before.0.get(pid).copied().unwrap_or_default()))
            .sum()
    }
}

/// The servers TaskFlow runs on, read together: what PostgreSQL and Redis
/// spent for the work measured (and for anything else the machine asked of
/// them meanwhile: nothing else should run during a benchmark).
#[derive(Debug, Clone, Default)]
pub struct Servers {
    postgres: ServerUsage,
    redis: ServerUsage,
}

impl Servers {
    /// Their usage so far.
    pub fn read() -> Self {
        Self {
            postgres: ServerUsage::of("postgres"),
            redis: ServerUsage::of("redis-server"),
        }
    }

    /// PostgreSQL's and Redis's usage between `before` and this reading.
    pub fn since(&self, before: &Self) -> (Usage, Usage) {
        (
            self.postgres.since(&before.postgres),
            self.redis.since(&before.redis),
        )
    }
}

/// Commands the Redis at `url` has run since it started (`INFO
/// commandstats`, summed over commands, and over the seed nodes of a
/// cluster URL): two readings give what a scenario cost Redis, in a count
/// no machine changes. A reading adds a few commands of its own (the
/// connection's `CLIENT SETINFO`s and the `INFO`).
pub async fn redis_commands(url: &str) -> anyhow::Result<u64> {
    let nodes = match taskflow::lease::cluster_seeds(url) {
        Some(seeds) => seeds.map_err(anyhow::Error::msg)?,
        None => vec![url.to_owned()],
    };
    let mut total = 0;
    for node in nodes {
        let mut connection = redis::Client::open(node)?
            .get_multiplexed_async_connection()
            .await?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await?;
        total += stats
            .lines()
            .filter_map(|line| line.split("calls=").nth(1)?.split(',').next())
            .filter_map(|calls| calls.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

/// This process's usage so far: the benchmark's own clients.
pub fn own() -> Usage {
    Usage::of([std::process::id()])
}
