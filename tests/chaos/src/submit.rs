//! The suite's clients: submissions through the APIs ([`submit_all`]), and
//! the polling wait for the APIs to answer and the jobs to finish
//! ([`wait_until`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::client::{Client, ClientError};
use uuid::Uuid;

/// How long one submission may keep failing. The longest fault the suite
/// injects on the submission path (PostgreSQL crashed and restarted, an API
/// killed and restarted) lasts seconds; a submission refused for longer
/// shows a defect, and must fail the run rather than hang it.
const SUBMISSION_DEADLINE: Duration = Duration::from_secs(120);

/// Submits `count` jobs from 8 concurrent clients, each retrying with the same
/// idempotency key until an API accepts it (through API restarts and
/// database crashes). Each try goes to the next API of `apis`, so a retry
/// may reach another API than the try it repeats. Returns the job ids and
/// how many retries it took.
///
/// # Errors
///
/// A submission the API refused as a client error (4xx but 408 and 429:
/// nothing the suite does makes one legitimate), or one still failing
/// after [`SUBMISSION_DEADLINE`].
pub async fn submit_all(
    apis: Vec<Client>,
    module: String,
    count: usize,
    keys: Option<usize>,
) -> anyhow::Result<(Vec<Uuid>, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(vec![Uuid::nil(); count]));
    let retries = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (apis, module, next, ids, retries) = (
                apis.clone(),
                module.clone(),
                next.clone(),
                ids.clone(),
                retries.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok(());
                    }
                    let job = SubmitJob {
                        module: module.clone(),
                        input: Some(json!({"mode": "sleep", "ms": 30 + (i * 37) % 170}).into()),
                        idempotency_key: Some(format!("chaos-{i}")),
                        max_attempts: Some(25),
                        concurrency_key: keys.map(|keys| format!("tenant-{}", i % keys)),
                        ..SubmitJob::default()
                    };
                    let deadline = Instant::now() + SUBMISSION_DEADLINE;
                    for api in apis.iter().cycle().skip(i) {
                        match api.submit(&job).await {
                            Ok(submitted) => {
                                ids.lock().unwrap()[i] = submitted.job.id;
                                break;
                            }
                            Err(ClientError::Api { status, code, message })
                                if status.is_client_error()
                                    && !matches!(status.as_u16(), 408 | 429) =>
                            {
                                bail!("submission {i} refused: {message} ({status}, {code})");
                            }
                            Err(error) if Instant::now() > deadline => {
                                bail!("submission {i} still failing after {SUBMISSION_DEADLINE:?}: {error}");
                            }
                            Err(_) => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let ids = ids.lock().unwrap().clone();
    Ok((ids, retries.load(Ordering::Relaxed)))
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
