//! The metrics listener: `GET /metrics` in the Prometheus/OpenMetrics text
//! format, on its own port (`metrics.listen`), served with axum on the hyper
//! that tonic already brings (no second HTTP stack).

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::{Router, http::header, response::IntoResponse, routing::get};

use crate::runtime::Runtime;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the runtime's registry on listener `metrics` (bound at `addr`
/// unless one was provided) until the runtime's Close phase.
pub async fn serve_metrics(runtime: &Runtime, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = runtime.listener("metrics", addr).await?;
    let bound = listener.local_addr()?;
    let metrics = runtime.metrics().clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response() }
        }),
    );
    let closing = runtime.closing_token();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(closing.cancelled_owned())
            .await
            .context("metrics listener failed")
    });
    runtime.register_server("metrics", handle);
    tracing::info!(%bound, "metrics listening");
    Ok(bound)
}
