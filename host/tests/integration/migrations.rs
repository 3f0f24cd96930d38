//! Migrations (`Store::migrate`) against a real PostgreSQL: API instances
//! that start together migrate one database together.

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
