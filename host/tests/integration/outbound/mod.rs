//! Outbound HTTP from real guests to real servers on 127.0.0.1: what a
//! queue grants is reachable, nothing else is, every cap holds, secrets are
//! used without being read, and every request is on the attempt record.

use std::time::Duration;

use serde_json::{Value, json};
use taskflow::api::types::JobView;
use taskflow::job::JobState;
use taskflow::sandbox::OutboundLimits;

mod aborts;

use crate::support::{
    BIG_BODY_BYTES, TestApp, TestOptions, TestServers, TestWorker, assert_state, eventually,
    single_attempt, tree,
};

pub(super) const SECRET: &str = "whsec_outbound-test-value-7731";

/// An app whose workers trust the servers' CA, with `limits` on outbound
/// HTTP and the `default` queue granted `settings`; no worker yet.
pub(super) async fn start_app(
    servers: &TestServers,
    limits: OutboundLimits,
    settings: Value,
) -> TestApp {
    let mut options = TestOptions::default();
    options.execution.extra_ca_certs = Some(servers.ca_file.clone());
    options.execution.outbound = limits;
    let app = TestApp::start_with(options).await;
    app.set_default_queue(settings).await;
    app
}

/// [`start_app`] with one worker, `w1`, that stops with the app.
async fn start(servers: &TestServers, limits: OutboundLimits, settings: Value) -> TestApp {
    let app = start_app(servers, limits, settings).await;
    app.spawn_worker("w1");
    app
}

/// One worker fetching `path` from the servers' plain HTTP origin (the only
/// host granted), and the job, returned once the server has the request
/// and before it answers: an attempt with a request in flight.
pub(super) async fn fetching(servers: &TestServers, path: &str) -> (TestApp, TestWorker, JobView) {
    let http = format!("http://127.0.0.1:{}", servers.http.port());
    let settings = json!({"allowed_hosts": [http]});
    let app = start_app(servers, OutboundLimits::default(), settings).await;
    let worker = app.spawn_worker("w1");
    let fetch = app.upload("fetch").await;
    let job = app
        .submit(&fetch, json!({"url": format!("{http}{path}")}))
        .await;
    until_a_request_arrives(servers, Duration::from_secs(10)).await;
    (app, worker, job)
}

pub(super) async fn until_a_request_arrives(servers: &TestServers, timeout: Duration) {
    eventually(timeout, || async {
        (!servers.seen().is_empty()).then_some(())
    })
    .await;
}

/// Runs a job allowed one attempt, so that a refused or failed request is
/// final, and returns it finished.
async fn run(app: &TestApp, module: &str, input: Value) -> JobView {
    app.run_with(single_attempt(module, input)).await
}

