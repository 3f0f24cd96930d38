//! TaskFlow's fault-injection suite.
//!
//! Starts a private PostgreSQL cluster, a private Redis, the API and several
//! workers as separate OS processes, submits jobs through the API with
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

mod analysis;
mod audit;
mod cluster;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Parser;
use nix::sys::signal::Signal;
use serde_json::json;
use taskflow::api::types::{PutQueue, SubmitJob};
use taskflow::client::Client;
use uuid::Uuid;

use analysis::WorkerFate;
use audit::analyse;
use cluster::{PgCluster, RedisLink, RedisServer, Taskflow, TaskflowSetup};
use taskflow_testkit::{PgBouncer, RedisCluster, free_port};

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
}

/// Server connections the run's PgBouncer keeps: fewer than the API and
/// workers open, so that they share them.
const PGBOUNCER_SERVER_CONNECTIONS: u32 = 12;

/// The Redis the run uses, and so the Redis faults it can inject.
enum RedisUnderTest {
    /// One server: flushed, restarted, and each worker reaching it through
    /// a link that can be cut.
    Single(RedisServer),
    /// A cluster: failed over, at the master of `epoch_key`'s slot, which
    /// holds all of TaskFlow's keys.
    Cluster {
        cluster: RedisCluster,
        epoch_key: String,
    },
}

impl RedisUnderTest {
    fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster { cluster, .. } => cluster.url(),
        }
    }
}

/// Everything the fault schedule works on.
struct Chaos {
    setup: TaskflowSetup,
    /// The single Redis server's port; `None` on a cluster, whose clients
    /// reach every node directly, so no link sits in between.
    redis_port: Option<u16>,
    /// Each worker's way to Redis, by name.
    links: HashMap<String, RedisLink>,
    api: Taskflow,
    api_port: u16,
    workers: Vec<Taskflow>,
    next_worker: usize,
    fates: HashMap<String, WorkerFate>,
    faults: HashMap<&'static str, usize>,
    random: u64,
}

impl Chaos {
    fn spawn_worker(&mut self) -> anyhow::Result<()> {
        self.next_worker += 1;
        let name = format!("worker-{}", self.next_worker);
        let mut env = vec![("TASKFLOW_WORKER_ID", name.clone())];
        if let Some(port) = self.redis_port {
            let link = RedisLink::start(port)?;
            env.push(("REDIS_URL", link.url()));
            self.links.insert(name.clone(), link);
        }
        let worker = self.setup.spawn("worker", &name, &env)?;
        self.fates.insert(name, WorkerFate::default());
        self.workers.push(worker);
        Ok(())
    }

    /// A worker that is not paused, chosen by a fixed-seed generator.
    fn pick_worker(&mut self) -> usize {
        let running: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                self.fates[&self.workers[i].name]
                    .paused
                    .last()
                    .is_none_or(|(_, resumed)| *resumed <= Utc::now())
            })
            .collect();
        self.random = self
            .random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        running[(self.random >> 33) as usize % running.len()]
    }

    fn count(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_default() += 1;
        println!("chaos: {fault}");
    }

    fn kill_a_worker(&mut self) -> anyhow::Result<()> {
        let index = self.pick_worker();
        let mut worker = self.workers.remove(index);
        worker.kill()?;
        self.fates.get_mut(&worker.name).unwrap().killed_at = Some(Utc::now());
        self.count("worker SIGKILL");
        self.spawn_worker()
    }

    async fn pause_a_worker(&mut self, for_how_long: Duration) -> anyhow::Result<()> {
        let index = self.pick_worker();
        let worker = &self.workers[index];
        worker.signal(Signal::SIGSTOP)?;
        let stopped = Utc::now();
        let name = worker.name.clone();
        let pid = worker.pid();
        self.fates
            .get_mut(&name)
            .unwrap()
            .paused
            .push((stopped, stopped + for_how_long));
        self.count("worker SIGSTOP past its lease");
        tokio::spawn(async move {
            tokio::time::sleep(for_how_long).await;
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
        });
        Ok(())
    }

    /// Cuts a worker off from Redis by a black hole for `for_how_long`: its
    /// commands time out, its leases cannot be renewed, and the other
    /// workers must rescue its jobs without two executions overlapping.
    fn cut_a_worker_off_from_redis(&mut self, for_how_long: Duration) {
        let index = self.pick_worker();
        let name = self.workers[index].name.clone();
        self.links[&name].black_hole();
        self.count("worker cut off from Redis (black hole)");
        let heal = self.links[&name].heal_handle();
        tokio::spawn(async move {
            tokio::time::sleep(for_how_long).await;
            heal.send_replace(false);
        });
    }

    /// Kills the master of TaskFlow's slot, waits for its replica to take
    /// over, and starts the old master again, which rejoins as a replica.
    fn fail_over(&mut self, cluster: &mut RedisCluster, epoch_key: &str) -> anyhow::Result<()> {
        let killed = cluster.kill_master_of(epoch_key)?;
        self.count("Redis Cluster master SIGKILL (failover)");
        cluster.until_healthy()?;
        cluster.restart(killed)?;
        cluster.until_healthy()
    }

    async fn restart_api(&mut self) -> anyhow::Result<()> {
        self.api.kill()?;
        self.count("API SIGKILL mid-submission");
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.api = spawn_api(&self.setup, self.api_port)?;
        Ok(())
    }
}

