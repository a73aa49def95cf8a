//! The standard server, exercised over real loopback connections.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use cairn_proto::{
    cairn::auth::v1::{
        AuthenticateRequest, AuthenticateResponse, Principal,
        auth_service_client::AuthServiceClient,
        auth_service_server::{AuthService, AuthServiceServer},
    },
    ingestion::{
        ReadSpansRequest, ReadSpansResponse,
        internal_ingestion_service_client::InternalIngestionServiceClient,
        internal_ingestion_service_server::{InternalIngestionService, InternalIngestionServiceServer},
    },
};
use cairn_service::{ClientConfig, ErrorReason, Readiness, Runtime, Server, ServerConfig, client, context, status};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// A test service whose behaviour is chosen by the `api_key` it is sent.
#[derive(Clone)]
struct Probe {
    /// `block` requests wait for a permit here.
    gate: Arc<Semaphore>,
}

#[tonic::async_trait]
impl AuthService for Probe {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let name = match request.get_ref().api_key.as_str() {
            "block" => {
                let _permit = self.gate.acquire().await.map_err(|_| Status::aborted("closed"))?;
                "released".to_owned()
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow done".to_owned()
            }
            "stuck" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never".to_owned()
            }
            "deadline" => match context::remaining() {
                Some(left) => left.as_millis().to_string(),
                None => "none".to_owned(),
            },
            "outgoing" => {
                let mut out = client::request((), Duration::from_secs(60));
                cairn_service::telemetry::inject(out.metadata_mut());
                let timeout = out
                    .metadata()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let traceparent = out
                    .metadata()
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                format!("{timeout} {traceparent}")
            }
            other => other.to_owned(),
        };
        Ok(Response::new(AuthenticateResponse {
            principal: Some(Principal {
                name,
                ..Principal::default()
            }),
        }))
    }
}

/// A streaming test service: the start key picks the stream's shape.
#[derive(Clone)]
struct Streams;

#[tonic::async_trait]
impl InternalIngestionService for Streams {
    type ReadSpansStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ReadSpansResponse, Status>> + Send>>;

    async fn read_spans(&self, request: Request<ReadSpansRequest>) -> Result<Response<Self::ReadSpansStream>, Status> {
        let shape = String::from_utf8_lossy(&request.get_ref().start_key_ulid).into_owned();
        let message = |i: u64| ReadSpansResponse {
            remaining_count: i,
            ..Default::default()
        };
        let stream: Self::ReadSpansStream = match shape.as_str() {
            // One message, then nothing, forever.
            "quiet" => Box::pin(tokio_stream::iter([Ok(message(0))]).chain(tokio_stream::pending())),
            // A message every 50 ms, forever.
            _ => Box::pin(async_stream(Duration::from_millis(50)).map(move |i| Ok(message(i)))),
        };
        Ok(Response::new(stream))
    }
}

fn async_stream(every: Duration) -> impl tokio_stream::Stream<Item = u64> {
    let mut i = 0u64;
    tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(every)).map(move |_| {
        i += 1;
        i
    })
}

struct Running {
    addr: String,
    runtime: Runtime,
    gate: Arc<Semaphore>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn start(config: ServerConfig) -> Running {
        Running::start_with(config, |s| s).await
    }

    async fn start_with(config: ServerConfig, customize: impl FnOnce(Server) -> Server) -> Running {
        let runtime = Runtime::new("test");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = runtime.provide_listener("grpc", listener).unwrap().to_string();
        let gate = Arc::new(Semaphore::new(0));
        let server = Server::new(config, &runtime)
            .add_service(AuthServiceServer::new(Probe { gate: gate.clone() }))
            .add_service(InternalIngestionServiceServer::new(Streams));
        customize(server).start("grpc").await.unwrap();
        let stopping = runtime.clone();
        let task = tokio::spawn(async move { stopping.run_until_stopped().await });
        Running {
            addr,
            runtime,
            gate,
            task: Some(task),
        }
    }

    fn readiness(&self) -> &Readiness {
        self.runtime.readiness()
    }

