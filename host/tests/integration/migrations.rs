//! Migrations (`Store::migrate`) against a real PostgreSQL: API instances
//! that start together migrate one database together.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use taskflow::store::{DatabasePooler, MIGRATOR, Store};
use taskflow_testkit::server_database_url;

use crate::support::TestDb;

/// Each `taskflow api` migrates at start, so instances started together
/// migrate one new database together. One waited for the other's
/// migrations inside a statement (sqlx's blocking `pg_advisory_lock`),
/// holding a snapshot; the other's `CREATE INDEX CONCURRENTLY` (migration
/// 20261219000001) waits for every older snapshot to end, so each waited
/// for the other until PostgreSQL cancelled one as a deadlock, and the
/// index build it cancelled left an invalid index that failed every later
/// start.
#[tokio::test(flavor = "multi_thread")]
async fn processes_that_migrate_one_new_database_together_all_succeed() {
    let db = TestDb::create_unmigrated(&server_database_url(), "taskflow_migrate", 2)
        .await
        .unwrap();
    let instances: Vec<Store> = (0..3)
        .map(|_| Store::connect_lazy(db.url(), 2, DatabasePooler::None).unwrap())
        .collect();

    let migrated = futures::future::join_all(instances.iter().map(Store::migrate)).await;
    for (instance, result) in migrated.iter().enumerate() {
        assert!(result.is_ok(), "instance {instance}: {result:?}");
    }
    let mut database = PgConnection::connect(db.url()).await.unwrap();
    let (applied, invalid): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM _sqlx_migrations WHERE success),
                (SELECT count(*) FROM pg_index WHERE NOT indisvalid OR NOT indisready)",
    )
    .fetch_one(&mut database)
    .await
    .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    assert_eq!(invalid, 0, "an index build was left unfinished");

    database.close().await.unwrap();
    for instance in &instances {
        instance.close().await;
    }
    db.drop_database().await.unwrap();
}

/// A migration that builds an index `CONCURRENTLY`, and the index.
const INDEX_MIGRATION: i64 = 20261221000002;
const INDEX: &str = "stopping_attempts_queue_idx";

/// The state a run of [`INDEX_MIGRATION`] leaves when it is stopped during
/// its build: the file unapplied and the index left behind, invalid. Here
/// the build is cancelled while it waits, as `CREATE INDEX CONCURRENTLY`
/// does, for an older snapshot to end: a repeatable-read transaction's.
async fn interrupt_the_index_build(db: &TestDb) {
    forget_the_index_migration(db).await;
    let mut database = PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(&format!("DROP INDEX {INDEX}"))
        .execute(&mut database)
        .await
        .unwrap();
    let mut snapshot = db
        .begin_held("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    let mut builder = PgConnection::connect(db.url()).await.unwrap();
    let builder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut builder)
        .await
        .unwrap();
    let sql = &MIGRATOR
        .iter()
        .find(|migration| migration.version == INDEX_MIGRATION)
        .unwrap()
        .sql;
    let build = sqlx::raw_sql(sql).execute(&mut builder);
    let cancel = async {
        snapshot.until_waiting(1).await.unwrap();
        sqlx::query_scalar::<_, bool>("SELECT pg_cancel_backend($1)")
            .bind(builder_pid)
            .fetch_one(&mut database)
            .await
            .unwrap()
    };
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(build, cancel)
    });
    let (built, cancelled) = joined.await.expect("the build never waited");
    assert!(cancelled && built.is_err(), "the build was not interrupted");
    snapshot.release().await.unwrap();
    database.close().await.unwrap();
    assert_eq!(index_state(db).await, Some(false), "no invalid index left");
}

/// Forgets that [`INDEX_MIGRATION`] was applied, as sqlx does not record a
/// `-- no-transaction` migration until its statement has returned.
async fn forget_the_index_migration(db: &TestDb) {
    let mut database = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(INDEX_MIGRATION)
        .execute(&mut database)
        .await
        .unwrap();
    database.close().await.unwrap();
}

/// Whether [`INDEX`] is valid; `None` if it does not exist.
async fn index_state(db: &TestDb) -> Option<bool> {
    let mut database = PgConnection::connect(db.url()).await.unwrap();
    let valid =
        sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)")
            .bind(INDEX)
            .fetch_optional(&mut database)
            .await
            .unwrap();
    database.close().await.unwrap();
    valid
}

/// Whether [`INDEX_MIGRATION`] is recorded as applied.
async fn index_migration_applied(db: &TestDb) -> bool {
    let mut database = PgConnection::connect(db.url()).await.unwrap();
    let applied = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
    )
    .bind(INDEX_MIGRATION)
    .fetch_one(&mut database)
    .await
    .unwrap();
    database.close().await.unwrap();
    applied
}

/// A `taskflow api` stopped while a migration built its index
/// `CONCURRENTLY` (a rolling deploy's killed pod, a lost connection, a
/// build PostgreSQL cancelled) left the index invalid and the file
/// unapplied, and every later start failed on the index's name ("relation
/// already exists") until someone dropped it by hand.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_whose_index_build_was_interrupted_is_applied_at_the_next_start() {
    let db = TestDb::create(&server_database_url(), "taskflow_migrate", 2)
        .await
        .unwrap();
    interrupt_the_index_build(&db).await;

    db.store().migrate().await.unwrap();

    assert_eq!(index_state(&db).await, Some(true));
    assert!(index_migration_applied(&db).await);
    db.drop_database().await.unwrap();
}

/// A process stopped after the build, before sqlx recorded the migration,
/// leaves the index valid and the file unapplied: the same failure at
/// every start.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_stopped_after_its_index_build_is_applied_at_the_next_start() {
    let db = TestDb::create(&server_database_url(), "taskflow_migrate", 2)
        .await
        .unwrap();
    forget_the_index_migration(&db).await;
    assert_eq!(index_state(&db).await, Some(true));

    db.store().migrate().await.unwrap();

    assert_eq!(index_state(&db).await, Some(true));
    assert!(index_migration_applied(&db).await);
    db.drop_database().await.unwrap();
}
