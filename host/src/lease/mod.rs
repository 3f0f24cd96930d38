//! Everything TaskFlow keeps in Redis: job leases and wake-ups.
//!
//! Redis coordinates; it never holds the truth. A job exists in PostgreSQL
//! before Redis hears of it, and every decision that matters (who may finish
//! a job) is fenced by PostgreSQL. Redis may be flushed or restarted at any
//! moment: workers restore their lease keys on the next renewal (after
//! PostgreSQL confirms them), the rescuer waits a grace period after it
//! notices ([`Leases::redis_age`]), and wake-ups fall back to polling until
//! Redis is back.
//!
//! Redis must not evict keys on its own (`maxmemory-policy noeviction`, the
//! default): lease keys carry a TTL, so a `volatile-*` or `allkeys-*` policy
//! could remove a live lease, and the rescuer would then end a live attempt
//! (safely fenced, but wasted). `taskflow worker` warns at startup if the
//! policy differs.
//!
//! # Keys
//!
//! On a Redis Cluster (connection.rs) the prefix is wrapped in braces,
//! `{taskflow:}`, so every key and channel below hashes to one slot.
//!
//! | key / channel              | value                       | written by          |
//! |----------------------------|-----------------------------|---------------------|
//! | `{prefix}lease:{job_id}`   | fencing token, or `revoked:`/`released:` + token; TTL = lease | worker; API and rescuer revoke |
//! | `{prefix}epoch`            | Redis time (ms) first seen  | rescuer             |
//! | `{prefix}wake:{queue}`     | pub/sub channel             | API, scheduler      |
//! | `{prefix}ended`            | pub/sub channel: ids of jobs that ended | completer, rescuer, API |
//! | `{prefix}workers`          | hash: worker id → presence JSON ([`presence`]) | worker |
//! | `{prefix}probe:{id}`       | pub/sub channel of one subscription: its liveness probes (subscription.rs) | that subscriber |

mod connection;
pub mod endings;
mod leases;
pub mod presence;
mod subscription;
pub mod wakeup;

use std::sync::LazyLock;

use redis::Script;
use uuid::Uuid;

use connection::Deployment;

pub use connection::{Connection, cluster_seeds};
pub use endings::{EndingAnnouncer, EndingWatcher};
pub use leases::{Holder, Leases, Renewal};
pub use presence::WorkerPresence;
pub use wakeup::{Waker, WakeupListener};

/// Redis failed or is unreachable. Callers degrade (poll, skip a rescue
/// pass) and try again; no job depends on Redis being up.
#[derive(Debug, thiserror::Error)]
#[error("redis error: {0}")]
pub struct RedisError(#[from] redis::RedisError);

/// A handle to Redis (one server or a cluster) with TaskFlow's key prefix.
/// Cheap to clone; clones share one multiplexed, automatically reconnecting
/// connection.
#[derive(Clone)]
pub struct Redis {
    deployment: Deployment,
    connection: Connection,
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Prepares a connection to the server or cluster `url` names
    /// (connection.rs); it is made on first use, so a process can start
    /// while Redis is down. On a cluster `prefix` becomes the hash tag of
    /// every key, so it may not contain braces itself.
    pub fn connect_lazy(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let deployment = Deployment::parse(url)?;
        let prefix = if deployment.is_cluster() {
            if prefix.is_empty() || prefix.contains(['{', '}']) {
                return Err(RedisError(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "on a Redis Cluster the key prefix becomes a hash tag: it may not be empty or contain braces",
                ))));
            }
            format!("{{{prefix}}}")
        } else {
            prefix.to_owned()
        };
        Ok(Self {
            connection: deployment.connect_lazy()?,
            deployment,
            prefix,
        })
    }

    /// The prefix of every key and channel: the configured one, in braces
    /// on a cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection for raw commands, for tools that inspect TaskFlow's
    /// keys (the chaos suite, tests); TaskFlow itself goes through the
    /// typed functions of this module.
    pub fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// Logs a warning if Redis may evict keys on its own (see the module
    /// docs). Silent when `CONFIG` is not allowed, as on some managed Redis.
    pub async fn warn_if_evicting(&self) {
        let mut connection = self.connection.clone();
        let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut connection)
            .await;
        if let Ok(policy) = policy
            && let Some(value) = policy.get(1)
            && value != "noeviction"
        {
            tracing::warn!(
                policy = %value,
                "Redis may evict lease keys under memory pressure; set maxmemory-policy noeviction"
            );
        }
    }

    /// Logs a warning if scripts may not call `INFO` (an ACL without
    /// `+info`, as on some managed Redis): the epoch key (`EPOCH_SCRIPT`, leases.rs)
    /// then cannot tell a cluster failover or a restart that kept its keys,
    /// and the rescuer skips the grace period they need (ADR 006).
    pub async fn warn_if_scripts_cannot_read_info(&self) {
        if let Ok(false) = self.scripts_can_read_info().await {
            tracing::warn!(
                "Redis refuses INFO to scripts: a failover or a restart that keeps keys will not restart the rescuer's grace period; allow +info for TaskFlow's user"
            );
        }
    }

    /// Whether a script may call `INFO`, as `EPOCH_SCRIPT` (leases.rs) does.
    pub async fn scripts_can_read_info(&self) -> Result<bool, RedisError> {
        let mut connection = self.connection.clone();
        let readable: bool = INFO_PROBE_SCRIPT
            .key(self.key("epoch"))
            .invoke_async(&mut connection)
            .await?;
        Ok(readable)
    }

    /// Whether Redis answers `PING` (on a cluster, every master the client
    /// knows of).
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn lease_key(&self, job_id: Uuid) -> String {
        format!("{}lease:{job_id}", self.prefix)
    }
}

/// Returns 1 if this script may call `INFO`, else 0. KEYS[1]: any of
/// TaskFlow's keys, so a cluster runs it where `EPOCH_SCRIPT` (leases.rs) runs.
static INFO_PROBE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ok = pcall(redis.call, 'INFO', 'server')
if ok then return 1 end
return 0
",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    // Connections are made lazily, but on a runtime.
    #[tokio::test]
    async fn on_a_cluster_the_prefix_becomes_the_hash_tag_of_every_key() {
        let redis = Redis::connect_lazy("redis+cluster://127.0.0.1:7000", "taskflow:").unwrap();
        assert_eq!(redis.prefix(), "{taskflow:}");
        assert_eq!(redis.key("epoch"), "{taskflow:}epoch");
        let single = Redis::connect_lazy("redis://127.0.0.1:6379", "taskflow:").unwrap();
        assert_eq!(
            single.key("epoch"),
            "taskflow:epoch",
            "one server keeps its key names"
        );
    }

    #[tokio::test]
    async fn a_cluster_refuses_a_prefix_with_braces_and_a_url_without_seeds() {
        assert!(Redis::connect_lazy("redis+cluster://127.0.0.1:7000", "a{b}:").is_err());
        assert!(Redis::connect_lazy("redis+cluster://127.0.0.1:7000", "").is_err());
        assert!(Redis::connect_lazy("redis+cluster://", "taskflow:").is_err());
        assert!(Redis::connect_lazy("redis://127.0.0.1:6379", "a{b}:").is_ok());
    }
}
