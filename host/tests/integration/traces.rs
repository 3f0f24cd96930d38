//! Traces (telemetry/traces.rs): the API and workers, as processes of their
//! own, export a job's spans over OTLP to a collector this test runs, as
//! one trace under the caller's `traceparent`; with traces off the API
//! stores the caller's context as it came.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prost::Message as _;
use serde_json::json;
use taskflow::api::types::{JobView, SubmitJob};
use taskflow::client::Client;
use taskflow::job::{JobState, TraceContext};

use crate::support::{ApiProcess, TestApp, WorkerProcess, eventually};

/// The caller's span: a trace and span id of its own, sampled.
const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    start_nanos: u64,
    end_nanos: u64,
    is_error: bool,
    attributes: HashMap<String, Value>,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> &Value {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("{} has no attribute {key}: {self:?}", self.name))
    }

    fn int(&self, key: &str) -> i64 {
        match self.attribute(key) {
            Value::IntValue(value) => *value,
            other => panic!("{key} is not an int: {other:?}"),
        }
    }

    fn text(&self, key: &str) -> &str {
        match self.attribute(key) {
            Value::StringValue(value) => value,
            other => panic!("{key} is not a string: {other:?}"),
        }
    }
}

/// An OTLP/HTTP trace receiver on loopback: decodes each export request's
/// protobuf body and keeps its spans.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let received = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let received = received.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("an OTLP protobuf export request");
                    received.lock().unwrap().extend(spans_of(request));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, spans }
    }

    /// What a process needs to export here, promptly.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ]
    }

    fn spans_of_trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans: Vec<_> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect();
        spans.sort_by_key(|span| span.start_nanos);
        spans
    }

    /// The spans of `trace_id` once `done` says they are all there.
    async fn wait_for(
        &self,
        trace_id: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        eventually(Duration::from_secs(20), || async {
            let spans = self.spans_of_trace(trace_id);
            done(&spans).then_some(spans)
        })
        .await
    }
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = attributes(resource.attributes)
            .remove("service.name")
            .map(|value| match value {
                Value::StringValue(name) => name,
                other => panic!("service.name is {other:?}"),
            })
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    start_nanos: span.start_time_unix_nano,
                    end_nanos: span.end_time_unix_nano,
                    // STATUS_CODE_ERROR
                    is_error: span.status.is_some_and(|status| status.code == 2),
                    attributes: attributes(span.attributes),
                });
            }
        }
    }
    spans
}

fn attributes(pairs: Vec<KeyValue>) -> HashMap<String, Value> {
    pairs
        .into_iter()
        .filter_map(|pair| {
            let AnyValue { value } = pair.value?;
            Some((pair.key, value?))
        })
        .collect()
}

