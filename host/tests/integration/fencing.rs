//! Fencing tokens: only the attempt holding the current token may finish a
//! job. These exercise the store directly (a database per test,
//! `support::store_with_jobs`), playing each actor's statements in the order that breaks
//! naive queues; where a worker's heartbeat takes part, its rounds run
//! against a Redis of the test's own.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use taskflow::job::{AttemptOutcome, JobState, NewJob};
use taskflow::lease::{Leases, Redis};
use taskflow::queue::{QueueLimits, QueueSettings};
use taskflow::store::{ClaimPath, ClaimedJob, DatabasePooler, FinishedAttempt, Store, Transition};
use taskflow::worker::{Heartbeat, InFlight};
use taskflow_testkit::{Place, PrivateRedis};
use uuid::Uuid;

use crate::support::{
    TestDb, lease_lapses, new_job, redis_url, rescue, store_with_jobs, stored_module, success,
    test_database,
};

const TTL: Duration = Duration::from_secs(30);

async fn store_with_job() -> (TestDb, Store, Uuid) {
    let (db, ids) = store_with_jobs(1).await;
    let store = db.store().clone();
    (db, store, ids[0])
}

/// Writes one attempt's outcome, guarded by its lease token.
async fn finish(store: &Store, outcome: &FinishedAttempt) -> Transition {
    let transitions = store
        .finish_if_lease_matches(std::slice::from_ref(outcome))
        .await
        .unwrap();
    assert_eq!(transitions.len(), 1);
    transitions[0]
}

/// The one job `worker` claims; there must be one to claim.
async fn claim_one(store: &Store, worker: &str) -> ClaimedJob {
    let mut claimed = store
        .claim("default", worker, 1, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 1, "{worker} claims one job");
    claimed.remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_workers_outcome_is_rejected_and_the_current_one_accepted() {
    let (db, store, id) = store_with_job().await;

    let old = claim_one(&store, "paused-worker").await;
    assert_eq!(old.id, id);
    assert!(
        store
            .claim("default", "other", 10, TTL, ClaimPath::Plain)
            .await
            .unwrap()
            .jobs
            .is_empty(),
        "a running job is not claimable"
    );

    // The paused worker's lease expires; the rescuer ends its attempt.
    let deadline = lease_lapses(&store, &old).await;
    let rescue = rescue(&old, "paused-worker", deadline);
    assert_eq!(finish(&store, &rescue).await, Transition::Applied);
    assert_eq!(store.promote_due(10).await.unwrap(), ["default"]);
    let new = claim_one(&store, "healthy-worker").await;
    assert!(new.lease_token > old.lease_token);
    assert_eq!(new.attempt, 2);

    // The paused worker wakes up and reports success with its old token.
    let stale = success(&old, "paused-worker", b"\"stale\"");
    assert_eq!(finish(&store, &stale).await, Transition::Stale);
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.job.state, JobState::Running);
    assert_eq!(job.job.lease_token, Some(new.lease_token));
    assert_eq!(job.output, None, "the stale result was not written");

    // The current holder finishes; a duplicate of its write changes nothing.
    let current = success(&new, "healthy-worker", b"\"fresh\"");
    assert_eq!(finish(&store, &current).await, Transition::Applied);
    assert_eq!(finish(&store, &current).await, Transition::Stale);
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.job.state, JobState::Succeeded);
    assert_eq!(job.output.as_deref(), Some(&b"\"fresh\""[..]));

    let attempts = store.list_attempts(id, None, 100).await.unwrap().unwrap();
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| (a.lease_token, a.end.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (old.lease_token, AttemptOutcome::LeaseExpired),
            (new.lease_token, AttemptOutcome::Succeeded)
        ]
    );
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_wins_over_a_running_attempt_that_finishes_later() {
    let (db, store, id) = store_with_job().await;
    let running = claim_one(&store, "w").await;
    let cancelled = store
        .cancel_if_unfinished(id, "cancelled", TTL)
        .await
        .unwrap();
    assert_eq!(cancelled.previous, JobState::Running);
    assert_eq!(cancelled.job.state, JobState::Cancelled);

    let late = success(&running, "w", b"1");
    assert_eq!(finish(&store, &late).await, Transition::Stale);
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.job.state, JobState::Cancelled);
    let attempts = store.list_attempts(id, None, 100).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].end.outcome(), AttemptOutcome::Cancelled);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rescuer_cannot_overwrite_an_attempt_that_just_finished() {
    let (db, store, id) = store_with_job().await;
    let job = claim_one(&store, "w").await;
    // A rescuer reads the job as running past its lease's deadline...
    let deadline = lease_lapses(&store, &job).await;
    let finished = success(&job, "w", b"1");
    assert_eq!(finish(&store, &finished).await, Transition::Applied);

    // ...and acts once the worker's outcome is in.
    let rescue = rescue(&job, "w", deadline);
    assert_eq!(finish(&store, &rescue).await, Transition::Stale);
    assert_eq!(
        store.get_job(id).await.unwrap().unwrap().job.state,
        JobState::Succeeded
    );
    assert_eq!(
        store
            .extend_leases_if_token_matches(&[(job.lease(), TTL)])
            .await
            .unwrap(),
        0
    );
    db.drop_database().await.unwrap();
}

