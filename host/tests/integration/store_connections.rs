//! How the store lets go of its connections to PostgreSQL.

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};
use taskflow::store::{DatabasePooler, Store};
use taskflow_testkit::{DelayProxy, Place, database_url_through, server_address};

use crate::support::{test_database, until_no_clients};

/// `Store::close` leaves no connection open, not even the one its last
/// call used: that one goes back to the pool a round trip after the call
/// returns, since sqlx pings it first, and sqlx 0.8's own close can miss a
/// connection that comes back while it closes the others
/// (launchbadge/sqlx#3217). The link to PostgreSQL is slowed here (by
/// `taskflow-delay-proxy`, which the workspace build makes) so that the
/// store is closed during that round trip.
#[tokio::test(flavor = "multi_thread")]
async fn closing_the_store_closes_the_connection_its_last_call_is_still_returning() {
    const ONE_WAY: Duration = Duration::from_millis(300);
    let db = test_database().await;
    db.store().close().await;
    let link = DelayProxy::start(
        &Place::Loopback,
        Place::Loopback.free_address(),
        server_address(db.url()).unwrap(),
        ONE_WAY,
    )
    .expect("the delay proxy starts");
    let url = database_url_through(db.url(), link.address()).unwrap();
    let store = Store::connect_lazy(&url, 1, DatabasePooler::None).unwrap();
    store.ping().await.unwrap();

    // The connection's ping is under way, and answered a round trip later.
    tokio::time::sleep(ONE_WAY / 3).await;
    let closing = Instant::now();
    store.close().await;
    assert!(
        closing.elapsed() >= ONE_WAY,
        "the close began after the ping was answered, so it tested nothing"
    );
    let mut admin = PgConnection::connect(&taskflow_testkit::server_database_url())
        .await
        .unwrap();
    until_no_clients(&mut admin, db.name()).await;

    admin.close().await.unwrap();
    drop(store);
    db.drop_database().await.unwrap();
}
