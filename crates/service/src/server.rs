//! The standard gRPC server every Cairn service runs.
//!
//! It serves `grpc.health.v1` (NOT_SERVING until the service reports its
//! dependencies ready, and again from shutdown on) and reflection v1 and
//! v1alpha for exactly the services it hosts, and composes the standard
//! layers ([`crate::layers`]): metrics, load shedding, tracing, deadlines and
//! stream limits, authentication. Message and header size limits and HTTP/2
//! keepalive are the same everywhere. It runs in a [`Runtime`], which stops
//! it in its shutdown phases; a service may run several (a second listener
//! for another protocol or a private network).

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::Mutex;
use tonic::{body::Body, server::NamedService, service::RoutesBuilder, transport::server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::Service;

use crate::{
    auth::Auth,
    config::ServerConfig,
    layers::{authn, limits, limits::Limits, metrics, shed, shed::Intake, trace},
    runtime::Runtime,
};

pub use cairn_client::channel::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Builds and runs one gRPC listener of a service.
pub struct Server {
    config: ServerConfig,
    runtime: Runtime,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    auth: Option<Auth>,
}

impl Server {
    /// A server with health and reflection and no services yet, in `runtime`.
    pub fn new(config: ServerConfig, runtime: &Runtime) -> Self {
        let mut routes = RoutesBuilder::default();
        routes.add_service(runtime.readiness().health_server());
        Server {
            config,
            runtime: runtime.clone(),
            routes,
            names: Vec::new(),
            descriptor_sets: vec![cairn_proto::FILE_DESCRIPTOR_SET],
            auth: None,
        }
    }

    /// Hosts a generated gRPC service. Its health status follows [`Readiness`].
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.runtime.readiness().add_name(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Registers descriptors of services defined outside `cairn-proto`
    /// (e.g. OTLP) so reflection can describe them.
    pub fn with_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Authenticates every RPC except health and reflection per `auth`'s policy.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Starts serving on the runtime's listener `name` (bound at
    /// `grpc.listen` if the runtime has none under that name) until the
    /// runtime's Close phase. Refuses to start when auth is on and a hosted
    /// RPC has no declared access rule. Returns the address it serves on.
    pub async fn start(mut self, name: &str) -> anyhow::Result<SocketAddr> {
        if let Some(auth) = &self.auth {
            let missing = auth.policy().undeclared(&self.descriptor_sets, &self.names);
            anyhow::ensure!(
                missing.is_empty(),
                "no access rule is declared for {}; every RPC must declare one",
                missing.join(", ")
            );
        }
        // Each reflection version describes both versions, so a client of either
        // can resolve every name it lists.
        let mut reflection_v1 = tonic_reflection::server::Builder::configure().include_reflection_service(false);
        let mut reflection_v1alpha = tonic_reflection::server::Builder::configure().include_reflection_service(false);
        let standard = [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        for set in self.descriptor_sets.iter().copied().chain(standard) {
            reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
            reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
        }
        let advertised = self
            .names
            .iter()
            .copied()
            .chain([HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA]);
        for service in advertised {
            reflection_v1 = reflection_v1.with_service_name(service);
            reflection_v1alpha = reflection_v1alpha.with_service_name(service);
        }
        self.routes
            .add_service(reflection_v1.build_v1().context("building reflection v1")?);
        self.routes.add_service(
            reflection_v1alpha
                .build_v1alpha()
                .context("building reflection v1alpha")?,
        );
        // Whatever the service reported before serving is what health shows first.
        self.runtime.readiness().publish().await;

        let rt = &self.runtime;
        let listener = rt.listener(name, self.config.listen).await?;
        let addr = listener.local_addr()?;
        let config = &self.config;
        let intake = Intake::new(config.max_concurrent_requests, rt.metrics());
        rt.register_intake(intake.clone(), config.shutdown_grace);
        let keepalive = (!config.keepalive_interval.is_zero()).then_some(config.keepalive_interval);
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let layers = tower::ServiceBuilder::new()
            .layer(metrics::layer(rt.metrics().rpc_server().clone()))
            .layer(shed::layer(intake))
            .layer(trace::layer())
            .layer(limits::layer(Limits {
                request_timeout: config.request_timeout,
                stream_idle_timeout: config.stream_idle_timeout,
                stream_max_lifetime: config.stream_max_lifetime,
            }))
            .layer(authn::layer(self.auth.take()));
        #[allow(clippy::disallowed_methods)] // the one place servers are built
        let builder = tonic::transport::Server::builder();
        let router = builder
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .http2_max_header_list_size(64 * 1024)
            // Large request bodies (batches of records) would otherwise stall on
            // the 64 KiB default windows, waiting a round trip per window.
            .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
            .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
            .layer(layers)
            .add_routes(self.routes.routes());
        let closing = rt.closing_token();
        let handle = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, closing.cancelled_owned())
                .await
                .context("grpc server failed")
        });
        rt.register_server(name, handle);
        tracing::info!(listener = name, %addr, "grpc server listening");
        Ok(addr)
    }
}

/// The `grpc.health.v1` service name a liveness probe asks: SERVING while
/// the process runs, even when it is not ready (its dependencies are away).
pub const LIVENESS: &str = "liveness";

/// Reports whether the service is ready, through `grpc.health.v1`, on every
/// server of the service.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

struct ReadinessInner {
    reporter: HealthReporter,
    names: std::sync::Mutex<Vec<&'static str>>,
    // Held while statuses are written so concurrent flips land in order.
    serving: Mutex<bool>,
    // Set once shutdown begins (or a critical task failed); from then on
    // nothing reports SERVING again.
    stopped: std::sync::atomic::AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// NOT_SERVING until told otherwise.
    pub fn new() -> Self {
        Readiness {
            inner: Arc::new(ReadinessInner {
                reporter: HealthReporter::new(),
                names: std::sync::Mutex::new(Vec::new()),
                serving: Mutex::new(false),
                stopped: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The health service a server hosts, answering from these statuses.
    pub fn health_server(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.inner.reporter.clone()))
    }

    fn add_name(&self, name: &'static str) {
        let mut names = self.inner.names.lock().unwrap_or_else(|p| p.into_inner());
        if !names.contains(&name) {
            names.push(name);
        }
    }

    /// Reports SERVING for the server and every hosted service. (The health
    /// name [`LIVENESS`] is SERVING from the start until shutdown, whatever
    /// readiness says.)
    pub async fn set_serving(&self) {
        self.set(true).await;
    }

    /// Reports NOT_SERVING for the server and every hosted service.
    pub async fn set_not_serving(&self) {
        self.set(false).await;
    }

    /// Whether SERVING is reported.
    pub async fn is_serving(&self) -> bool {
        *self.inner.serving.lock().await
    }

    /// Checks `ready` every `interval` and reports the answer, until aborted
    /// or shutdown begins: health that follows a dependency going away and back.
    pub fn watch<F, Fut>(&self, interval: Duration, ready: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let readiness = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = ready().await;
                if ok != readiness.is_serving().await && !readiness.is_stopped() {
                    if ok {
                        tracing::info!("dependencies ready");
                    } else {
                        tracing::warn!("a dependency is not ready; reporting NOT_SERVING");
                    }
                }
                readiness.set(ok).await;
                tokio::time::sleep(interval).await;
            }
        })
    }

    fn is_stopped(&self) -> bool {
        self.inner.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// NOT_SERVING for good (shutdown, or a critical task failed).
    pub async fn stop(&self) {
        self.inner.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.set(false).await;
    }

    async fn set(&self, serving: bool) {
        let serving = serving && !self.is_stopped();
        let mut state = self.inner.serving.lock().await;
        *state = serving;
        self.write(serving).await;
    }

    pub(crate) async fn publish(&self) {
        let state = self.inner.serving.lock().await;
        self.write(*state).await;
    }

    async fn write(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let names: Vec<&'static str> = self.inner.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for name in std::iter::once("").chain(names) {
            self.inner.reporter.set_service_status(name, status).await;
        }
        // Alive whatever its dependencies do, until it stops: what a
        // liveness probe asks (a restart would not bring an agent back).
        let alive = if self.is_stopped() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        self.inner.reporter.set_service_status(LIVENESS, alive).await;
    }
}

/// Serves a service that has no dependencies and no RPCs of its own yet:
/// health (SERVING at once) and reflection only.
pub async fn serve_standalone(config: ServerConfig, runtime: Runtime) -> anyhow::Result<()> {
    let server = Server::new(config, &runtime);
    runtime.readiness().set_serving().await;
    server.start("grpc").await?;
    runtime.run_until_stopped().await
}
