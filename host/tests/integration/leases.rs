//! The Lua lease scripts (`lease/mod.rs`) replayed against a real Redis
//! through the interleavings that matter: a worker paused past its lease and
//! rescued, a release racing a late writer, a revocation racing a newer
//! claim, and a flush. Each step is one script call, as the worker, the
//! rescuer or the API makes it; the key's raw value is read back after each.

use std::time::Duration;

use taskflow::lease::{Leases, Redis, Renewal};
use taskflow::store::LeaseRef;
use uuid::Uuid;

use crate::support::redis_url;

const TTL: Duration = Duration::from_secs(30);

/// Leases under a prefix of their own, a raw connection to read keys back,
/// and a job id.
struct Lab {
    leases: Leases,
    raw: redis::aio::MultiplexedConnection,
    prefix: String,
    job_id: Uuid,
}

impl Lab {
    async fn new() -> Self {
        let prefix = format!("tftest:{}:", Uuid::new_v4().simple());
        let redis = Redis::connect_lazy(&redis_url(), &prefix).unwrap();
        let raw = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Self {
            leases: Leases::new(redis, TTL),
            raw,
            prefix,
            job_id: Uuid::now_v7(),
        }
    }

    fn lease(&self, lease_token: i64) -> LeaseRef {
        LeaseRef {
            job_id: self.job_id,
            lease_token,
        }
    }

    fn key_name(&self) -> String {
        format!("{}lease:{}", self.prefix, self.job_id)
    }

    /// The lease key's value.
    async fn key(&mut self) -> Option<String> {
        redis::cmd("GET")
            .arg(self.key_name())
            .query_async(&mut self.raw)
            .await
            .unwrap()
    }

    /// What a flush does to this lease: the key is gone.
    async fn flush(&mut self) {
        let () = redis::cmd("DEL")
            .arg(self.key_name())
            .query_async(&mut self.raw)
            .await
            .unwrap();
    }

    async fn renew(&self, token: i64) -> Renewal {
        self.leases.renew(&[self.lease(token)]).await.unwrap()[0]
    }

    async fn restore(&self, token: i64) -> bool {
        self.leases.restore(&[self.lease(token)]).await.unwrap()[0]
    }

    /// What the rescuer or a cancel does to attempt `token`.
    async fn revoke(&self, token: i64) {
        self.leases.revoke(&[self.lease(token)]).await.unwrap();
    }

    /// What attempt `token`'s worker does once it finished.
    async fn release(&self, token: i64) {
        self.leases.release(&[self.lease(token)]).await.unwrap();
    }
}

#[tokio::test]
async fn a_worker_paused_past_its_lease_cannot_renew_or_restore_once_rescued() {
    let mut lab = Lab::new().await;
    // Attempt 1 claims and its heartbeat writes the key.
    assert!(lab.restore(1).await);
    assert_eq!(lab.renew(1).await, Renewal::Renewed);
    // Its worker pauses; the key expires.
    lab.flush().await;
    // The rescuer ends attempt 1 and marks the key.
    lab.revoke(1).await;
    assert_eq!(lab.key().await.as_deref(), Some("revoked:1"));
    // Attempt 2 is claimed; its key goes over the marker of an older attempt.
    assert!(lab.restore(2).await);
    assert_eq!(lab.key().await.as_deref(), Some("2"));
    // The paused worker resumes: its renewal finds another token...
    assert_eq!(lab.renew(1).await, Renewal::Lost);
    // ...and a restore (had PostgreSQL wrongly confirmed it) cannot
    // overwrite a newer attempt's key.
    assert!(!lab.restore(1).await);
    assert_eq!(lab.key().await.as_deref(), Some("2"));
    assert_eq!(lab.renew(2).await, Renewal::Renewed);
}

#[tokio::test]
async fn a_revoked_attempt_learns_it_at_its_next_renewal_and_cannot_restore_itself() {
    let mut lab = Lab::new().await;
    assert!(lab.restore(7).await);
    // A user cancels the running job.
    lab.revoke(7).await;
    assert_eq!(lab.key().await.as_deref(), Some("revoked:7"));
    assert_eq!(lab.renew(7).await, Renewal::Lost);
    assert!(!lab.restore(7).await, "its own revocation stops it");
    assert_eq!(lab.key().await.as_deref(), Some("revoked:7"));
}

#[tokio::test]
async fn a_revocation_never_touches_a_newer_attempts_key() {
    let mut lab = Lab::new().await;
    assert!(lab.restore(3).await);
    // A late revocation of attempt 2 (the rescuer read it a moment ago).
    lab.revoke(2).await;
    assert_eq!(lab.key().await.as_deref(), Some("3"));
    assert_eq!(lab.renew(3).await, Renewal::Renewed);
    // A revocation of a key nobody wrote yet leaves the marker, so the
    // attempt's first key write finds it.
    lab.flush().await;
    lab.revoke(4).await;
    assert!(!lab.restore(4).await);
    assert!(lab.restore(5).await, "a newer attempt may overwrite it");
}

#[tokio::test]
async fn a_released_lease_cannot_be_taken_back_by_its_own_or_an_older_attempt() {
    let mut lab = Lab::new().await;
    assert!(lab.restore(4).await);
    // Attempt 4 finishes and releases its key.
    lab.release(4).await;
    assert_eq!(lab.key().await.as_deref(), Some("released:4"));
    assert_eq!(lab.renew(4).await, Renewal::Lost);
    assert!(!lab.restore(4).await, "its own release marker");
    assert!(!lab.restore(3).await, "an older attempt coming back late");
    assert_eq!(lab.key().await.as_deref(), Some("released:4"));
    // A release by an older attempt leaves a newer attempt's key alone.
    assert!(lab.restore(5).await);
    lab.release(4).await;
    assert_eq!(lab.key().await.as_deref(), Some("5"));
}

#[tokio::test]
async fn a_renewal_after_a_flush_writes_nothing_and_reports_the_key_missing() {
    let mut lab = Lab::new().await;
    assert!(lab.restore(9).await);
    lab.flush().await;
    assert_eq!(lab.renew(9).await, Renewal::Missing);
    assert_eq!(lab.key().await, None, "only a confirmed restore writes it");
    assert!(lab.restore(9).await);
    assert_eq!(lab.renew(9).await, Renewal::Renewed);
}

#[tokio::test]
async fn the_rescuer_sees_the_holder_and_how_long_its_key_has_left() {
    let lab = Lab::new().await;
    assert_eq!(lab.leases.holders(&[lab.job_id]).await.unwrap(), [None]);
    assert!(lab.restore(11).await);
    let holder = lab.leases.holders(&[lab.job_id]).await.unwrap()[0].unwrap();
    assert_eq!(holder.lease_token, 11);
    assert!(holder.expires_in <= TTL && holder.expires_in > TTL - Duration::from_secs(5));
    lab.revoke(11).await;
    assert_eq!(
        lab.leases.holders(&[lab.job_id]).await.unwrap(),
        [None],
        "a marker is nobody's lease"
    );
}

#[tokio::test]
async fn redis_age_restarts_from_zero_when_the_epoch_key_is_lost() {
    let mut lab = Lab::new().await;
    assert_eq!(lab.leases.redis_age().await.unwrap(), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let age = lab.leases.redis_age().await.unwrap();
    assert!(age >= Duration::from_millis(40), "{age:?}");
    let () = redis::cmd("DEL")
        .arg(format!("{}epoch", lab.prefix))
        .query_async(&mut lab.raw)
        .await
        .unwrap();
    assert_eq!(lab.leases.redis_age().await.unwrap(), Duration::ZERO);
}
