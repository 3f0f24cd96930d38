//! `taskflow-bench`: the performance scenarios of docs/benchmarks.md, run
//! against a real deployment (API and workers as separate `taskflow`
//! processes, the local PostgreSQL and Redis) or, for the sandbox, in
//! process. A crate of its own, like the chaos suite, so the server binary
//! does not carry it.
//!
//! Each scenario runs `--runs` times and reports min / median / max of each
//! figure next to its target. Build with `--release`: a debug build measures
//! the compiler, not TaskFlow.

mod cluster;
mod drains;
mod fleet;
mod http;
mod in_process;
mod network;
mod operations;
mod reference;
mod scenarios;
mod submissions;
mod usage;
mod waiting;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};

use cluster::{Placement, Target};
use taskflow_testkit::{PgBouncer, RedisCluster};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "taskflow-bench", version, about)]
struct BenchArgs {
    /// Scenarios to run.
    #[arg(value_enum, default_value = "all")]
    pub scenarios: Vec<Scenario>,
    /// Runs of each scenario.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scale every job count by this factor (e.g. 0.05 for a quick smoke run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// PostgreSQL server; each run creates and drops its own database there.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Redis; each run uses its own key prefix.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Use a private Redis Cluster (3 masters, started here) instead of
    /// `--redis-url`, to compare with one Redis in the same session
    /// (issue 16).
    #[arg(long)]
    pub redis_cluster: bool,
    /// Run the API and workers through a private PgBouncer in transaction
    /// mode (`--database-pooler transaction`, started here in front of
    /// `--database-url`'s server), to compare with direct connections in
    /// the same session (issue 16).
    #[arg(long)]
    pub pgbouncer: bool,
    /// Directory of the built plugins (default: next to the target directory
    /// this binary was built into).
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// The `taskflow` binary to benchmark (default: the one next to this
    /// binary, built by the same `cargo build`).
    #[arg(long)]
    pub taskflow: Option<PathBuf>,
}

/// Server connections of `--pgbouncer`'s PgBouncer: what a deployment
/// sized by docs/scaling.md would give these three processes, fewer than
/// the 48 client connections they may open.
const PGBOUNCER_SERVER_CONNECTIONS: u32 = 20;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below.
    All,
    /// Submit over REST, one client, one job per request, sequentially.
    Submit,
    /// Submit over REST, 32 concurrent clients.
    SubmitConcurrent,
    /// Submit over REST, 1,000 jobs per batch request.
    SubmitBatch,
    /// Drain 20,000 queued no-op jobs with the API and 2 workers.
    Drain,
    /// The drain six times each, in pairs without limits and with
    /// `max_running` and a rate set far above it (which side drains first
    /// alternates): the cost of a limited claim.
    DrainLimited,
    /// Enqueue-to-start latency at 200 jobs/s for 20 s, beside the time of
    /// one INSERT + COMMIT measured around it.
    Latency,
    /// Instantiate and call a no-op component in a warm sandbox.
    Sandbox,
    /// First job of a large module: cold compile vs. a restarted worker's disk cache.
    Cache,
    /// CPU-bound jobs on 1 worker vs. 2 workers.
    Cpu,
    /// Outbound HTTP: the host's cost per request, and a drain of jobs that each make one GET.
    Http,
    /// `GET /v1/queues` over 20 queues holding 1,000 jobs, then 10,000,000.
    ListQueues,
    /// The drain, alternately alone and while the pruner deletes 1,000,000 expired jobs.
    PruneDrain,
    /// `GET /v1/jobs/{id}?wait=`: a job's finish to the waiting client's
    /// answer, and the API's memory with 1,000 clients waiting.
    LongPoll,
    /// 100 workers of one slot each drain 20,000 no-op jobs: the
    /// connections PostgreSQL holds for them (run with --pgbouncer).
    Fleet,
    /// The drain and sequential submissions with the servers, the API and
    /// the workers on hosts of a private network, at 0, 1 and 5 ms RTT,
    /// beside all on one host. Needs root; not part of `all`.
    Network,
}

/// One figure of one run.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What it measures.
    pub name: std::borrow::Cow<'static, str>,
    /// Its value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The target, as text (`≥ 2500`).
    pub target: &'static str,
}

impl Figure {
    fn new(
        name: impl Into<std::borrow::Cow<'static, str>>,
        value: f64,
        unit: &'static str,
        target: &'static str,
    ) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            target,
        }
    }
}

