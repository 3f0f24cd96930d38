//! TaskFlow's fault-injection suite.
//!
//! Starts a private PostgreSQL cluster, a private Redis, two API processes
//! and several workers as separate OS processes, submits jobs through the API with
//! idempotency keys, and while they run: SIGKILLs workers (and starts
//! replacements), SIGSTOPs one past its lease and resumes it, cuts one off
//! from Redis by a black hole, kills and restarts the API mid-submission,
//! flushes Redis, restarts Redis, and crashes PostgreSQL. Then it checks, from the workers' execution logs and
//! PostgreSQL, that every job finished, none was lost or duplicated, no two
//! executions of a job overlapped, and every outcome came from the attempt
//! holding the job's current fencing token; and it measures how long dead
//! workers' jobs waited to be rescued. See docs/reliability.md.
//!
//! `taskflow-chaos --jobs 2000` is the short variant `scripts/test` runs;
//! `--jobs 6000 --rounds 4` is the long one recorded in docs/reliability.md.
//! With `--redis-cluster` Redis is a private Redis Cluster (3 masters, each
//! with a replica) and its faults are failovers instead: the master of
//! TaskFlow's slot is killed, its replica takes over, and the old master
//! rejoins as a replica; twice per round. With `--pgbouncer` the API and
//! workers reach PostgreSQL through a PgBouncer in transaction mode with
//! fewer server connections than they have (`--database-pooler
//! transaction`); the PostgreSQL crash then happens behind it.
//!
//! With `--network` every process runs on a host of its own in a private
//! network of Linux network namespaces (testkit `Network`): PostgreSQL,
//! Redis, each API, each worker's host, and the suite itself as the
//! client. The black-hole link to Redis gives way to real partitions: a
//! worker's host is cut off from Redis only, another's from PostgreSQL
//! only, then one's (any not cut off at the time) from both, each for
//! `--partition-ttls` lease TTLs, while the other faults go on (issue 16).
//!
//! `faults.rs` holds the faults, `placement.rs` where each process runs,
//! `submit.rs` the clients, and `audit.rs` with `analysis.rs` the checks.

mod analysis;
mod audit;
mod cluster;
mod faults;
mod placement;
mod submit;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use taskflow::api::types::PutQueue;
use taskflow::client::Client;

use audit::analyse;
use cluster::TaskflowSetup;
use faults::{Chaos, Partition, RedisUnderTest, spawn_api};
use placement::{APIS, Placement};
use submit::{submit_all, wait_until};
use taskflow_testkit::{PgBouncer, PrivatePostgres, PrivateRedis, RedisCluster};

/// The prefix of the run's Redis keys.
const REDIS_PREFIX: &str = "chaos:";

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "TaskFlow's fault-injection suite")]
struct Args {
    /// Jobs to submit.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Workers running at any time.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rounds of the fault schedule (each about 16 s).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Lease TTL of the workers, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    lease_ttl_ms: u64,
    /// The `taskflow` binary (default: next to this one).
    #[arg(long)]
    taskflow: Option<PathBuf>,
    /// The misbehave plugin (default: as built by scripts/build-plugins).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Where to write the JSON report (default: in the run's directory).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the run's directory (logs, database) even if every check passes.
    #[arg(long)]
    keep: bool,
    /// Seed of the choice of which worker to hit.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Sets the queue's `max_running`; the audit checks that no more ran at
    /// once, by the workers' logs and by the attempt records.
    #[arg(long)]
    max_running: Option<u32>,
    /// Sets the queue's `max_running_per_key` and gives the jobs one of
    /// `--keys` concurrency keys; the audit checks it per key.
    #[arg(long)]
    max_running_per_key: Option<u32>,
    /// How many concurrency keys the jobs share, with
    /// `--max-running-per-key`.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Runs against a private Redis Cluster, with failovers as its faults
    /// (see the module docs).
    #[arg(long)]
    redis_cluster: bool,
    /// Runs the API and workers through a private PgBouncer in transaction
    /// mode (see the module docs).
    #[arg(long)]
    pgbouncer: bool,
    /// Runs every process on a host of its own, with partitions as the
    /// network faults (see the module docs). Needs root.
    #[arg(long, conflicts_with_all = ["redis_cluster", "pgbouncer"])]
    network: bool,
    /// How long each partition of `--network` lasts, in lease TTLs.
    #[arg(long, default_value_t = 3)]
    partition_ttls: u32,
}

/// Server connections the run's PgBouncer keeps: fewer than the API and
/// workers open, so that they share them.
const PGBOUNCER_SERVER_CONNECTIONS: u32 = 12;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let placement = Placement::new(&args)?;
    // Held until the run has stopped its processes and servers: dropping
    // the network kills whatever still runs on it.
    let _network = placement.network.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, placement))
}

