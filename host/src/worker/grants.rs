//! What a job's queue grants its attempt (`queue/`), read when the task can
//! use it: its hosts, its configuration, its secrets opened with the
//! worker's key.

use crate::job::{Failure, FailureKind};
use crate::queue::SecretKey;
use crate::sandbox::{Grants, PreparedTask, outbound::GrantedSecret};
use crate::store::Store;

/// The grants of `queue` for `task`: nothing (and no database call) when
/// the task imports nothing a queue grants.
///
/// # Errors
///
/// A retryable `grants_unavailable` failure when PostgreSQL cannot be read
/// or a secret cannot be opened with `key`.
pub(super) async fn for_task(
    store: &Store,
    key: Option<&SecretKey>,
    task: &PreparedTask,
    queue: &str,
) -> Result<Grants, Failure> {
    if !task.uses_grants() {
        return Ok(Grants::default());
    }
    let unavailable = |message: String| Failure::new(FailureKind::GrantsUnavailable, message);
    let stored = store
        .queue_grants(queue)
        .await
        .map_err(|error| unavailable(format!("cannot read queue {queue:?}'s grants: {error}")))?;
    let mut secrets = std::collections::BTreeMap::new();
    for (name, sealed) in &stored.sealed_secrets {
        let key = key.ok_or_else(|| {
            unavailable(format!(
                "queue {queue:?} has secrets but this worker has no TASKFLOW_SECRET_KEY"
            ))
        })?;
        let value = key
            .open(queue, name, sealed)
            .map_err(|error| unavailable(error.to_string()))?;
        let hosts = stored
            .settings
            .secrets
            .get(name)
            .cloned()
            .unwrap_or_default();
        secrets.insert(name.clone(), GrantedSecret { hosts, value });
    }
    Ok(Grants {
        allowed_hosts: stored.settings.allowed_hosts,
        config: stored.settings.config,
        secrets,
    })
}
