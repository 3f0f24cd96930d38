//! PostgreSQL through PgBouncer in transaction mode (`--database-pooler
//! transaction`, `store/pool.rs`, ADR 007): every kind of store call, the
//! whole system, and the read replica's statement timeout, through a real
//! PgBouncer of the test's own (testkit `PgBouncer`) with fewer server
//! connections than clients, so that consecutive transactions of one client
//! land on different server connections.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::job::JobState;
use taskflow::store::{DatabasePooler, JobFilter, Store, StoreError};
use taskflow_testkit::PgBouncer;

use crate::support::{TestApp, TestOptions, failing_every_attempt, new_job, test_database};

/// Server connections PgBouncer keeps per database: fewer than the
/// clients below, which must share them.
const SERVER_CONNECTIONS: u32 = 2;

fn pgbouncer() -> Arc<PgBouncer> {
    Arc::new(
        PgBouncer::start(&taskflow_testkit::server_database_url(), SERVER_CONNECTIONS)
            .expect("pgbouncer starts (Debian package pgbouncer)"),
    )
}

/// Runs 16 concurrent clients of `store`, each making every kind of store
/// call 20 times: reads on the pool, a single-job insert on a connection of
/// its own, a multi-job insert and a name move in transactions. Returns the
/// errors, and the panics: sqlx panics when a row does not have the columns
/// its statement described, as when a named statement ran another client's
/// SQL.
async fn every_kind_of_call(store: &Store, module: &str) -> Vec<String> {
    let client = |index: usize| {
        let (store, module) = (store.clone(), module.to_owned());
        tokio::spawn(async move { one_client(&store, &module, index).await })
    };
    futures::future::join_all((0..16).map(client))
        .await
        .into_iter()
        .flat_map(|ended| ended.unwrap_or_else(|panic| vec![format!("panicked: {panic}")]))
        .collect()
}

/// One client of [`every_kind_of_call`]: its errors.
async fn one_client(store: &Store, module: &str, index: usize) -> Vec<String> {
    let mut errors = Vec::new();
    for round in 0..20 {
        let single = store.insert_jobs(&[new_job(module)]).await;
        let batch = store
            .insert_jobs(&[new_job(module), new_job(module), new_job(module)])
            .await;
        let read = match &single {
            Ok(submitted) => store.get_job(submitted[0].job.id).await.map(|_| ()),
            Err(_) => Ok(()),
        };
        let list = store
            .list_jobs(&JobFilter {
                limit: 5,
                ..JobFilter::default()
            })
            .await
            .map(|_| ());
        // New names and moves of names made before, under the limit of
        // names a module may have.
        let name = format!("client-{index}-{}", round % 4);
        let moved = store
            .move_module_name(&name, module, "test")
            .await
            .map(|_| ());
        for result in [single.map(|_| ()), batch.map(|_| ()), read, list, moved] {
            if let Err(error) = result {
                errors.push(error.to_string());
            }
        }
    }
    errors
}

#[tokio::test]
async fn every_kind_of_store_call_works_through_a_transaction_mode_pgbouncer() {
    use sha2::Digest as _;
    let bouncer = pgbouncer();
    let db = test_database().await;
    let bytes = b"never run".to_vec();
    let module = hex::encode(sha2::Sha256::digest(&bytes));
    db.store().insert_module(&module, &bytes).await.unwrap();
    let url = bouncer.url_for(db.url()).unwrap();

    let pooled = Store::connect_lazy(&url, 16, DatabasePooler::Transaction).unwrap();
    // Migrations hold a session's advisory lock: never through the pooler.
    assert!(matches!(
        pooled.migrate().await,
        Err(StoreError::SessionRequired(_))
    ));
    let errors = every_kind_of_call(&pooled, &module).await;
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(db.store().count_jobs().await.unwrap(), 16 * 20 * 4);
    pooled.close().await;

    // The same calls with named statements, as a direct connection sends
    // them, fail: what the pooler mode is for, and proof that PgBouncer
    // does share its server connections here.
    // Such a mix-up may leave a connection waiting for what never comes,
    // so the clients are given a minute and left running after it.
    let named = Store::connect_lazy(&url, 16, DatabasePooler::None).unwrap();
    let errors = tokio::time::timeout(Duration::from_secs(60), every_kind_of_call(&named, &module))
        .await
        .unwrap_or_else(|_| vec!["still running after 60 s".into()]);
    assert!(
        !errors.is_empty(),
        "named statements all went through a transaction pooler"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn jobs_submitted_run_and_end_through_a_transaction_mode_pgbouncer() {
    let options = TestOptions {
        pgbouncer: Some(pgbouncer()),
        ..TestOptions::default()
    };
    let app = TestApp::start_with(options).await;
    let noop = app.upload("noop").await;
    let misbehave = app.upload("misbehave").await;
    for id in ["w1", "w2", "w3"] {
        app.spawn_worker(id);
    }

    // Concurrent single submissions share the group-commit writer's
    // connection; a batch is one transaction.
    let singles = futures::future::join_all(
        (0..40).map(|i| app.submit_with(SubmitJob::new(&noop, json!({ "n": i })))),
    )
    .await;
    let mut ids: Vec<_> = singles.into_iter().map(|job| job.id).collect();
    ids.extend(app.submit_many(&noop, json!({ "batch": true }), 40).await);
    let dead = app
        .submit_with(failing_every_attempt(&misbehave, 2, "no luck"))
        .await;

    for id in ids {
        let job = app.wait_final(id).await;
        assert_eq!(
            (job.state, job.attempt),
            (JobState::Succeeded, 1),
            "{job:?}"
        );
    }
    let dead = app.wait_final(dead.id).await;
    assert_eq!((dead.state, dead.attempt), (JobState::Dead, 2), "{dead:?}");
    assert_eq!(app.attempts(dead.id).await.len(), 2);
    let requeued = app.client.retry(dead.id).await.unwrap();
    assert_eq!(requeued.state, JobState::Available);
    app.finish().await;
}

#[tokio::test]
async fn a_replica_read_through_a_transaction_mode_pgbouncer_keeps_its_statement_timeout() {
    let bouncer = pgbouncer();
    let db = test_database().await;
    let url = bouncer.url_for(db.url()).unwrap();
    let primary = Store::connect_lazy(&url, 4, DatabasePooler::Transaction).unwrap();
    let replica = primary.replica(&url, Duration::from_millis(200)).unwrap();

    // A lock the read must wait for, held by a transaction of the test's.
    let blocker = db.lock_table("jobs").await.unwrap();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        replica.list_jobs(&JobFilter {
            limit: 1,
            ..JobFilter::default()
        }),
    )
    .await
    .expect("PostgreSQL ended the read at its statement timeout");
    let error = read.expect_err("the read waited on the lock");
    assert_eq!(error.sqlstate().as_deref(), Some("57014"), "{error}");
    blocker.release().await.unwrap();
    replica.close().await;
    primary.close().await;
    db.drop_database().await.unwrap();
}
