//! The execution plane: claim → lease → run → finish.
//!
//! A [`Worker`] is stateless; run as many as you like. Its loop:
//!
//! 1. **Claim** as many jobs as it has free slots plus as many as it expects
//!    to start soon ([`Capacity`]), from PostgreSQL
//!    ([`Store::claim`]): one statement, `FOR UPDATE SKIP LOCKED`, fresh
//!    fencing token per job; a paused or limited queue under its row lock,
//!    no more than its limits leave (store/claim.rs). Claims go over a
//!    connection of their own ([`Store::single_connection`]).
//! 2. **Lease** them: PostgreSQL's claim holds each for one TTL, and the
//!    [`Heartbeat`] writes and renews the Redis lease key of every attempt
//!    still in [`InFlight`] every third of a TTL, once it is a twelfth of
//!    a TTL old (short jobs settle before they need one).
//! 3. **Run** each in the [`Sandbox`], in a fresh store, under the job's
//!    limits and its [`RunGrant`].
//! 4. **Finish**: the slot is freed and the outcome goes to the
//!    [`Completer`], which commits outcomes in batches, guarded by the
//!    fencing token ([`Store::finish_if_lease_matches`]).
//!
//! Meanwhile it writes its presence to Redis for the console
//! (lease/presence.rs), and, when traces are on, records each attempt's
//! claim, run and finish as spans of its job's trace (telemetry/traces.rs).
//!
//! When it has free slots and found no work, the worker sleeps until a
//! Redis wake-up arrives or `poll_interval` passes.

mod attempt_metrics;
pub mod capacity;
pub mod completer;
mod grants;
pub mod heartbeat;
mod outcome;
mod presence;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use capacity::{Capacity, Claim, Slot};
pub use completer::Completer;
pub use heartbeat::{Heartbeat, InFlight};

use outcome::{AttemptIdentity, settle_attempt};

use crate::config::{ExecutionLimits, RetryPolicy, WorkerConfig};
use crate::job::{Failure, FailureKind, attempts_used};
use crate::lease::{Leases, Redis, WakeupListener};
use crate::sandbox::{Attempt, CompilerConfig, Execution, JobContext, RunGrant, Sandbox};
use crate::store::{ClaimPath, ClaimedJob, Store};
use crate::telemetry::Traces;

/// How long a worker backs off after a failed claim (PostgreSQL down).
const CLAIM_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How long a worker with nothing to claim waits before asking a paused or
/// limited queue again (at most: `poll_interval` if shorter). Each ask
/// takes the queue's row lock for one short transaction.
const LIMITED_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A worker process's execution loop; see the [module docs](self).
pub struct Worker {
    id: String,
    config: WorkerConfig,
    concurrency: usize,
    retry: RetryPolicy,
    store: Store,
    /// The claim loop's store: a connection of its own
    /// ([`Store::single_connection`]), one more than `store`'s pool.
    claims: Store,
    redis: Redis,
    leases: Leases,
    sandbox: Sandbox,
    grants: grants::GrantsCache,
    retry_scheduled: Arc<Notify>,
    attempt_metrics: attempt_metrics::AttemptMetrics,
    traces: Traces,
}

impl Worker {
    /// A worker named by `config` (see [`WorkerConfig::effective_worker_id`])
    /// with its own sandbox sized for `config` and `limits`. It signals
    /// `retry_scheduled` after committing outcomes that
    /// schedule a retry (give it the [`Scheduler::nudge`](crate::maintenance::Scheduler::nudge)
    /// of the process's scheduler).
    ///
    /// # Errors
    ///
    /// If the sandbox cannot be created (its cache directory is unsafe, for
    /// one).
    pub fn new(
        config: WorkerConfig,
        limits: &ExecutionLimits,
        compiler: CompilerConfig,
        retry: RetryPolicy,
        store: Store,
        leases: Leases,
        retry_scheduled: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        let id = config.effective_worker_id();
        let redis = leases.redis().clone();
        let concurrency = config.effective_concurrency();
        let sandbox = Sandbox::new(limits.sandbox_config(
            concurrency,
            Some(config.effective_cache_dir()?),
            compiler,
        ))?;
        let grants = grants::GrantsCache::new(store.clone(), config.secret_key.clone());
        Ok(Self {
            attempt_metrics: attempt_metrics::AttemptMetrics::new(&config.queues),
            grants,
            id,
            config,
            concurrency,
            retry,
            claims: store.single_connection(),
            store,
            redis,
            leases,
            sandbox,
            retry_scheduled,
            traces: Traces::default(),
        })
    }

