//! Submissions over the REST API: what is refused and why, idempotency,
//! payload encodings, and values only PostgreSQL can refuse.

use reqwest::StatusCode;
use serde_json::json;
use taskflow::api::types::{SubmitBatch, SubmitJob};
use taskflow::client::ClientError;
use taskflow::job::JobState;

use crate::support::{TestApp, TestOptions, assert_api_error, keyed, tree};

#[tokio::test(flavor = "multi_thread")]
async fn invalid_submissions_get_a_4xx_naming_the_problem_and_write_nothing() {
    let mut options = TestOptions::default();
    options.limits.submission.max_input_bytes = 1000;
    let app = TestApp::start_with(options).await;
    let module = app.upload("hello").await;
    let unknown = "ab".repeat(32);
    let big = "x".repeat(2000);
    // A job for `module` with one more field.
    let job = |field: &str| format!(r#"{{"module": "{module}", "input": 1, {field}}}"#);
    let invalid_field =
        |field: &'static str, body: String| (body, StatusCode::BAD_REQUEST, "invalid_field", field);
    let cases: Vec<(String, StatusCode, &str, &str)> = vec![
        (
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        invalid_field("module", r#"{"input": {}}"#.into()),
        invalid_field("max_attempts", job(r#""max_attempts": "three""#)),
        invalid_field("surprise", job(r#""surprise": true"#)),
        invalid_field("input", format!(r#"{{"module": "{module}"}}"#)),
        (
            r#"{"module": "Not-A-Hash", "input": 1}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
            "module",
        ),
        (
            r#"{"module": "nope", "input": 1}"#.into(),
            StatusCode::NOT_FOUND,
            "module_not_found",
            "no module is named nope",
        ),
        (
            format!(r#"{{"module": "{unknown}", "input": 1}}"#),
            StatusCode::NOT_FOUND,
            "module_not_found",
            &unknown,
        ),
        invalid_field("max_attempts", job(r#""max_attempts": 0"#)),
        invalid_field("max_attempts", job(r#""max_attempts": 1000"#)),
        invalid_field("max_attempts", job(r#""max_attempts": -1"#)),
        invalid_field("timeout_ms", job(r#""timeout_ms": 99999999999"#)),
        invalid_field("fuel", job(r#""fuel": 0"#)),
        invalid_field(
            "memory_limit_bytes",
            job(r#""memory_limit_bytes": 17179869184"#),
        ),
        invalid_field("queue", job(r#""queue": "Robert'); DROP TABLE jobs;--""#)),
        invalid_field("either", job(r#""input_base64": "AA==""#)),
        invalid_field(
            "base64",
            format!(r#"{{"module": "{module}", "input_base64": "***"}}"#),
        ),
        (
            format!(r#"{{"module": "{module}", "input": "{big}"}}"#),
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            "1000",
        ),
        invalid_field("priority", job(r#""priority": 99999"#)),
        invalid_field("run_at", job(r#""run_at": "tomorrow""#)),
        // Valid RFC 3339 for chrono, out of range for PostgreSQL.
        invalid_field("run_at", job(r#""run_at": "-10000-01-01T00:00:00Z""#)),
        invalid_field("run_at", job(r#""run_at": "0000-12-31T23:59:59Z""#)),
        (
            format!(
                r#"{{"module": "{module}", "input_base64": "{}"}}"#,
                "A".repeat(2000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            "1000",
        ),
        invalid_field(
            "input",
            format!(r#"{{"module": "{module}", "input": 1e400}}"#),
        ),
    ];
    for (body, status, code, mention) in cases {
        let answer = app.post_json("/v1/jobs", &body).await;
        assert_api_error(&body, &answer, status, code, mention);
    }

    let response = app
        .http()
        .post(format!("{}/v1/jobs", app.url))
        .body(r#"{"module": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, response) = app.post_json(
        "/v1/jobs/batch",
        &format!(r#"{{"jobs": [{{"module": "{module}", "input": 1}}, {{"module": "{module}", "input": 1, "fuel": 0}}]}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1].fuel"),
        "{response}"
    );

    // Path and query mistakes name their field too.
    let mistakes = [
        ("/v1/jobs/not-a-uuid", "invalid_path", "id"),
        ("/v1/jobs/not-a-uuid/attempts", "invalid_path", "id"),
        ("/v1/jobs?state=bogus", "invalid_query", "state"),
        ("/v1/jobs?limit=-1", "invalid_query", "limit"),
        ("/v1/modules?limit=many", "invalid_query", "limit"),
        ("/v1/jobs?bogus=1", "invalid_query", "bogus"),
    ];
    for (path, code, field) in mistakes {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    let (status, body) = app.get_json("/v1/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "route_not_found");

    assert_eq!(
        app.job_count().await,
        0,
        "no invalid submission may write a job"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_input_and_output_travel_as_base64() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app
        .run(&module, json!({"mode": "big_output", "bytes": 3}))
        .await;
    assert_eq!(job.output, None);
    assert_eq!(
        job.output_base64.as_deref(),
        Some("eHh4"),
        "xxx is not JSON, so it is base64"
    );

    let (status, body) = app
        .post_json(
            "/v1/jobs",
            &format!(r#"{{"module": "{module}", "input_base64": "/w=="}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = app
        .wait_final(body["id"].as_str().unwrap().parse().unwrap())
        .await;
    assert_eq!(job.input_base64.as_deref(), Some("/w=="));
    assert_eq!(
        job.state,
        JobState::Dead,
        "0xff is not JSON: the plugin rejects it as fatal"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_original_job_and_rejects_a_different_request() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let request = keyed(&module, "order-42", json!({"name": "once"}));

    let submissions = futures::future::join_all((0..16).map(|_| app.client.submit(&request))).await;
    let ids: std::collections::HashSet<_> = submissions
        .iter()
        .map(|s| s.as_ref().expect("every retry succeeds").job.id)
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "concurrent submissions with one key made one job"
    );
    assert_eq!(
        submissions
            .iter()
            .filter(|s| s.as_ref().unwrap().created)
            .count(),
        1
    );

    let conflicting = SubmitJob {
        input: Some(json!({"name": "twice"}).into()),
        ..request.clone()
    };
    match app.client.submit(&conflicting).await {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(code, "idempotency_conflict");
            assert!(message.contains("order-42"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    let batch = SubmitBatch {
        jobs: vec![
            request.clone(),
            SubmitJob {
                idempotency_key: Some("order-43".into()),
                ..request.clone()
            },
        ],
    };
    let submitted = app.client.submit_batch(&batch).await.unwrap().jobs;
    assert_eq!(submitted[0].id, *ids.iter().next().unwrap());
    assert!(!submitted[0].created);
    assert!(submitted[1].created);
    assert_eq!(app.job_count().await, 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unicode_and_edge_case_payloads_round_trip_exactly_or_are_refused() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let key = "🦀-ключ-مفتاح-\u{202e}-\u{fffd}";
    let input = json!({"name": "nul\u{0000}byte, emoji 🦀, rtl \u{202e}, combining e\u{301}", "deep": [[[["x"]]]]});
    let first = app
        .submit_with(SubmitJob {
            idempotency_key: Some(key.into()),
            ..SubmitJob::new(module.clone(), input.clone())
        })
        .await;
    let again = app
        .client
        .submit(&SubmitJob {
            idempotency_key: Some(key.into()),
            ..SubmitJob::new(module.clone(), input.clone())
        })
        .await
        .unwrap();
    assert_eq!(again.job.id, first.id);
    assert!(!again.created);
    let stored = app.client.get_job(first.id).await.unwrap();
    assert_eq!(tree(&stored.input), Some(input));
    assert_eq!(stored.idempotency_key.as_deref(), Some(key));

    let deep = format!(
        r#"{{"module": "{module}", "input": {}1{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let lone_surrogate = format!(r#"{{"module": "{module}", "input": "\ud800"}}"#);
    let unicode_queue = format!(r#"{{"module": "{module}", "input": 1, "queue": "défaut"}}"#);
    let nul_key = format!(r#"{{"module": "{module}", "input": 1, "idempotency_key": "a\u0000b"}}"#);
    for body in [deep, lone_surrogate, unicode_queue, nul_key] {
        let (status, response) = app.post_json("/v1/jobs", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:.80} → {response}");
        assert!(response["error"]["message"].is_string());
    }
    assert_eq!(app.job_count().await, 1);

    // Numbers no f64 holds reach the task digit for digit.
    let exact = r#"{"id":18446744073709551616,"pi":3.14159265358979323846,"z":-0}"#;
    let body = format!(r#"{{"module": "{module}", "input": {exact}}}"#);
    let (status, created) = app.post_json("/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().parse().unwrap();
    let stored = app.client.get_job(id).await.unwrap();
    assert_eq!(stored.input.as_ref().map(|input| input.text()), Some(exact));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_postgres_cannot_store_fails_only_its_own_submission_among_grouped_ones() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let requests = (0..60).map(|i| {
        let run_at = if i % 6 == 0 {
            "-10000-01-01T00:00:00Z"
        } else {
            "2030-01-01T00:00:00Z"
        };
        let body = format!(r#"{{"module": "{module}", "input": {i}, "run_at": "{run_at}"}}"#);
        let app = &app;
        async move { (i, app.post_json("/v1/jobs", &body).await) }
    });
    for (i, (status, body)) in futures::future::join_all(requests).await {
        if i % 6 == 0 {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{i}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("run_at")
            );
        } else {
            assert_eq!(status, StatusCode::CREATED, "{i}: {body}");
        }
    }
    assert_eq!(app.job_count().await, 50);
    app.finish().await;
}

/// `--threads` (README, "The API's threads"): one by default, where the
/// thread that starts the process answers every request and no runtime
/// thread is started, or as many runtime threads as asked. Either answers a
/// crowd of concurrent submissions, some written alone from their request's
/// task and the rest in groups (store/submitter.rs), each with its own job.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_a_crowd_on_one_thread_or_on_as_many_as_asked() {
    // Tokio's name for its runtime threads.
    const RUNTIME_THREAD: &str = "tokio-rt-worker";
    let (app, module) = TestApp::start_with_plugin("hello").await;
    for (threads, runtime_threads) in [("1", 0), ("3", 3)] {
        let api = app.api_process(&[("TASKFLOW_API_THREADS", threads)]).await;
        assert_eq!(api.threads_named(RUNTIME_THREAD), runtime_threads);
        let submissions = (0..64).map(|i| {
            let job = SubmitJob {
                module: module.clone(),
                input: Some(json!(i).into()),
                ..SubmitJob::default()
            };
            let client = &api.client;
            async move { (i, client.submit(&job).await.unwrap()) }
        });
        for (i, submitted) in futures::future::join_all(submissions).await {
            let job = api.client.get_job(submitted.job.id).await.unwrap();
            assert_eq!(tree(&job.input), Some(json!(i)), "{threads} thread(s)");
        }
    }
    assert_eq!(app.job_count().await, 128);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_taskflow"))
        .arg("api")
        .env("TASKFLOW_API_THREADS", "0")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--threads"), "{stderr}");
    app.finish().await;
}

/// Every 4xx of a submission or a listing names, in `field`, the part of
/// the request it is about, so a client can point at it without parsing
/// the message.
#[tokio::test(flavor = "multi_thread")]
async fn every_4xx_of_a_submission_or_a_listing_names_its_field() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let unknown = "0".repeat(64);
    let job =
        |module: &str, key: &str| json!({"module": module, "input": {}, "idempotency_key": key});
    let cases = [
        (app.get_json("/v1/jobs?limit=0").await, "limit"),
        (app.get_json("/v1/jobs?limit=100000").await, "limit"),
        (app.get_json("/v1/jobs?cursor=nope").await, "cursor"),
        (app.get_json("/v1/modules?limit=0").await, "limit"),
        (
            app.post_json(
                "/v1/jobs",
                &json!({"module": unknown, "input": {}}).to_string(),
            )
            .await,
            "module",
        ),
        (
            app.post_json("/v1/jobs/batch", r#"{"jobs": []}"#).await,
            "jobs",
        ),
        (
            app.post_json(
                "/v1/jobs/batch",
                &json!({"jobs": [job(&module, "a"), job(&module, "a")]}).to_string(),
            )
            .await,
            "jobs[1].idempotency_key",
        ),
        (
            app.post_json(
                "/v1/jobs/batch",
                &json!({"jobs": [job(&module, "b"), job(&unknown, "c")]}).to_string(),
            )
            .await,
            "jobs[1].module",
        ),
    ];
    for ((status, answer), field) in cases {
        assert!(status.is_client_error(), "{field}: {status} {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    assert_eq!(
        app.store().count_jobs().await.unwrap(),
        0,
        "nothing written"
    );
    app.finish().await;
}