fn spawn_api(setup: &TaskflowSetup, port: u16) -> anyhow::Result<Taskflow> {
    setup.spawn(
        "api",
        "api",
        &[("TASKFLOW_LISTEN", format!("127.0.0.1:{port}"))],
    )
}

/// Submits `count` jobs from 8 concurrent clients, each retrying with the same
/// idempotency key until the API accepts it (through API restarts and
/// database crashes). Returns the job ids and how many retries it took.
async fn submit_all(
    client: Client,
    module: String,
    count: usize,
    keys: Option<usize>,
) -> (Vec<Uuid>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(vec![Uuid::nil(); count]));
    let retries = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, module, next, ids, retries) = (
                client.clone(),
                module.clone(),
                next.clone(),
                ids.clone(),
                retries.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let job = SubmitJob {
                        module: module.clone(),
                        input: Some(json!({"mode": "sleep", "ms": 30 + (i * 37) % 170}).into()),
                        idempotency_key: Some(format!("chaos-{i}")),
                        max_attempts: Some(25),
                        concurrency_key: keys.map(|keys| format!("tenant-{}", i % keys)),
                        ..SubmitJob::default()
                    };
                    loop {
                        match client.submit(&job).await {
                            Ok(submitted) => {
                                ids.lock().unwrap()[i] = submitted.job.id;
                                break;
                            }
                            Err(_) => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("submitter task");
    }
    let ids = ids.lock().unwrap().clone();
    (ids, retries.load(Ordering::Relaxed))
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let pg = PgCluster::start(&dir)?;
    let mut redis = if args.redis_cluster {
        let cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 1))?;
        let epoch_key = format!(
            "{}epoch",
            taskflow::lease::Redis::connect_lazy(&cluster.url(), REDIS_PREFIX)?.prefix()
        );
        RedisUnderTest::Cluster { cluster, epoch_key }
    } else {
        RedisUnderTest::Single(RedisServer::start()?)
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
    let setup = TaskflowSetup {
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
    let api_port = free_port();
    let api = spawn_api(&setup, api_port)?;
    let client = Client::new(&format!("http://127.0.0.1:{api_port}"));
    wait_until(Duration::from_secs(60), "the API", || async {
        client.list_modules(Some(1), None).await.is_ok()
    })
    .await?;
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
            RedisUnderTest::Single(server) => Some(server.port),
            RedisUnderTest::Cluster { .. } => None,
        },
        links: HashMap::new(),
        api,
        api_port,
        workers: Vec::new(),
        next_worker: 0,
        fates: HashMap::new(),
        faults: HashMap::new(),
        random: args.seed,
    };
    for _ in 0..args.workers {
        chaos.spawn_worker()?;
    }
    // For the audit, which reads PostgreSQL directly (audit.rs says why).
    let database = sqlx::PgPool::connect(&pg.url("taskflow")).await?;
    let keys = args.max_running_per_key.map(|_| args.keys.max(1));
    let submitter = tokio::spawn(submit_all(client.clone(), module, args.jobs, keys));

    // The fault schedule: (seconds into the round, fault).
    for round in 0..args.rounds {
        let round_start = Instant::now();
        let at = |seconds: f64| round_start + Duration::from_secs_f64(seconds);
        if round == 0 {
            tokio::time::sleep_until(at(0.3).into()).await;
            chaos.restart_api().await?;
        }
        tokio::time::sleep_until(at(2.0).into()).await;
        chaos.kill_a_worker()?;
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
                chaos.cut_a_worker_off_from_redis(ttl * 3);
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

    let (ids, submit_retries) = submitter.await?;
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
    chaos.api.stop(Duration::from_secs(5));

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
         fencing_violations={} counter_mismatches={} stale_outcomes_rejected={} rescued={} rescue_p50={:.0}ms rescue_max={:.0}ms \
         faults={:?} duration={:.1}s report={}",
        report.jobs_submitted,
        report.jobs_succeeded,
        report.lost,
        report.duplicates,
        report.overlapping_pairs,
        report.fencing_violations,
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
