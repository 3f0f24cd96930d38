//! Module upload validation.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestApp, TestOptions, assert_api_error, plugin};

async fn put_module(app: &TestApp, body: Vec<u8>) -> (StatusCode, Value) {
    app.put("/v1/modules", body).await
}

async fn module_count(app: &TestApp) -> i64 {
    app.store().count_modules().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_component_is_stored_by_hash_and_reuploading_it_is_idempotent() {
    let app = TestApp::start().await;
    let bytes = plugin("hello");
    let expected_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));

    let (status, body) = put_module(&app, bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["hash"], expected_hash.as_str());
    assert_eq!(body["size_bytes"], bytes.len());

    let (status, again) = put_module(&app, bytes).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["hash"], expected_hash.as_str());
    assert_eq!(again["created_at"], body["created_at"]);
    assert_eq!(module_count(&app).await, 1);

    let fetched = app.client.get_module(&expected_hash).await.unwrap();
    assert_eq!(fetched.size_bytes as usize, plugin("hello").len());
    let listed = app.client.list_modules(None, None).await.unwrap();
    assert_eq!(listed.modules.len(), 1);
    app.finish().await;
}

/// What the planner believes `modules` holds: -1 until it was analyzed.
async fn planner_module_estimate(app: &TestApp) -> f32 {
    app.store().planner_module_estimate().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_module_gives_the_planner_statistics_for_the_job_insert() {
    let app = TestApp::start().await;
    assert_eq!(planner_module_estimate(&app).await, -1.0);
    let (status, body) = put_module(&app, plugin("hello")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(planner_module_estimate(&app).await, 1.0);
    let (status, body) = put_module(&app, plugin("noop")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(planner_module_estimate(&app).await, 2.0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anything_but_a_task_component_is_rejected_with_a_reason_and_not_stored() {
    let app = TestApp::start().await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            StatusCode::BAD_REQUEST,
            "not_wasm",
            "not a WebAssembly binary",
        ),
        (
            "empty",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty_body",
            "component's bytes",
        ),
        (
            "core module",
            wat::parse_str("(module)").unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "core_module",
            "not a component",
        ),
        (
            "truncated component",
            plugin("hello")[..1000].to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_component",
            "invalid component",
        ),
        (
            "component of another world",
            wat::parse_str("(component)").unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_world",
            "must export `run",
        ),
        (
            "component importing an unknown interface",
            wat::parse_str(
                r#"(component (import "acme:evil/network" (instance (export "connect" (func)))))"#,
            )
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_world",
            "acme:evil/network",
        ),
        (
            "component importing several unknown things",
            wat::parse_str(
                r#"(component
                     (import "acme:evil/network" (instance (export "connect" (func))))
                     (import "acme:evil/disk" (instance
                       (export "file" (type (sub resource)))
                       (export "wipe" (func))))
                     (import "wasi:clocks/monotonic-clock@0.2.0" (instance
                       (export "not-a-clock-function" (func)))))"#,
            )
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_world",
            "does not provide: acme:evil/network, acme:evil/disk, wasi:clocks/monotonic-clock@0.2.0",
        ),
    ];
    for (name, bytes, status, code, message) in cases {
        let answer = put_module(&app, bytes).await;
        assert_api_error(name, &answer, status, code, message);
    }
    assert_eq!(module_count(&app).await, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_over_the_size_limit_gets_413() {
    let mut options = TestOptions::default();
    options.limits.max_module_bytes = 10_000;
    let app = TestApp::start_with(options).await;
    let (status, body) = put_module(&app, plugin("hello")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("10000"));
    assert_eq!(module_count(&app).await, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn module_lookups_validate_the_hash() {
    let app = TestApp::start().await;
    let (status, body) = app.get_json("/v1/modules/not-a-hash").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_hash");

    let missing = "0".repeat(64);
    let response = app.get(&format!("/v1/modules/{missing}")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pathological_modules_are_refused_in_bounded_time_without_harm() {
    let app = TestApp::start().await;
    // A 32 MiB data section.
    let huge_data = format!(
        "(component (core module (memory 600) (data (i32.const 0) \"{}\")))",
        "\\00".repeat(32 << 20)
    );
    // 50 000 nested blocks.
    let deep = format!(
        "(component (core module (func {} {})))",
        "(block ".repeat(50_000),
        ")".repeat(50_000)
    );
    // 100 000 functions in one table.
    let wide = format!(
        "(component (core module (table 100000 funcref) (elem (i32.const 0) func {}) {}))",
        "$f ".repeat(100_000),
        "(func $f)"
    );
    for (name, text) in [
        ("huge data", huge_data),
        ("deep nesting", deep),
        ("huge element section", wide),
    ] {
        let bytes = wat::parse_str(&text).unwrap();
        let (status, body) = put_module(&app, bytes).await;
        assert!(status.is_client_error(), "{name}: {status} {body}");
        assert!(body["error"]["code"].is_string(), "{name}: {body}");
    }
    // The API still serves.
    let (status, _) = put_module(&app, plugin("hello")).await;
    assert_eq!(status, StatusCode::CREATED);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_compiles_too_slowly_is_refused() {
    let mut options = TestOptions::default();
    options.compile.compile_timeout = std::time::Duration::from_millis(1);
    let app = TestApp::start_with(options).await;
    let (status, body) = put_module(&app, plugin("misbehave")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "compile_timeout");
    assert_eq!(module_count(&app).await, 0);
    app.finish().await;
}
