//! Maintenance: the background services that keep jobs moving, run by one
//! elected worker process at a time.
//!
//! - [`Scheduler`]: makes `scheduled` and `retrying` jobs `available` when
//!   they fall due, and wakes their workers.
//! - [`Rescuer`]: ends attempts whose worker stopped renewing its lease, so
//!   their jobs run again within seconds of the lease expiring.
//! - [`Pruner`]: deletes finished jobs past their queue's retention.
//! - [`CounterFolder`]: folds the log of job transitions into the counters
//!   the queue listing reads.
//! - [`Elector`]: which worker runs them ([`elector`]).
//!
//! Every service has one shape, [`Service`]: a `run_once` that does one
//! bounded pass (tests call it directly) and says how soon it wants the
//! next, which [`run`] calls while this process leads, at most an interval
//! apart: exactly when a pass asked for sooner (the scheduler's next due
//! job), else after the interval plus a little jitter, so services do not
//! fire in step. Their
//! statements are guarded (each re-checks what it selected a row by), so
//! the brief overlap of two leaders that [`elector`] allows costs nothing
//! but duplicate work; the scheduler and rescuer skip locked rows, the
//! pruner waits for the few it deletes (store/prune.rs).

pub mod counter_folder;
pub mod elector;
pub mod pruner;
pub mod rescuer;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use counter_folder::CounterFolder;
pub use elector::{Elector, Leadership};
pub use pruner::Pruner;
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
        let asked = match service.run_once().await {
            Ok(sooner) => sooner,
            Err(error) => {
                tracing::warn!(%error, service = S::NAME, "maintenance pass failed");
                None
            }
        };
        tokio::select! {
            () = tokio::time::sleep(sleep_after(asked, interval)) => {}
            () = doorbell.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// How long to sleep after a pass that `asked` for its next one that soon
/// (or did not ask): exactly that, up to `interval`, since a service asks
/// for a moment that matters (the scheduler, the next job's `run_at`);
/// otherwise `interval` plus jitter.
fn sleep_after(asked: Option<Duration>, interval: Duration) -> Duration {
    match asked {
        Some(sooner) if sooner < interval => sooner,
        _ => jittered(interval),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_asks_for_a_moment_gets_it_exactly_and_the_rest_get_jitter() {
        let interval = Duration::from_secs(1);
        let due = Duration::from_millis(250);
        for _ in 0..100 {
            assert_eq!(sleep_after(Some(due), interval), due);
            assert_eq!(sleep_after(Some(Duration::ZERO), interval), Duration::ZERO);
            for asked in [None, Some(interval), Some(interval * 5)] {
                let sleep = sleep_after(asked, interval);
                assert!(
                    (interval..=interval.mul_f64(1.0 + JITTER_FRACTION)).contains(&sleep),
                    "{asked:?}: {sleep:?}"
                );
            }
        }
    }
}
