//! Traces of jobs, exported over OTLP (HTTP, protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set, and off otherwise (README, "Traces").
//!
//! One trace shows a job's life across processes:
//!
//! ```text
//! job submit            the API (api/jobs.rs), a child of the caller's traceparent
//! ├─ job claim          a worker's claim statement (worker/mod.rs), per attempt
//! ├─ job attempt        preparing and running it, with fuel, memory, outcome
//! └─ job finish         the fenced write of its outcome (worker/completer.rs)
//! ```
//!
//! The submission's span context is stored with the job
//! (`jobs.traceparent`, job/trace_context.rs); every later span is its
//! child, whichever process records it and however long after. Spans are
//! recorded when what they time is over, with its start and end times, so
//! nothing is held open across tasks. The worker reads the stored contexts
//! apart from the claim ([`Store::trace_contexts`](crate::store::Store)),
//! only when it exports traces.
//!
//! Spans leave through the SDK's batch processor: a bounded queue (2,048
//! spans, `OTEL_BSP_MAX_QUEUE_SIZE`) drained by a thread of its own, so a
//! slow or absent collector drops spans and never slows a job. Sampling is
//! the SDK's (`OTEL_TRACES_SAMPLER`, default parent-based, always on): a
//! caller's unsampled `traceparent` keeps the whole job unsampled, in
//! every process, since each decides from the stored flags.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use uuid::Uuid;

use crate::job::TraceContext;
use crate::store::{ClaimedJob, FinishedAttempt, Store, Transition};

mod submission;

pub use submission::Submission;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The configuration `from_env` reads beyond the SDK's own.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// A protocol other than OTLP over HTTP with protobuf was asked for.
    #[error(
        "{variable}={value:?}: TaskFlow exports traces as http/protobuf only; unset it or set \
         it to http/protobuf (a collector listens for it on port 4318)"
    )]
    UnsupportedProtocol {
        /// The variable that asked.
        variable: &'static str,
        /// What it asked for.
        value: String,
    },
    /// The endpoint is not plain HTTP.
    #[error(
        "{0}: TaskFlow exports traces over plain HTTP, to a collector on the same host or \
         network (an OpenTelemetry Collector as agent, which forwards them over TLS)"
    )]
    NotPlainHttp(String),
    /// The exporter could not be built (a malformed endpoint, say).
    #[error("cannot export traces: {0}")]
    Exporter(String),
}

/// Records the spans of jobs; does nothing when traces are off. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct Traces {
    exporter: Option<Arc<Exporter>>,
}

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").field("on", &self.is_on()).finish()
    }
}