/// A worker whose lease key went missing (Redis flushed) asks PostgreSQL to
/// confirm its lease, and on a yes writes the key back and extends its
/// grant by a TTL. A rescuer that read the key missing just before must
/// then not end the attempt: the worker would run on for up to a renewal
/// interval while the job's next attempt starts after a shorter backoff.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_confirmed_after_the_rescuers_check_cannot_be_rescued() {
    let (db, store, id) = store_with_job().await;
    let job = claim_one(&store, "w").await;
    // The rescuer finds the lease past its deadline (and its key missing).
    let found = lease_lapses(&store, &job).await;

    // The worker's heartbeat confirms it first.
    assert_eq!(
        store.confirm_leases(&[job.lease()], TTL).await.unwrap(),
        [job.lease()]
    );
    assert_eq!(
        finish(&store, &rescue(&job, "w", found)).await,
        Transition::Stale,
        "the lease was confirmed"
    );
    let current = store.get_job(id).await.unwrap().unwrap().job;
    assert_eq!(current.state, JobState::Running);

    // Once the worker stops confirming and the deadline passes, it goes.
    let passed = lease_lapses(&store, &job).await;
    assert_eq!(
        finish(&store, &rescue(&job, "w", passed)).await,
        Transition::Applied
    );
    db.drop_database().await.unwrap();
}

/// A rescuer that read a lease past its deadline and stalled (its process
/// paused, its host swapping) can commit after the worker confirmed the
/// lease and after that confirmed deadline passed too, while the worker
/// keeps its key alive in Redis. The rescue was decided on a deadline that
/// no longer holds: it must not apply, however late it comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_rescue_decided_on_a_deadline_the_worker_moved_since_does_not_apply() {
    let (db, store, id) = store_with_job().await;
    let job = claim_one(&store, "w").await;
    let found = lease_lapses(&store, &job).await;
    store.confirm_leases(&[job.lease()], TTL).await.unwrap();
    // The confirmed deadline passes in turn (the worker renews its key in
    // Redis alone; only the rescuer moves the deadline of a live lease).
    let moved = lease_lapses(&store, &job).await;
    assert_ne!(found, moved);

    assert_eq!(
        finish(&store, &rescue(&job, "w", found)).await,
        Transition::Stale,
        "the stalled rescuer's decision"
    );
    let current = store.get_job(id).await.unwrap().unwrap().job;
    assert_eq!(current.state, JobState::Running);
    db.drop_database().await.unwrap();
}