    /// This worker, recording its attempts as spans in `traces`.
    pub fn with_traces(self, traces: Traces) -> Self {
        Self { traces, ..self }
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `shutdown`, then stops claiming, lets claimed attempts
    /// run and writes their outcomes before returning.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let in_flight = InFlight::default();
        let (completer, completer_task) = Completer::spawn(
            this.store.clone(),
            this.leases.clone(),
            in_flight.clone(),
            this.retry_scheduled.clone(),
            this.traces.clone(),
        );
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(
            Heartbeat {
                in_flight: in_flight.clone(),
                leases: this.leases.clone(),
                store: this.store.clone(),
            }
            .run(heartbeat_stop.clone()),
        );
        let wakeups =
            WakeupListener::spawn(this.redis.clone(), &this.config.queues, shutdown.clone());
        let capacity = Capacity::new(this.concurrency);
        let presence_stop = CancellationToken::new();
        let presence = tokio::spawn(presence::announce_until(
            this.redis.clone(),
            this.id.clone(),
            this.config.queues.clone(),
            capacity.clone(),
            presence_stop.clone(),
        ));
        let attempts = TaskTracker::new();
        tracing::info!(worker_id = %this.id, concurrency = this.concurrency, queues = ?this.config.queues, "worker started");

        this.claim_loop(
            &capacity, &wakeups, &in_flight, &completer, &attempts, &shutdown,
        )
        .await;

        // Drain: every claimed attempt runs, then its outcome is written.
        attempts.close();
        attempts.wait().await;
        drop(completer);
        let _ = completer_task.await;
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        presence_stop.cancel();
        let _ = presence.await;
        tracing::info!(worker_id = %this.id, "worker stopped");
    }

