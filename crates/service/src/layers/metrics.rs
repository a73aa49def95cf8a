//! RPC metrics for every call a server answers: counted and timed until the
//! response's last frame, by service, method and final code.

use cairn_client::{body, metrics::RpcMetrics};
use tonic::body::Body;
use tower::Service;

use super::{BoxFuture, Concern, ConcernLayer, is_infrastructure};

/// Counts every non-infrastructure call.
#[derive(Clone)]
pub struct Measure {
    metrics: RpcMetrics,
}

/// Counts every non-infrastructure call in `metrics` (the server side of
/// the process registry).
pub fn layer(metrics: RpcMetrics) -> ConcernLayer<Measure> {
    ConcernLayer(Measure { metrics })
}

impl Concern for Measure {
    fn call<S>(&self, request: http::Request<Body>, mut inner: S) -> BoxFuture<Result<http::Response<Body>, S::Error>>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
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