/// A fresh attempt's first key write can be held up on its way to Redis
/// (a slow network, a Redis busy or paused) until after the claim's
/// deadline, and land between the rescuer's read of the key (missing) and
/// its rescue. The heartbeat must not then take the written key as proof
/// that it still holds the lease: its grant would run one more TTL while
/// the rescued job's next attempt starts after its backoff.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_key_write_that_lands_after_the_claims_deadline_is_not_proof_of_the_lease() {
    let (db, store, _) = store_with_job().await;
    let redis_server = PrivateRedis::start(Place::Loopback).unwrap();
    let prefix = format!("tftest:{}:", Uuid::new_v4().simple());
    let connect = || Redis::connect_lazy(&redis_server.url(), &prefix).unwrap();
    let worker = Heartbeat {
        in_flight: InFlight::default(),
        leases: Leases::new(connect(), TTL),
        store: store.clone(),
    };
    let rescuers_leases = Leases::new(connect(), TTL);
    let mut admin = connect().connection();
    // Every connection is open before Redis is paused.
    worker.leases.redis().ping().await.unwrap();
    rescuers_leases.redis().ping().await.unwrap();

    let job = claim_one(&store, "w").await;
    // The claim's deadline passes; a rescuer will find the lease past it.
    let found = lease_lapses(&store, &job).await;
    // Redis holds writes back (reads go on); the round's key write will
    // wait in it, well within the client's 2 s response timeout.
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    // The worker's first round comes late in the claim's TTL: its grant has
    // a moment left when the round sends the write.
    let grant = worker
        .in_flight
        .register(job.lease(), Instant::now() + Duration::from_millis(300));
    let round = tokio::spawn(async move {
        let counts = worker.run_once().await;
        (worker, counts)
    });
    // The rescuer reads the key missing.
    assert_eq!(rescuers_leases.holders(&[job.id]).await.unwrap(), [None]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!grant.is_valid_at(Instant::now()), "the grant lapsed");

    // The write lands and the round ends; then the rescue commits.
    let () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let (_worker, counts) = round.await.unwrap();
    assert_eq!(counts.renewed, 1, "the round held the lease: {counts:?}");
    assert!(grant.is_valid_at(Instant::now()));
    assert_eq!(
        finish(&store, &rescue(&job, "w", found)).await,
        Transition::Stale,
        "the job was rescued while its attempt ran on"
    );
    db.drop_database().await.unwrap();
}

/// A worker's heartbeat, on a key prefix of its own, and two jobs its
/// worker claimed (not yet registered in its `InFlight`).
async fn heartbeat_holding_two_claims() -> (TestDb, Heartbeat, [ClaimedJob; 2]) {
    let (db, _) = store_with_jobs(2).await;
    let store = db.store().clone();
    let prefix = format!("tftest:{}:", Uuid::new_v4().simple());
    let worker = Heartbeat {
        in_flight: InFlight::default(),
        leases: Leases::new(Redis::connect_lazy(&redis_url(), &prefix).unwrap(), TTL),
        store: store.clone(),
    };
    let claims = [claim_one(&store, "w").await, claim_one(&store, "w").await];
    (db, worker, claims)
}

/// A cancel whose revocation never reached Redis leaves the attempt's key
/// with its token, which the worker would go on renewing. The heartbeat's
/// read of PostgreSQL (`Heartbeat::stop_ended`) stops that attempt, and
/// only that one.
#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_stops_the_attempts_postgres_says_ended_and_no_other() {
    let (db, worker, [cancelled, running]) = heartbeat_holding_two_claims().await;
    let store = &worker.store;
    let until = Instant::now() + TTL;
    let cancelled_grant = worker.in_flight.register(cancelled.lease(), until);
    let running_grant = worker.in_flight.register(running.lease(), until);

    assert_eq!(worker.stop_ended().await, 0, "both still run");
    store
        .cancel_if_unfinished(cancelled.id, "cancelled", TTL)
        .await
        .unwrap();
    assert_eq!(worker.stop_ended().await, 1);
    assert!(!cancelled_grant.is_valid_at(Instant::now()), "stopped");
    assert!(running_grant.is_valid_at(Instant::now()), "left running");
    assert_eq!(
        worker.stop_ended().await,
        0,
        "a stopped attempt counts once"
    );
    db.drop_database().await.unwrap();
}

