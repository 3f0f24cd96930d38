//! The OpenAPI contract (host/src/api/openapi.rs): what the server serves
//! is what docs/openapi.json holds, it is valid OpenAPI 3.1 by an
//! independent validator, and it lists every route the router serves.

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;

use crate::support::TestApp;

/// docs/openapi.json, from the repository root.
fn committed_contract_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

fn committed_contract() -> Value {
    let text = std::fs::read_to_string(committed_contract_path()).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

#[tokio::test]
async fn the_served_contract_is_the_committed_one() {
    let app = TestApp::start().await;
    let (status, served) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        served == committed_contract(),
        "docs/openapi.json differs from what the server serves; regenerate it with \
         `taskflow openapi > docs/openapi.json` and review the diff"
    );
    assert_eq!(served["openapi"], "3.1.0");
    app.finish().await;
}

#[test]
fn the_contract_is_valid_openapi_by_an_independent_validator() {
    // openapi-spec-validator (Python, installed by scripts/test) checks the
    // document against the OpenAPI 3.1 schema and its semantic rules
    // (unique operation ids, path parameters declared, references resolve).
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(committed_contract_path())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected docs/openapi.json (is it installed? \
         `pip install openapi-spec-validator`):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Methods the router could serve on a path.
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

#[tokio::test]
async fn every_route_served_is_documented_and_every_documented_route_served() {
    let app = TestApp::start().await;
    let contract = committed_contract();
    let paths = contract["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{} paths documented", paths.len());
    for (template, item) in paths {
        let path = with_placeholders(template);
        for method in METHODS {
            let documented = item.get(method.to_lowercase()).is_some();
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            let answer = app
                .http()
                .request(method.clone(), format!("{}{path}", app.url))
                .send()
                .await
                .expect("the API answers");
            let status = answer.status();
            let code = answer
                .json::<Value>()
                .await
                .ok()
                .and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
            let routed = !matches!(
                code.as_deref(),
                Some("route_not_found" | "method_not_allowed")
            ) && status != 405;
            assert_eq!(
                routed, documented,
                "{method} {template}: routed {routed} ({status}, {code:?}), documented {documented}"
            );
        }
    }
    // Axum cannot list its routes, so the way an undocumented one could
    // appear is named instead: every route module registers its handlers
    // with utoipa_axum's `routes!`, never with a bare `.route(`.
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api"))
        .expect("host/src/api")
    {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|extension| extension == "rs") {
            let source = std::fs::read_to_string(&path).expect("a source file");
            assert!(
                !source.contains(".route("),
                "{} registers a route outside the OpenAPI router",
                path.display()
            );
        }
    }
    // The one exception is the web console, which serves HTML to a
    // browser under `/ui` (host/src/console/mod.rs): each of its routes is
    // registered there, and only under `/ui`.
    let console =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console/mod.rs"))
            .expect("host/src/console/mod.rs");
    let console_routes: Vec<&str> = console
        .split(".route(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default())
        .collect();
    assert!(console_routes.len() > 10, "{console_routes:?}");
    for route in console_routes {
        assert!(
            route.starts_with("/ui"),
            "console route {route} is outside /ui"
        );
    }
    assert!(
        !paths.keys().any(|path| path.starts_with("/ui")),
        "the contract lists a console page"
    );
    // A path the contract does not list is not routed either.
    let (status, body) = app.get_json("/v1/undocumented").await;
    assert_eq!(
        (status.as_u16(), &body["error"]["code"]),
        (404, &Value::from("route_not_found"))
    );
    app.finish().await;
}

/// `template` with each `{parameter}` replaced by a value of the right shape.
fn with_placeholders(template: &str) -> String {
    template
        .replace("{id}", "00000000-0000-4000-8000-000000000000")
        .replace("{hash}", &"0".repeat(64))
        .replace("{name}", "placeholder")
}