fn count(spans: &[ReceivedSpan], name: &str) -> usize {
    spans.iter().filter(|span| span.name == name).count()
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// An app with the misbehave plugin uploaded, a collector, and an API
/// process that exports to it.
struct Traced {
    app: TestApp,
    module: String,
    collector: Collector,
    api: ApiProcess,
}

impl Traced {
    async fn start() -> Self {
        let (app, module) = TestApp::start_with_plugin("misbehave").await;
        let collector = Collector::start().await;
        let api = app.api_process(&collector.env()).await;
        Self {
            app,
            module,
            collector,
            api,
        }
    }

    /// Stops the API process and the app, and drops the database.
    async fn finish(self) {
        drop(self.api);
        self.app.finish().await;
    }

    /// A worker process named `id` that exports to the collector, with
    /// `env` on top; killed when dropped.
    fn worker(&self, id: &str, env: &[(&str, &str)]) -> WorkerProcess {
        let mut all = self.collector.env();
        all.extend_from_slice(env);
        self.app
            .worker_process(id, &all, std::process::Stdio::null())
    }

    /// A client of the API process that sends `traceparent`.
    fn client_in(&self, traceparent: &str) -> Client {
        self.api
            .client
            .clone()
            .with_traceparent(Some(traceparent.into()))
    }

    /// Submits `job` in the trace of `traceparent` and waits for it to end.
    async fn run_in(&self, traceparent: &str, job: &SubmitJob) -> JobView {
        let id = self
            .client_in(traceparent)
            .submit(job)
            .await
            .unwrap()
            .job
            .id;
        self.api
            .client
            .get_job_when_ended(id, Duration::from_secs(30))
            .await
            .unwrap()
    }
}

/// A job that fails its first attempt and succeeds on its second.
fn fails_once(module: &str) -> SubmitJob {
    SubmitJob::new(module, json!({"mode": "fail_until", "succeed_on": 2}))
}

#[tokio::test]
async fn one_trace_shows_a_job_from_its_submission_to_its_finish_across_processes() {
    let traced = Traced::start().await;
    let _worker = traced.worker("traced", &[("TASKFLOW_BACKOFF_BASE", "10ms")]);
    let job = traced.run_in(CALLER, &fails_once(&traced.module)).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2);

    let caller = TraceContext::parse_traceparent(CALLER).unwrap();
    let stored = TraceContext::parse_traceparent(job.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(
        stored.trace_id, caller.trace_id,
        "the job joined the caller's trace"
    );
    assert_ne!(stored.span_id, caller.span_id, "under the API's own span");

    let trace_id = caller.trace_id_hex();
    let spans = traced
        .collector
        .wait_for(&trace_id, |spans| {
            count(spans, "job submit") == 1
                && count(spans, "job claim") == 2
                && count(spans, "job attempt") == 2
                && count(spans, "job finish") == 2
        })
        .await;
    assert_eq!(spans.len(), 7, "nothing else in the trace: {spans:#?}");

    let submit = named(&spans, "job submit")[0];
    assert_eq!(submit.service, "taskflow-api");
    assert_eq!(submit.parent_span_id, hex::encode(caller.span_id));
    assert_eq!(submit.span_id, hex::encode(stored.span_id));
    assert_eq!(submit.text("messaging.message.id"), job.id.to_string());
    for span in spans.iter().filter(|span| span.name != "job submit") {
        assert_eq!(span.service, "taskflow-worker", "{span:?}");
        assert_eq!(span.parent_span_id, submit.span_id, "{span:?}");
        assert!(span.start_nanos <= span.end_nanos, "{span:?}");
        assert!(span.start_nanos >= submit.start_nanos, "{span:?}");
    }

    let claims = named(&spans, "job claim");
    let attempts = named(&spans, "job attempt");
    let finishes = named(&spans, "job finish");
    for (index, number) in [1, 2].into_iter().enumerate() {
        for span in [claims[index], attempts[index], finishes[index]] {
            assert_eq!(span.int("taskflow.attempt"), number, "{span:?}");
        }
        assert_eq!(claims[index].text("taskflow.worker.id"), "traced");
        assert!(attempts[index].int("taskflow.fuel_consumed") > 0);
        assert!(attempts[index].int("taskflow.memory_bytes") > 0);
        assert!(claims[index].end_nanos <= attempts[index].start_nanos);
        assert!(attempts[index].end_nanos <= finishes[index].start_nanos);
    }
    assert_eq!(attempts[0].text("taskflow.outcome"), "failed");
    assert_eq!(attempts[0].text("error.type"), "guest_error");
    assert!(attempts[0].is_error);
    assert_eq!(finishes[0].text("taskflow.job.next_state"), "retrying");
    assert!(finishes[0].end_nanos <= claims[1].start_nanos);
    assert_eq!(attempts[1].text("taskflow.outcome"), "succeeded");
    assert!(!attempts[1].is_error);
    assert_eq!(finishes[1].text("taskflow.job.next_state"), "succeeded");
    traced.finish().await;
}

#[tokio::test]
async fn a_caller_that_does_not_sample_its_trace_gets_no_spans_of_its_job() {
    let traced = Traced::start().await;
    let _worker = traced.worker("traced", &[]);
    let unsampled = CALLER.replace("-01", "-00");
    let sampled = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut ids = Vec::new();
    for traceparent in [unsampled.as_str(), sampled] {
        let job = SubmitJob::new(&traced.module, json!({"mode": "succeed"}));
        let job = traced.run_in(traceparent, &job).await;
        assert_eq!(job.state, JobState::Succeeded);
        ids.push(job.id);
    }
    // The sampled job ran after the unsampled one ended: once its spans are
    // in, the unsampled job's would have been too.
    let sampled = TraceContext::parse_traceparent(sampled).unwrap();
    traced
        .collector
        .wait_for(&sampled.trace_id_hex(), |spans| {
            count(spans, "job finish") == 1
        })
        .await;
    let unsampled = TraceContext::parse_traceparent(&unsampled).unwrap();
    let spans = traced.collector.spans_of_trace(&unsampled.trace_id_hex());
    assert_eq!(spans.len(), 0, "{spans:#?}");
    let stored = traced.app.client.get_job(ids[0]).await.unwrap();
    let stored = TraceContext::parse_traceparent(&stored.traceparent.unwrap()).unwrap();
    assert_eq!(stored.trace_id, unsampled.trace_id);
    assert!(!stored.is_sampled(), "the decision travels with the job");
    traced.finish().await;
}

#[tokio::test]
async fn a_rescued_attempt_ends_in_the_trace_as_a_finish_by_the_rescuer() {
    let traced = Traced::start().await;
    let mut doomed = traced.worker("doomed", &[]);
    let job = SubmitJob {
        timeout_ms: Some(60_000),
        ..SubmitJob::new(&traced.module, json!({"mode": "sleep", "ms": 60_000}))
    };
    let id = traced.client_in(CALLER).submit(&job).await.unwrap().job.id;
    eventually(Duration::from_secs(20), || async {
        let job = traced.app.client.get_job(id).await.unwrap();
        (job.state == JobState::Running).then_some(())
    })
    .await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let _rescuer = traced.worker("rescuer", &[]);

    let trace_id = TraceContext::parse_traceparent(CALLER)
        .unwrap()
        .trace_id_hex();
    let spans = traced
        .collector
        .wait_for(&trace_id, |spans| count(spans, "job finish") == 1)
        .await;
    let rescue = named(&spans, "job finish")[0];
    assert_eq!(rescue.service, "taskflow-worker");
    assert_eq!(rescue.text("taskflow.outcome"), "lease_expired");
    assert_eq!(rescue.int("taskflow.attempt"), 1);
    assert_eq!(rescue.text("taskflow.job.next_state"), "retrying");
    let submit = named(&spans, "job submit")[0];
    assert_eq!(rescue.parent_span_id, submit.span_id);
    traced.finish().await;
}

#[tokio::test]
async fn with_traces_off_the_api_stores_the_callers_traceparent_as_it_came() {
    let (app, module) = TestApp::start_with_plugin("misbehave").await;
    let job = SubmitJob::new(&module, json!({"mode": "fail_until", "succeed_on": 1}));
    let traced = app.client.clone().with_traceparent(Some(CALLER.into()));
    let submitted = traced.submit(&job).await.unwrap();
    assert_eq!(submitted.job.traceparent.as_deref(), Some(CALLER));
    let read = app.client.get_job(submitted.job.id).await.unwrap();
    assert_eq!(read.traceparent.as_deref(), Some(CALLER));

    let batch = traced
        .submit_batch(&taskflow::api::types::SubmitBatch {
            jobs: vec![job.clone(), job.clone()],
        })
        .await
        .unwrap();
    for entry in batch.jobs {
        let read = app.client.get_job(entry.id).await.unwrap();
        assert_eq!(read.traceparent.as_deref(), Some(CALLER));
    }

    for invalid in [
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "not a traceparent",
        &CALLER.to_uppercase(),
    ] {
        let client = app.client.clone().with_traceparent(Some(invalid.into()));
        let submitted = client.submit(&job).await.unwrap();
        assert_eq!(submitted.job.traceparent, None, "{invalid:?} is ignored");
    }
    let twice = app
        .http()
        .post(format!("{}/v1/jobs", app.url))
        .header("traceparent", CALLER)
        .header("traceparent", CALLER)
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), reqwest::StatusCode::CREATED);
    let twice: taskflow::api::types::SubmittedJob = twice.json().await.unwrap();
    assert_eq!(twice.job.traceparent, None, "two traceparents are ignored");
    app.finish().await;
}
