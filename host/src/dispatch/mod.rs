//! Background services that keep jobs moving. Every worker process runs
//! them; their statements are guarded and use `SKIP LOCKED`, so any number
//! can run at once without stepping on each other.
//!
//! - [`Scheduler`]: makes `scheduled` and `retrying` jobs `available` when
//!   they fall due, and wakes their workers.
//! - [`Rescuer`]: ends attempts whose worker stopped renewing its lease, so
//!   their jobs run again within seconds of the lease expiring.

pub mod rescuer;
pub mod scheduler;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use rescuer::{RescueCounts, Rescuer};
pub use scheduler::Scheduler;

/// Runs the scheduler and the rescuer until `shutdown`.
pub async fn run(
    scheduler: Scheduler,
    rescuer: Rescuer,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tokio::join!(
        scheduler.run(interval, shutdown.clone()),
        rescuer.run(interval, shutdown)
    );
}
