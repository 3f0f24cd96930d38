//! The suite's clients: submissions through the APIs ([`submit_all`]), and
//! the polling wait for the APIs to answer and the jobs to finish
//! ([`wait_until`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use taskflow::api::types::SubmitJob;
use taskflow::client::Client;
use uuid::Uuid;

/// Submits `count` jobs from 8 concurrent clients, each retrying with the same
/// idempotency key until an API accepts it (through API restarts and
/// database crashes). Each try goes to the next API of `apis`, so a retry
/// may reach another API than the try it repeats. Returns the job ids and
/// how many retries it took.
pub async fn submit_all(
    apis: Vec<Client>,
    module: String,
    count: usize,
    keys: Option<usize>,
) -> (Vec<Uuid>, usize) {
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
                        return;
                    }
                    let job = SubmitJob {
                        module: module.clone(),
                        input: Some(json!({"mode": "sleep", "ms": 30 + (i * 37) % 170}).into()),
                        idempotency_key: Some(format!("chaos-{i}")),
                        max_attempts: Some(25),
                        concurrency_key: keys.map(|keys| format!("tenant-{}", i % keys)),
                        ..SubmitJob::default()
                    };
                    for api in apis.iter().cycle().skip(i) {
                        match api.submit(&job).await {
                            Ok(submitted) => {
                                ids.lock().unwrap()[i] = submitted.job.id;
                                break;
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
        client.await.expect("submitter task");
    }
    let ids = ids.lock().unwrap().clone();
    (ids, retries.load(Ordering::Relaxed))
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