/// The requests recorded on `job`'s last attempt.
async fn requests_of(app: &TestApp, job: &JobView) -> Vec<Value> {
    let attempts = app.attempts(job.id).await;
    attempts
        .last()
        .unwrap()
        .requests
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn granted_get_and_signed_post_go_through_and_are_recorded() {
    let servers = TestServers::start().await;
    let http = format!("http://127.0.0.1:{}", servers.http.port());
    let https = format!("https://localhost:{}", servers.https.port());
    let settings = json!({
        "allowed_hosts": [http, https],
        "secrets": {"webhook_key": {"value": SECRET, "allowed_hosts": [https]}},
    });
    let app = start(&servers, OutboundLimits::default(), settings).await;
    let fetch = app.upload("fetch").await;
    let webhook = app.upload("webhook").await;

    let fetched = run(
        &app,
        &fetch,
        json!({"url": format!("{http}/hello?token=q")}),
    )
    .await;
    assert_state(&fetched, JobState::Succeeded);
    let output = tree(&fetched.output).unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["size"], 5);
    let requests = requests_of(&app, &fetched).await;
    assert_eq!(requests.len(), 1);
    let record = &requests[0];
    assert_eq!(record["method"], "GET");
    assert_eq!(
        record["url"],
        format!("{http}/hello"),
        "the query string is dropped"
    );
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes_in"], 5);
    assert_eq!(record["denied"], false);

    let payload = json!({"event": "paid", "amount": 42});
    let delivered = run(
        &app,
        &webhook,
        json!({"url": format!("{https}/echo"), "payload": payload}),
    )
    .await;
    assert_state(&delivered, JobState::Succeeded);
    let seen = servers.seen();
    let post = seen
        .iter()
        .find(|s| s.method == "POST")
        .expect("the webhook arrived");
    assert_eq!(
        serde_json::from_slice::<Value>(&post.body).unwrap(),
        payload
    );
    let signature = post
        .headers
        .iter()
        .find(|(name, _)| name == "x-taskflow-signature")
        .map(|(_, value)| value.clone())
        .expect("a signature header");
    assert_eq!(
        signature,
        format!("sha256={}", hmac_hex(SECRET, &post.body))
    );
    let record = &requests_of(&app, &delivered).await[0];
    assert_eq!(record["method"], "POST");
    assert_eq!(record["bytes_out"], post.body.len());

    assert_secret_nowhere(&app, &[&fetched, &delivered]).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_not_granted_and_names_of_internal_addresses_are_denied_and_recorded() {
    let servers = TestServers::start().await;
    let port = servers.http.port();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let hostname = hostname.trim().to_owned();
    let resolved: Vec<_> = tokio::net::lookup_host((hostname.as_str(), port))
        .await
        .unwrap()
        .collect();
    assert!(
        resolved
            .iter()
            .all(|a| !taskflow::queue::is_public_address(a.ip())),
        "this test needs the machine's name to resolve to an internal address: {resolved:?}"
    );
    let settings = json!({"allowed_hosts": [format!("http://{hostname}:{port}")]});
    let app = start(&servers, OutboundLimits::default(), settings).await;
    let fetch = app.upload("fetch").await;

    let ungranted = run(
        &app,
        &fetch,
        json!({"url": format!("http://127.0.0.1:{port}/hello")}),
    )
    .await;
    assert_eq!(
        ungranted.state,
        JobState::Dead,
        "a denied host is not retried"
    );
    let error = &ungranted.last_error.as_ref().unwrap()["message"];
    assert!(error.as_str().unwrap().contains("denied"), "{error}");
    let record = &requests_of(&app, &ungranted).await[0];
    assert_eq!(record["denied"], true);
    assert_eq!(record["url"], format!("http://127.0.0.1:{port}/hello"));
    assert!(
        record["reason"].as_str().unwrap().contains("allowed_hosts"),
        "{record}"
    );

    let internal = run(
        &app,
        &fetch,
        json!({"url": format!("http://{hostname}:{port}/hello")}),
    )
    .await;
    assert_eq!(internal.state, JobState::Dead);
    let record = &requests_of(&app, &internal).await[0];
    assert_eq!(record["denied"], true);
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{record}"
    );
    assert!(servers.seen().is_empty(), "no request reached the server");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_returned_not_followed_and_caps_and_timeouts_fail_only_the_request() {
    let servers = TestServers::start().await;
    let http = format!("http://127.0.0.1:{}", servers.http.port());
    let limits = OutboundLimits {
        max_response_bytes: 1 << 20,
        request_timeout: Duration::from_millis(500),
        ..OutboundLimits::default()
    };
    let app = start(&servers, limits, json!({"allowed_hosts": [http]})).await;
    let fetch = app.upload("fetch").await;

    let elsewhere = format!("http://127.0.0.2:{}/hello", servers.http.port());
    let redirected = run(
        &app,
        &fetch,
        json!({"url": format!("{http}/redirect?to={elsewhere}")}),
    )
    .await;
    assert_state(&redirected, JobState::Succeeded);
    assert_eq!(tree(&redirected.output).unwrap()["status"], 302);
    assert_eq!(
        requests_of(&app, &redirected).await.len(),
        1,
        "the host followed nothing"
    );

    let slow = run(&app, &fetch, json!({"url": format!("{http}/slow")})).await;
    assert_eq!(slow.state, JobState::Dead);
    let record = &requests_of(&app, &slow).await[0];
    assert_eq!(record["error"], "timeout", "{record}");
    assert!(
        record["duration_ms"].as_f64().unwrap() < 5_000.0,
        "{record}"
    );

    let big = run(&app, &fetch, json!({"url": format!("{http}/big")})).await;
    assert_eq!(big.state, JobState::Dead);
    let record = &requests_of(&app, &big).await[0];
    assert_eq!(record["error"], "response_too_large", "{record}");
    assert!(record["bytes_in"].as_u64().unwrap() < BIG_BODY_BYTES as u64);

    // The worker is unharmed: the next job runs.
    let after = run(&app, &fetch, json!({"url": format!("{http}/hello")})).await;
    assert_eq!(after.state, JobState::Succeeded);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_travels_only_to_its_hosts_and_a_flood_stops_at_the_cap() {
    let servers = TestServers::start().await;
    let bound = format!("https://localhost:{}", servers.https.port());
    let other = format!("http://127.0.0.1:{}", servers.http.port());
    let settings = json!({
        "allowed_hosts": [bound, other],
        "secrets": {"api_key": {"value": SECRET, "allowed_hosts": [bound]}},
    });
    let limits = OutboundLimits {
        max_requests: 3,
        ..OutboundLimits::default()
    };
    let app = start(&servers, limits, settings).await;
    let probe = app.upload("http_probe").await;
    let get = |url: String| json!({"mode": "get", "url": url, "bearer_secret": "api_key"});

    let to_bound = run(&app, &probe, get(format!("{bound}/echo"))).await;
    assert_state(&to_bound, JobState::Succeeded);
    let authorization = servers.seen()[0]
        .headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.clone());
    assert_eq!(authorization, Some(format!("Bearer {SECRET}")));

    let to_other = run(&app, &probe, get(format!("{other}/echo"))).await;
    assert_eq!(to_other.state, JobState::Dead);
    let record = &requests_of(&app, &to_other).await[0];
    assert_eq!(record["denied"], true);
    assert!(
        record["reason"].as_str().unwrap().contains("api_key"),
        "{record}"
    );
    let in_url =
        json!({"mode": "get", "url": format!("{bound}/echo"), "secret_in_query": "api_key"});
    let in_url = run(&app, &probe, in_url).await;
    assert_eq!(in_url.state, JobState::Dead);
    assert_eq!(servers.seen().len(), 1, "neither refused request was sent");

    let flood = json!({"mode": "flood", "url": format!("{other}/hello"), "count": 10});
    let flood = run(&app, &probe, flood).await;
    assert_state(&flood, JobState::Succeeded);
    let summary = tree(&flood.output).unwrap();
    assert_eq!(summary["ok"], 3);
    assert_eq!(summary["failed"], 7);
    let records = requests_of(&app, &flood).await;
    assert_eq!(records.len(), 10);
    assert!(records[3..].iter().all(|r| r["denied"] == true));

    assert_secret_nowhere(&app, &[&to_bound, &to_other, &in_url, &flood]).await;
    app.finish().await;
}

/// A guest chooses its requests' URLs, and the worker keeps the first
/// records of an attempt until it ends: a record kept the URL whole (a path
/// may take 64 KiB, a host name 1 KiB: `MAX_REQUEST_NAME_BYTES` in
/// sandbox/guest.rs) and the host name again in the denial's reason. A host
/// name is refused past 253 bytes, the most DNS allows, before anything is
/// formatted around it, and a record keeps the start of the URL only.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_to_a_host_name_longer_than_dns_allows_is_refused_in_a_bounded_record() {
    let servers = TestServers::start().await;
    let http = format!("http://127.0.0.1:{}", servers.http.port());
    let app = start(
        &servers,
        OutboundLimits::default(),
        json!({"allowed_hosts": [http]}),
    )
    .await;
    let probe = app.upload("http_probe").await;
    let host = format!("{}.example.com", "a".repeat(900));
    let url = format!("http://{host}/{}", "p".repeat(60_000));
    let flood = run(
        &app,
        &probe,
        json!({"mode": "flood", "url": url, "count": 3}),
    )
    .await;
    assert_state(&flood, JobState::Succeeded);
    assert_eq!(tree(&flood.output).unwrap()["failed"], 3);
    let records = requests_of(&app, &flood).await;
    assert_eq!(records.len(), 3);
    for record in &records {
        assert_eq!(record["denied"], true, "{:.300}", record.to_string());
        let url = record["url"].as_str().unwrap();
        let reason = record["reason"].as_str().unwrap();
        assert!(url.starts_with("http://aaaa"), "{url:.100}");
        assert!(url.len() <= 1024, "a URL of {} bytes was kept", url.len());
        assert!(
            reason.len() <= 1024 && reason.contains("253"),
            "{reason:.300}"
        );
    }
    assert!(servers.seen().is_empty());
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_reads_its_queues_configuration_and_nothing_else() {
    let servers = TestServers::start().await;
    let settings = json!({"config": {"region": "eu-west", "mode": "live"}});
    let app = start(&servers, OutboundLimits::default(), settings).await;
    let probe = app.upload("http_probe").await;
    for (name, value) in [("region", json!("eu-west")), ("unset", Value::Null)] {
        let job = run(&app, &probe, json!({"mode": "config", "name": name})).await;
        assert_state(&job, JobState::Succeeded);
        let output = tree(&job.output).unwrap();
        assert_eq!(output["value"], value, "{name}");
        assert_eq!(output["keys"], json!(["mode", "region"]));
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_built_against_taskflow_task_0_1_0_still_runs() {
    let app = TestApp::start().await;
    app.spawn_worker("w1");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hello-taskflow-task-0.1.0.wasm");
    let (module, _) = app
        .client
        .push_module(std::fs::read(fixture).unwrap())
        .await
        .unwrap();
    let job = app.run(&module.hash, json!({"name": "old"})).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(tree(&job.output).unwrap()["greeting"], "Hello, old!");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_the_secret_key_fails_grant_using_jobs_retryably_and_runs_the_rest() {
    let app = TestApp::start_with(TestOptions::without_secret_key()).await;
    let key = taskflow::queue::SecretKey::parse(crate::support::TEST_SECRET_KEY).unwrap();
    let value = taskflow::queue::SecretValue::new(SECRET.into());
    let host = taskflow::queue::AllowedHost::parse("https://api.example.com").unwrap();
    let mut settings = taskflow::queue::QueueSettings::default();
    settings.secrets.insert("api_key".into(), vec![host]);
    let sealed = [("api_key".to_owned(), key.seal("default", "api_key", &value))].into();
    app.store()
        .put_queue("default", &settings, &sealed, None)
        .await
        .unwrap();
    app.spawn_worker("keyless");
    let probe = app.upload("http_probe").await;
    let hello = app.upload("hello").await;

    let input = json!({"mode": "get", "url": "https://api.example.com/"});
    let needs_grants = run(&app, &probe, input).await;
    assert_eq!(needs_grants.state, JobState::Dead);
    let error = needs_grants.last_error.clone().unwrap();
    assert_eq!(error["kind"], "grants_unavailable", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("TASKFLOW_SECRET_KEY")
    );
    let attempts = app.attempts(needs_grants.id).await;
    assert_eq!(attempts[0].outcome.as_str(), "failed");

    let plain = run(&app, &hello, json!({"name": "x"})).await;
    assert_eq!(
        plain.state,
        JobState::Succeeded,
        "a task that uses no grants needs none"
    );
    app.finish().await;
}

/// The secret's value is in no API answer about these jobs: not the job,
/// not its attempts (records, logs, errors), not the queue.
pub(super) async fn assert_secret_nowhere(app: &TestApp, jobs: &[&JobView]) {
    for job in jobs {
        for path in [
            format!("/v1/jobs/{}", job.id),
            format!("/v1/jobs/{}/attempts", job.id),
        ] {
            let (_, answer) = app.get_json(&path).await;
            assert!(!answer.to_string().contains(SECRET), "{path}: {answer}");
        }
    }
    let (_, queues) = app.get_json("/v1/queues").await;
    assert!(!queues.to_string().contains(SECRET));
}

fn hmac_hex(key: &str, data: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}
