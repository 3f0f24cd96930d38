//! How the store lets go of its connections to PostgreSQL.

use std::time::Duration;

use taskflow::store::{DatabasePooler, Store};
use taskflow_testkit::{DelayProxy, Place, database_url_through, server_address};

use crate::support::{clients_of_database, eventually, test_database};

/// `Store::close` leaves no connection open, not even the one its last
/// call used: that one goes back to the pool a round trip after the call
/// returns, since sqlx pings it first, and sqlx 0.8's own close can miss a
/// connection that comes back while it closes the others
/// (launchbadge/sqlx#3217). The link to PostgreSQL is slowed here so that
/// the store is closed during that round trip.
#[tokio::test(flavor = "multi_thread")]
async fn closing_the_store_closes_the_connection_its_last_call_is_still_returning() {
    const ONE_WAY: Duration = Duration::from_millis(150);
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
    tokio::time::sleep(ONE_WAY / 2).await;
    store.close().await;
    eventually(Duration::from_secs(5), || async {
        (clients_of_database(db.name()).await == 0).then_some(())
    })
    .await;

    drop(store);
    db.drop_database().await.unwrap();
}
