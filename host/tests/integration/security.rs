//! Who may do what: API tokens, and the sandbox's capability policy.

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskflow::api::auth::create_token;
use taskflow::job::JobState;

use crate::support::{TestApp, TestOptions, assert_state, plugin, tree};

#[tokio::test(flavor = "multi_thread")]
async fn with_tokens_configured_every_v1_route_demands_one_and_a_stranger_learns_nothing() {
    let (token, hash) = create_token();
    let app = TestApp::start_with(TestOptions {
        api_token_sha256: vec![hash],
        ..Default::default()
    })
    .await;
    let http = app.http();
    let job = uuid::Uuid::now_v7();
    let requests = |auth: Option<&str>| {
        let with = |request: reqwest::RequestBuilder| match auth {
            Some(value) => request.header("authorization", value),
            None => request,
        };
        vec![
            with(
                http.put(format!("{}/v1/modules", app.url))
                    .body(plugin("hello")),
            ),
            with(http.get(format!("{}/v1/modules", app.url))),
            with(http.get(format!("{}/v1/modules/{}", app.url, "0".repeat(64)))),
            with(
                http.post(format!("{}/v1/jobs", app.url))
                    .json(&json!({"module": "0".repeat(64), "input": {}})),
            ),
            with(
                http.post(format!("{}/v1/jobs/batch", app.url))
                    .json(&json!({"jobs": []})),
            ),
            with(http.get(format!("{}/v1/jobs", app.url))),
            with(http.get(format!("{}/v1/jobs/{job}", app.url))),
            with(http.get(format!("{}/v1/jobs/{job}/attempts", app.url))),
            with(http.post(format!("{}/v1/jobs/{job}/cancel", app.url))),
            with(http.post(format!("{}/v1/jobs/{job}/retry", app.url))),
            with(http.get(format!("{}/v1/queues", app.url))),
            with(http.get(format!("{}/v1/queues/default", app.url))),
            with(
                http.put(format!("{}/v1/queues/default", app.url))
                    .header("content-type", "application/json")
                    .body("{}"),
            ),
            with(http.get(format!("{}/v1/no-such-route", app.url))),
            with(http.delete(format!("{}/v1/jobs", app.url))),
        ]
    };
    let mut bodies = std::collections::HashSet::new();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(&format!("Basic {token}")),
        Some("Bearer "),
    ] {
        for request in requests(auth) {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            // A refused body is never held: the connection is closed.
            assert_eq!(response.headers()["connection"], "close");
            bodies.insert(response.text().await.unwrap());
        }
    }
    assert_eq!(bodies.len(), 1, "every refusal looks the same: {bodies:?}");
    let body: Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let counts = (
        app.store().count_modules().await.unwrap(),
        app.store().count_jobs().await.unwrap(),
    );
    assert_eq!(counts, (0, 0), "refused requests wrote nothing");

    let client = app.client.clone().with_token(Some(token));
    let (module, _) = client.push_module(plugin("hello")).await.unwrap();
    let submitted = client
        .submit(&taskflow::api::types::SubmitJob::new(
            module.hash,
            json!({}),
        ))
        .await
        .unwrap();
    assert_eq!(submitted.job.state, JobState::Available);

    for open in ["/healthz", "/readyz", "/metrics"] {
        let response = app.get(open).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{open} stays open for probes"
        );
    }
    app.finish().await;
}

/// An open API (no tokens) on loopback answers only requests addressed
/// to this machine's names: a web page in a browser here can send a
/// cross-site request to it, or rebind its own name to 127.0.0.1 and read
/// the answers.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_api_refuses_requests_addressed_to_other_hosts_or_sent_by_other_origins() {
    let app = TestApp::start().await;
    let address = app.url.trim_start_matches("http://");
    let ask = |host: &str, origin: Option<&str>| {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/queues/default/pause", app.url))
            .header("host", host);
        match origin {
            Some(origin) => request.header("origin", origin),
            None => request,
        }
        .send()
    };
    for (host, origin) in [
        ("rebound.example.com", None),
        (
            &format!(
                "rebound.example.com:{}",
                &address[address.rfind(':').unwrap() + 1..]
            ),
            None,
        ),
        (address, Some("https://evil.example.com")),
        (address, Some("null")),
    ] {
        let answer = ask(host, origin).await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{host} {origin:?}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_local", "{body}");
    }
    let (_, queue) = app.get_json("/v1/queues/default").await;
    assert_eq!(
        queue["paused"], false,
        "no refused request paused it: {queue}"
    );

    let local_origin = format!("http://{address}");
    for (host, origin) in [(address, Some(local_origin.as_str())), ("localhost", None)] {
        let answer = ask(host, origin).await.unwrap();
        assert!(
            answer.status().is_success(),
            "{host} {origin:?}: {}",
            answer.status()
        );
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_reaches_no_file_socket_environment_or_fine_clock() {
    let (app, module) = TestApp::start_running("misbehave").await;
    let job = app.run(&module, json!({"mode": "probe"})).await;
    assert_state(&job, JobState::Succeeded);
    let report = tree(&job.output).unwrap();
    for capability in ["read_file", "read_dir", "write_file", "tcp", "udp", "dns"] {
        let outcome = report[capability].as_str().unwrap();
        assert!(outcome.starts_with("denied"), "{capability}: {outcome}");
    }
    assert_eq!(report["env_vars"], 0, "no environment variables");
    assert_eq!(report["args"], 0, "no arguments");
    assert_eq!(
        report["wall_clock_sub_ms_nanos"], 0,
        "the wall clock ticks in milliseconds"
    );
    let step = report["smallest_monotonic_step_ns"].as_u64().unwrap();
    assert!(
        step >= 1_000_000 && step.is_multiple_of(1_000_000),
        "the monotonic clock cannot time anything shorter than a millisecond ({step} ns)"
    );
    assert!(!std::path::Path::new("/tmp/taskflow-escape").exists());
    app.finish().await;
}

#[test]
fn the_compose_deployment_demands_a_token_and_publishes_the_api_to_this_machine_only() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    let mut compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    let api = &compose["services"]["api"];
    let token = api["environment"]["TASKFLOW_API_TOKEN_SHA256"]
        .as_str()
        .expect("the API is configured with a token hash");
    assert!(
        token.starts_with("${TASKFLOW_API_TOKEN_SHA256:?"),
        "compose must refuse to start without one: {token}"
    );
    let ports: Vec<&str> = api["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|port| port.as_str().unwrap())
        .collect();
    assert_eq!(ports, ["127.0.0.1:8080:8080"]);
    for (name, service) in compose["services"].as_mapping().unwrap() {
        assert!(
            service["environment"]["TASKFLOW_INSECURE_NO_AUTH"].is_null(),
            "{name:?} must not open the API"
        );
    }
}
