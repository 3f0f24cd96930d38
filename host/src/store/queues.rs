//! Queue settings, limits and sealed secrets (`queues`, `queue_secrets`).
//! The claim reads the limits itself, under the queue's lock (claim.rs).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::pool::Transaction;
use super::{Store, StoreError, StoreResult};
use crate::queue::{
    AllowedHost, KeepFor, QueueLimits, QueueSettings, Rate, Retention, SealedSecret,
};

/// A queue's stored settings. Secrets appear by name and hosts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// The queue.
    pub name: String,
    /// What it grants, and its limits.
    pub settings: QueueSettings,
    /// Whether its jobs are held back: workers claim none of them.
    pub paused: bool,
    /// When its settings were first written; `None` for a queue never
    /// configured (it grants nothing).
    pub created_at: Option<DateTime<Utc>>,
    /// When they last changed.
    pub updated_at: Option<DateTime<Utc>>,
}

impl QueueRecord {
    /// A queue never configured: it grants nothing and has no limits.
    pub fn unconfigured(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            settings: QueueSettings::default(),
            paused: false,
            created_at: None,
            updated_at: None,
        }
    }
}

/// What a worker needs to run a job of a queue: its settings and its
/// secrets, still sealed.
#[derive(Debug, Clone, Default)]
pub struct QueueGrants {
    /// The queue's settings.
    pub settings: QueueSettings,
    /// Sealed values by secret name.
    pub sealed_secrets: BTreeMap<String, SealedSecret>,
}

