//! What a job's queue grants its attempt (`queue/`), read when the task can
//! use it: its hosts, its configuration, its secrets opened with the
//! worker's key. Kept for [`FRESH_FOR`] per queue, so a busy queue costs
//! PostgreSQL one read a second rather than one per job, and a change to a
//! queue's grants reaches every worker within that time. When PostgreSQL
//! cannot be read, the last grants read are used, as old as they are: a
//! partition must not fail jobs that ran a moment ago.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::job::{Failure, FailureKind};
use crate::queue::SecretKey;
use crate::sandbox::outbound::GrantedSecret;
use crate::sandbox::{Grants, PreparedTask};
use crate::store::{QueueGrants, Store};

/// How long grants read from PostgreSQL are used before they are read again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Each queue's grants, as last read.
pub(super) struct GrantsCache {
    store: Store,
    key: Option<SecretKey>,
    read: Mutex<HashMap<String, (Instant, Grants)>>,
}

impl GrantsCache {
    pub(super) fn new(store: Store, key: Option<SecretKey>) -> Self {
        Self {
            store,
            key,
            read: Mutex::new(HashMap::new()),
        }
    }

    /// The grants of `queue` for `task`: nothing (and no database call)
    /// when the task imports nothing a queue grants.
    ///
    /// # Errors
    ///
    /// A retryable `grants_unavailable` failure when the grants were never
    /// read and cannot be now, or a secret cannot be opened with the key.
    pub(super) async fn for_task(
        &self,
        task: &PreparedTask,
        queue: &str,
    ) -> Result<Grants, Failure> {
        if !task.uses_grants() {
            return Ok(Grants::default());
        }
        let cached = self.lock().get(queue).cloned();
        if let Some((read_at, grants)) = &cached
            && read_at.elapsed() < FRESH_FOR
        {
            return Ok(grants.clone());
        }
        let unavailable = |message: String| Failure::new(FailureKind::GrantsUnavailable, message);
        let stored = match self.store.queue_grants(queue).await {
            Ok(stored) => stored,
            Err(error) => {
                return match cached {
                    Some((_, grants)) => {
                        tracing::warn!(%queue, %error, "using the last grants read: PostgreSQL cannot be read");
                        Ok(grants)
                    }
                    None => Err(unavailable(format!(
                        "cannot read queue {queue:?}'s grants: {error}"
                    ))),
                };
            }
        };
        let grants = open(stored, self.key.as_ref(), queue).map_err(unavailable)?;
        self.lock()
            .insert(queue.to_owned(), (Instant::now(), grants.clone()));
        Ok(grants)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Grants)>> {
        self.read
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Opens each sealed secret of `queue` with `key`.
fn open(stored: QueueGrants, key: Option<&SecretKey>, queue: &str) -> Result<Grants, String> {
    let mut secrets = BTreeMap::new();
    for (name, sealed) in &stored.sealed_secrets {
        let key = key.ok_or_else(|| {
            format!("queue {queue:?} has secrets but this worker has no TASKFLOW_SECRET_KEY")
        })?;
        let value = key
            .open(queue, name, sealed)
            .map_err(|error| error.to_string())?;
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
