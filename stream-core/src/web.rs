//! The HTTP endpoint of a worker (axum): `/metrics` (Prometheus text format),
//! `/health` (200 while the worker runs, 503 once it failed) and `/ready`
//! (200 once the worker had its first assignment), and the routes the app
//! added with [`App::routes`](crate::App::routes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What the endpoint reports on.
pub(crate) trait Status: Send + Sync + 'static {
    fn healthy(&self) -> bool;
    fn ready(&self) -> bool;
}

#[derive(Clone)]
struct Web {
    metrics: Metrics,
    status: Arc<dyn Status>,
}

/// Binds `port` on `host` (0 picks a free port) and serves until `stop`.
pub(crate) async fn serve(
    host: std::net::IpAddr,
    port: u16,
    metrics: Metrics,
    status: Arc<dyn Status>,
    routes: Vec<Router>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let mut app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Web { metrics, status });
    for extra in routes {
        app = app.merge(extra);
    }
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|source| Error::Io { context: format!("binding the HTTP port {port}"), source })?;
    let addr =
        listener.local_addr().map_err(|source| Error::Io { context: "reading the HTTP address".into(), source })?;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "HTTP endpoint failed");
        }
    });
    Ok((addr, task))
}

async fn metrics_page(State(web): State<Web>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], web.metrics.encode())
}

async fn health(State(web): State<Web>) -> impl IntoResponse {
    if web.status.healthy() { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "failed\n") }
}

async fn ready(State(web): State<Web>) -> impl IntoResponse {
    if web.status.ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}