    async fn channel(&self) -> Channel {
        client::endpoint(&self.addr, &ClientConfig::default())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn shutdown(&self) {
        self.runtime.shutdown();
    }

    async fn stopped(&mut self) -> anyhow::Result<()> {
        self.task.take().unwrap().await.unwrap()
    }
}

/// Opens a ReadSpans stream of the given shape and reads its first message.
async fn open_stream(channel: Channel, shape: &str, timeout: Option<Duration>) -> tonic::Streaming<ReadSpansResponse> {
    let mut request = Request::new(ReadSpansRequest {
        start_key_ulid: shape.as_bytes().to_vec(),
        batch_size: 0,
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let mut stream = InternalIngestionServiceClient::new(channel)
        .read_spans(request)
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("a first message");
    stream
}

/// Reads until the stream ends; its final status and how many messages came.
async fn drain_stream(mut stream: tonic::Streaming<ReadSpansResponse>) -> (Status, u32) {
    let mut n = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (Status::ok(""), n),
            Err(status) => return (status, n),
        }
    }
}

fn config() -> ServerConfig {
    ServerConfig::on_port(0)
}

async fn health(channel: Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn call(channel: Channel, key: &str) -> Result<String, Status> {
    AuthServiceClient::new(channel)
        .authenticate(AuthenticateRequest { api_key: key.into() })
        .await
        .map(|r| r.into_inner().principal.unwrap().name)
}

#[tokio::test]
async fn health_is_not_serving_until_the_service_is_ready() {
    let server = Running::start(config()).await;
    let channel = server.channel().await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::NotServing);
    assert_eq!(
        health(channel.clone(), "cairn.auth.v1.AuthService").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        health(channel.clone(), cairn_service::server::LIVENESS).await,
        ServingStatus::Serving,
        "alive while not ready"
    );

    server.readiness().set_serving().await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    assert_eq!(
        health(channel.clone(), "cairn.auth.v1.AuthService").await,
        ServingStatus::Serving
    );

    let unknown = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// The sorted service names a reflection client of version `$v` is told.
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = stream.next().await.unwrap().unwrap().message_response
        else {
            panic!("not a list response");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

#[tokio::test]
async fn reflection_lists_exactly_the_hosted_services_in_both_versions() {
    let server = Running::start(config()).await;
    let channel = server.channel().await;
    let expected = vec![
        "cairn.auth.v1.AuthService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let mut expected = expected;
    expected.push("ingestion.InternalIngestionService");
    expected.sort();
    assert_eq!(list_services!(v1, channel.clone()), expected);
    assert_eq!(list_services!(v1alpha, channel), expected);
}

#[tokio::test]
async fn overload_is_refused_at_once_as_not_written_while_health_stays_up() {
    let server = Running::start(ServerConfig {
        max_concurrent_requests: 2,
        ..config()
    })
    .await;
    server.readiness().set_serving().await;
    let channel = server.channel().await;
    let blocked: Vec<_> = (0..2).map(|_| tokio::spawn(call(channel.clone(), "block"))).collect();
    // Let both blocked calls take their permits.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = call(channel.clone(), "echo").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "refused before it ran: not written"
    );
    assert_eq!(status::reason_of(&refused), Some(ErrorReason::Overloaded));
    assert!(status::retry_after(&refused).is_some(), "refusal carries RetryInfo");
    assert_eq!(
        health(channel.clone(), "").await,
        ServingStatus::Serving,
        "health is never shed"
    );

    server.gate.add_permits(2);
    for b in blocked {
        assert_eq!(b.await.unwrap().unwrap(), "released");
    }
    assert_eq!(
        call(channel, "echo").await.unwrap(),
        "echo",
        "capacity returns after load drops"
    );
}

#[tokio::test]
async fn handlers_see_the_callers_deadline_and_pass_it_on() {
    let server = Running::start(config()).await;
    let channel = server.channel().await;
    let mut request = Request::new(AuthenticateRequest {
        api_key: "deadline".into(),
    });
    request.set_timeout(Duration::from_millis(800));
    let left: u64 = AuthServiceClient::new(channel.clone())
        .authenticate(request)
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
        .name
        .parse()
        .unwrap();
    assert!(left > 0 && left <= 800, "remaining {left} ms");

    // An outgoing call made while handling gets the caller's shorter deadline, not its own 60 s.
    let mut request = Request::new(AuthenticateRequest {
        api_key: "outgoing".into(),
    });
    request.set_timeout(Duration::from_millis(900));
    let name = AuthServiceClient::new(channel)
        .authenticate(request)
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
        .name;
    let timeout = name.split(' ').next().unwrap();
    let micros = context::parse_grpc_timeout(timeout).unwrap();
    assert!(micros <= Duration::from_millis(900), "outgoing timeout {timeout}");
}

#[tokio::test]
async fn requests_past_the_server_timeout_are_cut_off() {
    let server = Running::start(ServerConfig {
        request_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let channel = server.channel().await;
    let error = call(channel, "stuck").await.unwrap_err();
    assert!(
        matches!(error.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{error:?}"
    );
}

#[tokio::test]
async fn trace_context_flows_from_incoming_to_outgoing_calls() {
    let _telemetry = cairn_service::telemetry::init("test", &Default::default()).unwrap();
    let server = Running::start(config()).await;
    let channel = server.channel().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = Request::new(AuthenticateRequest {
        api_key: "outgoing".into(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    let name = AuthServiceClient::new(channel)
        .authenticate(request)
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
        .name;
    let traceparent = name.split(' ').nth(1).unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a child span, not the caller's");
}

#[tokio::test]
async fn shutdown_reports_not_serving_and_drains_in_flight_requests() {
    let mut server = Running::start(config()).await;
    server.readiness().set_serving().await;
    let channel = server.channel().await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    let in_flight = tokio::spawn(call(channel.clone(), "slow"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
    assert_eq!(
        health(channel.clone(), cairn_service::server::LIVENESS).await,
        ServingStatus::NotServing,
        "not alive once stopping"
    );
    // New work is refused while the old drains, retryably and as "nothing done".
    let refused = call(channel.clone(), "echo").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(status::reason_of(&refused), Some(ErrorReason::ShuttingDown));
    drop(watch);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        "slow done",
        "in-flight work finished"
    );
    server.stopped().await.unwrap();
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let mut server = Running::start(ServerConfig {
        shutdown_grace: Duration::from_secs(1),
        ..config()
    })
    .await;
    let channel = server.channel().await;
    let stuck = tokio::spawn(call(channel.clone(), "stuck"));
    let stream = open_stream(channel, "quiet", None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(20), server.stopped()).await;
    assert!(
        stopped.is_ok(),
        "server exited although a request and a stream never finished"
    );
    stuck.abort();
    drop(stream);
}

#[tokio::test]
async fn a_server_stream_holds_its_permit_until_it_ends() {
    let server = Running::start(ServerConfig {
        max_concurrent_requests: 1,
        ..config()
    })
    .await;
    let channel = server.channel().await;
    let stream = open_stream(channel.clone(), "quiet", None).await;
    let refused = call(channel.clone(), "echo").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "the open stream counts against the limit after its headers went out"
    );
    drop(stream);
    let mut answered = Err(refused);
    for _ in 0..50 {
        answered = call(channel.clone(), "echo").await;
        if answered.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered.unwrap(), "echo", "the permit came back when the stream ended");
}

#[tokio::test]
async fn a_server_stream_ends_at_the_callers_deadline() {
    let server = Running::start(config()).await;
    let stream = open_stream(server.channel().await, "ticking", Some(Duration::from_millis(400))).await;
    let (status, n) = tokio::time::timeout(Duration::from_secs(10), drain_stream(stream))
        .await
        .expect("the stream ended by itself");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!((2..20).contains(&n), "{n} messages in 400 ms at one per 50 ms");
}

#[tokio::test]
async fn an_idle_stream_and_one_past_its_lifetime_are_ended_resumably() {
    let server = Running::start(ServerConfig {
        stream_idle_timeout: Duration::from_millis(300),
        stream_max_lifetime: Duration::from_millis(700),
        ..config()
    })
    .await;
    let channel = server.channel().await;
    let (idle, _) = drain_stream(open_stream(channel.clone(), "quiet", None).await).await;
    assert_eq!(idle.code(), Code::Unavailable);
    assert_eq!(status::reason_of(&idle), Some(ErrorReason::StreamLimit));
    assert!(idle.message().contains("idle"), "{idle:?}");
    // A busy stream is never idle, but still ends at its lifetime.
    let started = std::time::Instant::now();
    let (lifetime, n) = drain_stream(open_stream(channel, "ticking", None).await).await;
    assert_eq!(status::reason_of(&lifetime), Some(ErrorReason::StreamLimit));
    assert!(lifetime.message().contains("lifetime"), "{lifetime:?}");
    assert!(n >= 5, "{n} messages: the idle timer was reset by each");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn rpc_metrics_are_served_on_their_own_listener() {
    let server = Running::start(config()).await;
    let metrics = cairn_service::exposition::serve_metrics(&server.runtime, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let channel = server.channel().await;
    call(channel.clone(), "echo").await.unwrap();
    call(channel.clone(), "echo").await.unwrap();
    let (status, _) = drain_stream(open_stream(channel, "ticking", Some(Duration::from_millis(200))).await).await;
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let body = http_get(metrics, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("openmetrics-text"), "{body}");
    assert!(
        body.contains(
            r#"cairn_rpc_server_requests_total{service="cairn.auth.v1.AuthService",method="Authenticate",code="OK"} 2"#
        ),
        "{body}"
    );
    assert!(
        body.contains(r#"cairn_rpc_server_requests_total{service="ingestion.InternalIngestionService",method="ReadSpans",code="DEADLINE_EXCEEDED"} 1"#),
        "a stream is counted with the code it ended with: {body}"
    );
    assert!(body.contains("cairn_rpc_server_duration_seconds_bucket"), "{body}");
    assert!(!body.contains("grpc.health"), "infrastructure is not counted");
}

/// A plain HTTP/1.1 GET over a TCP socket: the response as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    socket.read_to_string(&mut out).await.unwrap();
    out
}
