//! W3C trace context on outgoing calls: the current span's context written
//! into request headers (the server side reads it back in `cairn-service`).

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes the current span's trace context into outgoing request metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(metadata)));
}

/// Writes the current span's trace context into outgoing HTTP headers.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads trace context from request headers (the server side's half).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes a fresh trace context marked not sampled (W3C `traceparent` with
/// flags `00`) into outgoing HTTP headers, replacing any caller's.
pub fn inject_unsampled(headers: &mut http::HeaderMap) {
    let trace = rand::random::<u128>().max(1);
    let span = rand::random::<u64>().max(1);
    if let Ok(value) = http::HeaderValue::try_from(format!("00-{trace:032x}-{span:016x}-00")) {
        headers.insert("traceparent", value);
        headers.remove("tracestate");
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn an_unsampled_context_is_valid_and_tells_the_peer_not_to_sample() {
        let mut headers = http::HeaderMap::new();
        headers.insert("tracestate", http::HeaderValue::from_static("vendor=1"));
        inject_unsampled(&mut headers);
        assert!(!headers.contains_key("tracestate"));
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = context.span().span_context().clone();
        assert!(span.is_valid(), "{headers:?}");
        assert!(span.is_remote());
        assert!(!span.is_sampled());
        let mut again = http::HeaderMap::new();
        inject_unsampled(&mut again);
        assert_ne!(headers["traceparent"], again["traceparent"], "each call its own trace");
    }
}
