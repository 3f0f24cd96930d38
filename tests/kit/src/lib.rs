//! What the integration tests (`host/tests`), `taskflow-bench` and the
//! chaos suite (`tests/chaos`) share, in one place: a database of their own
//! ([`ScratchDatabase`]), free ports, percentiles, readings of a process's
//! memory, where the built plugins are, HTTP(S) servers for tasks to call
//! ([`TestServers`]), a PostgreSQL primary with a streaming replica
//! ([`ReplicatedPostgres`]), a Redis Cluster ([`RedisCluster`]), a
//! PgBouncer in transaction mode ([`PgBouncer`]), a PostgreSQL and a Redis
//! to crash ([`PrivatePostgres`], [`PrivateRedis`]), and a network of hosts
//! in Linux network namespaces ([`Network`]) with links of a given latency
//! ([`DelayProxy`]).
//!
//! TaskFlow's own statements stay in `taskflow::store`; the only SQL here
//! creates, drops and locks databases and tables, which is the server's
//! business, not TaskFlow's.

mod database;
mod delay_proxy;
mod http_server;
mod network;
mod pgbouncer;
mod private_servers;
mod process;
mod redis_cluster;
mod replica;

use std::net::TcpListener;
use std::path::PathBuf;

pub use database::{
    HeldTransaction, ScratchDatabase, database_url, database_url_through, server_address,
};
pub use delay_proxy::{DelayProxy, delay_proxy_program};
pub use http_server::{BIG_BODY_BYTES, Seen, TestServers};
pub use network::{Host, Network, Place, SUBNET};
pub use pgbouncer::PgBouncer;
pub use private_servers::{PrivatePostgres, PrivateRedis};
pub use process::{
    ContextSwitches, context_switches, cpu_micros, peak_rss_bytes, pids_named, rss_bytes,
    user_and_system_cpu_micros,
};
pub use redis_cluster::RedisCluster;
pub use replica::ReplicatedPostgres;

/// PostgreSQL server for tests and benchmarks: `DATABASE_URL`, or the local
/// server. Each user creates its own database there.
pub fn server_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Redis for tests and benchmarks: `REDIS_URL`, or the local server. Each
/// user takes its own key prefix.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The most of `spans` (`[start, end)`, in any unit) that overlap at one
/// instant: how many attempts ran at once, at the most.
pub fn most_overlapping(spans: impl IntoIterator<Item = (i64, i64)>) -> usize {
    let mut edges: Vec<(i64, i32)> = spans
        .into_iter()
        .flat_map(|(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At equal times an end sorts first: one span ending as another starts
    // is not an overlap.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// The most of `times` (any unit) within one window `[t, t + width)`.
pub fn most_in_window(times: &[i64], width: i64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut first = 0;
    let mut most = 0;
    for (last, &time) in sorted.iter().enumerate() {
        while time - sorted[first] >= width {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// A TCP port on loopback that nobody listens on right now.
///
/// # Panics
///
/// If the machine has no free ephemeral port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// Where `initdb`, `pg_ctl` and `pg_basebackup` are: `pg_config --bindir`.
fn server_programs() -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .map_err(|error| anyhow::anyhow!("pg_config is not installed: {error}"))?;
    let bin = PathBuf::from(String::from_utf8(output.stdout)?.trim());
    anyhow::ensure!(
        bin.join("initdb").exists(),
        "PostgreSQL's server programs are not in {}",
        bin.display()
    );
    Ok(bin)
}

/// Whether this process runs as root, where PostgreSQL's programs and
/// PgBouncer refuse to run.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|process| process.uid() == 0)
}

/// The `p`-th percentile (0-100) of `sorted` (ascending), by nearest rank;
/// NaN when there are no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The median of `sorted` (ascending): its middle value, or the mean of its
/// two middle values when it holds an even number; NaN when it is empty.
/// For the few values of a benchmark's pairs or runs, where the 50th
/// percentile by nearest rank ([`percentile`]) would take the lower of the
/// two middle values and so lean low.
pub fn median(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

/// Where `scripts/build-plugins` puts the components of `plugins/`:
/// `TASKFLOW_PLUGIN_DIR`, else `wasm32-wasip2/plugin` in the target
/// directory (`CARGO_TARGET_DIR`, else `target/` of the workspace).
pub fn plugin_dir() -> PathBuf {
    match std::env::var("TASKFLOW_PLUGIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
            .join("wasm32-wasip2/plugin"),
    }
}

/// The component of `plugins/<name>` (`name` with underscores:
/// `python_csv`).
pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("taskflow_plugin_{name}.wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 5.0);
        assert_eq!(percentile(&values, 90.0), 9.0);
        assert_eq!(percentile(&values, 99.0), 10.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[0.75, 0.76, 0.80, 1.0, 1.06, 1.07]), 0.9);
        assert_eq!(median(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median(&[4.0]), 4.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn overlaps_count_spans_at_one_instant_and_touching_ones_do_not_overlap() {
        assert_eq!(most_overlapping([(0, 10), (5, 15), (9, 20), (10, 12)]), 3);
        assert_eq!(most_overlapping([(0, 10), (10, 20), (20, 30)]), 1);
        assert_eq!(most_overlapping([]), 0);
    }

    #[test]
    fn windows_are_half_open() {
        assert_eq!(most_in_window(&[0, 999, 1000, 1500, 1999], 1000), 3);
        assert_eq!(most_in_window(&[5, 0, 1000], 1000), 2);
        assert_eq!(most_in_window(&[], 1000), 0);
    }
}
