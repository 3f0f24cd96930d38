//! Maintenance: the background services that keep jobs moving, run by one
//! elected worker process at a time.
//!
//! - [`Scheduler`]: makes `scheduled` and `retrying` jobs `available` when
//!   they fall due, and wakes their workers.
//! - [`Rescuer`]: ends attempts whose worker stopped renewing its lease, so
//!   their jobs run again within seconds of the lease expiring.
//! - [`Elector`]: which worker runs them ([`elector`]).
//!
//! Every service has one shape, [`Service`]: a `run_once` that does one
//! bounded pass (tests call it directly) and says how soon it wants the
//! next, which [`run`] calls while this process leads, at most an interval
//! apart, with a little jitter so services do not fire in step. Their
//! statements are guarded and skip locked rows, so the brief overlap of two
//! leaders that [`elector`] allows costs nothing but duplicate work.

pub mod elector;
pub mod rescuer;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use elector::{Elector, Leadership};
pub use rescuer::{RescueCounts, Rescuer};
pub use scheduler::Scheduler;

/// A maintenance service; see the [module docs](self).
pub trait Service: Send + Sync + 'static {
    /// Its name, in logs.
    const NAME: &'static str;

    /// Why a pass failed.
    type Error: std::fmt::Display + Send;

    /// One bounded pass. `Some(delay)` asks for the next pass sooner than
    /// the interval.
    fn run_once(&self) -> impl Future<Output = Result<Option<Duration>, Self::Error>> + Send;

    /// Rings when a pass should run now rather than at its time.
    fn doorbell(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// Most of an interval added at random to each sleep, so services of one
/// process, and of a leader and its successor, do not run in step.
const JITTER_FRACTION: f64 = 0.1;

/// Runs `service` while this process leads, until `shutdown`: a pass, then a
/// sleep of at most `interval` (less if the pass asked for it), plus jitter.
pub async fn run<S: Service>(
    service: S,
    mut leadership: Leadership,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let doorbell = service.doorbell().unwrap_or_default();
    loop {
        tokio::select! {
            () = leadership.acquired() => {}
            () = shutdown.cancelled() => return,
        }
        let next = match service.run_once().await {
            Ok(sooner) => sooner.map_or(interval, |sooner| sooner.min(interval)),
            Err(error) => {
                tracing::warn!(%error, service = S::NAME, "maintenance pass failed");
                interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(jittered(next)) => {}
            () = doorbell.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// `sleep` plus up to [`JITTER_FRACTION`] of it.
fn jittered(sleep: Duration) -> Duration {
    let mut random = [0u8; 2];
    let fraction = match getrandom::fill(&mut random) {
        Ok(()) => f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX),
        Err(_) => 0.5,
    };
    sleep.mul_f64(1.0 + JITTER_FRACTION * fraction)
}
