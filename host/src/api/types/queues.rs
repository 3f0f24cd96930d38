//! Bodies of `/v1/queues`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::capped;
use crate::job::JobState;
use crate::queue::settings::{MAX_ALLOWED_HOSTS, MAX_CONFIG_ENTRIES, MAX_SECRETS};
use crate::queue::{
    Activity, JobCounts, LimitsSpec, QueueSpec, QueueStats, RateSpec, Retention, RetentionSpec,
    SecretSpec, SecretValue,
};
use crate::store::QueueRecord;

/// `PUT /v1/queues/{name}`: the queue's whole settings, replacing what was
/// there. Every field defaults to empty: `{}` grants nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutQueue {
    /// Hosts tasks may send requests to: `https://api.example.com`,
    /// `https://*.example.com:8443`, `http://10.0.0.5:9000`.
    #[serde(default, deserialize_with = "capped::list::<MAX_ALLOWED_HOSTS, _, _>")]
    pub allowed_hosts: Vec<String>,
    /// Values tasks may read.
    #[serde(default, deserialize_with = "capped::map::<MAX_CONFIG_ENTRIES, _, _>")]
    pub config: BTreeMap<String, String>,
    /// Secrets by name. Left out: deleted. Without `value`: the stored value
    /// is kept and only its hosts change.
    #[serde(default, deserialize_with = "capped::map::<MAX_SECRETS, _, _>")]
    pub secrets: BTreeMap<String, PutSecret>,
    /// Most jobs of the queue running at once, across all workers
    /// (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Most jobs of one `concurrency_key` running at once (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_per_key: Option<u32>,
    /// Most attempt starts in any window of a period (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// How long finished jobs are kept, per state (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

/// `PATCH /v1/queues/{name}`: the fields given replace the stored ones, the
/// rest stay; `null` removes a limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchQueue {
    /// Replaces `allowed_hosts`.
    #[serde(
        default,
        deserialize_with = "capped::optional_list::<MAX_ALLOWED_HOSTS, _, _>",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_hosts: Option<Vec<String>>,
    /// Replaces `config`.
    #[serde(
        default,
        deserialize_with = "capped::optional_map::<MAX_CONFIG_ENTRIES, _, _>",
        skip_serializing_if = "Option::is_none"
    )]
    pub config: Option<BTreeMap<String, String>>,
    /// Replaces `secrets` (as in PUT: a secret without `value` keeps its
    /// stored one).
    #[serde(
        default,
        deserialize_with = "capped::optional_map::<MAX_SECRETS, _, _>",
        skip_serializing_if = "Option::is_none"
    )]
    pub secrets: Option<BTreeMap<String, PutSecret>>,
    /// Sets (a number) or removes (`null`) `max_running`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_running: Option<Option<u32>>,
    /// Sets or removes `max_running_per_key`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_running_per_key: Option<Option<u32>>,
    /// Sets or removes `rate`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate: Option<Option<RateSpec>>,
    /// Changes the retention of the states it names; the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

/// A field that is present, as `null` or a value: absent ones stay `None`
/// through `#[serde(default)]`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl PatchQueue {
    /// The whole settings this patch leaves, applied to `current`.
    pub fn apply_to(self, current: QueueSpec) -> QueueSpec {
        let limits = LimitsSpec {
            max_running: self.max_running.unwrap_or(current.limits.max_running),
            max_running_per_key: self
                .max_running_per_key
                .unwrap_or(current.limits.max_running_per_key),
            rate: self.rate.unwrap_or(current.limits.rate),
        };
        QueueSpec {
            allowed_hosts: self.allowed_hosts.unwrap_or(current.allowed_hosts),
            config: self.config.unwrap_or(current.config),
            secrets: self.secrets.map_or(current.secrets, secrets_spec),
            limits,
            retention: match self.retention {
                Some(patch) => RetentionSpec {
                    succeeded: patch.succeeded.or(current.retention.succeeded),
                    dead: patch.dead.or(current.retention.dead),
                    cancelled: patch.cancelled.or(current.retention.cancelled),
                },
                None => current.retention,
            },
        }
    }
}

/// One secret of [`PutQueue`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value; write-only: never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, write_only)]
    pub value: Option<SecretValue>,
    /// Hosts the value may be sent to (a request elsewhere that carries it
    /// is refused).
    #[serde(deserialize_with = "capped::list::<MAX_ALLOWED_HOSTS, _, _>")]
    pub allowed_hosts: Vec<String>,
}

impl From<PutQueue> for QueueSpec {
    /// Field by field, so a field added to [`PutQueue`] does not compile
    /// until it reaches the settings.
    fn from(put: PutQueue) -> Self {
        let PutQueue {
            allowed_hosts,
            config,
            secrets,
            max_running,
            max_running_per_key,
            rate,
            retention,
        } = put;
        Self {
            allowed_hosts,
            config,
            secrets: secrets_spec(secrets),
            limits: LimitsSpec {
                max_running,
                max_running_per_key,
                rate,
            },
            retention: retention.unwrap_or_default(),
        }
    }
}

fn secrets_spec(secrets: BTreeMap<String, PutSecret>) -> BTreeMap<String, SecretSpec> {
    secrets
        .into_iter()
        .map(|(name, secret)| {
            let spec = SecretSpec {
                value: secret.value,
                allowed_hosts: secret.allowed_hosts,
            };
            (name, spec)
        })
        .collect()
}

