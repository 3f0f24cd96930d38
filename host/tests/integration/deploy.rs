//! The monitoring files in deploy/ (a Prometheus rule file and a Grafana
//! dashboard) parse, and name only metrics a running deployment exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::TestApp;

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// The rule file as JSON, read by PyYAML (installed with the OpenAPI
/// validator by scripts/test).
fn alert_rules() -> Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(deploy_file("prometheus-alerts.yml"))
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "deploy/prometheus-alerts.yml does not parse as YAML:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from python")
}

/// The `taskflow_*` metric families an expression names, with their type
/// where the expression implies one (`_bucket` series: a histogram).
fn metrics_in(expression: &str) -> BTreeSet<(String, Option<&'static str>)> {
    let mut names = BTreeSet::new();
    let mut rest = expression;
    while let Some(start) = rest.find("taskflow_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(match name.strip_suffix("_bucket") {
            Some(family) => (family.to_owned(), Some("histogram")),
            None => (name, None),
        });
    }
    names
}

#[tokio::test]
async fn the_alerts_and_the_dashboard_name_only_metrics_a_deployment_exports() {
    let rules = alert_rules();
    let mut expressions = Vec::new();
    let alerts = rules["groups"][0]["rules"].as_array().expect("rules");
    assert!(
        alerts.len() >= 3,
        "backlog, dead letters and no worker at least"
    );
    for alert in alerts {
        for field in ["alert", "expr", "for"] {
            assert!(alert[field].is_string(), "{field} missing in {alert}");
        }
        assert!(alert["labels"]["severity"].is_string(), "{alert}");
        assert!(alert["annotations"]["summary"].is_string(), "{alert}");
        expressions.push(alert["expr"].as_str().expect("expr").to_owned());
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_file("grafana-dashboard.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            expressions.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let named: BTreeSet<_> = expressions.iter().flat_map(|e| metrics_in(e)).collect();
    assert!(named.len() >= 6, "{named:?}");

    // A deployment that ran a job: API and worker in this process share one
    // recorder, so the API's /metrics shows the worker's metrics too.
    taskflow::telemetry::prometheus();
    let (app, module) = TestApp::start_running("hello").await;
    app.run(&module, json!({"name": "metrics"})).await;
    let exposition = app.get("/metrics").await.text().await.expect("metrics");
    let exported: BTreeMap<&str, &str> = exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .collect();
    let missing: Vec<_> = named
        .iter()
        .filter(|(family, kind)| match exported.get(family.as_str()) {
            Some(exported_kind) => kind.is_some_and(|kind| kind != *exported_kind),
            None => true,
        })
        .collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\n{exposition}"
    );
    app.finish().await;
}
