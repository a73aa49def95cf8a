//! The one way Cairn services open channels to each other and stamp outgoing
//! calls with a deadline and trace context.

use std::time::Duration;

use tonic::{
    Request,
    transport::{Channel, Endpoint},
};

use crate::{config::ClientConfig, context, telemetry};

/// Turns `127.0.0.1:50051` or `http://host:port` into a URI tonic accepts.
pub fn normalize_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// An endpoint with the standard connect timeout, keepalive and TCP settings.
pub fn endpoint(address: &str, config: &ClientConfig) -> Result<Endpoint, tonic::transport::Error> {
    let keepalive = (config.keepalive_interval_secs > 0).then(|| Duration::from_secs(config.keepalive_interval_secs));
    Ok(Endpoint::from_shared(normalize_uri(address))?
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive.unwrap_or(Duration::from_secs(3600)))
        .keep_alive_timeout(Duration::from_secs(config.keepalive_timeout_secs))
        .keep_alive_while_idle(keepalive.is_some())
        .initial_stream_window_size(Some(crate::server::HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(crate::server::HTTP2_CONNECTION_WINDOW)))
}

/// A channel that connects on first use and reconnects after failures.
pub fn connect_lazy(address: &str, config: &ClientConfig) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address, config)?.connect_lazy())
}

/// Wraps `message` for an outgoing call: its deadline is `default_timeout` or the
/// time left on the request being handled, whichever is sooner, and it carries
/// the current trace context.
pub fn request<T>(message: T, default_timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline(default_timeout));
    telemetry::inject(request.metadata_mut());
    request
}

/// Runs an outgoing call and ends it here with `DEADLINE_EXCEEDED` once its
/// deadline (`timeout`, capped by the caller's) has passed. The deadline header
/// asks the server to give up, but a frozen server never answers at all; a
/// short grace lets a live server's own answer arrive first.
pub async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let timeout = deadline(timeout);
    match tokio::time::timeout(timeout + Duration::from_millis(50), call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

/// The deadline an outgoing call gets: never later than the caller's.
pub fn deadline(default_timeout: Duration) -> Duration {
    match context::remaining() {
        // A zero timeout would mean "no deadline" to some peers; 1 ms fails fast instead.
        Some(left) => left.min(default_timeout).max(Duration::from_millis(1)),
        None => default_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_ends_at_its_deadline() {
        let never = std::future::pending::<Result<(), tonic::Status>>();
        let status = bounded(Duration::from_secs(2), never).await.expect_err("never answers");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        let answered = bounded(Duration::from_secs(2), async { Ok::<_, tonic::Status>(7) }).await;
        assert_eq!(answered.ok(), Some(7));
    }
}