/// A claim holds its job in PostgreSQL for a whole TTL, so a round leaves
/// alone the key of an attempt claimed less than a quarter of a renewal
/// interval ago (`Heartbeat::run_once`): a job that settles within that,
/// as the jobs of a drain do (claimed ahead, run, and waiting for their
/// outcome's batch), never touches Redis. It wrote a key for every
/// attempt held, even one claimed a millisecond before the round, and
/// released it again right after: four Redis commands per job a round
/// happened to catch. An attempt claimed longer ago gets its key.
#[tokio::test(flavor = "multi_thread")]
async fn a_round_writes_no_key_for_an_attempt_claimed_less_than_a_quarter_interval_ago() {
    let (db, worker, [young, older]) = heartbeat_holding_two_claims().await;
    let until = Instant::now() + TTL;
    let young_grant = worker.in_flight.register(young.lease(), until);
    let quarter = worker.leases.renew_interval() / 4;
    let older_grant = worker.in_flight.register(older.lease(), until - quarter);

    let counts = worker.run_once().await;
    assert_eq!((counts.renewed, counts.lost), (1, 0), "{counts:?}");
    let holders = worker.leases.holders(&[young.id, older.id]).await.unwrap();
    assert_eq!(holders[0], None, "the young attempt has no key");
    assert_eq!(
        holders[1].map(|holder| holder.lease_token),
        Some(older.lease_token)
    );
    assert!(
        young_grant.is_valid_at(Instant::now()),
        "its claim holds it"
    );
    assert!(older_grant.is_valid_at(Instant::now() + TTL - quarter));
    assert!(
        !worker.in_flight.remove(young.lease()),
        "settled, it has no key to release"
    );
    assert!(worker.in_flight.remove(older.lease()));
    db.drop_database().await.unwrap();
}

/// A worker's outcomes, the rescuer's extensions and a heartbeat's
/// confirmations each update a batch of jobs in one statement, which locks
/// the rows in the order of its input when PostgreSQL probes the primary
/// key for each element (its plan for a small batch among many running
/// jobs; here hash and merge joins are also ruled out). Two batches of the same jobs in opposite orders deadlocked,
/// and one of them failed after `deadlock_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn batches_of_the_same_jobs_in_opposite_orders_do_not_deadlock() {
    // Enough running jobs that probing the primary key for each element of
    // a small batch is the plan.
    let (db, _) = store_with_jobs(1000).await;
    let mut claimed = db
        .store()
        .claim("default", "w", 1000, TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    claimed.sort_by_key(|job| job.id);
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    let name = db.name();
    for sql in [
        "ANALYZE jobs".to_owned(),
        format!("ALTER DATABASE {name} SET enable_hashjoin = off"),
        format!("ALTER DATABASE {name} SET enable_mergejoin = off"),
        // Each row takes a while to update, so the two batches overlap.
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql
         AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$"
            .to_owned(),
        "CREATE TRIGGER slow_row BEFORE UPDATE ON jobs
         FOR EACH ROW EXECUTE FUNCTION slow_row()"
            .to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    // Connections opened from now on plan without hash or merge joins.
    let store = Store::connect_lazy(db.url(), 4, DatabasePooler::None).unwrap();

    let extensions = [(claimed[0].lease(), TTL), (claimed[1].lease(), TTL)];
    let outcomes = [
        success(&claimed[1], "w", b"1"),
        success(&claimed[0], "w", b"1"),
    ];
    let (extended, finished) = tokio::join!(
        store.extend_leases_if_token_matches(&extensions),
        store.finish_if_lease_matches(&outcomes),
    );
    extended.unwrap();
    assert_eq!(
        finished.unwrap(),
        [Transition::Applied, Transition::Applied]
    );
    store.close().await;
    db.drop_database().await.unwrap();
}

/// A cancelled attempt's guest runs until its worker's next heartbeat
/// round reads the revocation (up to a third of a TTL). A retry right
/// after the cancel must not let the job's next attempt start meanwhile:
/// it waits one TTL from the cancel, as a scheduled job. A job cancelled
/// while it waited has no guest running and is available at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_right_after_cancelling_a_running_job_waits_for_its_guest_to_stop() {
    let (db, ids) = store_with_jobs(2).await;
    let store = db.store().clone();
    let running = claim_one(&store, "w").await;
    let cancelled = store
        .cancel_if_unfinished(running.id, "cancelled", TTL)
        .await
        .unwrap();
    assert_eq!(cancelled.previous, JobState::Running);
    let waiting = ids.iter().copied().find(|id| *id != running.id).unwrap();
    store
        .cancel_if_unfinished(waiting, "cancelled", TTL)
        .await
        .unwrap();

    let requeued = store.requeue_if_finished(running.id, TTL).await.unwrap();
    assert_eq!(requeued.state, JobState::Scheduled);
    let settled_at = cancelled.job.finished_at.unwrap() + TTL;
    assert!(
        requeued.run_at >= settled_at,
        "{} < {settled_at}",
        requeued.run_at
    );
    assert!(
        store.promote_due(10).await.unwrap().is_empty(),
        "not due yet"
    );

    // Cancelled again while it waits, and retried: still not before the
    // first cancel's guest has stopped.
    store
        .cancel_if_unfinished(running.id, "cancelled", TTL)
        .await
        .unwrap();
    let again = store.requeue_if_finished(running.id, TTL).await.unwrap();
    assert_eq!(again.state, JobState::Scheduled);
    assert!(
        again.run_at >= settled_at,
        "{} < {settled_at}",
        again.run_at
    );

    let requeued = store.requeue_if_finished(waiting, TTL).await.unwrap();
    assert_eq!(requeued.state, JobState::Available);
    db.drop_database().await.unwrap();
}

