//! Validations per second and latency over gRPC on this machine:
//!
//! 1. the floor: an empty unary RPC (health Check) on the same server;
//! 2. uncached: `Authenticate` with a valid key, a key-store lookup each time;
//! 3. through the caching layer: an RPC on another server whose auth layer
//!    checks the key with `cairn-auth` (cached for seconds);
//! 4. the cache alone: `RemoteAuthenticator::authenticate` without an RPC.
//!
//! Run: `cargo bench -p cairn-auth --bench validate` (env: BENCH_SECS,
//! BENCH_CONNECTIONS, BENCH_IN_FLIGHT, BENCH_POOL — key store connections). Prints one line per measurement.

#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use cairn_auth::{Config, Keys, Store, keys::KeySpec};
use cairn_proto::{
    cairn::auth::v1::{AuthenticateRequest, auth_service_client::AuthServiceClient},
    ingestion::{
        ValidateApiKeyRequest, ValidateApiKeyResponse,
        internal_auth_service_client::InternalAuthServiceClient,
        internal_auth_service_server::{InternalAuthService, InternalAuthServiceServer},
    },
};
use cairn_service::{
    ClientConfig, Server, ServerConfig,
    auth::{Access, Auth, AuthClientConfig, Authenticator, Policy, RemoteAuthenticator, attach_key},
    scope::Scope,
};
use tonic::{Request, Response, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Ok200;

#[tonic::async_trait]
impl InternalAuthService for Ok200 {
    async fn validate_api_key(
        &self,
        _: Request<ValidateApiKeyRequest>,
    ) -> Result<Response<ValidateApiKeyResponse>, Status> {
        Ok(Response::new(ValidateApiKeyResponse { is_valid: true }))
    }
}

async fn channels(addr: &str, n: u64) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        let channel = cairn_service::client::endpoint(addr, &ClientConfig::default())
            .unwrap()
            .connect()
            .await
            .unwrap();
        out.push(channel);
    }
    out
}

/// Runs `in_flight` loops of `call` for `secs`, spread over `channels`;
/// prints throughput and latency percentiles.
async fn measure<F, Fut>(label: &str, channels: &[Channel], in_flight: u64, secs: u64, call: F)
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let channel = channels[i as usize % channels.len()].clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                if !call(channel.clone()).await {
                    failures += 1;
                }
                latencies.push(start.elapsed().as_micros() as u32);
            }
            (latencies, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.unwrap();
        all.extend(l);
        failures += f;
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{label:<44} {:>9.0} req/s   p50 {:>6} us   p99 {:>6} us   failures {failures}",
        all.len() as f64 / secs as f64,
        pct(0.50),
        pct(0.99)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let secs = env("BENCH_SECS", 5);
    let conns = env("BENCH_CONNECTIONS", 4);
    let in_flight = env("BENCH_IN_FLIGHT", 64);
    let dir = cairn_testkit::TempDir::new("auth-bench");
    let pool = env("BENCH_POOL", 8) as u32;
    let store = Store::connect(&cairn_testkit::sqlite_url(dir.path()), pool)
        .await
        .unwrap();
    let keys = Keys::new(store, Default::default());
    let spec = KeySpec {
        name: "bench".into(),
        scopes: vec![Scope::parse("spans:write").unwrap()],
        expires_at: None,
    };
    let (_, key) = keys.create(&spec).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth_addr = listener.local_addr().unwrap().to_string();
    let config = Config {
        grpc: ServerConfig {
            max_concurrent_requests: 100_000,
            ..ServerConfig::on_port(0)
        },
        ..Config::default()
    };
    let auth_rt = cairn_service::Runtime::with_listener("cairn-auth", listener).unwrap();
    tokio::spawn(cairn_auth::serve(config, keys, auth_rt));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let authenticator = Arc::new(
        RemoteAuthenticator::new(AuthClientConfig {
            address: auth_addr.clone(),
            ..AuthClientConfig::default()
        })
        .unwrap(),
    );
    let policy = Policy::new().rpc(
        "/ingestion.InternalAuthService/ValidateApiKey",
        Access::Scope(Scope::required("spans", "write", None).unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let protected_addr = listener.local_addr().unwrap().to_string();
    let protected_rt = cairn_service::Runtime::with_listener("protected", listener).unwrap();
    Server::new(
        ServerConfig {
            max_concurrent_requests: 100_000,
            ..ServerConfig::on_port(0)
        },
        &protected_rt,
    )
    .add_service(InternalAuthServiceServer::new(Ok200))
    .with_auth(Auth::new(authenticator.clone(), policy))
    .start("grpc")
    .await
    .unwrap();
    protected_rt.readiness().set_serving().await;

    println!(
        "# {} cores, {conns} connections, {in_flight} requests in flight, {secs} s each",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let auth_channels = channels(&auth_addr, conns).await;
    measure(
        "empty unary RPC (health Check), the floor",
        &auth_channels,
        in_flight,
        secs,
        |ch| async move { HealthClient::new(ch).check(HealthCheckRequest::default()).await.is_ok() },
    )
    .await;

    let k = key.clone();
    measure(
        "Authenticate over gRPC, uncached (SQLite)",
        &auth_channels,
        in_flight,
        secs,
        move |ch| {
            let k = k.clone();
            async move {
                AuthServiceClient::new(ch)
                    .authenticate(AuthenticateRequest { api_key: k })
                    .await
                    .is_ok()
            }
        },
    )
    .await;

    let protected_channels = channels(&protected_addr, conns).await;
    let k = key.clone();
    measure(
        "RPC through the caching auth layer",
        &protected_channels,
        in_flight,
        secs,
        move |ch| {
            let mut request = Request::new(ValidateApiKeyRequest::default());
            attach_key(&mut request, &k).unwrap();
            async move {
                InternalAuthServiceClient::new(ch)
                    .validate_api_key(request)
                    .await
                    .is_ok()
            }
        },
    )
    .await;

    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..1000 {
            authenticator.authenticate(&key).await.unwrap();
        }
        n += 1000;
    }
    println!(
        "{:<44} {:>9.0} lookups/s (one task, no RPC)",
        "the cache alone (RemoteAuthenticator)",
        n as f64 / start.elapsed().as_secs_f64()
    );
}