impl Store {
    /// Replaces the settings of queue `name` with `settings`, sealing in the
    /// new values of `sealed` and keeping the stored value of every other
    /// secret in `settings.secrets`; secrets not named there are deleted.
    /// One transaction. With `if_updated_at`, only if the queue is as read:
    /// last updated then, or never configured for `Some(None)`.
    ///
    /// # Errors
    ///
    /// [`StoreError::MissingSecretValue`] if a secret without a new value
    /// has none stored either; [`StoreError::QueueChanged`] if the queue
    /// changed since `if_updated_at`. Nothing is written then.
    pub async fn put_queue(
        &self,
        name: &str,
        settings: &QueueSettings,
        sealed: &BTreeMap<String, SealedSecret>,
        if_updated_at: Option<Option<DateTime<Utc>>>,
    ) -> StoreResult<QueueRecord> {
        super::statement("put_queue");
        let mut tx = self.pool().begin().await?;
        lock_queue_settings(&mut tx, name).await?;
        let config = Json(&settings.config);
        let limits = LimitColumns::from(&settings.limits);
        let keep = |keep: Option<KeepFor>| keep.map(KeepFor::as_seconds);
        let row = sqlx::query!(
            "INSERT INTO queues (name, allowed_hosts, config, max_running, max_running_per_key,
                                 rate_limit, rate_period_ms, retain_succeeded_s, retain_dead_s,
                                 retain_cancelled_s)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $11, $12)
             ON CONFLICT (name) DO UPDATE
             SET allowed_hosts = EXCLUDED.allowed_hosts, config = EXCLUDED.config,
                 max_running = EXCLUDED.max_running,
                 max_running_per_key = EXCLUDED.max_running_per_key,
                 rate_limit = EXCLUDED.rate_limit, rate_period_ms = EXCLUDED.rate_period_ms,
                 (rate_buckets, rate_counts) = (
                     SELECT r.buckets, r.counts
                     FROM rate_buckets_for_period(queues.rate_buckets, queues.rate_counts,
                                                  queues.rate_period_ms, EXCLUDED.rate_period_ms) r),
                 retain_succeeded_s = EXCLUDED.retain_succeeded_s,
                 retain_dead_s = EXCLUDED.retain_dead_s,
                 retain_cancelled_s = EXCLUDED.retain_cancelled_s,
                 running_bound = NULL, updated_at = now()
             WHERE NOT $8 OR queues.updated_at IS NOT DISTINCT FROM $9
             RETURNING created_at, updated_at, paused",
            name,
            &host_texts(&settings.allowed_hosts),
            config as _,
            limits.max_running,
            limits.max_running_per_key,
            limits.rate_limit,
            limits.rate_period_ms,
            if_updated_at.is_some(),
            if_updated_at.flatten(),
            keep(settings.retention.succeeded),
            keep(settings.retention.dead),
            keep(settings.retention.cancelled)
        )
        .fetch_optional(tx.statements())
        .await?
        .ok_or_else(|| StoreError::QueueChanged(name.to_owned()))?;
        delete_reservations(&mut tx, name).await?;
        let kept: Vec<String> = settings.secrets.keys().cloned().collect();
        sqlx::query!(
            "DELETE FROM queue_secrets WHERE queue = $1 AND NOT (name = ANY($2))",
            name,
            &kept
        )
        .execute(tx.statements())
        .await?;
        for (secret, hosts) in &settings.secrets {
            let hosts = host_texts(hosts);
            let written = match sealed.get(secret) {
                Some(value) => sqlx::query!(
                    "INSERT INTO queue_secrets
                         (queue, name, allowed_hosts, key_id, nonce, ciphertext)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (queue, name) DO UPDATE
                     SET allowed_hosts = EXCLUDED.allowed_hosts, key_id = EXCLUDED.key_id,
                         nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext,
                         updated_at = now()",
                    name,
                    secret,
                    &hosts,
                    value.key_id,
                    value.nonce,
                    value.ciphertext
                )
                .execute(tx.statements())
                .await?
                .rows_affected(),
                None => sqlx::query!(
                    "UPDATE queue_secrets SET allowed_hosts = $3, updated_at = now()
                     WHERE queue = $1 AND name = $2",
                    name,
                    secret,
                    &hosts
                )
                .execute(tx.statements())
                .await?
                .rows_affected(),
            };
            if written == 0 {
                return Err(StoreError::MissingSecretValue(secret.clone()));
            }
        }
        tx.commit().await?;
        Ok(QueueRecord {
            name: name.to_owned(),
            settings: settings.clone(),
            paused: row.paused,
            created_at: Some(row.created_at),
            updated_at: Some(row.updated_at),
        })
    }

    /// Pauses or resumes queue `name`, configuring it if it never was (with
    /// no grants and no limits, as before). Claims already under way finish
    /// first (it waits for them); none starts after this commits.
    pub async fn set_queue_paused(&self, name: &str, paused: bool) -> StoreResult<QueueRecord> {
        super::statement("set_queue_paused");
        let mut tx = self.pool().begin().await?;
        lock_queue_settings(&mut tx, name).await?;
        sqlx::query!(
            "INSERT INTO queues (name, paused) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE
             SET paused = EXCLUDED.paused, running_bound = NULL, updated_at = now()",
            name,
            paused
        )
        .execute(tx.statements())
        .await?;
        delete_reservations(&mut tx, name).await?;
        tx.commit().await?;
        self.queue(name).await
    }

    /// The settings of queue `name`; a queue never configured grants
    /// nothing.
    pub async fn queue(&self, name: &str) -> StoreResult<QueueRecord> {
        let stored = self.stored_queues(Some(name)).await?.pop();
        Ok(stored.map_or_else(|| QueueRecord::unconfigured(name), |(record, _)| record))
    }

    /// Every configured queue, by name.
    pub async fn list_queues(&self) -> StoreResult<Vec<QueueRecord>> {
        let stored = self.stored_queues(None).await?;
        Ok(stored.into_iter().map(|(record, _)| record).collect())
    }

    /// What queue `name` grants its tasks, with its secrets still sealed.
    /// Two statements; a worker reads them at most once a second per queue
    /// (`worker/grants.rs`).
    pub async fn queue_grants(&self, name: &str) -> StoreResult<QueueGrants> {
        let stored = self.stored_queues(Some(name)).await?.pop();
        Ok(
            stored.map_or_else(QueueGrants::default, |(record, sealed_secrets)| {
                QueueGrants {
                    settings: record.settings,
                    sealed_secrets,
                }
            }),
        )
    }

    /// Queue `name`, or every configured queue (`None`), by name, with
    /// its sealed secrets. Two statements, whatever the number of queues.
    async fn stored_queues(
        &self,
        name: Option<&str>,
    ) -> StoreResult<Vec<(QueueRecord, BTreeMap<String, SealedSecret>)>> {
        super::statement("stored_queues");
        let queues = sqlx::query!(
            r#"SELECT name, allowed_hosts, config AS "config: Json<BTreeMap<String, String>>",
                      max_running, max_running_per_key, rate_limit, rate_period_ms,
                      retain_succeeded_s, retain_dead_s, retain_cancelled_s,
                      paused, created_at, updated_at
               FROM queues WHERE $1::text IS NULL OR name = $1 ORDER BY name"#,
            name
        )
        .fetch_all(self.pool())
        .await?;
        let secrets = sqlx::query!(
            "SELECT queue, name, allowed_hosts, key_id, nonce, ciphertext
             FROM queue_secrets WHERE $1::text IS NULL OR queue = $1 ORDER BY queue, name",
            name
        )
        .fetch_all(self.pool())
        .await?;
        let mut stored = BTreeMap::new();
        for queue in queues {
            let settings = QueueSettings {
                allowed_hosts: parse_hosts(queue.allowed_hosts)?,
                config: queue.config.0,
                secrets: BTreeMap::new(),
                limits: LimitColumns {
                    max_running: queue.max_running,
                    max_running_per_key: queue.max_running_per_key,
                    rate_limit: queue.rate_limit,
                    rate_period_ms: queue.rate_period_ms,
                }
                .try_into()?,
                retention: Retention {
                    succeeded: stored_keep(queue.retain_succeeded_s),
                    dead: stored_keep(queue.retain_dead_s),
                    cancelled: stored_keep(queue.retain_cancelled_s),
                },
            };
            let record = QueueRecord {
                name: queue.name.clone(),
                settings,
                paused: queue.paused,
                created_at: Some(queue.created_at),
                updated_at: Some(queue.updated_at),
            };
            stored.insert(queue.name, (record, BTreeMap::new()));
        }
        for secret in secrets {
            let Some((record, sealed)) = stored.get_mut(&secret.queue) else {
                continue; // its queue's row is newer than this read's first statement
            };
            record
                .settings
                .secrets
                .insert(secret.name.clone(), parse_hosts(secret.allowed_hosts)?);
            sealed.insert(
                secret.name,
                SealedSecret {
                    key_id: secret.key_id,
                    nonce: secret.nonce,
                    ciphertext: secret.ciphertext,
                },
            );
        }
        Ok(stored.into_values().collect())
    }

    /// The ids of the keys stored secrets were sealed with, and how many
    /// each sealed: a server checks at startup that it holds them.
    pub async fn secret_key_ids(&self) -> StoreResult<Vec<(String, i64)>> {
        super::statement("secret_key_ids");
        let rows = sqlx::query!(
            r#"SELECT key_id, count(*) AS "secrets!" FROM queue_secrets
               GROUP BY key_id ORDER BY key_id"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.key_id, row.secrets))
            .collect())
    }
}

