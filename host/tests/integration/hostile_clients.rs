//! Clients that try to starve the API: idle and half-open connections,
//! slow bodies, floods of big requests and of uploads, and an API left open
//! on a public address.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskflow::api::body::JSON_MEMORY_FACTOR;
use taskflow::api::types::{JsonText, SubmitJob};
use taskflow::cli::server::{api_state, spawn_api};
use taskflow::config::ApiConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{TestApp, TestOptions, accepted_connections, eventually, plugin};

/// Opens a connection to `url` (`http://host:port`) and writes `bytes`.
async fn connect_and_send(url: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("the API accepts connections");
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Whether the server has closed `stream` (a read returns end of file or
/// an error).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_half_open_connections_are_capped_and_closed_and_never_lock_out_a_client() {
    let app = TestApp::start().await;
    let api = app
        .api_process(&[
            ("TASKFLOW_MAX_CONNECTIONS", "50"),
            ("TASKFLOW_REQUEST_HEADER_TIMEOUT", "1s"),
        ])
        .await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect_and_send(&api.url, b"GET /healthz HT").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = api.accepted_connections();
    // At least one, or the count sees nothing.
    assert!(
        (1..=50).contains(&held),
        "300 idle clients hold {held} connections; the cap is 50"
    );

    // A real client gets through once idle ones are timed out.
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        reqwest::get(format!("{}/healthz", api.url)),
    )
    .await
    .expect("a client is served while idle connections come and go")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Every idle connection is eventually closed by the server.
    let closing = idle.iter_mut().map(closed_by_server);
    let closed = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(closing))
        .await
        .expect("the server closes idle connections");
    assert!(closed.into_iter().all(|closed| closed));
    app.finish().await;
}

