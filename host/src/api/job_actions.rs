//! `POST /v1/jobs/{id}/cancel` and `/retry`, and the functions behind them
//! that the console's buttons call too.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::ErrorBody;
use super::types::JobView;
use super::{ApiError, ApiState, PathParams};
use crate::job::{FailureKind, JobState};
use crate::store::{JobRecord, LeaseRef};

/// Routes under `/v1/jobs/{id}/` that change a job's state.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(cancel))
        .routes(routes!(retry))
}

/// `POST /v1/jobs/{id}/cancel`: stops a job that has not finished. A running
/// attempt is told to stop through its lease.
#[utoipa::path(post, operation_id = "cancel_job", path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled", body = JobView),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the job has finished", body = ErrorBody),
    ))]
async fn cancel(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(cancel_job(&state, id).await?.into()))
}

/// Cancels job `id` if it has not finished, tells a worker running it to
/// stop, and wakes those waiting on it: `POST /v1/jobs/{id}/cancel` and the
/// console's cancel buttons.
pub(crate) async fn cancel_job(state: &ApiState, id: Uuid) -> Result<JobRecord, ApiError> {
    let cancelled = state
        .store
        .cancel_if_unfinished(id, FailureKind::Cancelled.code(), state.leases.ttl())
        .await?;
    let running = cancelled
        .job
        .lease_token
        .filter(|_| cancelled.previous == JobState::Running);
    if let Some(lease_token) = running
        && let Err(error) = state
            .leases
            .revoke(
                &[LeaseRef {
                    job_id: id,
                    lease_token,
                }],
                cancelled.lease_ttl,
            )
            .await
    {
        // The cancel is committed; the worker's result will be discarded.
        // Its heartbeat learns of the cancel from PostgreSQL instead, at
        // its next round (`Heartbeat::stop_ended`).
        tracing::warn!(%error, job_id = %id, "could not revoke the lease of a cancelled running job");
    }
    state.ending_announcer.announce([id]);
    Ok(cancelled.job)
}

/// `POST /v1/jobs/{id}/retry`: requeues a dead or cancelled job with a fresh
/// set of attempts.
#[utoipa::path(post, operation_id = "retry_job", path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Requeued with a fresh set of attempts: `available`, or `scheduled` one lease TTL (the worker's, or the API's if longer) after the cancel when the cancel ended a running attempt (its guest stops by then)", body = JobView),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the job is not dead or cancelled; `module_deleted`: its module was deleted", body = ErrorBody),
    ))]
async fn retry(
    State(state): State<ApiState>,
    PathParams(id): PathParams<Uuid>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(retry_job(&state, id).await?.into()))
}

/// Requeues job `id` if it is dead or cancelled and wakes its queue's
/// workers: `POST /v1/jobs/{id}/retry` and the console's retry buttons.
pub(crate) async fn retry_job(state: &ApiState, id: Uuid) -> Result<JobRecord, ApiError> {
    let job = state
        .store
        .requeue_if_finished(id, state.leases.ttl())
        .await?;
    state.waker.wake([job.queue.as_str()]);
    Ok(job)
}