fn host_texts(hosts: &[AllowedHost]) -> Vec<String> {
    hosts.iter().map(ToString::to_string).collect()
}

/// Stored entries were written by [`host_texts`] and always parse; one that
/// does not was changed outside TaskFlow.
fn parse_hosts(texts: Vec<String>) -> StoreResult<Vec<AllowedHost>> {
    texts
        .iter()
        .map(|text| {
            AllowedHost::parse(text).map_err(|error| StoreError::Unavailable(error.to_string()))
        })
        .collect()
}

/// A `retain_*_s` column: NULL for the default, else seconds (the table's
/// check keeps them non-negative).
fn stored_keep(seconds: Option<i64>) -> Option<KeepFor> {
    seconds.map(|seconds| KeepFor::from_seconds(seconds.unsigned_abs()))
}

/// [`QueueLimits`] as the `queues` columns hold them.
struct LimitColumns {
    max_running: Option<i32>,
    max_running_per_key: Option<i32>,
    rate_limit: Option<i32>,
    rate_period_ms: Option<i64>,
}

impl From<&QueueLimits> for LimitColumns {
    fn from(limits: &QueueLimits) -> Self {
        // Every bound fits: queue/limits.rs caps each below its column's top.
        let column = |count: Option<std::num::NonZeroU32>| count.map(|n| n.get() as i32);
        Self {
            max_running: column(limits.max_running),
            max_running_per_key: column(limits.max_running_per_key),
            rate_limit: column(limits.rate.map(|rate| rate.limit)),
            rate_period_ms: limits.rate.map(|rate| rate.period.as_millis() as i64),
        }
    }
}

/// Stored limits were written from [`LimitColumns::from`] and always
/// convert back, as do those the table's checks allow; anything else was
/// changed outside TaskFlow.
impl TryFrom<LimitColumns> for QueueLimits {
    type Error = StoreError;

    fn try_from(columns: LimitColumns) -> StoreResult<Self> {
        let count = |value: Option<i32>| {
            value
                .map(|n| {
                    u32::try_from(n)
                        .ok()
                        .and_then(std::num::NonZeroU32::new)
                        .ok_or_else(|| {
                            StoreError::Unavailable(format!("stored limit {n} is not positive"))
                        })
                })
                .transpose()
        };
        let rate = match (count(columns.rate_limit)?, columns.rate_period_ms) {
            (Some(limit), Some(ms)) => Some(Rate {
                limit,
                period: std::time::Duration::from_millis(ms.unsigned_abs()),
            }),
            _ => None,
        };
        Ok(Self {
            max_running: count(columns.max_running)?,
            max_running_per_key: count(columns.max_running_per_key)?,
            rate,
        })
    }
}

/// Takes the lock every write of queue `name`'s settings holds until it
/// commits, exclusively. Plain claims of the queue hold it shared while
/// they run (`plain_claim_may_take`, claim.rs): the write waits for those
/// under way, and those behind it read what it wrote, so a limit or a
/// pause never misses a plain claim's jobs. An advisory lock, because a
/// queue never configured has no row to lock; its key is the function's.
async fn lock_queue_settings(tx: &mut Transaction<'_>, name: &str) -> StoreResult<()> {
    sqlx::query_scalar!(
        r#"SELECT 1 AS "locked!"
           FROM pg_advisory_xact_lock(hashtextextended('queue_settings:' || $1, 0))"#,
        name
    )
    .fetch_one(tx.statements())
    .await?;
    Ok(())
}

/// Deletes the reservations of queue `name` (claim.rs), once the write
/// holds the queue's row: it waits for the claims that locked their
/// reservation first, and any other claim finds its reservation gone and
/// claims nothing. So no claim starts a job under settings older than the
/// write's, and no reservation returns its unused places to rate buckets
/// the write has renumbered.
async fn delete_reservations(tx: &mut Transaction<'_>, name: &str) -> StoreResult<()> {
    sqlx::query!("DELETE FROM claim_reservations WHERE queue = $1", name)
        .execute(tx.statements())
        .await?;
    Ok(())
}