impl Traces {
    /// Traces as the environment configures them: off unless an OTLP
    /// endpoint is set (and `OTEL_SDK_DISABLED` is not `true`). The SDK
    /// reads the rest: `OTEL_SERVICE_NAME` (default `service_name`),
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`.
    ///
    /// # Errors
    ///
    /// If a protocol other than `http/protobuf` is asked for, or the
    /// endpoint is not an `http://` URL.
    pub fn from_env(service_name: &'static str) -> Result<Self, TracesError> {
        let set = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        if !wanted(set)? {
            return Ok(Self::default());
        }
        let client = blocking_client()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .map_err(|error| TracesError::Exporter(error.to_string()))?;
        let mut resource = Resource::builder();
        if set("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("taskflow");
        Ok(Self {
            exporter: Some(Arc::new(Exporter { provider, tracer })),
        })
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.exporter.is_some()
    }

    /// Exports the spans still queued, waiting up to the export timeout,
    /// and stops exporting. Call once, as the process stops.
    pub async fn flush(&self) {
        let Some(exporter) = self.exporter.clone() else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            exporter.provider.shutdown_with_timeout(EXPORT_TIMEOUT)
        })
        .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "could not export the last spans");
        }
    }

    /// The trace contexts of `jobs` that have one, when spans are recorded;
    /// none when traces are off, or when they cannot be read (the jobs go
    /// on untraced rather than wait).
    pub async fn contexts_of(
        &self,
        store: &Store,
        jobs: impl Iterator<Item = Uuid>,
    ) -> HashMap<Uuid, TraceContext> {
        if !self.is_on() {
            return HashMap::new();
        }
        let ids: Vec<Uuid> = jobs.collect();
        store
            .trace_contexts(&ids)
            .await
            .inspect_err(|error| tracing::warn!(%error, "cannot read the trace contexts of jobs"))
            .unwrap_or_default()
    }

    /// Starts the span of a submission of `jobs` jobs, a child of the
    /// caller's `traceparent` if it sent a valid one.
    pub fn start_submission(&self, caller: Option<TraceContext>, jobs: usize) -> Submission {
        let Some(exporter) = &self.exporter else {
            return Submission {
                span: None,
                context: caller,
            };
        };
        let span = exporter
            .tracer
            .span_builder("job submit")
            .with_kind(SpanKind::Producer)
            .with_attributes(with(
                messaging("send", "submit"),
                [KeyValue::new("messaging.batch.message_count", jobs as i64)],
            ))
            .start_with_context(&exporter.tracer, &parent(caller));
        Submission {
            context: Some(trace_context_of(span.span_context())),
            span: Some(span),
        }
    }

    /// Records the claim of `job`, by `worker_id`, in a statement that ran
    /// over `timed` and claimed `batch` jobs.
    pub fn claimed(
        &self,
        trace: TraceContext,
        job: &ClaimedJob,
        worker_id: &str,
        batch: usize,
        timed: (SystemTime, SystemTime),
    ) {
        self.record(
            "job claim",
            SpanKind::Consumer,
            trace,
            timed,
            with(
                messaging("receive", "claim"),
                [
                    KeyValue::new("messaging.destination.name", job.queue.clone()),
                    KeyValue::new("messaging.message.id", job.id.to_string()),
                    KeyValue::new("messaging.batch.message_count", batch as i64),
                    KeyValue::new("taskflow.worker.id", worker_id.to_owned()),
                    KeyValue::new("taskflow.attempt", i64::from(job.attempt)),
                    KeyValue::new("taskflow.lease_token", job.lease_token),
                ],
            ),
            None,
        );
    }

    /// Records an attempt that was prepared and run over `timed`: its
    /// module, fuel, peak memory and outcome.
    pub fn attempt_ran(
        &self,
        trace: TraceContext,
        job: &ClaimedJob,
        finished: &FinishedAttempt,
        timed: (SystemTime, SystemTime),
    ) {
        let mut attributes = with(
            messaging("process", "attempt"),
            [
                KeyValue::new("messaging.destination.name", job.queue.clone()),
                KeyValue::new("messaging.message.id", job.id.to_string()),
                KeyValue::new("taskflow.module_hash", job.module_hash.clone()),
                KeyValue::new("taskflow.worker.id", finished.worker_id.clone()),
                KeyValue::new("taskflow.attempt", i64::from(finished.attempt)),
                KeyValue::new("taskflow.outcome", finished.end.outcome().as_str()),
                KeyValue::new(
                    "taskflow.job.next_state",
                    finished.end.next_state().as_str(),
                ),
                KeyValue::new(
                    "taskflow.fuel_limit",
                    i64::try_from(job.limits.fuel).unwrap_or(i64::MAX),
                ),
            ],
        );
        if let Some(usage) = &finished.usage {
            attributes.extend([
                KeyValue::new(
                    "taskflow.fuel_consumed",
                    saturating_i64(usage.fuel_consumed),
                ),
                KeyValue::new("taskflow.memory_bytes", saturating_i64(usage.memory_bytes)),
                KeyValue::new(
                    "taskflow.guest_duration_us",
                    saturating_i64(usage.duration.as_micros()),
                ),
            ]);
        }
        let error = finished.end.error().map(|(kind, _)| kind.code());
        if let Some(kind) = error {
            attributes.push(KeyValue::new("error.type", kind));
        }
        if let Some(delay) = finished.end.retry_delay() {
            attributes.push(KeyValue::new(
                "taskflow.retry_in_ms",
                saturating_i64(delay.as_millis()),
            ));
        }
        self.record(
            "job attempt",
            SpanKind::Consumer,
            trace,
            timed,
            attributes,
            error,
        );
    }

    /// Records the write of each outcome of a traced job in `batch`, whose
    /// statement ran over `timed` (a worker's completer, or the rescuer).
    pub fn outcomes_written(
        &self,
        batch: &[FinishedAttempt],
        transitions: &[Transition],
        timed: (SystemTime, SystemTime),
    ) {
        for (attempt, transition) in batch.iter().zip(transitions) {
            if let Some(trace) = attempt.trace {
                self.finished(trace, attempt, *transition, timed);
            }
        }
    }

    /// Records the write of an attempt's outcome over `timed`: the job's
    /// next state, or that the attempt had lost its lease and the outcome
    /// was discarded.
    fn finished(
        &self,
        trace: TraceContext,
        finished: &FinishedAttempt,
        transition: Transition,
        timed: (SystemTime, SystemTime),
    ) {
        let applied = transition == Transition::Applied;
        self.record(
            "job finish",
            SpanKind::Internal,
            trace,
            timed,
            with(
                messaging("settle", "finish"),
                [
                    KeyValue::new("messaging.message.id", finished.lease.job_id.to_string()),
                    KeyValue::new("taskflow.attempt", i64::from(finished.attempt)),
                    KeyValue::new("taskflow.outcome", finished.end.outcome().as_str()),
                    KeyValue::new("taskflow.outcome_written", applied),
                    KeyValue::new(
                        "taskflow.job.next_state",
                        finished.end.next_state().as_str(),
                    ),
                ],
            ),
            (!applied).then_some("lease_lost"),
        );
    }

    /// Records a span that is already over, unless traces are off.
    fn record(
        &self,
        name: &'static str,
        kind: SpanKind,
        trace: TraceContext,
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        error: Option<&'static str>,
    ) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let mut span = exporter
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&exporter.tracer, &parent(Some(trace)));
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end_with_timestamp(end);
    }
}

