//! The standard server, exercised over real loopback connections.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use cairn_proto::cairn::auth::v1::{
    AuthenticateRequest, AuthenticateResponse, Principal,
    auth_service_client::AuthServiceClient,
    auth_service_server::{AuthService, AuthServiceServer},
};
use cairn_service::{ClientConfig, Readiness, Server, ServerConfig, client, context, status};
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
                let out = client::request((), Duration::from_secs(60));
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

struct Running {
    addr: String,
    readiness: Readiness,
    gate: Arc<Semaphore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(config: ServerConfig) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let gate = Arc::new(Semaphore::new(0));
        let server = Server::new(config).add_service(AuthServiceServer::new(Probe { gate: gate.clone() }));
        let readiness = server.readiness();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            readiness,
            gate,
            stop: Some(stop),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        client::endpoint(&self.addr, &ClientConfig::default())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
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

    server.readiness.set_serving().await;
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

    assert_eq!(list_services!(v1, channel.clone()), expected);
    assert_eq!(list_services!(v1alpha, channel), expected);
}

#[tokio::test]
async fn overload_is_refused_at_once_and_retryably_while_health_stays_up() {
    let server = Running::start(ServerConfig {
        max_concurrent_requests: 2,
        ..config()
    })
    .await;
    server.readiness.set_serving().await;
    let channel = server.channel().await;
    let blocked: Vec<_> = (0..2).map(|_| tokio::spawn(call(channel.clone(), "block"))).collect();
    // Let both blocked calls take their permits.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = call(channel.clone(), "echo").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
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
        request_timeout_ms: 200,
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
    server.readiness.set_serving().await;
    let channel = server.channel().await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    let in_flight = tokio::spawn(call(channel, "slow"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
    // A watch never ends by itself; a client that keeps one open holds shutdown
    // until the grace period (tested below).
    drop(watch);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        "slow done",
        "in-flight work finished"
    );
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let mut server = Running::start(ServerConfig {
        shutdown_grace_secs: 1,
        ..config()
    })
    .await;
    let channel = server.channel().await;
    let stuck = tokio::spawn(call(channel, "stuck"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(20), server.task).await;
    assert!(stopped.is_ok(), "server exited although a request never finished");
    stuck.abort();
}
