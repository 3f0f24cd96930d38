//! Logs, metrics and traces.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default
//! `info`), as text or, with `TASKFLOW_LOG_FORMAT=json`, one JSON object per
//! line. Metrics are recorded with the `metrics` facade and exposed in
//! Prometheus format: by the API at `/metrics`, by a worker at its
//! `--metrics-listen` address. Traces of jobs go to an OpenTelemetry
//! collector when one is configured ([`traces`]).

pub mod traces;

use std::sync::OnceLock;
use std::time::Duration;

pub use traces::Traces;

use crate::api::serve::ConnectionLimits;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Stops errors from capturing backtraces unless `RUST_LIB_BACKTRACE` asks
/// for them: wasmtime creates an error value on a hot path (dropping a
/// store), and with `RUST_BACKTRACE` set every error captures a backtrace,
/// about 8 µs per job. Panics keep their backtraces. Every binary that runs
/// guests calls this first thing in `main`, while no other thread exists
/// (it sets an environment variable).
pub fn no_error_backtraces_by_default() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called before any other thread exists (see above).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Installs the log subscriber. Call once, at startup.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TASKFLOW_LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Buckets of every histogram in seconds: from a no-op attempt's
/// milliseconds to the longest timeouts.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

/// Buckets of fuel per attempt: a no-op burns thousands, the default
/// budget is a billion.
const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("_fuel".into()), FUEL_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// How a worker's `/metrics` treats connections: a scraper or two, each
/// sending its request at once. Served by axum's own `serve`, which sets no
/// timer on hyper, idle connections were never closed, and enough of them
/// took every file descriptor of the worker (`api/serve.rs`).
const METRICS_CONNECTIONS: ConnectionLimits = ConnectionLimits {
    max_connections: 16,
    header_timeout: Duration::from_secs(5),
    open_gauge: "taskflow_worker_metrics_connections_open",
};

/// Serves `/metrics` on `listen` until the process exits (workers have no
/// other HTTP surface).
pub async fn serve_metrics(listen: &str) -> std::io::Result<()> {
    let handle = prometheus();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { handle.render() }),
    );
    crate::api::serve::serve(listener, app, METRICS_CONNECTIONS, CancellationToken::new()).await
}