/// The wait is the TTL the cancelled attempt's worker was granted where
/// that is longer than the API's own `--lease-ttl`: a worker with a longer
/// TTL renews, and so reads the revocation, less often, and its guest stops
/// later. Each claim path records its TTL: the plain claim, a limited
/// queue's reservation and a per-key limit's claim.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_cancel_waits_out_the_ttl_its_worker_was_granted() {
    const WORKERS_TTL: Duration = Duration::from_secs(120);
    const APIS_TTL: Duration = Duration::from_secs(1);
    let db = test_database().await;
    let store = db.store().clone();
    let hash = stored_module(&store).await;
    let limited = |limits| QueueSettings {
        limits,
        ..QueueSettings::default()
    };
    let at_most_ten = QueueLimits {
        max_running: NonZeroU32::new(10),
        ..QueueLimits::default()
    };
    let one_per_key = QueueLimits {
        max_running_per_key: NonZeroU32::new(1),
        ..QueueLimits::default()
    };
    for (queue, limits) in [("limited", at_most_ten), ("keyed", one_per_key)] {
        store
            .put_queue(queue, &limited(limits), &BTreeMap::new(), None)
            .await
            .unwrap();
    }

    for queue in ["default", "limited", "keyed"] {
        let job = NewJob {
            queue: queue.into(),
            concurrency_key: Some("k".into()),
            ..new_job(&hash)
        };
        store.insert_jobs(std::slice::from_ref(&job)).await.unwrap();
        let claimed = store
            .claim(queue, "w", 1, WORKERS_TTL, ClaimPath::Plain)
            .await
            .unwrap()
            .jobs;
        assert_eq!(claimed.len(), 1, "{queue}: one job claimed");
        let cancelled = store
            .cancel_if_unfinished(job.id, "cancelled", APIS_TTL)
            .await
            .unwrap();
        assert_eq!(cancelled.previous, JobState::Running, "{queue}");

        let requeued = store.requeue_if_finished(job.id, APIS_TTL).await.unwrap();
        let settled_at = cancelled.job.finished_at.unwrap() + WORKERS_TTL;
        assert_eq!(requeued.state, JobState::Scheduled, "{queue}");
        assert!(
            requeued.run_at >= settled_at,
            "{queue}: {} < {settled_at}",
            requeued.run_at
        );
    }

    // Never shorter than the API's own TTL, which stands in for a TTL not
    // recorded (or left by an earlier claim).
    let job = new_job(&hash);
    store.insert_jobs(std::slice::from_ref(&job)).await.unwrap();
    let claimed = store
        .claim("default", "w", 1, APIS_TTL, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    assert_eq!(claimed.len(), 1);
    let cancelled = store
        .cancel_if_unfinished(job.id, "cancelled", APIS_TTL)
        .await
        .unwrap();
    assert_eq!(cancelled.lease_ttl, Some(APIS_TTL));
    let requeued = store
        .requeue_if_finished(job.id, WORKERS_TTL)
        .await
        .unwrap();
    let settled_at = cancelled.job.finished_at.unwrap() + WORKERS_TTL;
    assert!(
        requeued.run_at >= settled_at,
        "{} < {settled_at}",
        requeued.run_at
    );
    db.drop_database().await.unwrap();
}
