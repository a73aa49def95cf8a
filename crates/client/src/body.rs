//! A response body that says how its call ended: the gRPC code from its
//! trailers (or from the headers of a trailers-only answer), `CANCELLED` when
//! dropped before the end. Layers use it to hold something (a permit, a
//! timer, a metrics record) for as long as the response streams, not just
//! until its headers go out.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::{Code, Status, body::Body};

type OnEnd = Box<dyn FnOnce(Code) + Send + Sync>;

/// The code in `grpc-status`, if the headers carry one.
pub fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// Wraps a response so `on_end` runs once, with the call's final code.
pub fn observe(
    response: http::Response<Body>,
    on_end: impl FnOnce(Code) + Send + Sync + 'static,
) -> http::Response<Body> {
    let headers_code = status_code(response.headers());
    let (parts, body) = response.into_parts();
    let observed = Observed {
        inner: body,
        on_end: Some(Box::new(on_end)),
        headers_code,
    };
    http::Response::from_parts(parts, Body::new(observed))
}

struct Observed {
    inner: Body,
    on_end: Option<OnEnd>,
    /// A trailers-only answer: the code came with the headers.
    headers_code: Option<Code>,
}

impl Observed {
    fn end(&mut self, code: Code) {
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(Code::Unknown);
                    this.end(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.end(status.code()),
            Poll::Ready(None) => {
                let code = this.headers_code.unwrap_or(Code::Ok);
                this.end(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let code = self.headers_code.unwrap_or(Code::Cancelled);
        self.end(code);
    }
}
