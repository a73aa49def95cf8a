//! The standard server's middleware, one concern per tower layer, so a
//! second listener composes only the ones it needs:
//!
//! - [`metrics`]: requests by service, method and code, latency, in flight —
//!   measured until the response's last frame, so streams count in full.
//! - [`shed`]: the concurrency limit. A call over it is refused at once,
//!   `RESOURCE_EXHAUSTED` + OVERLOADED ("not written"); during shutdown new
//!   calls get `UNAVAILABLE` + SHUTTING_DOWN. The permit is held until the
//!   response body ends, so a server stream counts for as long as it runs.
//! - [`trace`]: a span per call, continuing the caller's W3C trace.
//! - [`limits`]: the request deadline (the caller's `grpc-timeout`, bounded by
//!   `grpc.request_timeout` for the handler), made available to handler code,
//!   and the stream limits: the caller's deadline, `grpc.stream_idle_timeout`
//!   and `grpc.stream_max_lifetime` end a response stream with a status.
//! - [`authn`]: API keys and the access each RPC declares.
//!
//! Health and reflection (infrastructure) are never shed, authenticated or
//! counted, so a probe sees a busy or shutting-down server as it is.

pub mod authn;
pub mod limits;
pub mod metrics;
pub mod shed;
pub mod trace;

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::body::Body;
use tower::{Layer, Service};

/// What every layer's service returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One concern of the standard middleware: what it does to a call, given the
/// (ready) inner service. [`ConcernLayer`] makes it a tower layer, so the
/// plumbing (readiness, cloning, boxing) is written once for every concern.
pub trait Concern: Clone + Send + Sync + 'static {
    /// Handles `request`, calling `inner` to go on.
    fn call<S>(&self, request: http::Request<Body>, inner: S) -> BoxFuture<Result<http::Response<Body>, S::Error>>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static;
}

/// A [`Concern`] as a tower layer.
#[derive(Clone)]
pub struct ConcernLayer<C>(pub C);

impl<C: Clone, S> Layer<S> for ConcernLayer<C> {
    type Service = Wrapped<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Wrapped {
            concern: self.0.clone(),
            inner,
        }
    }
}

/// The service a [`ConcernLayer`] makes.
#[derive(Clone)]
pub struct Wrapped<C, S> {
    concern: C,
    inner: S,
}

impl<C, S> Service<http::Request<Body>> for Wrapped<C, S>
where
    C: Concern,
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
        // The clone is not ready; keep the one that is (tower's documented pattern).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.concern.call(request, inner)
    }
}

/// Health and reflection: open, never shed, not counted.
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}
