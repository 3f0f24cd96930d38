//! Bodies of `/v1/queues`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::queue::{QueueSpec, SecretSpec, SecretValue};
use crate::store::QueueRecord;

/// `PUT /v1/queues/{name}`: the queue's whole settings, replacing what was
/// there. Every field defaults to empty: `{}` grants nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQueue {
    /// Hosts tasks may send requests to: `https://api.example.com`,
    /// `https://*.example.com:8443`, `http://10.0.0.5:9000`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Values tasks may read.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets by name. Left out: deleted. Without `value`: the stored value
    /// is kept and only its hosts change.
    #[serde(default)]
    pub secrets: BTreeMap<String, PutSecret>,
}

/// One secret of [`PutQueue`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value; write-only: never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SecretValue>,
    /// Hosts the value may be sent to (a request elsewhere that carries it
    /// is refused).
    pub allowed_hosts: Vec<String>,
}

impl From<PutQueue> for QueueSpec {
    fn from(put: PutQueue) -> Self {
        Self {
            allowed_hosts: put.allowed_hosts,
            config: put.config,
            secrets: put
                .secrets
                .into_iter()
                .map(|(name, secret)| {
                    let spec = SecretSpec {
                        value: secret.value,
                        allowed_hosts: secret.allowed_hosts,
                    };
                    (name, spec)
                })
                .collect(),
        }
    }
}

/// A queue's settings. Secrets are listed by name and hosts, never value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    /// The queue.
    pub name: String,
    /// Hosts tasks may send requests to.
    pub allowed_hosts: Vec<String>,
    /// Values tasks may read.
    pub config: BTreeMap<String, String>,
    /// Secret names, with the hosts each may be sent to.
    pub secrets: BTreeMap<String, SecretView>,
    /// When the settings were first written (absent: never configured).
    pub created_at: Option<DateTime<Utc>>,
    /// When they last changed.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A secret as the API shows it: where it may go, not what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretView {
    /// Hosts the value may be sent to.
    pub allowed_hosts: Vec<String>,
}

/// `GET /v1/queues`: every configured queue, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueList {
    /// The queues.
    pub queues: Vec<QueueView>,
}

impl From<QueueRecord> for QueueView {
    fn from(record: QueueRecord) -> Self {
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
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}
