//! Jobs through a [`TestApp`]: upload, submit, wait, and the submissions and
//! checks tests share.

use std::time::Duration;

use serde_json::Value;
use taskflow::api::types::{AttemptView, JobView, JsonText, SubmitJob};
use taskflow::job::JobState;
use uuid::Uuid;

use super::{TestApp, eventually, plugin};

impl TestApp {
    /// Uploads a plugin and returns its hash.
    pub async fn upload(&self, name: &str) -> String {
        self.upload_component(plugin(name)).await
    }

    /// Uploads a component and returns its hash.
    pub async fn upload_component(&self, component: Vec<u8>) -> String {
        self.client
            .push_module(component)
            .await
            .expect("the component uploads")
            .0
            .hash
    }

    /// Submits a job of `module` with JSON `input` and default options.
    pub async fn submit(&self, module: &str, input: Value) -> JobView {
        self.submit_with(SubmitJob::new(module, input)).await
    }

    pub async fn submit_with(&self, job: SubmitJob) -> JobView {
        self.client.submit(&job).await.expect("job submits").job
    }

    /// Submits a job of the `misbehave` plugin's `module` that spins until
    /// its 60 s timeout (it may have all the fuel a job can), and waits
    /// until a worker runs it.
    pub async fn spinning(&self, module: &str) -> JobView {
        let job = self
            .submit_with(SubmitJob {
                timeout_ms: Some(60_000),
                fuel: Some(100_000_000_000_000),
                ..SubmitJob::new(module, serde_json::json!({"mode": "spin"}))
            })
            .await;
        eventually(Duration::from_secs(10), || async {
            let seen = self.client.get_job(job.id).await.unwrap();
            (seen.state == JobState::Running).then_some(seen)
        })
        .await
    }

    /// Waits (up to a minute) for a job to reach a final state.
    pub async fn wait_final(&self, id: Uuid) -> JobView {
        self.client
            .wait(id, Duration::from_secs(60))
            .await
            .expect("job finishes")
    }

    /// Submits a job of `module` with JSON `input` and default options, and
    /// waits for its final state.
    pub async fn run(&self, module: &str, input: Value) -> JobView {
        self.run_with(SubmitJob::new(module, input)).await
    }

    /// Submits `job` and waits for its final state.
    pub async fn run_with(&self, job: SubmitJob) -> JobView {
        let id = self.submit_with(job).await.id;
        self.wait_final(id).await
    }

    /// Every attempt of job `id`, oldest first.
    pub async fn attempts(&self, id: Uuid) -> Vec<AttemptView> {
        self.client.attempts(id).await.expect("attempts").attempts
    }

    /// Sets the `default` queue's `settings` (hosts, secrets, config) and
    /// checks that the API took them.
    pub async fn set_default_queue(&self, settings: Value) {
        let (status, answer) = self
            .put_json("/v1/queues/default", &settings.to_string())
            .await;
        assert!(status.is_success(), "{answer}");
    }

    /// Submits `count` jobs of `module` with `input`, in one batch; their ids.
    pub async fn submit_many(&self, module: &str, input: Value, count: usize) -> Vec<Uuid> {
        let jobs = (0..count)
            .map(|_| SubmitJob::new(module.to_owned(), input.clone()))
            .collect();
        self.client
            .submit_batch(&taskflow::api::types::SubmitBatch { jobs })
            .await
            .unwrap()
            .jobs
            .iter()
            .map(|job| job.id)
            .collect()
    }

    /// How many jobs the database holds.
    pub async fn job_count(&self) -> i64 {
        self.store().count_jobs().await.unwrap()
    }
}

/// A job of `module` with JSON `input` allowed one attempt, so that its
/// first failure is final.
pub fn single_attempt(module: &str, input: Value) -> SubmitJob {
    SubmitJob {
        max_attempts: Some(1),
        ..SubmitJob::new(module, input)
    }
}

/// A job of `module` with JSON `input` submitted under idempotency `key`.
pub fn keyed(module: &str, key: &str, input: Value) -> SubmitJob {
    SubmitJob {
        idempotency_key: Some(key.to_owned()),
        ..SubmitJob::new(module, input)
    }
}

/// A job of the `misbehave` plugin (`module`) that fails retryably with
/// `message` on every one of its `attempts`, so that it ends dead after the
/// last.
pub fn failing_every_attempt(module: &str, attempts: u32, message: &str) -> SubmitJob {
    SubmitJob {
        max_attempts: Some(attempts),
        ..SubmitJob::new(
            module,
            serde_json::json!({"mode": "retryable_error", "message": message}),
        )
    }
}

/// A job's input or output as a tree: the API sends them as JSON text
/// ([`JsonText`]) and a test looks inside.
pub fn tree(text: &Option<JsonText>) -> Option<Value> {
    text.as_ref()
        .map(|text| text.value().expect("the API sends one JSON value"))
}

/// Asserts that `job` ended in `state`, and shows its last error if not.
#[track_caller]
pub fn assert_state(job: &JobView, state: JobState) {
    assert_eq!(job.state, state, "job {}: {:?}", job.id, job.last_error);
}
