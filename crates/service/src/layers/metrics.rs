//! RPC metrics for every call a server answers: counted and timed until the
//! response's last frame, by service, method and final code.

use std::task::{Context, Poll};

use cairn_client::{body, metrics::RpcMetrics};
use tonic::body::Body;
use tower::{Layer, Service};

use super::{BoxFuture, is_infrastructure, take_ready};

/// Counts every non-infrastructure call in `metrics`.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: RpcMetrics,
}

impl MetricsLayer {
    /// Records into `metrics` (the server side of the process registry).
    pub fn new(metrics: RpcMetrics) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S> Service<http::Request<Body>> for Measured<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let path = request.uri().path();
        if is_infrastructure(path) {
            return Box::pin(inner.call(request));
        }
        let record = self.metrics.start(path);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(body::observe(response, move |code| record.finish(code)))
        })
    }
}
