//! The Lua lease scripts (`lease/leases.rs`) replayed against a real Redis
//! through the interleavings that matter: a worker paused past its lease and
//! rescued, a release racing a late writer, a revocation racing a newer
//! claim, and a flush. Each step is one script call, as the worker, the
//! rescuer or the API makes it; the key's raw value is read back after each.
//! Every scenario runs against the local Redis, and all of them again
//! against a private Redis Cluster, where every key carries the hash tag
//! (lease/connection.rs).

use std::time::Duration;

use taskflow::lease::{Connection, Leases, Redis, Renewal};
use taskflow::store::LeaseRef;
use taskflow_testkit::RedisCluster;
use uuid::Uuid;

use crate::support::redis_url;

const TTL: Duration = Duration::from_secs(30);

/// Leases under a prefix of their own, a raw connection to read keys back,
/// and a job id.
struct Lab {
    leases: Leases,
    raw: Connection,
    prefix: String,
    job_id: Uuid,
}

impl Lab {
    /// A lab on the Redis (or cluster) `url` names.
    fn new(url: &str) -> Self {
        let redis =
            Redis::connect_lazy(url, &format!("tftest:{}:", Uuid::new_v4().simple())).unwrap();
        Self {
            raw: redis.connection(),
            prefix: redis.prefix().to_owned(),
            leases: Leases::new(redis, TTL),
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

    /// How long the lease key has left.
    async fn pttl(&mut self) -> Duration {
        let ms: i64 = redis::cmd("PTTL")
            .arg(self.key_name())
            .query_async(&mut self.raw)
            .await
            .unwrap();
        Duration::from_millis(ms.max(0).unsigned_abs())
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
        self.leases
            .revoke(&[self.lease(token)], None)
            .await
            .unwrap();
    }

    /// What attempt `token`'s worker does once it finished.
    async fn release(&self, token: i64) {
        self.leases.release(&[self.lease(token)]).await.unwrap();
    }
}

/// Each scenario runs as a test of its own against the local Redis, and all
/// of them in one test against a private Redis Cluster (starting one takes
/// seconds).
macro_rules! scenarios {
    ($($scenario:ident),* $(,)?) => {
        mod single_node {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(&mut super::Lab::new(&super::redis_url())).await;
                }
            )*
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn every_scenario_holds_on_a_redis_cluster() {
            let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
                .await
                .unwrap()
                .expect("a Redis Cluster starts");
            $(
                let mut lab = Lab::new(&cluster.url());
                assert!(lab.prefix.starts_with("{tftest:"), "every key carries the hash tag");
                $scenario(&mut lab).await;
            )*
        }
    };
}

scenarios!(
    a_worker_paused_past_its_lease_cannot_renew_or_restore_once_rescued,
    a_revoked_attempt_learns_it_at_its_next_renewal_and_cannot_restore_itself,
    a_revocation_never_touches_a_newer_attempts_key,
    a_released_lease_cannot_be_taken_back_by_its_own_or_an_older_attempt,
    a_renewal_after_a_flush_writes_nothing_and_reports_the_key_missing,
    the_rescuer_sees_the_holder_and_how_long_its_key_has_left,
    redis_age_restarts_from_zero_when_the_epoch_key_is_lost,
    redis_age_restarts_from_zero_when_another_server_process_wrote_the_epoch,
    redis_age_restarts_from_zero_when_the_redis_clock_stepped_back,
    a_revocation_lasts_as_long_as_the_longest_ttl_granted,
);

async fn a_worker_paused_past_its_lease_cannot_renew_or_restore_once_rescued(lab: &mut Lab) {
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

async fn a_revoked_attempt_learns_it_at_its_next_renewal_and_cannot_restore_itself(lab: &mut Lab) {
    assert!(lab.restore(7).await);
    // A user cancels the running job.
    lab.revoke(7).await;
    assert_eq!(lab.key().await.as_deref(), Some("revoked:7"));
    assert_eq!(lab.renew(7).await, Renewal::Lost);
    assert!(!lab.restore(7).await, "its own revocation stops it");
    assert_eq!(lab.key().await.as_deref(), Some("revoked:7"));
}

async fn a_revocation_never_touches_a_newer_attempts_key(lab: &mut Lab) {
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

/// A revocation by an API (or rescuer) whose own TTL is shorter than the
/// worker's must still be there at that worker's next round, up to a third
/// of its TTL away: an attempt whose first round finds its key missing
/// writes it (`restore`) and runs on.
async fn a_revocation_lasts_as_long_as_the_longest_ttl_granted(lab: &mut Lab) {
    lab.leases
        .revoke(&[lab.lease(8)], Some(TTL * 4))
        .await
        .unwrap();
    let lasts = lab.pttl().await;
    assert!(lasts > TTL * 3, "{lasts:?}");
    // Never shorter than the revoker's own TTL.
    lab.leases
        .revoke(&[lab.lease(9)], Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let lasts = lab.pttl().await;
    assert!(lasts > TTL / 2, "{lasts:?}");
    assert_eq!(lab.key().await.as_deref(), Some("revoked:9"));
}

async fn a_released_lease_cannot_be_taken_back_by_its_own_or_an_older_attempt(lab: &mut Lab) {
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

async fn a_renewal_after_a_flush_writes_nothing_and_reports_the_key_missing(lab: &mut Lab) {
    assert!(lab.restore(9).await);
    lab.flush().await;
    assert_eq!(lab.renew(9).await, Renewal::Missing);
    assert_eq!(lab.key().await, None, "only a confirmed restore writes it");
    assert!(lab.restore(9).await);
    assert_eq!(lab.renew(9).await, Renewal::Renewed);
}

async fn the_rescuer_sees_the_holder_and_how_long_its_key_has_left(lab: &mut Lab) {
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

async fn redis_age_restarts_from_zero_when_the_epoch_key_is_lost(lab: &mut Lab) {
    the_epoch_starts_again(lab).await;
    let () = redis::cmd("DEL")
        .arg(format!("{}epoch", lab.prefix))
        .query_async(&mut lab.raw)
        .await
        .unwrap();
    assert_eq!(lab.leases.redis_age().await.unwrap(), Duration::ZERO);
}

async fn redis_age_restarts_from_zero_when_another_server_process_wrote_the_epoch(lab: &mut Lab) {
    // What a cluster failover (or a restart that kept its keys) looks like:
    // the key says TaskFlow's state is old, but another server process
    // wrote that, and this one may lack writes it accepted.
    let () = redis::cmd("SET")
        .arg(format!("{}epoch", lab.prefix))
        .arg("1:0123abcd")
        .query_async(&mut lab.raw)
        .await
        .unwrap();
    the_epoch_starts_again(lab).await;
}

async fn redis_age_restarts_from_zero_when_the_redis_clock_stepped_back(lab: &mut Lab) {
    // NTP correcting a fast clock, or a VM restored from a snapshot: the
    // key's start now lies an hour in Redis's future. Clamping the
    // negative age to zero kept the rescuer in its grace period for that
    // hour, rescuing nothing; starting again costs one TTL.
    let key = format!("{}epoch", lab.prefix);
    assert_eq!(lab.leases.redis_age().await.unwrap(), Duration::ZERO);
    let held: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut lab.raw)
        .await
        .unwrap();
    let (since, server) = held.split_once(':').unwrap();
    let ahead = since.parse::<u64>().unwrap() + 3_600_000;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("{ahead}:{server}"))
        .query_async(&mut lab.raw)
        .await
        .unwrap();
    the_epoch_starts_again(lab).await;
}

/// Redis's age reads zero now, and grows from there.
async fn the_epoch_starts_again(lab: &mut Lab) {
    assert_eq!(lab.leases.redis_age().await.unwrap(), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let age = lab.leases.redis_age().await.unwrap();
    assert!(
        age >= Duration::from_millis(40),
        "the epoch ages again: {age:?}"
    );
}

/// An ACL user without `INFO` (as some managed Redis hand out): the probe
/// behind the worker's startup warning sees it. Uses a user of its own on
/// the local Redis, removed afterwards.
#[tokio::test]
async fn scripts_that_may_not_read_info_are_detected() {
    let user = format!("tftest{}", Uuid::new_v4().simple());
    let mut admin = Redis::connect_lazy(&redis_url(), "").unwrap().connection();
    let () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", &user, "on", ">secret", "~*", "&*", "+@all", "-info",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let prefix = format!("tftest:{}:", Uuid::new_v4().simple());
    let as_user = redis_url().replacen("redis://", &format!("redis://{user}:secret@"), 1);
    let limited = Redis::connect_lazy(&as_user, &prefix).unwrap();
    let full = Redis::connect_lazy(&redis_url(), &prefix).unwrap();
    let limited_sees = limited.scripts_can_read_info().await;
    let full_sees = full.scripts_can_read_info().await;
    let _: i64 = redis::cmd("ACL")
        .arg(&["DELUSER", &user])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(!limited_sees.unwrap(), "INFO is refused to this user");
    assert!(full_sees.unwrap());
}

/// After a failover to a node whose script cache is empty (a restarted
/// node, promoted), the first lease script meets `NOSCRIPT`, and redis-rs
/// loads the script on every node: that must not fail because some other
/// node of the cluster is down at the time.
#[tokio::test(flavor = "multi_thread")]
async fn lease_scripts_run_on_a_flushed_script_cache_while_another_node_is_down() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap()
        .expect("a Redis Cluster starts");
    let mut lab = Lab::new(&cluster.url());
    assert!(lab.restore(1).await);
    let ours = cluster.master_of(&lab.key_name()).unwrap();
    tokio::task::block_in_place(|| cluster.kill_a_replica()).expect("kill a replica");
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut lab.raw)
        .await
        .unwrap();
    assert_eq!(cluster.master_of(&lab.key_name()).unwrap(), ours);
    assert_eq!(lab.renew(1).await, Renewal::Renewed);
    assert_eq!(lab.key().await.as_deref(), Some("1"));
}
