//! Liveness, readiness and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
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
/// state and the age of its oldest available job read at the scrape from
/// the queue counters (`Store::queue_stats`: a few statements, no scan of
/// the jobs, however many there are).
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<ApiState>) -> String {
    match state.store.queue_stats(None).await {
        Ok(queues) => set_queue_gauges(&queues),
        // The scrape still answers, with the gauges as they were.
        Err(error) => tracing::warn!(%error, "cannot read the queue counters for /metrics"),
    }
    crate::telemetry::prometheus().render()
}

/// The queues whose gauges the last scrape set. The recorder is the
/// process's (`telemetry::prometheus`), and so is this.
static REPORTED_QUEUES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Sets each queue's gauges, and zeroes those of queues the counters no
/// longer list (their last jobs were pruned or deleted): a gauge keeps the
/// last value it was given, which would show jobs long gone.
fn set_queue_gauges(queues: &BTreeMap<String, QueueStats>) {
    let mut reported = REPORTED_QUEUES
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for gone in reported.iter().filter(|queue| !queues.contains_key(*queue)) {
        set_gauges_of(gone, &QueueStats::default());
    }
    *reported = queues.keys().cloned().collect();
    for (queue, stats) in queues {
        set_gauges_of(queue, stats);
    }
}

/// Sets `queue`'s gauges to `stats`.
fn set_gauges_of(queue: &str, stats: &QueueStats) {
    for state in JobState::ALL {
        metrics::gauge!("taskflow_queue_jobs", "queue" => queue.to_owned(), "state" => state.as_str())
            .set(stats.jobs.get(state) as f64);
    }
    let oldest = stats.oldest_available_age.unwrap_or_default();
    metrics::gauge!("taskflow_queue_oldest_available_seconds", "queue" => queue.to_owned())
        .set(oldest.as_secs_f64());
}
