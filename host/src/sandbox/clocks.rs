//! The clocks a guest sees: real time, but coarse.
//!
//! Rust's std (and most language runtimes) need a wall clock and a
//! monotonic clock, so a guest gets both, with two restrictions that cost a
//! task nothing and take away tools from a hostile one:
//!
//! - both tick in whole [`RESOLUTION`]s, so the guest cannot time its own
//!   code finely enough for cache-timing side channels (the mitigation
//!   browsers use);
//! - the monotonic clock starts at zero when the attempt starts, so it reveals
//!   neither the host's uptime nor anything about other attempts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// The guest's clock resolution.
pub const RESOLUTION: Duration = Duration::from_millis(1);

/// `duration` rounded down to a whole number of [`RESOLUTION`]s. Counted
/// in `u128` nanoseconds throughout: a wall clock holds about 1.8 × 10¹²
/// milliseconds, which no `u32` tick count can.
fn coarse(duration: Duration) -> Duration {
    const NANOS_PER_SECOND: u128 = 1_000_000_000;
    let step = RESOLUTION.as_nanos();
    let nanos = duration.as_nanos() / step * step;
    Duration::new(
        (nanos / NANOS_PER_SECOND) as u64,
        (nanos % NANOS_PER_SECOND) as u32,
    )
}

/// Wall-clock time, rounded down to [`RESOLUTION`].
pub(super) struct CoarseWallClock;

impl HostWallClock for CoarseWallClock {
    fn resolution(&self) -> Duration {
        RESOLUTION
    }

    fn now(&self) -> Duration {
        coarse(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }
}

/// Time since the attempt started, rounded down to [`RESOLUTION`], in
/// nanoseconds.
pub(super) struct AttemptMonotonicClock {
    started: Instant,
}

impl AttemptMonotonicClock {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }
}

impl HostMonotonicClock for AttemptMonotonicClock {
    fn resolution(&self) -> u64 {
        RESOLUTION.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        coarse(self.started.elapsed()).as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_the_hosts_to_the_millisecond() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let wall = CoarseWallClock.now();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(
            before.saturating_sub(RESOLUTION) <= wall && wall <= after,
            "the guest's wall clock reads {wall:?}, the host's {before:?}"
        );
    }

    #[test]
    fn clocks_tick_in_whole_milliseconds_and_monotonic_starts_at_zero() {
        let wall = CoarseWallClock.now();
        assert_eq!(wall.subsec_nanos() % 1_000_000, 0);
        let monotonic = AttemptMonotonicClock::new();
        assert!(monotonic.now() < 1_000_000_000);
        assert_eq!(monotonic.now() % 1_000_000, 0);
    }
}
