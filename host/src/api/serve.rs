//! TaskFlow's HTTP/1.1 server, for the API and for a worker's `/metrics`
//! (`telemetry::serve_metrics`): accepts connections under a cap and serves
//! each with hyper, under the header-read timeout.
//!
//! axum's own `serve` sets no timer on hyper, so hyper's header-read timeout
//! never fires there: an idle or half-open connection lives forever, and
//! enough of them exhaust the process's file descriptors. Here:
//!
//! - at most `--max-connections` connections are open at once; the accept
//!   loop waits for one to close before accepting another, so excess
//!   clients wait in the kernel's listen backlog instead of costing a
//!   descriptor;
//! - a connection that has not sent a complete request head within
//!   `--request-header-timeout` (counted from its opening, or from the end
//!   of its previous response when kept alive) is closed;
//! - request bodies are read under `--request-body-timeout` by the handlers
//!   ([`super::body`]);
//! - on shutdown, idle connections close at once and requests in flight
//!   finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long the accept loop pauses after a failed `accept` (typically out of
/// file descriptors), instead of spinning on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a complete request head.
    pub header_timeout: Duration,
    /// The gauge that counts the connections open.
    pub open_gauge: &'static str,
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Answers are small and clients wait for them: send each at once
        // rather than let Nagle's algorithm hold it back.
        let _ = tcp.set_nodelay(true);
        let open = metrics::gauge!(limits.open_gauge);
        open.increment(1.0);
        let connection =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