/// A queue's settings. Secrets are listed by name and hosts, never value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueView {
    /// The queue.
    pub name: String,
    /// Hosts tasks may send requests to.
    pub allowed_hosts: Vec<String>,
    /// Values tasks may read.
    pub config: BTreeMap<String, String>,
    /// Secret names, with the hosts each may be sent to.
    pub secrets: BTreeMap<String, SecretView>,
    /// Whether workers hold its jobs back.
    pub paused: bool,
    /// Most jobs running at once, cluster-wide (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Most jobs of one `concurrency_key` running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_per_key: Option<u32>,
    /// Most attempt starts in any window of a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// How long finished jobs are kept, per state, defaults filled in.
    pub retention: RetentionSpec,
    /// When the settings were first written (absent: never configured).
    pub created_at: Option<DateTime<Utc>>,
    /// When they last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// What it is doing: exact counts, read from counters.
    pub stats: QueueStatsView,
}

/// What a queue is doing (`queue::QueueStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueStatsView {
    /// Its jobs per state.
    pub jobs: JobCountsView,
    /// Places still held by jobs cancelled while running, until their
    /// worker reports the guest stopped (at most one lease TTL after the
    /// cancel): `max_running` and `max_running_per_key` count them beside
    /// `jobs.running`. Absent in answers of servers from before it was
    /// added: 0.
    #[serde(default)]
    pub stopping: u64,
    /// How long the job due longest has waited for a worker, in
    /// milliseconds (absent: no job is available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_available_age_ms: Option<u64>,
    /// Attempts of the last minute (to within 10 s).
    pub last_minute: ActivityView,
    /// Attempts of the last hour (to within 10 s).
    pub last_hour: ActivityView,
}

/// Jobs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCountsView {
    /// Waiting for their `run_at`.
    pub scheduled: u64,
    /// Due, waiting for a worker.
    pub available: u64,
    /// Running now.
    pub running: u64,
    /// Waiting out a backoff.
    pub retrying: u64,
    /// Finished with an output.
    pub succeeded: u64,
    /// Failed for good.
    pub dead: u64,
    /// Stopped by a user.
    pub cancelled: u64,
}

/// Attempts in a window of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivityView {
    /// Attempts started.
    pub started: u64,
    /// Attempts that ended with their job succeeded.
    pub succeeded: u64,
    /// Attempts that failed (the job went on to `retrying` or `dead`).
    pub failed: u64,
}

impl JobCountsView {
    /// Jobs in any state.
    pub fn total(&self) -> u64 {
        self.scheduled
            + self.available
            + self.running
            + self.retrying
            + self.succeeded
            + self.dead
            + self.cancelled
    }
}

impl From<QueueStats> for QueueStatsView {
    fn from(stats: QueueStats) -> Self {
        Self {
            jobs: stats.jobs.into(),
            stopping: stats.stopping,
            oldest_available_age_ms: stats
                .oldest_available_age
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            last_minute: stats.last_minute.into(),
            last_hour: stats.last_hour.into(),
        }
    }
}

impl From<JobCounts> for JobCountsView {
    fn from(counts: JobCounts) -> Self {
        Self {
            scheduled: counts.get(JobState::Scheduled),
            available: counts.get(JobState::Available),
            running: counts.get(JobState::Running),
            retrying: counts.get(JobState::Retrying),
            succeeded: counts.get(JobState::Succeeded),
            dead: counts.get(JobState::Dead),
            cancelled: counts.get(JobState::Cancelled),
        }
    }
}

impl From<Activity> for ActivityView {
    fn from(activity: Activity) -> Self {
        Self {
            started: activity.started,
            succeeded: activity.succeeded,
            failed: activity.failed,
        }
    }
}

/// A secret as the API shows it: where it may go, not what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretView {
    /// Hosts the value may be sent to.
    pub allowed_hosts: Vec<String>,
}

/// `GET /v1/queues`: every queue configured or holding jobs, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueList {
    /// The queues.
    pub queues: Vec<QueueView>,
}

impl QueueView {
    /// Queue `record` doing `stats`.
    pub fn new(record: QueueRecord, stats: QueueStats) -> Self {
        let limits = LimitsSpec::from(record.settings.limits);
        let texts =
            |hosts: &[crate::queue::AllowedHost]| hosts.iter().map(ToString::to_string).collect();
        Self {
            name: record.name,
            allowed_hosts: texts(&record.settings.allowed_hosts),
            config: record.settings.config,
            secrets: record
                .settings
                .secrets
                .iter()
                .map(|(name, hosts)| {
                    (
                        name.clone(),
                        SecretView {
                            allowed_hosts: texts(hosts),
                        },
                    )
                })
                .collect(),
            paused: record.paused,
            max_running: limits.max_running,
            max_running_per_key: limits.max_running_per_key,
            rate: limits.rate,
            retention: retention_view(&record.settings.retention),
            created_at: record.created_at,
            updated_at: record.updated_at,
            stats: stats.into(),
        }
    }
}

/// Every state's retention as it applies, defaults included.
fn retention_view(retention: &Retention) -> RetentionSpec {
    let mut view = RetentionSpec::default();
    for (state, keep) in retention.effective() {
        let text = Some(keep.to_text());
        match state {
            JobState::Succeeded => view.succeeded = text,
            JobState::Dead => view.dead = text,
            _ => view.cancelled = text,
        }
    }
    view
}
