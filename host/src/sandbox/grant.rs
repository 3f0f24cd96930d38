//! An attempt's right to keep running ([`RunGrant`]), extended by the
//! worker's heartbeat and checked by the sandbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// An attempt's right to keep running.
///
/// The worker extends it each time it renews the attempt's lease and revokes
/// it when the lease is lost. The sandbox stops the guest once the grant is
/// revoked or lapses (at the next epoch tick while it runs wasm code; at
/// once while it is blocked in a host call), so an attempt does not outlive
/// the lease that makes it the only live execution of its job.
#[derive(Debug)]
pub struct RunGrant {
    origin: Instant,
    valid_for_ms: AtomicU64,
    revoked: AtomicBool,
    revoked_notify: Notify,
}

impl RunGrant {
    /// A grant valid until `until`.
    pub fn until(until: Instant) -> Arc<Self> {
        let origin = Instant::now();
        let grant = Arc::new(Self {
            origin,
            valid_for_ms: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            revoked_notify: Notify::new(),
        });
        grant.extend_until(until);
        grant
    }

    /// A grant that never lapses (for running a task outside a worker).
    pub fn unlimited() -> Arc<Self> {
        let grant = Self::until(Instant::now());
        grant.valid_for_ms.store(u64::MAX, Ordering::Release);
        grant
    }

    /// Extends the grant to `until` (never shortens it).
    pub fn extend_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64;
        self.valid_for_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Ends the grant now.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.revoked_notify.notify_waiters();
    }

    /// Whether the attempt may still run at `now`.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        !self.revoked.load(Ordering::Acquire)
            && (now.saturating_duration_since(self.origin).as_millis() as u64)
                < self.valid_for_ms.load(Ordering::Acquire)
    }

    /// Resolves once the grant is revoked or has lapsed. This covers a guest
    /// blocked in a host call, where epoch checks do not run.
    pub(super) async fn invalidated(&self) {
        loop {
            let notified = self.revoked_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let elapsed_ms = self.origin.elapsed().as_millis() as u64;
            let valid_for_ms = self.valid_for_ms.load(Ordering::Acquire);
            if self.revoked.load(Ordering::Acquire) || elapsed_ms >= valid_for_ms {
                return;
            }
            // Extensions move the end, so wake at least every second to look again.
            let remaining =
                Duration::from_millis(valid_for_ms - elapsed_ms).min(Duration::from_secs(1));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(remaining) => {}
            }
        }
    }
}
