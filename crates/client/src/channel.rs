//! The one way Cairn opens channels, and [`Client`]: the tower layer every
//! outgoing call goes through. It adds the API key, a `grpc-timeout` no later
//! than the deadline of the request being handled, and W3C trace context, and
//! ends the call on this side at that deadline (a frozen server never answers;
//! the header alone asks it to give up but cannot make it).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tonic::{
    Request, Status,
    body::Body,
    transport::{Channel, Endpoint},
};

use crate::{context, propagation};

/// HTTP/2 flow-control windows for every Cairn server and client: large enough
/// that a multi-megabyte request streams without waiting for window updates.
pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// See [`HTTP2_STREAM_WINDOW`].
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// How long past its deadline a call may run before this side ends it, so a
/// live server's own `DEADLINE_EXCEEDED` arrives first.
const LOCAL_GRACE: Duration = Duration::from_millis(50);

/// A config field holds a value that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

impl InvalidField {
    /// `field` is wrong because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Settings for channels to Cairn services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Bound on establishing a connection.
    #[serde(with = "crate::units::duration")]
    pub connect_timeout: Duration,
    /// Deadline of an outgoing call when the caller has none (a shorter caller deadline wins).
    #[serde(with = "crate::units::duration")]
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval; 0 disables pings.
    #[serde(with = "crate::units::duration")]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    #[serde(with = "crate::units::duration")]
    pub keepalive_timeout: Duration,
    /// Largest message sent or received.
    #[serde(with = "crate::units::bytes_usize")]
    pub max_message_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

impl ClientConfig {
    /// Checks the values, naming fields under `section`.
    pub fn validate(&self, section: &str) -> Result<(), InvalidField> {
        for (name, zero) in [
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
            ("max_message_bytes", self.max_message_bytes == 0),
        ] {
            if zero {
                return Err(InvalidField::new(format!("{section}.{name}"), "must be greater than 0"));
            }
        }
        Ok(())
    }
}

/// Turns `127.0.0.1:50051` or `http://host:port` into a URI tonic accepts.
pub fn normalize_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// An endpoint with the standard connect timeout, keepalive, TCP settings and windows.
#[allow(clippy::disallowed_methods)] // the one place endpoints are built
pub fn endpoint(address: &str, config: &ClientConfig) -> Result<Endpoint, tonic::transport::Error> {
    let keepalive = (!config.keepalive_interval.is_zero()).then_some(config.keepalive_interval);
    Ok(Endpoint::from_shared(normalize_uri(address))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive.unwrap_or(Duration::from_secs(3600)))
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(keepalive.is_some())
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW)))
}

/// A channel that connects on first use and reconnects after failures.
pub fn connect_lazy(address: &str, config: &ClientConfig) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address, config)?.connect_lazy())
}

/// The deadline an outgoing call gets: never later than the caller's.
pub fn deadline(default_timeout: Duration) -> Duration {
    match context::remaining() {
        // A zero timeout would mean "no deadline" to some peers; 1 ms fails fast instead.
        Some(left) => left.min(default_timeout).max(Duration::from_millis(1)),
        None => default_timeout,
    }
}

/// Wraps `message` for an outgoing call with a deadline of `timeout` (capped
/// by the caller's). [`Client`] adds the rest; this is for calls that set a
/// timeout of their own.
pub fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline(timeout));
    request
}

/// Runs `call` and ends it here with `DEADLINE_EXCEEDED` once `timeout`
/// (capped by the caller's deadline) has passed, for calls that do not go
/// through a [`Client`].
pub async fn bounded<T>(timeout: Duration, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let timeout = deadline(timeout);
    match tokio::time::timeout(timeout + LOCAL_GRACE, call).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
    }
}

