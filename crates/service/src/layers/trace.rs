//! A span per call named after its RPC, continuing the caller's W3C trace.

use tonic::body::Body;
use tower::Service;

use super::{BoxFuture, Concern, ConcernLayer};
use crate::telemetry;

/// Opens a span for every call.
#[derive(Clone, Copy, Default)]
pub struct Trace;

/// A span for every call.
pub fn layer() -> ConcernLayer<Trace> {
    ConcernLayer(Trace)
}

impl Concern for Trace {
    fn call<S>(&self, request: http::Request<Body>, mut inner: S) -> BoxFuture<Result<http::Response<Body>, S::Error>>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
        let path = request.uri().path();
        let span = tracing::info_span!("grpc", otel.name = %path, otel.kind = "server", rpc = %path);
        telemetry::set_parent(&span, request.headers());
        Box::pin(tracing::Instrument::instrument(inner.call(request), span))
    }
}
