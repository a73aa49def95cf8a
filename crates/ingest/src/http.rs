//! OTLP/HTTP: `POST /v1/traces`, `/v1/logs`, `/v1/metrics` with binary
//! protobuf (`application/x-protobuf`) or JSON (`application/json`) bodies,
//! gzip or zstd `Content-Encoding`, answered per the OTLP/HTTP spec: 200
//! with the export response in the request's encoding (partial success
//! included), 400 for a body that does not decode, 401/403 for keys, 413 past
//! the size limit, 415 for an unknown type or encoding, 429/503 with
//! `Retry-After` for throttling, overload and outages. Error bodies are a
//! `google.rpc.Status` in the request's encoding. After decoding, the request
//! takes the same path as OTLP/gRPC ([`Exporter::export`]).

use std::{io::Read, net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use cairn_service::auth::{Access, Auth};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};
use tonic::Code;

use crate::{
    export::{ExportError, Exporter},
    otlp::{self, Prepared, Signal},
};

/// What the handlers share.
#[derive(Clone)]
pub struct Http {
    pub exporter: Exporter,
    pub auth: Option<Auth>,
}

/// The OTLP/HTTP routes.
pub fn router(state: Http) -> Router {
    // The compressed body is bounded by the same limit as the decompressed one.
    let limit = state.exporter.config().max_request_bytes;
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

struct Refusal {
    status: StatusCode,
    code: Code,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The HTTP form of a gRPC refusal (auth, overload).
    fn from_status(status: &tonic::Status) -> Self {
        let retry_after = cairn_service::status::retry_after(status);
        let http = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::ResourceExhausted if retry_after.is_some() => StatusCode::TOO_MANY_REQUESTS,
            Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal {
            status: http,
            code: status.code(),
            message: status.message().to_owned(),
            retry_after,
        }
    }

    fn into_response(self, encoding: Encoding) -> Response {
        let body = tonic_types::Status {
            code: self.code as i32,
            message: self.message,
            details: Vec::new(),
        };
        let mut response = match encoding {
            Encoding::Protobuf => (self.status, protobuf(body.encode_to_vec())).into_response(),
            Encoding::Json => (
                self.status,
                json(serde_json::json!({ "code": body.code, "message": body.message }).to_string()),
            )
                .into_response(),
        };
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

fn protobuf(body: Vec<u8>) -> ([(header::HeaderName, &'static str); 1], Vec<u8>) {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], body)
}

fn json(body: String) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn encoding_of(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        other => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            format!("unsupported content type {other:?}: send application/x-protobuf or application/json"),
        )),
    }
}

/// The body, decompressed per `Content-Encoding`, at most `limit` bytes.
fn decompress(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Vec<u8>, Refusal> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("request exceeds the {limit} byte limit once decompressed"),
        )
    };
    let corrupt = |e: std::io::Error| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            format!("bad {encoding} body: {e}"),
        )
    };
    let mut out = Vec::new();
    let read = match encoding.as_str() {
        "" | "identity" => return Ok(body.to_vec()),
        "gzip" => flate2::read::GzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        "zstd" => {
            zstd::stream::read::Decoder::new(&body[..]).and_then(|d| d.take(limit as u64 + 1).read_to_end(&mut out))
        }
        other => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                format!("unsupported content encoding {other:?}: send gzip, zstd or none"),
            ));
        }
    };
    read.map_err(corrupt)?;
    if out.len() > limit {
        return Err(too_large());
    }
    Ok(out)
}

async fn handle<R, S>(
    state: Http,
    signal: Signal,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    prepare: fn(R, &str) -> Prepared,
    respond: fn(Option<(i64, String)>) -> S,
) -> Response
where
    R: Message + Default + DeserializeOwned,
    S: Message + Serialize,
{
    let encoding = match encoding_of(&headers) {
        Ok(e) => e,
        Err(refusal) => return refusal.into_response(Encoding::Protobuf),
    };
    let result = async {
        if let Some(auth) = &state.auth {
            auth.check_access(&headers, Some(peer.ip()), &Access::Scope(signal.scope()))
                .await
                .map_err(|s| Refusal::from_status(&s))?;
        }
        let raw = decompress(&headers, body, state.exporter.config().max_request_bytes)?;
        let bad = |e: String| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!("body does not decode: {e}"),
            )
        };
        let request = match encoding {
            Encoding::Protobuf => R::decode(&raw[..]).map_err(|e| bad(e.to_string()))?,
            Encoding::Json if raw.is_empty() => R::default(),
            Encoding::Json => serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?,
        };
        state
            .exporter
            .export(signal, request, prepare)
            .await
            .map_err(|e| match e {
                ExportError::TooLarge { .. } => {
                    Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted, e.to_string())
                }
                other => Refusal::from_status(&other.status(state.exporter.config().retry_after)),
            })
    }
    .await;
    match result {
        Ok(stored) => {
            let body = respond(stored.partial);
            match encoding {
                Encoding::Protobuf => (StatusCode::OK, protobuf(body.encode_to_vec())).into_response(),
                Encoding::Json => match serde_json::to_string(&body) {
                    Ok(text) => (StatusCode::OK, json(text)).into_response(),
                    Err(e) => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, e.to_string())
                        .into_response(encoding),
                },
            }
        }
        Err(refusal) => refusal.into_response(encoding),
    }
}

async fn traces(
    State(state): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle::<ExportTraceServiceRequest, _>(
        state,
        Signal::Traces,
        peer,
        headers,
        body,
        otlp::traces,
        otlp::trace_response,
    )
    .await
}

async fn logs(
    State(state): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle::<ExportLogsServiceRequest, _>(
        state,
        Signal::Logs,
        peer,
        headers,
        body,
        otlp::logs,
        otlp::logs_response,
    )
    .await
}

async fn metrics(
    State(state): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle::<ExportMetricsServiceRequest, _>(
        state,
        Signal::Metrics,
        peer,
        headers,
        body,
        otlp::metrics,
        otlp::metrics_response,
    )
    .await
}
