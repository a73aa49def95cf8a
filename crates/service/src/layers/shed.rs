//! The concurrency limit and the intake switch of one server. A call beyond
//! `grpc.max_concurrent_requests` is refused before anything runs, as
//! `RESOURCE_EXHAUSTED` with reason OVERLOADED and a retry delay: the caller
//! knows nothing was written. Once shutdown starts, new calls are refused as
//! `UNAVAILABLE` with reason SHUTTING_DOWN. A call's permit is held until its
//! response body ends, so streams count for as long as they run, and the
//! drain phase can wait for every call to finish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use cairn_client::{
    ErrorReason, body,
    metrics::{
        Metrics,
        prometheus_client::metrics::{counter::Counter, family::Family},
    },
    status,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tonic::{Code, body::Body};
use tower::Service;

use super::{BoxFuture, Concern, ConcernLayer, is_infrastructure};

/// How long a caller refused for overload is told to wait.
pub const OVERLOAD_RETRY_AFTER: Duration = Duration::from_millis(100);
/// How long a caller refused during shutdown is told to wait.
pub const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One server's admission state, shared with the runtime (which closes it at
/// shutdown and waits for it to empty).
pub struct Intake {
    permits: Arc<Semaphore>,
    open: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    refused: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("open", &self.open.load(Ordering::SeqCst))
            .field("in_flight", &self.in_flight.load(Ordering::SeqCst))
            .finish()
    }
}

impl Intake {
    /// Admits up to `max` calls at once; refusals are counted in `metrics`.
    pub fn new(max: usize, metrics: &Metrics) -> Arc<Intake> {
        let intake = Arc::new(Intake {
            permits: Arc::new(Semaphore::new(max)),
            open: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            refused: Family::default(),
        });
        metrics.register(
            "cairn_rpc_server_refused",
            "Calls refused before they ran, by reason (overloaded: load shed; shutting_down)",
            intake.refused.clone(),
        );
        intake
    }

    /// Stops admitting calls (shutdown began).
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Calls admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once no admitted call is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }
}

/// One admitted call: returns its permit and its count when dropped.
struct Admission {
    intake: Arc<Intake>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.intake.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.intake.idle.notify_waiters();
        }
    }
}

/// Admission through an [`Intake`].
#[derive(Clone)]
pub struct Admit {
    intake: Arc<Intake>,
}

/// Admission through `intake`.
pub fn layer(intake: Arc<Intake>) -> ConcernLayer<Admit> {
    ConcernLayer(Admit { intake })
}

impl Concern for Admit {
    fn call<S>(&self, request: http::Request<Body>, mut inner: S) -> BoxFuture<Result<http::Response<Body>, S::Error>>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
        if is_infrastructure(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let intake = &self.intake;
        if !intake.open.load(Ordering::SeqCst) {
            intake.refuse("shutting_down");
            let refusal = status::with_reason(
                Code::Unavailable,
                "server is shutting down; nothing was done, retry",
                ErrorReason::ShuttingDown,
                Some(SHUTDOWN_RETRY_AFTER),
            );
            return Box::pin(async move { Ok(refusal.into_http()) });
        }
        let Ok(permit) = intake.permits.clone().try_acquire_owned() else {
            tracing::debug!(rpc = %request.uri().path(), "overloaded, refusing request");
            intake.refuse("overloaded");
            let refusal = status::overloaded("server overloaded; nothing was done, retry later", OVERLOAD_RETRY_AFTER);
            return Box::pin(async move { Ok(refusal.into_http()) });
        };
        intake.in_flight.fetch_add(1, Ordering::SeqCst);
        let admission = Admission {
            intake: intake.clone(),
            _permit: permit,
        };
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(body::observe(response, move |_| drop(admission)))
        })
    }
}
