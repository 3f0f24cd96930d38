//! Liveness, readiness and metrics.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use metrics_exporter_prometheus::formatting::{sanitize_label_value, write_type_line};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use crate::job::JobState;
use crate::queue::QueueStats;

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` (`/healthz`), `ready` or `unavailable` (`/readyz`).
    status: &'static str,
    /// `ok` or `unavailable` (`/readyz` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<&'static str>,
    /// `ok` or `unavailable` (`/readyz` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
}

/// `GET /healthz`: the process is up. Checks nothing else, so an outage of a
/// dependency never gets the API restarted.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        postgres: None,
        redis: None,
    })
}

/// `GET /readyz`: PostgreSQL and Redis answer. 503 says which one does not
/// (`"unavailable"`); why goes to the server log, not to whoever asks (the
/// route is open to probes, and an error's text can name hosts, users and
/// versions).
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "PostgreSQL and Redis answer", body = Health),
        (status = 503, description = "One of them does not; the body says which", body = Health),
    ))]
async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Health>) {
    let (postgres, redis) = tokio::join!(state.store.ping(), state.redis.ping());
    let postgres = dependency_status("PostgreSQL", postgres);
    let redis = dependency_status("Redis", redis);
    let ready = postgres == "ok" && redis == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ready { "ready" } else { "unavailable" },
        postgres: Some(postgres),
        redis: Some(redis),
    };
    (status, Json(body))
}

/// `"ok"`, or `"unavailable"` with the error logged.
fn dependency_status<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(%error, dependency = name, "readiness check failed");
            "unavailable"
        }
    }
}

/// `GET /metrics`: Prometheus text format, with each queue's jobs per
/// state, the places its cancelled jobs hold while stopping, and the age
/// of its oldest available job read at the scrape from
/// the queue counters (`Store::queue_stats`: a few statements, no scan of
/// the jobs, however many there are).
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<ApiState>) -> String {
    let mut page = crate::telemetry::prometheus().render();
    match state.store.queue_stats(None).await {
        Ok(queues) => write_queue_gauges(&mut page, &queues),
        // The scrape still answers, without figures it cannot vouch for.
        Err(error) => tracing::warn!(%error, "cannot read the queue counters for /metrics"),
    }
    page
}

/// Appends each queue's gauges to `page`. They are written here, not
/// registered with the process's recorder: a recorder keeps every label set
/// it was ever given, so the gauges of every queue that ever existed
/// (queues come and go with their jobs) would stay in memory and in every
/// scrape for the life of the process. A queue whose last jobs were
/// pruned or deleted simply leaves the scrape.
fn write_queue_gauges(page: &mut String, queues: &BTreeMap<String, QueueStats>) {
    if queues.is_empty() {
        return;
    }
    let labelled: Vec<(String, &QueueStats)> = queues
        .iter()
        .map(|(queue, stats)| (sanitize_label_value(queue), stats))
        .collect();
    write_type_line(page, "taskflow_queue_jobs", None, None, "gauge");
    for (queue, stats) in &labelled {
        for state in JobState::ALL {
            let jobs = stats.jobs.get(state);
            let _ = writeln!(
                page,
                "taskflow_queue_jobs{{queue=\"{queue}\",state=\"{}\"}} {jobs}",
                state.as_str()
            );
        }
    }
    write_type_line(page, "taskflow_queue_stopping", None, None, "gauge");
    for (queue, stats) in &labelled {
        let _ = writeln!(
            page,
            "taskflow_queue_stopping{{queue=\"{queue}\"}} {}",
            stats.stopping
        );
    }
    write_type_line(
        page,
        "taskflow_queue_oldest_available_seconds",
        None,
        None,
        "gauge",
    );
    for (queue, stats) in &labelled {
        let oldest = stats.oldest_available_age.unwrap_or_default();
        let _ = writeln!(
            page,
            "taskflow_queue_oldest_available_seconds{{queue=\"{queue}\"}} {}",
            oldest.as_secs_f64()
        );
    }
}
