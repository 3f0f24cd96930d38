//! Compiling untrusted components: bounded in time and memory on the API
//! and on workers, failures remembered, and a slow compile holding up no
//! other module.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sha2::Digest;
use taskflow::config::WorkerConfig;
use taskflow::job::JobState;

use crate::support::{TestApp, TestOptions, assert_state, eventually, single_attempt};

/// A component whose one function is so big that an optimised compile
/// takes seconds and hundreds of MiB (an unoptimised one about 100 MiB);
/// it does not fit the task world, which only shows once it compiled.
fn heavy_component() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..300_000 {
        body.push_str(&format!(
            "(local.set {} (i32.add (local.get {}) (i32.const {i})))",
            i % 1000,
            (i * 7) % 1000
        ));
    }
    let locals = "i32 ".repeat(1000);
    wat::parse_str(format!(
        "(component (core module (func (export \"f\") (result i32) (local {locals}) {body} \
         (i32.const 0))))"
    ))
    .unwrap()
}

/// Stores a module without the API's check, as if it had passed it, and
/// returns its hash.
async fn store_module(app: &TestApp, bytes: &[u8]) -> String {
    let hash = hex::encode(sha2::Sha256::digest(bytes));
    app.store().insert_module(&hash, bytes).await.unwrap();
    hash
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_whose_compile_needs_too_much_memory_gets_422_and_the_api_serves_on() {
    let mut options = TestOptions::default();
    options.compile.compile_memory_limit_bytes = 64 << 20;
    let app = TestApp::start_with(options).await;
    let (status, body) = app.put("/v1/modules", heavy_component()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "compile_memory_limit", "{body}");
    app.upload("hello").await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_that_does_not_compile_in_time_fails_its_jobs_and_is_not_compiled_again() {
    let metrics = taskflow::telemetry::prometheus();
    let mut app = TestApp::start().await;
    let heavy = store_module(&app, &heavy_component()).await;
    app.compile.compile_timeout = Duration::from_millis(300);
    app.spawn_worker("w1");

    let first = app.run_with(single_attempt(&heavy, json!({}))).await;
    assert_state(&first, JobState::Dead);
    let error = first.last_error.unwrap();
    assert_eq!(error["kind"], "module_unavailable", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("did not compile within 300ms"),
        "{message}"
    );

    let second = app.run_with(single_attempt(&heavy, json!({}))).await;
    let message = second.last_error.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("did not compile within 300ms")
            && message.contains("failed less than 10 minutes ago"),
        "the failure is remembered, not compiled again: {message}"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains(r#"taskflow_compiles_total{outcome="timeout"} 1"#),
        "one compile for two jobs, and its time reported:\n{rendered}"
    );
    assert!(rendered.contains("taskflow_compile_seconds"), "{rendered}");
    app.finish().await;
}

/// A module that compiles but does not fit the worker's pooling allocator
/// (here: its memory starts bigger than the worker grants any attempt) can
/// never run there; the failure is remembered like a failed compile, not
/// compiled again for each attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_too_big_for_the_workers_pool_is_not_compiled_again_for_each_job() {
    let (mut app, hello) = TestApp::start_with_plugin("hello").await;
    app.execution.max_memory_bytes = 64 << 10;
    app.spawn_worker("w1");
    let tiny = || taskflow::api::types::SubmitJob {
        memory_limit_bytes: Some(64 << 10),
        ..single_attempt(&hello, json!({"name": "x"}))
    };

    let first = app.run_with(tiny()).await;
    let error = first.last_error.unwrap();
    assert_eq!(error["kind"], "module_unavailable", "{error}");
    let second = app.run_with(tiny()).await;
    let message = second.last_error.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("failed less than 10 minutes ago"),
        "the failure is remembered, not compiled again: {message}"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_that_needs_too_much_memory_fails_only_its_own_modules_jobs() {
    let (mut app, hello) = TestApp::start_with_plugin("hello").await;
    let heavy = store_module(&app, &heavy_component()).await;
    app.compile.compile_memory_limit_bytes = 128 << 20;
    app.spawn_worker("w1");

    let heavy_job = app.run_with(single_attempt(&heavy, json!({}))).await;
    let error = heavy_job.last_error.unwrap();
    assert_eq!(error["kind"], "module_unavailable", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("needed more than 134217728 bytes of memory"),
        "{error}"
    );
    let hello_job = app
        .run_with(single_attempt(&hello, json!({"name": "x"})))
        .await;
    assert_state(&hello_job, JobState::Succeeded);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_compile_holds_up_no_other_module_nor_an_execution_slot() {
    let (app, hello) = TestApp::start_with_plugin("hello").await;
    let heavy = store_module(&app, &heavy_component()).await;
    // One execution slot: the heavy module's compile must not hold it.
    app.spawn_worker_with(WorkerConfig {
        concurrency: Some(1),
        ..app.worker_config("w1")
    });

    let heavy_job = app.submit_with(single_attempt(&heavy, json!({}))).await.id;
    // Once the heavy job is claimed, its compile starts at once.
    eventually(Duration::from_secs(10), || async {
        let job = app.client.get_job(heavy_job).await.unwrap();
        (job.state == JobState::Running).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hello_job = app
        .run_with(single_attempt(&hello, json!({"name": "x"})))
        .await;
    assert_state(&hello_job, JobState::Succeeded);
    let heavy_job = app.wait_final(heavy_job).await;
    assert_eq!(heavy_job.last_error.unwrap()["kind"], "module_unavailable");
    assert!(
        hello_job.finished_at < heavy_job.finished_at,
        "hello compiled and ran while the heavy module still compiled"
    );
    app.finish().await;
}