/// Adds `api_key` to an outgoing request as a bearer token.
pub fn attach_key<T>(request: &mut Request<T>, api_key: &str) -> Result<(), Status> {
    let value = format!("Bearer {api_key}")
        .parse()
        .map_err(|_| Status::invalid_argument("API key contains characters not allowed in metadata"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// A channel wrapped with what every outgoing call carries. Generated clients
/// take it where they take a `Channel`: `FooServiceClient::new(client)`.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    key: Option<HeaderValue>,
    timeout: Duration,
    metrics: Option<crate::metrics::RpcMetrics>,
    untraced: bool,
}

impl Client {
    /// Calls over `channel`, each with a deadline of `timeout` unless the
    /// request sets its own (`Request::set_timeout`); both capped by the
    /// deadline of the request being handled.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Client {
            channel,
            key: None,
            timeout,
            metrics: None,
            untraced: false,
        }
    }

    /// Every call carries a trace context marked not sampled instead of the
    /// caller's, so a peer sampling by its parent (as Cairn's services do)
    /// traces none of them. For a caller whose own writes must not become
    /// telemetry: the ingest, whose writes of spans would otherwise be traced
    /// by the agents and exported back to it, for ever.
    pub fn untraced(mut self) -> Self {
        self.untraced = true;
        self
    }

    /// Counts every call in `metrics` (requests by code, latency, in flight).
    pub fn with_metrics(mut self, metrics: &crate::Metrics) -> Self {
        self.metrics = Some(metrics.rpc_client().clone());
        self
    }

    /// A lazily connecting client for `address` with `config`'s settings.
    pub fn connect_lazy(address: &str, config: &ClientConfig) -> Result<Self, tonic::transport::Error> {
        Ok(Client::new(connect_lazy(address, config)?, config.request_timeout))
    }

    /// Sends `api_key` as `authorization: Bearer <key>` on every call that
    /// does not carry one already.
    pub fn with_key(mut self, api_key: &str) -> Result<Self, Status> {
        let value = HeaderValue::try_from(format!("Bearer {api_key}"))
            .map_err(|_| Status::invalid_argument("API key contains characters not allowed in metadata"))?;
        self.key = Some(value);
        Ok(self)
    }

    /// The same client with another default timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// `grpc-timeout` as milliseconds (at most 8 digits, as the spec allows).
fn grpc_timeout_value(timeout: Duration) -> HeaderValue {
    let ms = timeout.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}m")).unwrap_or_else(|_| HeaderValue::from_static("1m"))
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

impl tower::Service<http::Request<Body>> for Client {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let headers = request.headers_mut();
        if let Some(key) = &self.key
            && !headers.contains_key(http::header::AUTHORIZATION)
        {
            headers.insert(http::header::AUTHORIZATION, key.clone());
        }
        let asked = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_grpc_timeout);
        let timeout = deadline(asked.unwrap_or(self.timeout));
        headers.insert("grpc-timeout", grpc_timeout_value(timeout));
        if self.untraced {
            propagation::inject_unsampled(headers);
        } else {
            propagation::inject_headers(headers);
        }
        // The clone is not ready; keep the one that is (tower's documented pattern).
        let clone = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, clone);
        let record = self.metrics.as_ref().map(|m| m.start(request.uri().path()));
        let call = tower::Service::call(&mut channel, request);
        Box::pin(async move {
            let response = match tokio::time::timeout(timeout + LOCAL_GRACE, call).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => return Err(error),
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")).into_http(),
            };
            Ok(match record {
                Some(record) => crate::body::observe(response, move |code| record.finish(code)),
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_ends_at_its_deadline() {
        let never = std::future::pending::<Result<(), Status>>();
        let status = bounded(Duration::from_secs(2), never).await.expect_err("never answers");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        let answered = bounded(Duration::from_secs(2), async { Ok::<_, Status>(7) }).await;
        assert_eq!(answered.ok(), Some(7));
    }

    #[test]
    fn grpc_timeout_header_is_in_milliseconds_within_the_spec() {
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout_value(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(10_000_000)), "99999999m");
    }
}
