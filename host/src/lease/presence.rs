//! Which workers are alive, for the console's overview: each worker writes
//! one field of the hash `{prefix}workers` (its id → its slots, busy slots
//! and queues, and when it wrote them) every [`PRESENCE_INTERVAL`], and
//! removes it when it stops. Readers show the workers seen within
//! [`PRESENCE_RECENT`]; readers and every worker now and then forget those
//! silent for [`PRESENCE_FORGOTTEN`] (a worker that was killed never
//! removes its field).
//!
//! Nothing decides anything from this: a flushed Redis empties the list
//! until the next round, and a worker's clock skew only shifts its "seen"
//! time.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Redis, RedisError};

/// How often a worker writes its presence.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(2);

/// A worker seen within this long counts as alive.
pub const PRESENCE_RECENT: Duration = Duration::from_secs(15);

/// A worker silent for this long is removed from the hash by its readers.
pub const PRESENCE_FORGOTTEN: Duration = Duration::from_secs(3600);

/// What a worker last said of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPresence {
    /// Its id (`--worker-id`).
    #[serde(skip)]
    pub worker_id: String,
    /// How many attempts it runs at once.
    pub slots: u32,
    /// How many it was running.
    pub busy: u32,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// When it said so, by its own clock.
    pub seen_at: DateTime<Utc>,
}

impl Redis {
    /// Writes (or refreshes) a worker's presence.
    pub async fn announce_worker(&self, presence: &WorkerPresence) -> Result<(), RedisError> {
        let value = serde_json::to_string(presence).expect("presence serializes");
        let mut connection = self.connection.clone();
        let () = redis::cmd("HSET")
            .arg(self.key("workers"))
            .arg(&presence.worker_id)
            .arg(value)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Removes a worker's presence (it is stopping).
    pub async fn withdraw_worker(&self, worker_id: &str) -> Result<(), RedisError> {
        self.forget_workers(&[worker_id.to_owned()]).await
    }

    /// The workers seen within [`PRESENCE_RECENT`] of `now`, by id; removes
    /// those silent past [`PRESENCE_FORGOTTEN`] and fields that do not
    /// parse.
    pub async fn recent_workers(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<WorkerPresence>, RedisError> {
        let (mut recent, forgotten) = self.workers_by_silence(now).await?;
        self.forget_workers(&forgotten).await?;
        recent.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(recent)
    }

    /// Removes the workers silent past [`PRESENCE_FORGOTTEN`] and fields
    /// that do not parse: a killed worker never withdraws its field, so
    /// without this a fleet whose workers come and go would grow the hash
    /// without bound (`worker/presence.rs` calls it).
    pub async fn forget_silent_workers(&self, now: DateTime<Utc>) -> Result<(), RedisError> {
        let (_, forgotten) = self.workers_by_silence(now).await?;
        self.forget_workers(&forgotten).await
    }

    /// The workers seen within [`PRESENCE_RECENT`] of `now`, and the ids of
    /// those to forget.
    async fn workers_by_silence(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Vec<WorkerPresence>, Vec<String>), RedisError> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("workers"))
            .query_async(&mut connection)
            .await?;
        let mut recent = Vec::new();
        let mut forgotten = Vec::new();
        for (worker_id, value) in fields {
            match serde_json::from_str::<WorkerPresence>(&value) {
                Ok(presence) => {
                    let silent = (now - presence.seen_at).to_std().unwrap_or_default();
                    if silent <= PRESENCE_RECENT {
                        recent.push(WorkerPresence {
                            worker_id,
                            ..presence
                        });
                    } else if silent > PRESENCE_FORGOTTEN {
                        forgotten.push(worker_id);
                    }
                }
                Err(_) => forgotten.push(worker_id),
            }
        }
        Ok((recent, forgotten))
    }

    async fn forget_workers(&self, worker_ids: &[String]) -> Result<(), RedisError> {
        if worker_ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let () = redis::cmd("HDEL")
            .arg(self.key("workers"))
            .arg(worker_ids)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }
}
