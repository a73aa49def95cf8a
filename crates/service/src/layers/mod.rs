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

use std::{future::Future, pin::Pin};

/// What every layer's service returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Health and reflection: open, never shed, not counted.
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The clone of a ready service to call, leaving a fresh clone in its place
/// (tower's documented pattern for `Clone` services).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
