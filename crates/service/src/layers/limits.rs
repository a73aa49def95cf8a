//! Deadlines and stream limits.
//!
//! The handler of a call gets the caller's `grpc-timeout`, bounded by
//! `grpc.request_timeout`, as its deadline: it is what outgoing calls made
//! while handling it inherit ([`crate::context::remaining`]), and a handler
//! that has not answered by then is answered `DEADLINE_EXCEEDED`. The response
//! body is bounded too, which is what makes the deadline hold for streams: the
//! caller's deadline, `grpc.stream_max_lifetime` and `grpc.stream_idle_timeout`
//! (no message for that long) each end a response stream with a status in its
//! trailers. Timers start only once a body has to wait, so a unary answer
//! costs none.

use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use cairn_client::{ErrorReason, context, status};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status, body::Body};
use tower::Service;

use super::{BoxFuture, Concern, ConcernLayer};

/// The limits every call gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a handler may take to answer.
    pub request_timeout: Duration,
    /// A response stream with no message for this long is ended (zero: never).
    pub stream_idle_timeout: Duration,
    /// A response stream is ended after this long (zero: never).
    pub stream_max_lifetime: Duration,
}

/// Applies [`Limits`].
#[derive(Clone)]
pub struct Bound {
    limits: Limits,
}

/// Every call bounded by `limits`.
pub fn layer(limits: Limits) -> ConcernLayer<Bound> {
    ConcernLayer(Bound { limits })
}

impl Concern for Bound {
    fn call<S>(&self, request: http::Request<Body>, mut inner: S) -> BoxFuture<Result<http::Response<Body>, S::Error>>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
        let now = Instant::now();
        let asked = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_grpc_timeout);
        let limits = self.limits;
        let handler_deadline = now + asked.map_or(limits.request_timeout, |a| a.min(limits.request_timeout));
        let caller_deadline = asked.map(|a| now + a);
        Box::pin(async move {
            let answer = context::with_deadline(
                Some(handler_deadline),
                tokio::time::timeout_at(handler_deadline, inner.call(request)),
            )
            .await;
            let response = match answer {
                Ok(response) => response?,
                Err(_) => return Ok(Status::deadline_exceeded("the request deadline passed").into_http()),
            };
            let (parts, body) = response.into_parts();
            let bounded = Bounded {
                inner: body,
                caller_deadline,
                lifetime_end: (!limits.stream_max_lifetime.is_zero()).then(|| now + limits.stream_max_lifetime),
                idle: limits.stream_idle_timeout,
                timers: None,
                done: false,
            };
            Ok(http::Response::from_parts(parts, Body::new(bounded)))
        })
    }
}

struct Timers {
    /// The earlier of the caller's deadline and the stream's lifetime, and the status for it.
    end: Option<(Pin<Box<Sleep>>, Status)>,
    idle: Option<Pin<Box<Sleep>>>,
}

/// A response body under the caller's deadline and the stream limits.
struct Bounded {
    inner: Body,
    caller_deadline: Option<Instant>,
    lifetime_end: Option<Instant>,
    idle: Duration,
    timers: Option<Timers>,
    done: bool,
}

impl Bounded {
    fn timers(&mut self) -> &mut Timers {
        let (caller, lifetime, idle) = (self.caller_deadline, self.lifetime_end, self.idle);
        self.timers.get_or_insert_with(|| {
            let end = match (caller, lifetime) {
                (Some(c), Some(l)) if l < c => Some((l, lifetime_status())),
                (Some(c), _) => Some((c, Status::deadline_exceeded("the call's deadline passed"))),
                (None, Some(l)) => Some((l, lifetime_status())),
                (None, None) => None,
            };
            Timers {
                end: end.map(|(at, status)| (Box::pin(tokio::time::sleep_until(at)), status)),
                idle: (!idle.is_zero()).then(|| Box::pin(tokio::time::sleep(idle))),
            }
        })
    }
}

fn lifetime_status() -> Status {
    status::with_reason(
        Code::Unavailable,
        "the stream reached the server's maximum stream lifetime; resume from the last message",
        ErrorReason::StreamLimit,
        Some(Duration::ZERO),
    )
}

fn idle_status() -> Status {
    status::with_reason(
        Code::Unavailable,
        "the stream was idle longer than the server allows; resume from the last message",
        ErrorReason::StreamLimit,
        Some(Duration::ZERO),
    )
}

/// The trailers that end a call with `status`.
pub fn trailers(status: Status) -> http::HeaderMap {
    let (mut parts, ()) = status.into_http::<()>().into_parts();
    parts.headers.remove(http::header::CONTENT_TYPE);
    parts.headers
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data()
                    && let Some(Timers { idle: Some(idle), .. }) = &mut this.timers
                {
                    idle.as_mut().reset(Instant::now() + this.idle);
                }
                if frame.is_trailers() {
                    this.done = true;
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                this.done = true;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        let timers = this.timers();
        let fired = if let Some((sleep, status)) = &mut timers.end
            && sleep.as_mut().poll(cx).is_ready()
        {
            Some(status.clone())
        } else if let Some(idle) = &mut timers.idle
            && idle.as_mut().poll(cx).is_ready()
        {
            Some(idle_status())
        } else {
            None
        };
        match fired {
            Some(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "ending a response stream");
                this.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(status)))))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