async fn run(args: Args, placement: Placement) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("taskflow-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let here = std::env::current_exe()?;
    let binary = args
        .taskflow
        .clone()
        .unwrap_or_else(|| here.with_file_name("taskflow"));
    let plugin = args.plugin.clone().unwrap_or_else(|| {
        here.parent()
            .unwrap()
            .join("../wasm32-wasip2/plugin/taskflow_plugin_misbehave.wasm")
    });
    let plugin_bytes = std::fs::read(&plugin)
        .with_context(|| format!("{}: run scripts/build-plugins first", plugin.display()))?;
    anyhow::ensure!(
        binary.exists(),
        "{} not found: cargo build -p taskflow first",
        binary.display()
    );

    // The workers' compiled-code cache must be this user's along its whole
    // path (sandbox/private_dir.rs); `dir` becomes PostgreSQL's when we run
    // as root.
    let cache_dir =
        std::env::temp_dir().join(format!("taskflow-chaos-cache-{}", std::process::id()));
    let pg = PrivatePostgres::start(&dir, placement.place(Placement::POSTGRES))?;
    let mut redis = if args.redis_cluster {
        let cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 1))?;
        let epoch_key = format!(
            "{}epoch",
            taskflow::lease::Redis::connect_lazy(&cluster.url(), REDIS_PREFIX)?.prefix()
        );
        RedisUnderTest::Cluster { cluster, epoch_key }
    } else {
        RedisUnderTest::Single(PrivateRedis::start(placement.place(Placement::REDIS))?)
    };
    let ttl = Duration::from_millis(args.lease_ttl_ms);
    let direct_url = pg.url("taskflow");
    let pgbouncer = args
        .pgbouncer
        .then(|| PgBouncer::start(&direct_url, PGBOUNCER_SERVER_CONNECTIONS))
        .transpose()?;
    let database_env = match &pgbouncer {
        Some(bouncer) => bouncer.taskflow_env(&direct_url)?.to_vec(),
        None => vec![("DATABASE_URL", direct_url)],
    };
    let mut env: Vec<(String, String)> = database_env
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    let mut setup = TaskflowSetup {
        binary,
        redis_url: redis.url(),
        dir: dir.clone(),
        env: {
            env.extend([
                (
                    "TASKFLOW_LEASE_TTL".into(),
                    format!("{}ms", args.lease_ttl_ms),
                ),
                ("TASKFLOW_MAINTENANCE_INTERVAL".into(), "250ms".into()),
                ("TASKFLOW_LEADER_TERM".into(), "2s".into()),
                ("TASKFLOW_POLL_INTERVAL".into(), "500ms".into()),
                (
                    "TASKFLOW_WORKER_CONCURRENCY".into(),
                    args.concurrency.to_string(),
                ),
                ("TASKFLOW_CACHE_DIR".into(), cache_dir.display().to_string()),
                ("TASKFLOW_BACKOFF_BASE".into(), "200ms".into()),
                ("TASKFLOW_BACKOFF_MAX".into(), "2s".into()),
                ("TASKFLOW_REDIS_PREFIX".into(), REDIS_PREFIX.into()),
            ]);
            env
        },
    };
    // An API off loopback serves only clients with a token.
    let token = args.network.then(|| {
        let (token, hash) = taskflow::api::auth::create_token();
        setup.env.push(("TASKFLOW_API_TOKEN_SHA256".into(), hash));
        token
    });
    let mut apis = Vec::new();
    let mut api_addresses = Vec::new();
    let mut clients = Vec::new();
    for number in 1..=APIS {
        let place = placement.place(&Placement::api(number));
        let address = place.free_address();
        apis.push(spawn_api(&setup, &place, address, number)?);
        let client = Client::new(&format!("http://{address}")).with_token(token.clone());
        wait_until(Duration::from_secs(60), "the API", || async {
            client.list_modules(Some(1), None).await.is_ok()
        })
        .await?;
        api_addresses.push(address);
        clients.push(client);
    }
    let client = clients[0].clone();
    let module = client.push_module(plugin_bytes).await?.0.hash;
    let limited = args.max_running.is_some() || args.max_running_per_key.is_some();
    if limited {
        let limits = PutQueue {
            max_running: args.max_running,
            max_running_per_key: args.max_running_per_key,
            ..PutQueue::default()
        };
        client.put_queue("default", &limits).await?;
    }

    let mut chaos = Chaos {
        setup,
        redis_port: match &redis {
            RedisUnderTest::Single(_) if args.network => None,
            RedisUnderTest::Single(server) => Some(server.address().port()),
            RedisUnderTest::Cluster { .. } => None,
        },
        placement,
        links: HashMap::new(),
        apis,
        api_addresses,
        workers: Vec::new(),
        next_worker: 0,
        fates: HashMap::new(),
        partitioned_until: HashMap::new(),
        heals: Vec::new(),
        faults: HashMap::new(),
        random: args.seed,
    };
    for slot in 1..=args.workers {
        let place = chaos.placement.place(&Placement::worker(slot));
        chaos.spawn_worker(place)?;
    }
    // For the audit, which reads PostgreSQL directly (audit.rs says why).
    let database = sqlx::PgPool::connect(&pg.url("taskflow")).await?;
    let keys = args.max_running_per_key.map(|_| args.keys.max(1));
    let submitter = tokio::spawn(submit_all(clients, module, args.jobs, keys));
    let partition = ttl * args.partition_ttls;

    // The fault schedule: (seconds into the round, fault).
    for round in 0..args.rounds {
        let round_start = Instant::now();
        let at = |seconds: f64| round_start + Duration::from_secs_f64(seconds);
        if round == 0 {
            tokio::time::sleep_until(at(0.3).into()).await;
            chaos.restart_api().await?;
        }
        if args.network {
            tokio::time::sleep_until(at(1.0).into()).await;
            chaos.partition_a_worker(Partition::Redis, partition)?;
        }
        tokio::time::sleep_until(at(2.0).into()).await;
        chaos.kill_a_worker()?;
        if args.network {
            tokio::time::sleep_until(at(3.0).into()).await;
            chaos.partition_a_worker(Partition::Postgres, partition)?;
        }
        tokio::time::sleep_until(at(4.0).into()).await;
        chaos.pause_a_worker(ttl * 3).await?;
        tokio::time::sleep_until(at(5.0).into()).await;
        chaos.kill_a_worker()?;
        tokio::time::sleep_until(at(6.0).into()).await;
        match &mut redis {
            RedisUnderTest::Single(server) => {
                let mut connection = redis::Client::open(server.url())?
                    .get_multiplexed_async_connection()
                    .await?;
                let () = redis::cmd("FLUSHALL").query_async(&mut connection).await?;
                chaos.count("Redis FLUSHALL");
            }
            RedisUnderTest::Cluster { cluster, epoch_key } => {
                tokio::task::block_in_place(|| chaos.fail_over(cluster, epoch_key))?;
            }
        }
        tokio::time::sleep_until(at(8.0).into()).await;
        chaos.kill_a_worker()?;
        tokio::time::sleep_until(at(9.0).into()).await;
        match &mut redis {
            RedisUnderTest::Single(server) => {
                server.restart(Duration::from_millis(500))?;
                chaos.count("Redis restart (all keys lost)");
                tokio::time::sleep_until(at(10.0).into()).await;
                if args.network {
                    chaos.partition_a_worker(Partition::Both, partition)?;
                } else {
                    chaos.cut_a_worker_off_from_redis(ttl * 3);
                }
            }
            RedisUnderTest::Cluster { cluster, epoch_key } => {
                tokio::task::block_in_place(|| chaos.fail_over(cluster, epoch_key))?;
            }
        }
        tokio::time::sleep_until(at(12.0).into()).await;
        pg.crash()?;
        chaos.count("PostgreSQL crash and restart");
        tokio::time::sleep(Duration::from_secs(1)).await;
        pg.up()?;
        tokio::time::sleep_until(at(15.0).into()).await;
        chaos.kill_a_worker()?;
    }

    let (ids, submit_retries) = submitter.await??;
    for heal in chaos.heals.drain(..) {
        heal.await??;
    }
    wait_until(Duration::from_secs(300), "every job to finish", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'dead', 'cancelled')",
        )
        .fetch_one(&database)
        .await
        .is_ok_and(|unfinished| unfinished == 0)
    })
    .await?;
    // Let a paused worker resume and report before stopping everything.
    tokio::time::sleep(ttl).await;
    for worker in &mut chaos.workers {
        worker.stop(Duration::from_secs(20));
    }
    for api in &mut chaos.apis {
        api.stop(Duration::from_secs(5));
    }

    let limits = limited.then_some((args.max_running, args.max_running_per_key));
    let report = analyse(
        &database,
        &dir,
        &chaos,
        &ids,
        submit_retries,
        started,
        limits,
    )
    .await?;
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| dir.join("report.json"));
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "chaos summary: jobs={} terminal={} lost={} duplicates={} overlapping_executions={} \
         fencing_violations={} unlogged_successes={} counter_mismatches={} stale_outcomes_rejected={} rescued={} rescue_p50={:.0}ms rescue_max={:.0}ms \
         faults={:?} duration={:.1}s report={}",
        report.jobs_submitted,
        report.jobs_succeeded,
        report.lost,
        report.duplicates,
        report.overlapping_pairs,
        report.fencing_violations,
        report.unlogged_successes,
        report.counter_mismatches,
        report.stale_outcomes_rejected,
        report.rescued,
        report.rescue_p50_ms,
        report.rescue_max_ms,
        report.faults,
        report.duration_s,
        report_path.display(),
    );
    if let Some(limits) = &report.limits {
        println!(
            "chaos limits: max_running={:?} most_running(executions/records)={}/{} \
             max_running_per_key={:?} most_running_per_key(executions/records)={}/{}",
            limits.max_running,
            limits.most_running_executions,
            limits.most_running_records,
            limits.max_running_per_key,
            limits.most_running_per_key_executions,
            limits.most_running_per_key_records,
        );
    }
    database.close().await;
    pg.stop();
    if let RedisUnderTest::Single(mut server) = redis {
        server.stop();
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    if !report.passed() {
        bail!(
            "chaos checks failed; logs and the database are in {}",
            dir.display()
        );
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
