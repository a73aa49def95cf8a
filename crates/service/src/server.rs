//! The standard gRPC server every Cairn service runs.
//!
//! It serves `grpc.health.v1` (NOT_SERVING until the service reports its
//! dependencies ready, and again from SIGTERM on) and reflection v1 and v1alpha
//! for exactly the services it hosts, and applies the same limits everywhere:
//! request timeout, a global concurrency limit that refuses excess work at once,
//! message and header size limits, HTTP/2 keepalive, graceful shutdown with an
//! upper bound.

use std::{
    convert::Infallible,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    sync::{Mutex, Notify, Semaphore},
    time::Instant,
};
use tonic::{body::Body, server::NamedService, service::RoutesBuilder, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{Layer, Service};

use crate::{auth::Auth, config::ServerConfig, context, status, telemetry};

/// HTTP/2 flow-control windows for every Cairn server and client: large enough
/// that a multi-megabyte request streams without waiting for window updates.
pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// See [`HTTP2_STREAM_WINDOW`].
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
/// How long a client refused for overload is told to wait.
const OVERLOAD_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Builds and runs a service's gRPC server.
pub struct Server {
    config: ServerConfig,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    readiness: Readiness,
    descriptor_sets: Vec<&'static [u8]>,
    auth: Option<Auth>,
}

impl Server {
    /// A server with health and reflection and no services yet.
    pub fn new(config: ServerConfig) -> Self {
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health);
        Server {
            config,
            routes,
            names: Vec::new(),
            readiness: Readiness {
                inner: Arc::new(ReadinessInner {
                    reporter,
                    names: std::sync::Mutex::new(Vec::new()),
                    serving: Mutex::new(false),
                    draining: std::sync::atomic::AtomicBool::new(false),
                }),
            },
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
        if let Ok(mut names) = self.readiness.inner.names.lock() {
            names.push(S::NAME);
        }
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

    /// The handle that flips health between SERVING and NOT_SERVING.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then reports NOT_SERVING,
    /// stops accepting, and waits for in-flight requests up to the grace period.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
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
        for name in advertised {
            reflection_v1 = reflection_v1.with_service_name(name);
            reflection_v1alpha = reflection_v1alpha.with_service_name(name);
        }
        self.routes
            .add_service(reflection_v1.build_v1().context("building reflection v1")?);
        self.routes.add_service(
            reflection_v1alpha
                .build_v1alpha()
                .context("building reflection v1alpha")?,
        );

        // Whatever the service reported before serving is what health shows first.
        self.readiness.publish().await;

        let config = &self.config;
        let keepalive =
            (config.keepalive_interval_secs > 0).then(|| Duration::from_secs(config.keepalive_interval_secs));
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let middleware = MiddlewareLayer {
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
                auth: self.auth.take(),
            }),
        };
        let router = tonic::transport::Server::builder()
            .timeout(config.request_timeout())
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_timeout_secs)))
            .http2_max_header_list_size(64 * 1024)
            // Large request bodies (batches of records) would otherwise stall on
            // the 64 KiB default windows, waiting a round trip per window.
            .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
            .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
            .layer(middleware)
            .add_routes(self.routes.routes());

        let draining = Arc::new(Notify::new());
        let readiness = self.readiness.clone();
        let signal = {
            let draining = draining.clone();
            async move {
                shutdown.await;
                readiness.drain().await;
                tracing::info!("draining in-flight requests");
                draining.notify_one();
            }
        };
        let grace = config.shutdown_grace();
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::select! {
            result = serve => result.context("grpc server failed")?,
            () = async { draining.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the shutdown grace period; closing them");
            }
        }
        tracing::info!("grpc server stopped");
        Ok(())
    }
}

/// Reports whether the service is ready, through `grpc.health.v1`.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

struct ReadinessInner {
    reporter: HealthReporter,
    names: std::sync::Mutex<Vec<&'static str>>,
    // Held while statuses are written so concurrent flips land in order.
    serving: Mutex<bool>,
    // Set once shutdown begins; from then on nothing reports SERVING again.
    draining: std::sync::atomic::AtomicBool,
}

impl Readiness {
    /// Reports SERVING for the server and every hosted service.
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
                if ok != readiness.is_serving().await {
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

    async fn drain(&self) {
        self.inner.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.set(false).await;
    }

    async fn set(&self, serving: bool) {
        let serving = serving && !self.inner.draining.load(std::sync::atomic::Ordering::SeqCst);
        let mut state = self.inner.serving.lock().await;
        *state = serving;
        self.write(serving).await;
    }

    async fn publish(&self) {
        let state = self.inner.serving.lock().await;
        self.write(*state).await;
    }

    async fn write(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let names: Vec<&'static str> = match self.inner.names.lock() {
            Ok(names) => names.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for name in std::iter::once("").chain(names) {
            self.inner.reporter.set_service_status(name, status).await;
        }
    }
}

struct Shared {
    permits: Arc<Semaphore>,
    auth: Option<Auth>,
}

/// Wraps every request: load shedding, trace context, deadline, authentication.
#[derive(Clone)]
struct MiddlewareLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for MiddlewareLayer {
    type Service = Middleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
struct Middleware<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Health and reflection are never shed: a probe must see an overloaded server
/// as alive, not restart it.
fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

impl<S> Service<http::Request<Body>> for Middleware<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is not ready; keep the one that is (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        let permit = if is_infrastructure(&path) {
            None
        } else {
            match self.shared.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    tracing::debug!(rpc = %path, "overloaded, refusing request");
                    let refusal = status::unavailable("server overloaded, retry later", OVERLOAD_RETRY_AFTER);
                    return Box::pin(async move { Ok(refusal.into_http()) });
                }
            }
        };
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        let span = tracing::info_span!("grpc", otel.name = %path, otel.kind = "server", rpc = %path);
        telemetry::set_parent(&span, request.headers());
        let auth = if is_infrastructure(&path) {
            None
        } else {
            self.shared.auth.clone()
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                if let Some(auth) = auth
                    && let Err(refusal) = auth.check(&mut request).await
                {
                    return Ok(refusal.into_http());
                }
                let response = context::with_deadline(deadline, inner.call(request)).await;
                drop(permit);
                response
            },
            span,
        ))
    }
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// Serves a service that has no dependencies and no RPCs of its own yet:
/// health (SERVING at once) and reflection only.
pub async fn serve_standalone(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let server = Server::new(config);
    server.readiness().set_serving().await;
    server.serve(listener, shutdown).await
}
