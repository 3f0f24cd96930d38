//! Job submission, reads and user actions over the REST API.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskflow::api::types::{JobQuery, SubmitBatch, SubmitJob};
use taskflow::client::ClientError;
use taskflow::job::{JobState, NewJob};

use crate::support::{TestApp, TestOptions, eventually, new_job};

async fn post_json(app: &TestApp, path: &str, body: &str) -> (StatusCode, Value) {
    let response = app
        .http()
        .post(format!("{}{path}", app.url))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.json().await.expect("every response is JSON"),
    )
}

async fn job_count(app: &TestApp) -> i64 {
    app.store().count_jobs().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_submissions_get_a_4xx_naming_the_problem_and_write_nothing() {
    let mut options = TestOptions::default();
    options.limits.submission.max_input_bytes = 1000;
    let app = TestApp::start_with(options).await;
    let module = app.upload("hello").await;
    let unknown = "ab".repeat(32);
    let big = "x".repeat(2000);
    let cases: Vec<(String, StatusCode, &str, &str)> = vec![
        (
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        (
            r#"{"input": {}}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "module",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "max_attempts": "three"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "max_attempts",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "surprise": true}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "surprise",
        ),
        (
            format!(r#"{{"module": "{module}"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "input",
        ),
        (
            r#"{"module": "nope", "input": 1}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
            "module",
        ),
        (
            format!(r#"{{"module": "{unknown}", "input": 1}}"#),
            StatusCode::NOT_FOUND,
            "module_not_found",
            &unknown,
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "max_attempts": 0}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "max_attempts",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "max_attempts": 1000}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "max_attempts",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "max_attempts": -1}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "max_attempts",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "timeout_ms": 99999999999}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "timeout_ms",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "fuel": 0}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "fuel",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "memory_limit_bytes": 17179869184}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "memory_limit_bytes",
        ),
        (
            format!(
                r#"{{"module": "{module}", "input": 1, "queue": "Robert'); DROP TABLE jobs;--"}}"#
            ),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "queue",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "input_base64": "AA=="}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "either",
        ),
        (
            format!(r#"{{"module": "{module}", "input_base64": "***"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "base64",
        ),
        (
            format!(r#"{{"module": "{module}", "input": "{big}"}}"#),
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            "1000",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "priority": 99999}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "priority",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "run_at": "tomorrow"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "run_at",
        ),
        // Valid RFC 3339 for chrono, out of range for PostgreSQL.
        (
            format!(r#"{{"module": "{module}", "input": 1, "run_at": "-10000-01-01T00:00:00Z"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "run_at",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1, "run_at": "0000-12-31T23:59:59Z"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "run_at",
        ),
        (
            format!(
                r#"{{"module": "{module}", "input_base64": "{}"}}"#,
                "A".repeat(2000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            "1000",
        ),
        (
            format!(r#"{{"module": "{module}", "input": 1e400}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "input",
        ),
    ];
    for (body, status, code, mention) in cases {
        let (actual, response) = post_json(&app, "/v1/jobs", &body).await;
        assert_eq!(actual, status, "{body} → {response}");
        assert_eq!(response["error"]["code"], code, "{body} → {response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mention),
            "{body}: {message:?} should mention {mention:?}"
        );
    }

    let response = app
        .http()
        .post(format!("{}/v1/jobs", app.url))
        .body(r#"{"module": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, response) = post_json(
        &app,
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

    for path in ["/v1/jobs/not-a-uuid", "/v1/jobs/not-a-uuid/attempts"] {
        let response = app
            .http()
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_path");
    }
    let response = app
        .http()
        .get(format!("{}/v1/jobs?state=bogus", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .http()
        .get(format!("{}/v1/nowhere", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");

    assert_eq!(
        job_count(&app).await,
        0,
        "no invalid submission may write a job"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_job_runs_and_its_output_and_log_are_stored() {
    let app = TestApp::start().await;
    let worker = app.spawn_worker("w1");
    let module = app.upload("hello").await;

    let submitted = app.submit(&module, json!({"name": "Ada"})).await;
    assert_eq!(submitted.state, JobState::Available);
    let job = app.wait_final(submitted.id).await;

    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.output, Some(json!({"greeting": "Hello, Ada!"})));
    assert_eq!(job.input, Some(json!({"name": "Ada"})));
    assert_eq!(job.attempt, 1);
    assert_eq!(job.worker_id.as_deref(), Some("w1"));
    let usage = job.resource_use.expect("resource use is recorded");
    assert!(usage.fuel_consumed.unwrap() > 0);
    assert!(job.finished_at.is_some());

    let attempts = app.client.attempts(job.id).await.unwrap().attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "succeeded");
    assert_eq!(attempts[0].worker_id, "w1");
    assert_eq!(Some(attempts[0].lease_token), job.lease_token);
    let log = &attempts[0].logs[0];
    assert_eq!(log["source"], "log");
    assert_eq!(log["level"], "info");
    assert!(
        log["message"]
            .as_str()
            .unwrap()
            .contains(&format!("greeting Ada (job {}, attempt 1)", job.id))
    );

    worker.stop().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_input_and_output_travel_as_base64() {
    let app = TestApp::start().await;
    let worker = app.spawn_worker("w1");
    let module = app.upload("misbehave").await;
    let job = app
        .submit_with(SubmitJob {
            module: module.clone(),
            input: Some(json!({"mode": "big_output", "bytes": 3}).into()),
            ..Default::default()
        })
        .await;
    let job = app.wait_final(job.id).await;
    assert_eq!(job.output, None);
    assert_eq!(
        job.output_base64.as_deref(),
        Some("eHh4"),
        "xxx is not JSON, so it is base64"
    );

    let (status, body) = post_json(
        &app,
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
    worker.stop().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_original_job_and_rejects_a_different_request() {
    let app = TestApp::start().await;
    let module = app.upload("hello").await;
    let request = SubmitJob {
        module: module.clone(),
        input: Some(json!({"name": "once"}).into()),
        idempotency_key: Some("order-42".into()),
        ..Default::default()
    };

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
    assert_eq!(job_count(&app).await, 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_inserted_in_one_transaction_and_listed_with_keyset_pagination() {
    let app = TestApp::start().await;
    let module = app.upload("hello").await;
    let jobs: Vec<SubmitJob> = (0..5)
        .map(|i| SubmitJob {
            module: module.clone(),
            input: Some(json!({"name": format!("n{i}")}).into()),
            queue: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
            ..Default::default()
        })
        .collect();
    let submitted = app
        .client
        .submit_batch(&SubmitBatch { jobs })
        .await
        .unwrap()
        .jobs;
    assert_eq!(submitted.len(), 5);

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = app
            .client
            .list_jobs(&JobQuery {
                limit: Some(2),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<_> = submitted.iter().map(|s| s.id).collect();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, every job exactly once");

    let even = app
        .client
        .list_jobs(&JobQuery {
            queue: Some("even".into()),
            state: Some(JobState::Available),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.jobs.len(), 3);
    assert!(
        even.jobs
            .iter()
            .all(|j| j.queue == "even" && j.input.is_none())
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_scheduled_for_later_waits_for_its_time() {
    let app = TestApp::start().await;
    let worker = app.spawn_worker("w1");
    let module = app.upload("hello").await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let job = app
        .submit_with(SubmitJob {
            module,
            input: Some(json!({}).into()),
            run_at: Some(run_at),
            ..Default::default()
        })
        .await;
    assert_eq!(job.state, JobState::Scheduled);
    let job = app.wait_final(job.id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert!(
        job.started_at.unwrap() >= run_at,
        "started {:?} before {run_at}",
        job.started_at
    );
    worker.stop().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_waiting_and_running_jobs_and_retry_requeues_them() {
    let app = TestApp::start().await;
    let module = app.upload("misbehave").await;

    // Waiting: no worker yet.
    let waiting = app.submit(&module, json!({"mode": "succeed"})).await;
    let cancelled = app.client.cancel(waiting.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    match app.client.cancel(waiting.id).await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(code, "invalid_state");
        }
        other => panic!("cancelling twice must conflict, got {other:?}"),
    }

    // Running: a job that would spin for a minute.
    let worker = app.spawn_worker("w1");
    let spinning = app
        .submit_with(SubmitJob {
            module: module.clone(),
            input: Some(json!({"mode": "spin"}).into()),
            timeout_ms: Some(60_000),
            fuel: Some(1_000_000_000_000),
            ..Default::default()
        })
        .await;
    eventually(Duration::from_secs(10), || async {
        let job = app.client.get_job(spinning.id).await.unwrap();
        (job.state == JobState::Running).then_some(())
    })
    .await;
    assert_eq!(
        app.client.cancel(spinning.id).await.unwrap().state,
        JobState::Cancelled
    );
    let attempts = app.client.attempts(spinning.id).await.unwrap().attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "cancelled");

    // The worker notices through its lease, stops the guest and serves the next job.
    let after = app
        .submit(&module, json!({"mode": "succeed", "output": {"ok": true}}))
        .await;
    let after = app.wait_final(after.id).await;
    assert_eq!(after.state, JobState::Succeeded);
    assert_eq!(
        app.client.get_job(spinning.id).await.unwrap().state,
        JobState::Cancelled
    );

    // Retry brings the cancelled job back with fresh attempts.
    let requeued = app.client.retry(waiting.id).await.unwrap();
    assert_eq!(requeued.state, JobState::Available);
    let done = app.wait_final(waiting.id).await;
    assert_eq!(done.state, JobState::Succeeded);
    match app.client.retry(waiting.id).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, StatusCode::CONFLICT),
        other => panic!("a succeeded job cannot be retried, got {other:?}"),
    }
    worker.stop().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let app = TestApp::start().await;
    let health: Value = app
        .http()
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = app
        .http()
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["postgres"], "ok");
    assert_eq!(ready["redis"], "ok");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unicode_and_edge_case_payloads_round_trip_exactly_or_are_refused() {
    let app = TestApp::start().await;
    let module = app.upload("hello").await;
    let key = "🦀-ключ-مفتاح-\u{202e}-\u{fffd}";
    let input = json!({"name": "nul\u{0000}byte, emoji 🦀, rtl \u{202e}, combining e\u{301}", "deep": [[[["x"]]]]});
    let first = app
        .submit_with(SubmitJob {
            module: module.clone(),
            input: Some(input.clone().into()),
            idempotency_key: Some(key.into()),
            ..Default::default()
        })
        .await;
    let again = app
        .client
        .submit(&SubmitJob {
            module: module.clone(),
            input: Some(input.clone().into()),
            idempotency_key: Some(key.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(again.job.id, first.id);
    assert!(!again.created);
    let stored = app.client.get_job(first.id).await.unwrap();
    assert_eq!(stored.input, Some(input));
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
        let (status, response) = post_json(&app, "/v1/jobs", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:.80} → {response}");
        assert!(response["error"]["message"].is_string());
    }
    assert_eq!(job_count(&app).await, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_postgres_cannot_store_fails_only_its_own_submission_among_grouped_ones() {
    let app = TestApp::start().await;
    let module = app.upload("hello").await;
    let requests = (0..60).map(|i| {
        let run_at = if i % 6 == 0 {
            "-10000-01-01T00:00:00Z"
        } else {
            "2030-01-01T00:00:00Z"
        };
        let body = format!(r#"{{"module": "{module}", "input": {i}, "run_at": "{run_at}"}}"#);
        let app = &app;
        async move { (i, post_json(app, "/v1/jobs", &body).await) }
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
    assert_eq!(job_count(&app).await, 50);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submission_postgres_refuses_fails_alone_in_its_group() {
    use taskflow::store::Submitter;

    let app = TestApp::start().await;
    let module = app.upload("hello").await;
    let submitter = Submitter::spawn(app.store().clone());
    // Past validation's reach: a job only the database can refuse.
    let job = |run_at| NewJob {
        run_at,
        ..new_job(&module)
    };
    let refused = "-10000-01-01T00:00:00Z".parse().unwrap();
    let submissions = (0..40).map(|i| {
        let job = job((i == 20).then_some(refused));
        let submitter = &submitter;
        async move { (i, submitter.submit(job).await) }
    });
    for (i, result) in futures::future::join_all(submissions).await {
        match result {
            Ok(submitted) => assert_ne!(i, 20, "{submitted:?}"),
            Err(error) => {
                assert_eq!(i, 20, "{error:?}");
                assert!(error.is_refusal(), "{error:?}");
                let answer = taskflow::api::ApiError::from(error);
                assert_eq!(answer.status, StatusCode::BAD_REQUEST);
                assert_eq!(answer.code, "invalid_value");
            }
        }
    }
    assert_eq!(job_count(&app).await, 39);
    // Its writers keep a connection of the test database's pool until the
    // submitter is gone; closing the pool waits for them.
    drop(submitter);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_come_in_pages_oldest_first() {
    let app = TestApp::start().await;
    let worker = app.spawn_worker("w1");
    let module = app.upload("misbehave").await;
    let job = app
        .submit_with(SubmitJob {
            module,
            input: Some(json!({"mode": "retryable_error", "message": "again"}).into()),
            max_attempts: Some(5),
            ..Default::default()
        })
        .await;
    let job = app.wait_final(job.id).await;
    assert_eq!(job.state, JobState::Dead);

    let mut numbers = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/v1/jobs/{}/attempts?limit=2", app.url, job.id);
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = app
            .http()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let attempts = page["attempts"].as_array().unwrap();
        assert!(attempts.len() <= 2);
        numbers.extend(attempts.iter().map(|a| a["attempt"].as_i64().unwrap()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    let all = app.client.attempts(job.id).await.unwrap();
    assert_eq!(all.attempts.len(), 5, "the client follows the pages");

    for query in ["limit=0", "limit=101", "cursor=abc"] {
        let response = app
            .http()
            .get(format!("{}/v1/jobs/{}/attempts?{query}", app.url, job.id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    worker.stop().await;
    app.finish().await;
}