    async fn claim_loop(
        self: &Arc<Self>,
        capacity: &Arc<Capacity>,
        wakeups: &Notify,
        in_flight: &InFlight,
        completer: &Completer,
        attempts: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let queues = &self.config.queues;
        let mut paths = vec![ClaimPath::default(); queues.len()];
        let mut next_queue = 0;
        while !shutdown.is_cancelled() {
            let index = next_queue % queues.len();
            // A job claimed ahead holds one of a limited queue's places while
            // it waits here for a slot, but only briefly: claiming ahead
            // covers PREFETCH_HORIZON of expected work, and none for long
            // jobs (capacity.rs).
            let wanted = capacity.claimable();
            if wanted == 0 {
                tokio::select! {
                    () = capacity.changed() => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            next_queue += 1;
            let lease_valid_until = Instant::now() + self.leases.ttl();
            let claim_began = SystemTime::now();
            let claimed = match self
                .claims
                .claim(
                    &queues[index],
                    &self.id,
                    wanted,
                    self.leases.ttl(),
                    paths[index],
                )
                .await
            {
                Ok(claimed) => {
                    paths[index] = claimed.next_path;
                    claimed.jobs
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim jobs; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(CLAIM_RETRY_DELAY) => {}
                        () = shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            let full_batch = claimed.len() == wanted;
            let timing = ClaimTiming {
                lease_valid_until,
                began: claim_began,
                ended: SystemTime::now(),
            };
            self.start(claimed, timing, capacity, in_flight, completer, attempts)
                .await;
            if full_batch || next_queue % queues.len() != 0 {
                continue;
            }
            // A limited queue's capacity comes back when a running job of it
            // ends anywhere, or its rate window moves on: nothing announces
            // either, so such a queue is asked again sooner.
            let idle = if paths.iter().any(ClaimPath::is_limited) {
                self.config.poll_interval.min(LIMITED_POLL_INTERVAL)
            } else {
                self.config.poll_interval
            };
            tokio::select! {
                () = wakeups.notified() => {}
                () = tokio::time::sleep(idle) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Spawns the executions of claimed jobs, which wait for a slot. Their
    /// leases are held in PostgreSQL by the claim; the heartbeat writes the
    /// Redis keys of those still held at its first round at least TTL/12
    /// after the claim.
    async fn start(
        self: &Arc<Self>,
        claimed: Vec<ClaimedJob>,
        timing: ClaimTiming,
        capacity: &Arc<Capacity>,
        in_flight: &InFlight,
        completer: &Completer,
        attempts: &TaskTracker,
    ) {
        if claimed.is_empty() {
            return;
        }
        metrics::counter!("taskflow_jobs_claimed_total").increment(claimed.len() as u64);
        let traces = self
            .traces
            .contexts_of(&self.store, claimed.iter().map(|job| job.id))
            .await;
        let batch = claimed.len();
        // No Redis round trip here: the heartbeat writes the lease keys of
        // attempts still held at its first round at least TTL/12 from now
        // (see `heartbeat`).
        for mut job in claimed {
            let trace = traces.get(&job.id).copied();
            if let Some(trace) = trace {
                let timed = (timing.began, timing.ended);
                self.traces.claimed(trace, &job, &self.id, batch, timed);
            }
            let grant = in_flight.register(job.lease(), timing.lease_valid_until);
            let claim = capacity.claim();
            let worker = self.clone();
            let completer = completer.clone();
            worker
                .attempt_metrics
                .started(&job.queue, job.run_at, job.attempted_at);
            attempts.spawn(async move {
                let identity = AttemptIdentity::of(&job, trace);
                let began = SystemTime::now();
                let execution = worker.execute(&mut job, grant, claim);
                let finished = settle_attempt(&worker.id, &worker.retry, identity, execution).await;
                if let Some(trace) = trace {
                    worker
                        .traces
                        .attempt_ran(trace, &job, &finished, (began, SystemTime::now()));
                }
                worker.attempt_metrics.ended(&job.queue, &finished);
                completer.submit(finished);
            });
        }
    }

    /// Runs one attempt: prepares its module (from a cache, or compiled)
    /// before taking an execution slot, so a compile never holds one, then
    /// runs the guest. The slot is released as soon as the guest is done.
    async fn execute(&self, job: &mut ClaimedJob, grant: Arc<RunGrant>, claim: Claim) -> Execution {
        let give_up_at = Instant::now() + job.limits.timeout;
        let prepared = self
            .sandbox
            .prepare(
                &job.module_hash,
                fetch_module(&self.store, &job.module_hash, &grant, give_up_at),
            )
            .await;
        let task = match prepared {
            Ok((task, _source)) => task,
            Err(failure) => return Execution::failed(failure),
        };
        let grants = match self.grants.for_task(&task, &job.queue).await {
            Ok(grants) => grants,
            Err(failure) => return Execution::failed(failure),
        };
        let slot = claim.slot().await;
        if !grant.is_valid_at(Instant::now()) {
            // The slot came after the grant ended (the worker was paused, or
            // cut off from Redis, while the attempt waited): the job may be
            // running elsewhere by now, so the attempt does not start.
            return Execution::failed(Failure::new(
                FailureKind::LeaseLost,
                "the worker lost the job's lease before the attempt could start",
            ));
        }
        let attempt = Attempt {
            input: std::mem::take(&mut job.input),
            context: JobContext {
                job_id: job.id.to_string(),
                attempt: attempts_used(job.attempt, job.attempt_base),
                max_attempts: job.max_attempts as u32,
                queue: job.queue.clone(),
            },
            limits: job.limits,
            grant,
            grants,
        };
        // These two events bracket every execution of guest code; the chaos
        // suite (tests/chaos) reads them to prove no two executions of one
        // job overlap.
        tracing::debug!(
            target: "taskflow::attempt",
            job_id = %job.id, lease_token = job.lease_token, attempt = job.attempt,
            "attempt started"
        );
        let execution = self.sandbox.run(&task, attempt).await;
        tracing::debug!(
            target: "taskflow::attempt",
            job_id = %job.id, lease_token = job.lease_token,
            outcome = execution.result.as_ref().err().map_or("succeeded", |f| f.kind.code()),
            "attempt ended"
        );
        slot.release(execution.duration);
        execution
    }
}

/// When a claim ran.
#[derive(Debug, Clone, Copy)]
struct ClaimTiming {
    /// Its leases hold until then (by this worker's clock).
    lease_valid_until: Instant,
    /// Its statement's start and end, for its spans.
    began: SystemTime,
    ended: SystemTime,
}

/// First delay before retrying a failed module fetch; doubles up to
/// [`MAX_FETCH_RETRY_DELAY`].
const FIRST_FETCH_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_FETCH_RETRY_DELAY: Duration = Duration::from_secs(2);

/// The module's bytes, for a worker that has not compiled it yet. A
/// PostgreSQL blip must not cost the job an attempt, so failures are retried
/// while the attempt still holds its lease, until `give_up_at`.
async fn fetch_module(
    store: &Store,
    hash: &str,
    grant: &RunGrant,
    give_up_at: Instant,
) -> Result<Vec<u8>, String> {
    let mut delay = FIRST_FETCH_RETRY_DELAY;
    loop {
        match store.module_bytes(hash).await {
            Ok(Some(bytes)) => return Ok(bytes),
            Ok(None) => return Err(format!("module {hash} is not in the database")),
            Err(error) => {
                let now = Instant::now();
                if now + delay >= give_up_at || !grant.is_valid_at(now) {
                    return Err(format!("cannot load module {hash}: {error}"));
                }
                tracing::warn!(%error, module = hash, retry_in = ?delay, "cannot load module; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_FETCH_RETRY_DELAY);
            }
        }
    }
}
