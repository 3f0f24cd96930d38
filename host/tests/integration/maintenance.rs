//! The maintenance services, one pass at a time, and the election of the
//! worker that runs them.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use taskflow::api::types::SubmitJob;
use taskflow::job::JobState;
use taskflow::lease::{Leases, Redis, Waker};
use taskflow::maintenance::elector::{MAINTENANCE, Office, RESCUE};
use taskflow::maintenance::{Elector, Rescuer, Scheduler, Service};
use taskflow::store::{ClaimPath, Store};
use uuid::Uuid;

use crate::support::{
    TestApp, WorkerProcess, assert_state, eventually, new_job, redis_url, store_with_jobs,
};

fn redis() -> Redis {
    Redis::connect_lazy(
        &redis_url(),
        &format!("tftest:{}:", Uuid::new_v4().simple()),
    )
    .unwrap()
}

fn leases(ttl: Duration) -> Leases {
    Leases::new(redis(), ttl)
}

/// What a worker shutting down does: its elector stops, and resigns if it
/// leads.
async fn shut_down(elector: Elector) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    shutdown.cancel();
    elector.run(shutdown).await;
}

/// The worker that leads the rescues, as PostgreSQL records it.
async fn current_leader(store: &Store) -> Option<String> {
    store.current_leader(RESCUE).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_makes_due_jobs_available_and_says_when_the_next_falls_due() {
    let (db, due) = store_with_jobs(0).await;
    let store = db.store().clone();
    assert!(due.is_empty());
    let module = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"not run by these tests",
    ));
    let past = new_job(&module);
    let later = new_job(&module);
    let jobs = [
        taskflow::job::NewJob {
            run_at: Some(Utc::now() + chrono::Duration::milliseconds(300)),
            ..past.clone()
        },
        taskflow::job::NewJob {
            run_at: Some(Utc::now() + chrono::Duration::seconds(30)),
            ..later.clone()
        },
    ];
    store.insert_jobs(&jobs).await.unwrap();
    let scheduler = Scheduler::new(
        store.clone(),
        Waker::spawn(leases(Duration::from_secs(1)).redis().clone()),
    );

    let next = scheduler
        .run_once()
        .await
        .unwrap()
        .expect("a job is waiting");
    assert!(next <= Duration::from_millis(300), "{next:?}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let next = scheduler
        .run_once()
        .await
        .unwrap()
        .expect("a job is waiting");
    assert!(next > Duration::from_secs(20), "the later job: {next:?}");

    let state = |id| {
        let store = store.clone();
        async move { store.get_job(id).await.unwrap().unwrap().job.state }
    };
    assert_eq!(state(past.id).await, JobState::Available);
    assert_eq!(state(later.id).await, JobState::Scheduled);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rescuer_ends_attempts_whose_lease_is_gone_and_extends_those_still_held() {
    let ttl = Duration::from_millis(200);
    let (db, _) = store_with_jobs(2).await;
    let store = db.store().clone();
    let leases = leases(ttl);
    let rescuer = Rescuer::new(
        store.clone(),
        leases.clone(),
        taskflow::config::RetryPolicy {
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
        },
    );
    // Redis was just met: nothing is rescued for one TTL.
    assert!(rescuer.rescue().await.unwrap().in_grace_period);

    let claimed = store
        .claim("default", "w1", 2, ttl, ClaimPath::Plain)
        .await
        .unwrap()
        .jobs;
    let (held, abandoned) = (&claimed[0], &claimed[1]);
    // Both claims' PostgreSQL leases run out; one worker still holds its key.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(leases.restore(&[held.lease()]).await.unwrap(), [true]);

    let counts = rescuer.rescue().await.unwrap();
    assert_eq!(
        (counts.examined, counts.extended, counts.rescued),
        (2, 1, 1)
    );
    let held = store.get_job(held.id).await.unwrap().unwrap();
    assert_eq!(held.job.state, JobState::Running);
    let rescued = store.get_job(abandoned.id).await.unwrap().unwrap();
    assert_eq!(rescued.job.state, JobState::Retrying);
    assert_eq!(rescued.job.last_error.unwrap().0["kind"], "lease_expired");
    db.drop_database().await.unwrap();
}

/// After Redis lost its keys, a missing key proves nothing until its own
/// worker had time to restore it: a worker given a longer TTL than the
/// rescuer's renews less often, so its attempts wait out the TTL their
/// claim granted before the rescuer trusts their missing keys.
#[tokio::test(flavor = "multi_thread")]
async fn after_redis_lost_its_keys_the_rescuer_waits_out_each_attempts_own_ttl() {
    let ttl = Duration::from_millis(200);
    let (db, _) = store_with_jobs(2).await;
    let store = db.store().clone();
    let rescuer = Rescuer::new(
        store.clone(),
        leases(ttl),
        taskflow::config::RetryPolicy {
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
        },
    );
    // Redis was just met, as after a flush: nothing is rescued for one TTL.
    assert!(rescuer.rescue().await.unwrap().in_grace_period);
    let claim = async |worker_ttl| {
        let mut claimed = store
            .claim("default", "w", 1, worker_ttl, ClaimPath::Plain)
            .await
            .unwrap()
            .jobs;
        claimed.remove(0).id
    };
    let longer_ttl = Duration::from_secs(2);
    let short = claim(ttl).await;
    let long = claim(longer_ttl).await;
    // Both deadlines pass, as they do once the rescuer confirmed a lease
    // whose key then vanished; neither key is in Redis.
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 millisecond'")
        .execute(&mut admin)
        .await
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;

    let counts = rescuer.rescue().await.unwrap();
    assert!(!counts.in_grace_period);
    assert_eq!((counts.examined, counts.rescued), (1, 1), "{counts:?}");
    let state = async |id| store.get_job(id).await.unwrap().unwrap().job.state;
    assert_eq!(state(short).await, JobState::Retrying);
    assert_eq!(state(long).await, JobState::Running);

    // Once Redis has kept its keys for the longer TTL too, that key's
    // absence is trusted.
    tokio::time::sleep(longer_ttl).await;
    let counts = rescuer.rescue().await.unwrap();
    assert_eq!((counts.examined, counts.rescued), (1, 1), "{counts:?}");
    assert_eq!(state(long).await, JobState::Retrying);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_leads_at_a_time_and_another_takes_over_when_it_resigns_or_its_term_runs_out() {
    let (db, _) = store_with_jobs(0).await;
    let store = db.store().clone();
    let term = Duration::from_millis(600);
    let first = Elector::new(store.clone(), Office::Rescue(redis()), "w1".into(), term);
    let second = Elector::new(store.clone(), Office::Rescue(redis()), "w2".into(), term);
    let (one, two) = (first.leadership(), second.leadership());

    first.run_once().await;
    second.run_once().await;
    assert!(one.is_leading() && !two.is_leading());
    first.run_once().await;
    assert!(one.is_leading(), "the leader renews its term");

    // The leader stalls: its term runs out, and it stops leading on its own
    // clock as the other is elected.
    tokio::time::sleep(term + Duration::from_millis(50)).await;
    assert!(!one.is_leading());
    second.run_once().await;
    assert!(two.is_leading());
    first.run_once().await;
    assert!(!one.is_leading(), "the stalled leader learns it lost");

    // A leader that shuts down resigns: the next election needs no wait.
    shut_down(second).await;
    first.run_once().await;
    assert!(one.is_leading());
    assert_eq!(current_leader(&store).await.as_deref(), Some("w1"));
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_from_redis_does_not_lead_rescues_and_a_rescue_leader_that_loses_redis_steps_down()
 {
    let (db, _) = store_with_jobs(0).await;
    let store = db.store().clone();
    let term = Duration::from_secs(30);
    // Nothing listens on port 1: every Redis call fails at once.
    let unreachable = Redis::connect_lazy("redis://127.0.0.1:1", "tftest:").unwrap();
    let cut_off = Elector::new(
        store.clone(),
        Office::Rescue(unreachable),
        "cut-off".into(),
        term,
    );
    let healthy = Elector::new(
        store.clone(),
        Office::Rescue(redis()),
        "healthy".into(),
        term,
    );

    // The rescuer needs Redis to tell a dead worker from a live one, so a
    // worker that cannot reach it must not take the leadership...
    cut_off.run_once().await;
    assert!(!cut_off.leadership().is_leading());
    healthy.run_once().await;
    assert!(healthy.leadership().is_leading());

    // ...and a leader that loses Redis resigns rather than sit on the
    // leadership for its whole term while rescues wait.
    let proxy = crate::support::TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let partitioned = Elector::new(
        store.clone(),
        Office::Rescue(
            Redis::connect_lazy(&format!("redis://{}", proxy.address), "tftest:").unwrap(),
        ),
        "partitioned".into(),
        term,
    );
    shut_down(healthy).await;
    partitioned.run_once().await;
    assert!(partitioned.leadership().is_leading());
    proxy.cut().await;
    partitioned.run_once().await;
    assert!(!partitioned.leadership().is_leading());
    assert_eq!(
        current_leader(&store).await,
        None,
        "it resigned, so a worker that can reach Redis is elected at once"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_maintenance_leader_hands_maintenance_to_another_worker_within_seconds() {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;
    let mut workers: HashMap<String, WorkerProcess> = ["a", "b"]
        .into_iter()
        .map(|id| (id.to_owned(), app.worker_process(id, &[], Stdio::null())))
        .collect();
    let leader = eventually(Duration::from_secs(30), || async {
        app.store().current_leader(MAINTENANCE).await.unwrap()
    })
    .await;
    let mut dead = workers.remove(&leader).expect("the leader is one of ours");
    dead.kill().expect("SIGKILL the leader");
    dead.wait().unwrap();
    let killed_at = Instant::now();

    // A job due in a moment starts only if some worker runs the scheduler.
    let job = app
        .submit_with(SubmitJob {
            run_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(500)),
            ..SubmitJob::new(module, json!({"mode": "succeed"}))
        })
        .await;
    let successor = eventually(Duration::from_secs(10), || async {
        let current = app.store().current_leader(MAINTENANCE).await.unwrap();
        current.filter(|current| *current != leader)
    })
    .await;
    let handed_over_after = killed_at.elapsed();
    assert!(
        handed_over_after < Duration::from_secs(5),
        "maintenance handed over {handed_over_after:?} after the leader died (term 1 s)"
    );
    let job = app.wait_final(job.id).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.worker_id.as_deref(), Some(successor.as_str()));
    for (_, mut worker) in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    app.finish().await;
}

/// The scheduler, the pruner and the counter folder need PostgreSQL alone:
/// a worker that loses Redis keeps leading them, so a job due later still
/// starts, while the rescues, which need Redis, wait for a leader that
/// reaches it.
#[tokio::test(flavor = "multi_thread")]
async fn services_that_need_only_postgres_go_on_while_redis_is_down() {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;
    let proxy = crate::support::TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let redis_via_proxy = format!("redis://{}", proxy.address);
    let _worker = app.worker_process(
        "alone",
        &[
            ("REDIS_URL", &redis_via_proxy),
            ("TASKFLOW_POLL_INTERVAL", "100ms"),
        ],
        Stdio::null(),
    );
    for office in [MAINTENANCE, RESCUE] {
        eventually(Duration::from_secs(30), || async {
            app.store().current_leader(office).await.unwrap()
        })
        .await;
    }
    proxy.cut().await;
    // Longer than a term (1 s): a leadership that needed Redis has lapsed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.store().current_leader(RESCUE).await.unwrap(), None);
    assert_eq!(
        app.store()
            .current_leader(MAINTENANCE)
            .await
            .unwrap()
            .as_deref(),
        Some("alone")
    );

    let job = app
        .submit_with(SubmitJob {
            run_at: Some(Utc::now() + chrono::Duration::milliseconds(300)),
            ..SubmitJob::new(module, json!({"mode": "succeed"}))
        })
        .await;
    let job = eventually(Duration::from_secs(30), || async {
        let job = app.client.get_job(job.id).await.unwrap();
        (job.state == JobState::Succeeded).then_some(job)
    })
    .await;
    assert_eq!(job.worker_id.as_deref(), Some("alone"));
    app.finish().await;
}

/// Workers that were killed never withdraw their presence, and only the
/// console's overview used to forget them: a fleet whose pods come and go
/// grew `{prefix}workers` without bound in a Redis that must not evict.
/// Each worker forgets the long-silent ones as it announces itself.
#[tokio::test(flavor = "multi_thread")]
async fn workers_silent_for_an_hour_are_forgotten_without_anyone_reading_the_console() {
    use taskflow::lease::WorkerPresence;

    let app = TestApp::start().await;
    let redis = &app.backends.redis;
    let silent_since = Utc::now() - chrono::Duration::hours(2);
    for id in ["killed-1", "killed-2"] {
        let presence = WorkerPresence {
            worker_id: id.to_owned(),
            slots: 1,
            busy: 0,
            queues: vec!["default".to_owned()],
            seen_at: silent_since,
        };
        redis.announce_worker(&presence).await.unwrap();
    }
    let key = format!("{}workers", redis.prefix());
    let fields = || async {
        let mut connection = redis.connection();
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        fields
    };
    assert_eq!(fields().await.len(), 2);

    app.spawn_worker("alive");
    let left = eventually(Duration::from_secs(10), || async {
        let mut left = fields().await;
        left.sort();
        (left == ["alive"]).then_some(left)
    })
    .await;
    assert_eq!(left, ["alive"]);
    app.finish().await;
}
