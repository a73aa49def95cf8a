//! A span per call named after its RPC, continuing the caller's W3C trace.

use std::task::{Context, Poll};

use tonic::body::Body;
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::telemetry;

/// Opens a span for every call.
#[derive(Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

/// The service [`TraceLayer`] makes.
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for Traced<S>
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
        let span = tracing::info_span!("grpc", otel.name = %path, otel.kind = "server", rpc = %path);
        telemetry::set_parent(&span, request.headers());
        Box::pin(tracing::Instrument::instrument(inner.call(request), span))
    }
}