/// A worker's `/metrics` has no authentication (scrapers have none), so it
/// caps its connections and closes idle ones as the API does: served by
/// axum's own `serve`, 100 idle clients held 100 of the worker's
/// descriptors for as long as they liked.
#[tokio::test(flavor = "multi_thread")]
async fn a_workers_metrics_endpoint_caps_and_closes_idle_connections() {
    let app = TestApp::start().await;
    let port = taskflow_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let worker = app.worker_process(
        "scraped",
        &[("TASKFLOW_WORKER_METRICS_LISTEN", &listen)],
        std::process::Stdio::null(),
    );
    let scrape = || async { reqwest::get(format!("{url}/metrics")).await.ok() };
    eventually(Duration::from_secs(30), || async {
        scrape()
            .await
            .filter(|answer| answer.status() == StatusCode::OK)
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(connect_and_send(&url, b"GET /metrics HT").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Counted as connections, not as all descriptors: a worker under load
    // may still be opening its pools' connections meanwhile.
    let held = accepted_connections(worker.id(), port);
    assert!(
        (1..=16).contains(&held),
        "100 idle clients hold {held} connections"
    );

    let closing = idle.iter_mut().map(closed_by_server);
    let closed = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(closing))
        .await
        .expect("the worker closes idle connections");
    assert!(closed.into_iter().all(|closed| closed));
    let answer = scrape().await.expect("a scraper is served again");
    assert_eq!(answer.status(), StatusCode::OK);
    app.finish().await;
}

/// A batch of `jobs` jobs whose inputs are JSON arrays of zeros, `bytes`
/// long in all: cheap to send, and a tree of `serde_json::Value`s many
/// times that size once parsed.
fn batch_of_zeros(module: &str, jobs: usize, bytes: usize) -> String {
    let zeros = vec!["0"; bytes / jobs / 2].join(",");
    let job = format!(r#"{{"module": "{module}", "input": [{zeros}]}}"#);
    format!(r#"{{"jobs": [{}]}}"#, vec![job; jobs].join(","))
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_maximum_size_batches_hold_no_more_memory_than_the_in_flight_budget() {
    const BUDGET: u64 = 160 << 20;
    const BATCH_BYTES: usize = 31 << 20;
    let app = TestApp::start().await;
    // The server reads one of these bodies at a time and lets the others
    // wait, the last for three bodies' time: on a slow, busy machine (a debug
    // build beside a release build) that passed the default 60 s body
    // timeout and the API answered 503 `busy`, as it should. Time is not
    // what this test measures, so the server waits as long as it takes.
    let api = app
        .api_process(&[
            ("TASKFLOW_MAX_REQUEST_BYTES_IN_FLIGHT", &BUDGET.to_string()),
            ("TASKFLOW_REQUEST_BODY_TIMEOUT", "10m"),
        ])
        .await;
    let (module, _) = api.client.push_module(plugin("hello")).await.unwrap();
    // The waiting sends stall on a full window; reqwest's default
    // TCP_USER_TIMEOUT of 30 s would give up on one on a slow machine,
    // which is the client's choice, not what this test measures.
    let http = reqwest::Client::builder()
        .tcp_user_timeout(None)
        .build()
        .unwrap();
    let submit = |body: String| {
        http.post(format!("{}/v1/jobs/batch", api.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Warm up: the process's own working set, before the flood.
    let small = submit(batch_of_zeros(&module.hash, 10, 10_000))
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::CREATED);
    let before = api.peak_rss_bytes();

    let body = batch_of_zeros(&module.hash, 1000, BATCH_BYTES);
    assert!(body.len() >= BATCH_BYTES);
    let flood = (0..4).map(|_| submit(body.clone()));
    for response in futures::future::join_all(flood).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let grew = api.peak_rss_bytes().saturating_sub(before);
    // Each request reserves four times its body, so one runs at a time; it
    // peaks near 3.5 times its body (measured: 109 MiB), and the allocator
    // keeps part of what the others freed. Without the budget, parsing into
    // trees took the API past 1 GiB.
    assert!(
        grew <= BUDGET + (64 << 20),
        "four parallel 31 MiB batches grew the API by {} MiB (budget {} MiB)",
        grew >> 20,
        BUDGET >> 20
    );
    app.finish().await;
}

/// A batch body within its byte limit but of millions of tiny jobs is
/// refused as soon as its list passes `--max-batch-jobs` (api/batch.rs),
/// before the jobs past it are built: parsed whole, 60 MiB of
/// `{"module":""}` became 4 million `SubmitJob`s, over a gigabyte.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_millions_of_tiny_jobs_is_refused_before_they_are_built() {
    const BODY_BYTES: usize = 60 << 20;
    let app = TestApp::start().await;
    let api = app.api_process(&[]).await;
    // Warm up: the process's own working set, before the big body.
    let (_, answer) = api
        .send_json(reqwest::Method::POST, "/v1/jobs/batch", r#"{"jobs": []}"#)
        .await;
    assert_eq!(answer["error"]["code"], "empty_batch", "{answer}");
    let before = api.peak_rss_bytes();

    let tiny = r#"{"module":""},"#;
    let jobs = BODY_BYTES / tiny.len();
    let mut body = String::with_capacity(BODY_BYTES + 16);
    body.push_str(r#"{"jobs":["#);
    for _ in 0..jobs {
        body.push_str(tiny);
    }
    body.pop();
    body.push_str("]}");
    let (status, answer) = api
        .send_json(reqwest::Method::POST, "/v1/jobs/batch", &body)
        .await;
    let grew = api.peak_rss_bytes().saturating_sub(before);
    // The body itself, read into one buffer, and the allocator's slack.
    assert!(
        grew <= 3 * BODY_BYTES as u64,
        "a {} MiB batch of {jobs} tiny jobs grew the API by {} MiB",
        BODY_BYTES >> 20,
        grew >> 20
    );
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], "batch_too_large");
    assert_eq!(answer["error"]["field"], "jobs");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("this one has {jobs}")),
        "{message}"
    );
    app.finish().await;
}

/// A queue's lists and maps are refused at their first entry past the
/// bound: a body of 2 MiB of empty host names was 700,000 `String`s, about
/// 36 MiB while the list grew, before the count was checked.
#[tokio::test(flavor = "multi_thread")]
async fn queue_settings_over_their_bounds_are_refused_before_they_are_built() {
    let app = TestApp::start().await;
    let api = app.api_process(&[]).await;
    // Warm up: the process's own working set, before the big bodies.
    let (status, _) = api
        .send_json(reqwest::Method::PUT, "/v1/queues/flood", "{}")
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = api.peak_rss_bytes();

    let entries = ((2 << 20) - 64) / 3;
    let hosts = format!(
        r#"{{"allowed_hosts":[{}""]}}"#,
        r#""","#.repeat(entries - 1)
    );
    let config = format!(
        r#"{{"config":{{{}"x":""}}}}"#,
        (0..entries / 6)
            .map(|i| format!(r#""{i:x}":"","#))
            .collect::<String>()
    );
    for (method, body, field) in [
        (reqwest::Method::PUT, &hosts, "allowed_hosts"),
        (reqwest::Method::PATCH, &hosts, "allowed_hosts"),
        (reqwest::Method::PUT, &config, "config"),
    ] {
        let (status, answer) = api
            .send_json(method.clone(), "/v1/queues/flood", body)
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {field}: {answer}"
        );
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let grew = api.peak_rss_bytes().saturating_sub(before);
    // Each body read into one buffer, parsed up to the bound, and the
    // allocator's slack.
    assert!(
        grew <= 8 << 20,
        "2 MiB bodies of {entries} host names grew the API by {} MiB",
        grew >> 20
    );
    app.finish().await;
}

/// Reading a job returns its input and output as the JSON text they are
/// stored as (`JsonText`, api/types.rs), never parsed into a tree: a tree
/// of a 1 MB array of zeros takes 16 MB, for each read in flight.
#[tokio::test(flavor = "multi_thread")]
async fn reading_a_job_with_a_large_json_input_builds_no_tree_of_it() {
    let app = TestApp::start().await;
    let api = app.api_process(&[]).await;
    let (module, _) = api.client.push_module(plugin("hello")).await.unwrap();
    let zeros = format!("[{}0]", "0,".repeat(499_000));
    let big = SubmitJob {
        input: Some(JsonText::parse(&zeros).unwrap()),
        ..SubmitJob::new(module.hash.clone(), json!(null))
    };
    let big = api.client.submit(&big).await.unwrap().job.id;
    let small = api
        .client
        .submit(&SubmitJob::new(module.hash, json!({"name": "Ada"})))
        .await
        .unwrap();
    // Warm up: a read's own working set, before the big one.
    api.client.get_job(small.job.id).await.unwrap();
    let before = api.peak_rss_bytes();

    let read = api.client.get_job(big).await.unwrap();
    let grew = api.peak_rss_bytes().saturating_sub(before);
    assert_eq!(
        read.input.map(|input| input.text().len()),
        Some(zeros.len())
    );
    // The row, the text copied out of it, and the response: about 3 MB.
    assert!(
        grew <= 8 << 20,
        "reading a job with a {} kB input grew the API by {} MiB",
        zeros.len() / 1000,
        grew >> 20
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_arrives_too_slowly_gets_408() {
    let app = TestApp::start_with_api(TestOptions::default(), |api| {
        api.request_body_timeout = Duration::from_secs(1);
    })
    .await;
    // The API's JSON, and the console's login form, which no session guards.
    let requests: [(&[u8], &str); 2] = [
        (
            b"POST /v1/jobs HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"module\":",
            "body_timeout",
        ),
        (
            b"POST /ui/login HTTP/1.1\r\nhost: localhost\r\n\
              content-type: application/x-www-form-urlencoded\r\n\
              content-length: 100\r\n\r\ntoken=",
            "did not arrive",
        ),
    ];
    for (request, says) in requests {
        let mut stream = connect_and_send(&app.url, request).await;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("the server answers and closes")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(says), "{answer}");
    }
    app.finish().await;
}

/// The API's `taskflow_api_request_bytes_reserved` gauge, from its
/// `/metrics` (0 before any request reserved).
async fn request_bytes_reserved(url: &str) -> u64 {
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("taskflow_api_request_bytes_reserved "))
        .map_or(0, |value| value.trim().parse::<f64>().unwrap() as u64)
}

/// The console's forms are read as the API's bodies are
/// (`api::body::read`): a declared length over the form limit is refused
/// before a byte is read, and a form holds its share of the in-flight
/// budget while it arrives. They were read outside the budget, so 1,024
/// stalled logins held 64 MiB that no limit counted, and a length over the
/// limit waited for its body.
#[tokio::test(flavor = "multi_thread")]
async fn console_forms_are_read_under_the_apis_body_limits() {
    taskflow::telemetry::prometheus();
    let app = TestApp::start().await;
    let oversized = b"POST /ui/login HTTP/1.1\r\nhost: localhost\r\n\
                      content-type: application/x-www-form-urlencoded\r\n\
                      content-length: 100000\r\n\r\n";
    let mut stream = connect_and_send(&app.url, oversized).await;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("refused without waiting for the body")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let stalled = b"POST /ui/login HTTP/1.1\r\nhost: localhost\r\n\
                    content-type: application/x-www-form-urlencoded\r\n\
                    content-length: 60000\r\n\r\ntoken=";
    let stalled = connect_and_send(&app.url, stalled).await;
    let reserved = eventually(Duration::from_secs(10), || async {
        Some(request_bytes_reserved(&app.url).await).filter(|&bytes| bytes > 0)
    })
    .await;
    assert_eq!(
        reserved, 60_000,
        "the stalled form holds its declared length"
    );
    drop(stalled);
    app.finish().await;
}

/// A body sent without a length reserves the in-flight budget as its bytes
/// arrive, not its route's whole limit: two chunked batches that stall
/// after 10 bytes (each may grow to 64 MiB, 256 MiB parsed) leave room for
/// everyone else for as long as they stall.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_bodies_without_a_length_hold_no_room_they_have_not_used() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let batch_limit = TestOptions::default().limits.max_batch_request_bytes;
    let api = app
        .api_process(&[(
            "TASKFLOW_MAX_REQUEST_BYTES_IN_FLIGHT",
            &(2 * JSON_MEMORY_FACTOR * batch_limit).to_string(),
        )])
        .await;
    let stalled = b"POST /v1/jobs/batch HTTP/1.1\r\nhost: localhost\r\n\
                    content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
                    a\r\n{\"jobs\": [\r\n";
    let _stalled = [
        connect_and_send(&api.url, stalled).await,
        connect_and_send(&api.url, stalled).await,
    ];
    let reserved = eventually(Duration::from_secs(10), || async {
        Some(request_bytes_reserved(&api.url).await).filter(|&bytes| bytes > 0)
    })
    .await;
    assert!(
        reserved <= 1 << 20,
        "stalled bodies of 10 bytes hold {} MiB of the budget",
        reserved >> 20
    );

    let submitted = api.client.submit(&SubmitJob::new(&module, json!({}))).await;
    assert!(submitted.is_ok(), "{submitted:?}");
    app.finish().await;
}

/// A body of declared length reserves that length at once, so that big
/// bodies take turns rather than fail, and must then keep the pace that
/// brings it whole within the body timeout (after a grace of a few
/// seconds): one that falls behind is refused, 408 `body_too_slow`, and
/// gives its room back. Two batches that declared the largest length a
/// batch may have and stalled after 10 bytes held the whole budget for the
/// body timeout (here ten minutes), and every other request waited.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_bodies_of_declared_length_give_their_room_back_when_they_fall_behind() {
    let (app, module) = TestApp::start_with_plugin("hello").await;
    let batch_limit = TestOptions::default().limits.max_batch_request_bytes;
    let budget = 2 * JSON_MEMORY_FACTOR * batch_limit;
    let api = app
        .api_process(&[
            ("TASKFLOW_MAX_REQUEST_BYTES_IN_FLIGHT", &budget.to_string()),
            ("TASKFLOW_REQUEST_BODY_TIMEOUT", "10m"),
        ])
        .await;
    let stalled = format!(
        "POST /v1/jobs/batch HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/json\r\ncontent-length: {batch_limit}\r\n\r\n{{\"jobs\": ["
    );
    let mut stalled = [
        connect_and_send(&api.url, stalled.as_bytes()).await,
        connect_and_send(&api.url, stalled.as_bytes()).await,
    ];
    eventually(Duration::from_secs(10), || async {
        (request_bytes_reserved(&api.url).await >= budget as u64).then_some(())
    })
    .await;

    // Another client waits for their room, and gets it once they fall
    // behind; it would wait out the body timeout otherwise.
    let submitted = tokio::time::timeout(
        Duration::from_secs(60),
        api.client.submit(&SubmitJob::new(&module, json!({}))),
    )
    .await;
    assert!(matches!(submitted, Ok(Ok(_))), "{submitted:?}");
    for stream in &mut stalled {
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut answer))
            .await
            .expect("the stalled body is answered")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_too_slow"), "{answer}");
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_beyond_the_compile_queue_get_503_with_retry_after_before_their_body_is_read() {
    let mut options = TestOptions::default();
    options.compile.max_concurrent_compiles = 1;
    let app = TestApp::start_with_api(options, |api| api.max_queued_uploads = 0).await;
    let upload = || {
        app.http()
            .put(format!("{}/v1/modules", app.url))
            .body(plugin("hello"))
            .send()
    };
    // A slow upload holds the only place while its body is still arriving.
    // One that does not get the place is answered at once; one that holds
    // it hears nothing. Only then is the queue known to be full.
    let (slow, refused) = eventually(Duration::from_secs(10), || async {
        let mut slow = connect_and_send(
            &app.url,
            b"PUT /v1/modules HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100000\r\n\r\n\0asm",
        )
        .await;
        let mut answer = [0u8; 16];
        let heard = tokio::time::timeout(Duration::from_millis(300), slow.read(&mut answer)).await;
        if heard.is_ok() {
            return None;
        }
        Some((slow, upload().await.unwrap()))
    })
    .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "busy");

    drop(slow);
    let accepted = eventually(Duration::from_secs(10), || async {
        let response = upload().await.unwrap();
        (response.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert_eq!(accepted.status(), StatusCode::CREATED);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_without_tokens_refuses_to_listen_beyond_loopback_unless_told_to() {
    let app = TestApp::start().await;
    let open_on_all_interfaces = |insecure_no_auth, tokens: Vec<String>| ApiConfig {
        listen: "0.0.0.0:0".into(),
        insecure_no_auth,
        api_token_sha256: tokens,
        ..ApiConfig::default()
    };
    let state = api_state(
        &app.backends,
        app.limits.clone(),
        open_on_all_interfaces(false, Vec::new()),
        &app.compile,
    )
    .unwrap();
    let refused = spawn_api(state, CancellationToken::new())
        .await
        .expect_err("an open API on 0.0.0.0 is refused");
    assert!(
        refused.to_string().contains("--insecure-no-auth"),
        "{refused}"
    );

    let (_, hash) = taskflow::api::auth::create_token();
    for config in [
        open_on_all_interfaces(true, Vec::new()),
        open_on_all_interfaces(false, vec![hash]),
    ] {
        let state = api_state(&app.backends, app.limits.clone(), config, &app.compile).unwrap();
        let shutdown = CancellationToken::new();
        spawn_api(state, shutdown.clone())
            .await
            .expect("told to, or with tokens, it listens");
        shutdown.cancel();
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_names_the_dependency_that_is_down_without_its_error_text() {
    let app = TestApp::start().await;
    let api = app
        .api_process(&[("REDIS_URL", "redis://127.0.0.1:1")])
        .await;
    let response = reqwest::get(format!("{}/readyz", api.url)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "unavailable", "postgres": "ok", "redis": "unavailable"})
    );
    app.finish().await;
}
