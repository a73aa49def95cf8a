//! The metrics listener: `GET /metrics` in the Prometheus/OpenMetrics text
//! format, on its own port (`metrics.listen`), served with axum on the hyper
//! that tonic already brings (no second HTTP stack).

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::{Router, http::header, response::IntoResponse, routing::get};

use crate::runtime::Runtime;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `app` over HTTP/1.1 on the runtime's listener `name` (bound at
/// `addr` unless one was provided) until the runtime's Close phase. Handlers
/// may extract the peer address (`ConnectInfo<SocketAddr>`).
pub async fn serve_http(
    runtime: &Runtime,
    name: &'static str,
    addr: SocketAddr,
    app: Router,
) -> anyhow::Result<SocketAddr> {
    let listener = runtime.listener(name, addr).await?;
    let bound = listener.local_addr()?;
    let closing = runtime.closing_token();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(closing.cancelled_owned())
            .await
            .with_context(|| format!("{name} listener failed"))
    });
    runtime.register_server(name, handle);
    tracing::info!(listener = name, %bound, "http listening");
    Ok(bound)
}

/// Serves the runtime's registry on listener `metrics` (bound at `addr`
/// unless one was provided) until the runtime's Close phase.
pub async fn serve_metrics(runtime: &Runtime, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let metrics = runtime.metrics().clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response() }
        }),
    );
    serve_http(runtime, "metrics", addr, app).await
}