/// Whether the variables `set` reads (unset or empty: `None`) ask for
/// traces, refusing what TaskFlow cannot export.
fn wanted(set: impl Fn(&str) -> Option<String>) -> Result<bool, TracesError> {
    let endpoint =
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|value| value == "true");
    let Some(endpoint) = endpoint.filter(|_| !disabled) else {
        return Ok(false);
    };
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = set(variable).filter(|value| value != "http/protobuf") {
            return Err(TracesError::UnsupportedProtocol { variable, value });
        }
    }
    if !endpoint.starts_with("http://") {
        return Err(TracesError::NotPlainHttp(endpoint));
    }
    Ok(true)
}

/// The attributes every span of a job starts with, after OpenTelemetry's
/// messaging conventions: a job is a message, its queue the destination.
fn messaging(operation_type: &'static str, operation: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "taskflow"),
        KeyValue::new("messaging.operation.type", operation_type),
        KeyValue::new("messaging.operation.name", operation),
    ]
}

fn with<const N: usize>(mut attributes: Vec<KeyValue>, more: [KeyValue; N]) -> Vec<KeyValue> {
    attributes.extend(more);
    attributes
}

/// The context whose span is `trace`, or an empty one (a new trace).
fn parent(trace: Option<TraceContext>) -> Context {
    match trace {
        Some(trace) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(trace.span_id),
            TraceFlags::new(trace.flags),
            true,
            TraceState::NONE,
        )),
        None => Context::new(),
    }
}

fn trace_context_of(span: &SpanContext) -> TraceContext {
    TraceContext {
        trace_id: span.trace_id().to_bytes(),
        span_id: span.span_id().to_bytes(),
        flags: span.trace_flags().to_u8(),
    }
}

fn saturating_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// The HTTP client of the exporter: blocking (the batch processor exports
/// from a thread of its own), bounded by [`EXPORT_TIMEOUT`]. Built on a
/// thread of its own because a blocking client cannot be built inside the
/// async runtime.
fn blocking_client() -> Result<reqwest::blocking::Client, TracesError> {
    std::thread::spawn(|| {
        reqwest::blocking::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
    })
    .join()
    .map_err(|_| TracesError::Exporter("building the HTTP client panicked".into()))?
    .map_err(|error| TracesError::Exporter(error.to_string()))
}

#[cfg(test)]
mod tests;
