//! Scratch databases: each test's own database is gone when the test is,
//! whether it ended by `drop_database`, by forgetting to, or by a panic.

use sqlx::{Connection as _, PgConnection};
use taskflow_testkit::{ScratchDatabase, server_database_url};

/// Whether database `name` exists on the test server.
async fn exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&server_database_url())
        .await
        .expect("PostgreSQL is reachable");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("pg_database is readable")
}

async fn scratch() -> ScratchDatabase {
    ScratchDatabase::create(&server_database_url(), "taskflow_kit_test", 2)
        .await
        .expect("PostgreSQL lets us create databases")
}

#[tokio::test]
async fn a_dropped_database_is_gone() {
    let database = scratch().await;
    let name = database.name().to_owned();
    assert!(exists(&name).await);
    database.drop_database().await.unwrap();
    assert!(!exists(&name).await);
}

/// What a test that forgets `drop_database`, or panics before it, leaves.
#[tokio::test]
async fn a_database_let_go_without_drop_database_is_gone_too() {
    let database = scratch().await;
    let name = database.name().to_owned();
    database.store().count_attempts().await.unwrap();
    drop(database);
    assert!(!exists(&name).await);
}
