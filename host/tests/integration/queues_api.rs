//! Queue settings over the REST API: what is granted, how secrets are
//! written and never read back, and what a server without the right key does.

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskflow::cli::server::check_secret_key;
use taskflow::queue::SecretKey;

use crate::support::{TestApp, TestOptions};

const SECRET: &str = "sk_live_do-not-leak-4242";

fn settings(secret_value: Option<&str>) -> Value {
    let mut secret = json!({"allowed_hosts": ["https://api.example.com"]});
    if let Some(value) = secret_value {
        secret["value"] = json!(value);
    }
    json!({
        "allowed_hosts": ["https://api.example.com", "https://*.example.org:8443", "http://127.0.0.1:9000"],
        "config": {"region": "eu-west", "mode": "live"},
        "secrets": {"api_key": secret},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_round_trip_and_a_secret_is_written_but_never_read_back() {
    let app = TestApp::start().await;
    let (status, never) = app.get_json("/v1/queues/payments").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(never["allowed_hosts"], json!([]));
    assert_eq!(never["created_at"], Value::Null);

    let (status, put) = app
        .put_json("/v1/queues/payments", &settings(Some(SECRET)).to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(
        put["allowed_hosts"],
        json!([
            "https://api.example.com",
            "https://*.example.org:8443",
            "http://127.0.0.1:9000"
        ])
    );
    assert_eq!(put["config"]["region"], "eu-west");
    assert_eq!(
        put["secrets"],
        json!({"api_key": {"allowed_hosts": ["https://api.example.com"]}})
    );

    let (_, got) = app.get_json("/v1/queues/payments").await;
    assert_eq!(got, put);
    let (_, list) = app.get_json("/v1/queues").await;
    assert_eq!(list["queues"], json!([put]));
    for body in [&put, &got, &list] {
        assert!(!body.to_string().contains(SECRET), "{body}");
    }
    let stored = app.store().queue_grants("payments").await.unwrap();
    let ciphertext = &stored.sealed_secrets["api_key"].ciphertext;
    assert!(
        !ciphertext
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes())
    );

    // Without a value the stored one is kept and only its hosts change.
    let mut moved = settings(None);
    moved["secrets"]["api_key"]["allowed_hosts"] = json!(["https://billing.example.org:8443"]);
    let (status, put) = app
        .put_json("/v1/queues/payments", &moved.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(
        put["secrets"]["api_key"]["allowed_hosts"],
        json!(["https://billing.example.org:8443"])
    );
    let grants = app.store().queue_grants("payments").await.unwrap();
    let key = app.backends.secret_key.as_ref().unwrap();
    let sealed = &grants.sealed_secrets["api_key"];
    assert_eq!(
        key.open("payments", "api_key", sealed).unwrap().expose(),
        SECRET
    );

    // Left out: deleted.
    let (status, put) = app.put_json("/v1/queues/payments", "{}").await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["secrets"], json!({}));
    assert!(
        app.store()
            .queue_grants("payments")
            .await
            .unwrap()
            .sealed_secrets
            .is_empty()
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_get_a_4xx_naming_the_field_and_never_echo_a_secret() {
    let app = TestApp::start().await;
    let with = |patch: Value| {
        let mut body = settings(Some(SECRET));
        for (key, value) in patch.as_object().unwrap() {
            body[key] = value.clone();
        }
        body.to_string()
    };
    let cases = [
        (
            "/v1/queues/payments",
            with(json!({"allowed_hosts": ["ftp://x.example.com"]})),
            "allowed_hosts[0]",
        ),
        (
            "/v1/queues/payments",
            with(json!({"allowed_hosts": ["https://a.example.com/path"]})),
            "allowed_hosts[0]",
        ),
        (
            "/v1/queues/payments",
            with(json!({"config": {"bad key": "v"}})),
            "config.bad key",
        ),
        (
            "/v1/queues/payments",
            with(json!({"secrets": {"api_key": {"value": SECRET, "allowed_hosts": []}}})),
            "secrets.api_key.allowed_hosts",
        ),
        (
            "/v1/queues/payments",
            with(json!({"secrets": {"fresh": {"allowed_hosts": ["https://api.example.com"]}}})),
            "secrets.fresh.value",
        ),
        (
            "/v1/queues/payments",
            with(
                json!({"secrets": {"api_key": {"value": SECRET, "allowed_hosts": ["https://evil.example.net"]}}}),
            ),
            "secrets.api_key.allowed_hosts[0]",
        ),
        (
            "/v1/queues/payments",
            with(json!({"secrets": {"api_key": SECRET}})),
            "secrets.api_key",
        ),
        (
            "/v1/queues/payments",
            with(json!({"secrets": {"api_key": {"value": SECRET, "allowed_hosts": SECRET}}})),
            "secrets.api_key.allowed_hosts",
        ),
        (
            "/v1/queues/payments",
            with(json!({"surprise": 1})),
            "surprise",
        ),
        ("/v1/queues/Not%20A%20Queue", with(json!({})), "name"),
    ];
    for (path, body, field) in cases {
        let (status, answer) = app.put_json(path, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message:?} should name {field:?}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        assert!(!answer.to_string().contains(SECRET), "{answer}");
    }
    let (_, got) = app.get_json("/v1/queues/payments").await;
    assert_eq!(got["created_at"], Value::Null, "nothing was written: {got}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_the_key_refuses_secrets_and_a_wrong_key_stops_startup() {
    let app = TestApp::start_with(TestOptions::without_secret_key()).await;
    let (status, answer) = app
        .put_json("/v1/queues/payments", &settings(Some(SECRET)).to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "secret_key_missing");
    let (status, _) = app
        .put_json("/v1/queues/payments", r#"{"config": {"a": "b"}}"#)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "settings without secrets need no key"
    );

    let key = SecretKey::parse(crate::support::TEST_SECRET_KEY).unwrap();
    let sealed = key.seal(
        "payments",
        "api_key",
        &taskflow::queue::SecretValue::new(SECRET.into()),
    );
    let mut settings = app.store().queue("payments").await.unwrap().settings;
    let host = taskflow::queue::AllowedHost::parse("https://api.example.com").unwrap();
    settings.secrets.insert("api_key".into(), vec![host]);
    app.store()
        .put_queue(
            "payments",
            &settings,
            &[("api_key".to_owned(), sealed)].into(),
            None,
        )
        .await
        .unwrap();

    assert!(check_secret_key(app.store(), Some(&key)).await.is_ok());
    let missing = check_secret_key(app.store(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("TASKFLOW_SECRET_KEY is not set"),
        "{missing}"
    );
    let other = SecretKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let wrong = check_secret_key(app.store(), Some(&other))
        .await
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("not the key"), "{wrong}");
    assert!(!wrong.contains(SECRET) && !missing.contains(SECRET));
    app.finish().await;
}