fn main() -> anyhow::Result<()> {
    // The in-process scenarios run guests as a worker does, so they run
    // under the worker's setting.
    taskflow::telemetry::no_error_backtraces_by_default();
    let args = BenchArgs::parse();
    let networked = args.scenarios.contains(&Scenario::Network);
    anyhow::ensure!(
        !networked || (args.scenarios.len() == 1 && !args.redis_cluster && !args.pgbouncer),
        "the network scenario runs alone, without --redis-cluster or --pgbouncer: it moves the \
         benchmark onto a host of its own network, where this machine's servers cannot be reached"
    );
    let network = networked.then(network::enter_network).transpose()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, network))
}

/// Runs the chosen scenarios and prints the table.
async fn run(
    args: BenchArgs,
    network: Option<Arc<taskflow_testkit::Network>>,
) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; build with --release for meaningful figures");
    }
    let exe = std::env::current_exe()?;
    let plugin_dir = args.plugin_dir.clone().unwrap_or_else(|| {
        exe.parent()
            .and_then(|dir| dir.parent())
            .unwrap_or(&exe)
            .join("wasm32-wasip2/plugin")
    });
    let taskflow = args
        .taskflow
        .clone()
        .unwrap_or_else(|| exe.with_file_name("taskflow"));
    anyhow::ensure!(
        taskflow.is_file(),
        "{}: build it first (cargo build -p taskflow) or pass --taskflow",
        taskflow.display()
    );
    let redis_cluster = if args.redis_cluster {
        Some(tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await??)
    } else {
        None
    };
    let pgbouncer = if args.pgbouncer {
        let server = args.database_url.clone();
        let bouncer = tokio::task::spawn_blocking(move || {
            PgBouncer::start(&server, PGBOUNCER_SERVER_CONNECTIONS)
        })
        .await??;
        Some(Arc::new(bouncer))
    } else {
        None
    };
    let target = Target {
        taskflow,
        database_url: args.database_url.clone(),
        pgbouncer,
        redis_url: redis_cluster
            .as_ref()
            .map_or_else(|| args.redis_url.clone(), RedisCluster::url),
        plugin_dir,
        cache_dir: std::env::temp_dir().join("taskflow-bench-cache"),
        placement: Placement::default(),
        network,
    };
    let scenarios: Vec<Scenario> = if args.scenarios.contains(&Scenario::All) {
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|s| ![Scenario::All, Scenario::Network].contains(s))
            .collect()
    } else {
        args.scenarios.clone()
    };
    let mut rows: Vec<(Scenario, Vec<Vec<Figure>>)> = Vec::new();
    for scenario in scenarios {
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            eprintln!("== {scenario:?}, run {run}/{}", args.runs);
            runs.push(scenarios::run(scenario, &target, args.scale).await?);
        }
        rows.push((scenario, runs));
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[(Scenario, Vec<Vec<Figure>>)]) {
    println!(
        "\n| scenario | figure | min | median | max | unit | target |\n|---|---|---:|---:|---:|---|---|"
    );
    for (scenario, runs) in rows {
        let Some(first) = runs.first() else { continue };
        for (index, figure) in first.iter().enumerate() {
            let mut values: Vec<f64> = runs.iter().map(|run| run[index].value).collect();
            values.sort_by(f64::total_cmp);
            println!(
                "| {scenario:?} | {} | {} | {} | {} | {} | {} |",
                figure.name,
                format_value(values[0]),
                format_value(taskflow_testkit::median(&values)),
                format_value(values[values.len() - 1]),
                figure.unit,
                figure.target
            );
        }
    }
}

/// A figure of a hundred or more as a whole number, a smaller one to two
/// decimals, and one under 0.1 to three significant digits: per-job counts
/// such as claims or commits per job (a few hundredths) would otherwise
/// round away the difference between two runs.
fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value == 0.0 || value.abs() >= 0.1 || !value.is_finite() {
        format!("{value:.2}")
    } else {
        let decimals = (2.0 - value.abs().log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::format_value;

    #[test]
    fn small_per_job_counts_keep_three_significant_digits() {
        assert_eq!(format_value(0.0238), "0.0238");
        assert_eq!(format_value(0.05), "0.0500");
        assert_eq!(format_value(0.001234), "0.00123");
    }

    #[test]
    fn larger_figures_keep_their_usual_precision() {
        assert_eq!(format_value(0.0), "0.00");
        assert_eq!(format_value(0.5), "0.50");
        assert_eq!(format_value(42.25), "42.25");
        assert_eq!(format_value(12_345.6), "12346");
    }
}
