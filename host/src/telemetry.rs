//! Logs and metrics.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default
//! `info`), as text or, with `TASKFLOW_LOG_FORMAT=json`, one JSON object per
//! line. Metrics are recorded with the `metrics` facade and exposed in
//! Prometheus format: by the API at `/metrics`, by a worker at its
//! `--metrics-listen` address.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Serves `/metrics` on `listen` until the process exits (workers have no
/// other HTTP surface).
pub async fn serve_metrics(listen: &str) -> std::io::Result<()> {
    let handle = prometheus();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { handle.render() }),
    );
    axum::serve(listener, app).await
}
