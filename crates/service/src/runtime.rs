//! The service context every Cairn service runs in: its listeners, one
//! shutdown signal any number of tasks can wait on, readiness (health), the
//! metrics registry, supervised tasks, and shutdown in named phases.
//!
//! Tasks:
//! - [`Runtime::spawn_critical`]: a task the service cannot live without (a
//!   lease loop, a writer). An error or a panic is logged once with the
//!   task's name, turns health to NOT_SERVING for good and starts shutdown;
//!   [`Runtime::run_until_stopped`] then returns the failure.
//! - [`Runtime::spawn_background`]: a loop that may fail and be restarted
//!   (with backoff, counted in `cairn_task_restarts_total`).
//!
//! Shutdown runs these phases in order, each bounded, the same way in every
//! service (a service adds its own steps with [`Runtime::on_shutdown`]):
//! 1. [`Phase::StopIntake`]: health NOT_SERVING; servers refuse new calls
//!    (`UNAVAILABLE`, SHUTTING_DOWN); tasks see the shutdown token cancelled.
//! 2. [`Phase::Drain`]: wait for calls in flight (streams included) to end,
//!    up to `grpc.shutdown_grace`.
//! 3. [`Phase::Flush`]: hand work off (the agent's final segments and lease releases).
//! 4. [`Phase::Close`]: servers close their connections, tasks are awaited,
//!    stores close.

use std::{
    any::Any,
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use cairn_client::{
    Backoff, Metrics,
    metrics::prometheus_client::metrics::{counter::Counter, family::Family},
};
use futures::FutureExt;
use tokio::{net::TcpListener, task::JoinHandle};
pub use tokio_util::sync::CancellationToken;

use crate::{layers::shed::Intake, server::Readiness};

/// A shutdown phase, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// New work is refused.
    StopIntake,
    /// Work in flight finishes.
    Drain,
    /// What is held is handed on or written out.
    Flush,
    /// Connections, tasks and stores close.
    Close,
}

type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

struct Hook {
    phase: Phase,
    name: &'static str,
    bound: Duration,
    run: BoxFuture,
}

struct Inner {
    service: &'static str,
    shutdown: CancellationToken,
    closing: CancellationToken,
    readiness: Readiness,
    metrics: Metrics,
    listeners: Mutex<BTreeMap<String, TcpListener>>,
    addresses: Mutex<BTreeMap<String, SocketAddr>>,
    intakes: Mutex<Vec<Arc<Intake>>>,
    drain_bound: Mutex<Duration>,
    servers: Mutex<Vec<(String, JoinHandle<anyhow::Result<()>>)>>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    hooks: Mutex<Vec<Hook>>,
    failure: Mutex<Option<String>>,
    restarts: Family<Vec<(&'static str, &'static str)>, Counter>,
}

/// The context of one running service (cheap to clone).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("service", &self.inner.service).finish()
    }
}

/// How long the Close phase waits for servers and tasks to stop.
const CLOSE_BOUND: Duration = Duration::from_secs(3);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(s) => format!("panicked: {s}"),
        Err(panic) => match panic.downcast::<&'static str>() {
            Ok(s) => format!("panicked: {s}"),
            Err(_) => "panicked".to_owned(),
        },
    }
}

impl Runtime {
    /// A context for `service` with a fresh metrics registry.
    pub fn new(service: &'static str) -> Runtime {
        let metrics = Metrics::new();
        let restarts = Family::default();
        metrics.register(
            "cairn_task_restarts",
            "Background tasks restarted after failing, by task",
            restarts.clone(),
        );
        Runtime {
            inner: Arc::new(Inner {
                service,
                shutdown: CancellationToken::new(),
                closing: CancellationToken::new(),
                readiness: Readiness::new(),
                metrics,
                listeners: Mutex::new(BTreeMap::new()),
                addresses: Mutex::new(BTreeMap::new()),
                intakes: Mutex::new(Vec::new()),
                drain_bound: Mutex::new(Duration::from_secs(20)),
                servers: Mutex::new(Vec::new()),
                tasks: Mutex::new(Vec::new()),
                hooks: Mutex::new(Vec::new()),
                failure: Mutex::new(None),
                restarts,
            }),
        }
    }

    /// A context whose `grpc` listener is `listener` (tests and benchmarks
    /// bind `127.0.0.1:0` and run servers in-process).
    pub fn with_listener(service: &'static str, listener: TcpListener) -> anyhow::Result<Runtime> {
        let rt = Runtime::new(service);
        rt.provide_listener("grpc", listener)?;
        Ok(rt)
    }

    /// Runs [`Runtime::run_until_stopped`] on its own task.
    pub fn stop_in_background(&self) -> JoinHandle<anyhow::Result<()>> {
        let rt = self.clone();
        tokio::spawn(async move { rt.run_until_stopped().await })
    }

    /// The service's name.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// The process's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The service's health.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Cancelled when shutdown begins (a signal, [`Runtime::shutdown`], or a
    /// critical task failing). Clone it into any task that should stop then.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Cancelled in the Close phase, after draining and flushing.
    pub fn closing_token(&self) -> CancellationToken {
        self.inner.closing.clone()
    }

    /// Starts shutdown.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Hands the runtime a listener already bound (tests bind `127.0.0.1:0`).
    pub fn provide_listener(&self, name: &str, listener: TcpListener) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        lock(&self.inner.addresses).insert(name.to_owned(), addr);
        lock(&self.inner.listeners).insert(name.to_owned(), listener);
        Ok(addr)
    }

    /// Binds `addr` as listener `name` (or keeps one already provided under that name).
    pub async fn bind(&self, name: &str, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        if let Some(existing) = lock(&self.inner.addresses).get(name) {
            return Ok(*existing);
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {name} listener {addr}"))?;
        self.provide_listener(name, listener)
    }

    /// Takes listener `name` to serve on, binding `fallback` if nothing was bound under it.
    pub async fn listener(&self, name: &str, fallback: SocketAddr) -> anyhow::Result<TcpListener> {
        if let Some(listener) = lock(&self.inner.listeners).remove(name) {
            return Ok(listener);
        }
        self.bind(name, fallback).await?;
        lock(&self.inner.listeners)
            .remove(name)
            .with_context(|| format!("listener {name} was taken twice"))
    }

    /// Where each listener is bound, by name.
    pub fn addresses(&self) -> BTreeMap<String, SocketAddr> {
        lock(&self.inner.addresses).clone()
    }

    /// The address of listener `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.inner.addresses).get(name).copied()
    }

    /// Registers a server's admission state, closed and drained at shutdown.
    pub(crate) fn register_intake(&self, intake: Arc<Intake>, grace: Duration) {
        lock(&self.inner.intakes).push(intake);
        let mut bound = lock(&self.inner.drain_bound);
        *bound = grace;
    }

    /// Registers a running server, awaited in the Close phase.
    pub(crate) fn register_server(&self, name: &str, handle: JoinHandle<anyhow::Result<()>>) {
        lock(&self.inner.servers).push((name.to_owned(), handle));
    }

    fn fail(&self, task: &'static str, error: String) {
        tracing::error!(task, %error, "critical task failed; shutting down");
        {
            let mut failure = lock(&self.inner.failure);
            if failure.is_none() {
                *failure = Some(format!("critical task {task} failed: {error}"));
            }
        }
        let readiness = self.inner.readiness.clone();
        tokio::spawn(async move { readiness.stop().await });
        self.shutdown();
    }

    /// Runs `task` until it ends; an error or a panic in it shuts the service down.
    pub fn spawn_critical<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let rt = self.clone();
        let handle = tokio::spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => rt.fail(name, format!("{error:#}")),
                Err(panic) => rt.fail(name, panic_message(panic)),
            }
        });
        lock(&self.inner.tasks).push((name, handle));
    }

    /// Runs `make(shutdown)` and starts it again after `backoff` whenever it
    /// fails or panics before shutdown began; each restart is counted.
    pub fn spawn_background<F, Fut>(&self, name: &'static str, backoff: Backoff, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.shutdown_token();
        let restarts = self.inner.restarts.clone();
        let handle = tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                let outcome = AssertUnwindSafe(make(token.clone())).catch_unwind().await;
                if token.is_cancelled() {
                    return;
                }
                let error = match outcome {
                    Ok(Ok(())) => "ended before shutdown".to_owned(),
                    Ok(Err(error)) => format!("{error:#}"),
                    Err(panic) => panic_message(panic),
                };
                restarts.get_or_create(&vec![("task", name)]).inc();
                let wait = backoff.delay(attempt, None);
                attempt = attempt.saturating_add(1);
                tracing::warn!(task = name, %error, retry_in_ms = wait.as_millis() as u64, "background task failed; restarting");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = token.cancelled() => return,
                }
            }
        });
        lock(&self.inner.tasks).push((name, handle));
    }

    /// Runs `step` in `phase` of shutdown, for at most `bound`.
    pub fn on_shutdown<F>(&self, phase: Phase, name: &'static str, bound: Duration, step: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        lock(&self.inner.hooks).push(Hook {
            phase,
            name,
            bound,
            run: Box::pin(step),
        });
    }

    async fn run_hooks(&self, phase: Phase) {
        let hooks: Vec<Hook> = {
            let mut all = lock(&self.inner.hooks);
            let (now, later): (Vec<Hook>, Vec<Hook>) = all.drain(..).partition(|h| h.phase == phase);
            *all = later;
            now
        };
        for hook in hooks {
            if tokio::time::timeout(hook.bound, hook.run).await.is_err() {
                tracing::warn!(
                    step = hook.name,
                    ?phase,
                    bound_ms = hook.bound.as_millis() as u64,
                    "shutdown step did not finish in time; going on"
                );
            }
        }
    }

    /// Waits for shutdown to begin, runs the phases, and returns the failure
    /// of a critical task if one caused it.
    pub async fn run_until_stopped(&self) -> anyhow::Result<()> {
        self.inner.shutdown.cancelled().await;
        tracing::info!(service = self.inner.service, "shutting down: stop intake");
        let intakes: Vec<Arc<Intake>> = lock(&self.inner.intakes).clone();
        for intake in &intakes {
            intake.close();
        }
        self.inner.readiness.stop().await;
        self.run_hooks(Phase::StopIntake).await;

        let bound = *lock(&self.inner.drain_bound);
        let drained = tokio::time::timeout(bound, async {
            for intake in &intakes {
                intake.idle().await;
            }
        })
        .await;
        if drained.is_err() {
            let left: usize = intakes.iter().map(|i| i.in_flight()).sum();
            tracing::warn!(
                calls = left,
                grace_ms = bound.as_millis() as u64,
                "calls still in flight after the shutdown grace; they are cut at close"
            );
        } else {
            tracing::info!("drained: no call in flight");
        }
        self.run_hooks(Phase::Drain).await;
        self.run_hooks(Phase::Flush).await;

        self.inner.closing.cancel();
        let servers: Vec<_> = lock(&self.inner.servers).drain(..).collect();
        for (name, mut handle) in servers {
            match tokio::time::timeout(CLOSE_BOUND, &mut handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(server = %name, error = format!("{error:#}"), "server ended with an error")
                }
                Ok(Err(join)) => tracing::warn!(server = %name, %join, "server task failed"),
                Err(_) => {
                    tracing::warn!(server = %name, "connections outlived the close bound; dropping them");
                    handle.abort();
                }
            }
        }
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for (name, mut handle) in tasks {
            if tokio::time::timeout(CLOSE_BOUND, &mut handle).await.is_err() {
                tracing::warn!(task = name, "task did not stop in time; aborting it");
                handle.abort();
            }
        }
        self.run_hooks(Phase::Close).await;
        tracing::info!(service = self.inner.service, "stopped");
        match lock(&self.inner.failure).take() {
            Some(failure) => Err(anyhow::anyhow!(failure)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_critical_task_turns_health_off_and_stops_the_service() {
        let rt = Runtime::new("test");
        rt.readiness().set_serving().await;
        rt.spawn_critical("lease loop", async { Err(anyhow::anyhow!("disk gone")) });
        let result = tokio::time::timeout(Duration::from_secs(10), rt.run_until_stopped()).await;
        let error = result.expect("shutdown ran").expect_err("the failure is the outcome");
        assert!(format!("{error}").contains("lease loop"), "{error}");
        assert!(!rt.readiness().is_serving().await);
        rt.readiness().set_serving().await;
        assert!(!rt.readiness().is_serving().await, "never SERVING again");
    }

    #[tokio::test]
    async fn a_panicking_critical_task_is_caught_and_named() {
        let rt = Runtime::new("test");
        rt.spawn_critical("writer", async {
            if rt_panics() {
                panic!("boom");
            }
            Ok(())
        });
        let error = rt.run_until_stopped().await.expect_err("a panic is a failure");
        assert!(
            format!("{error}").contains("writer") && format!("{error}").contains("boom"),
            "{error}"
        );
    }

    fn rt_panics() -> bool {
        true
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_task_is_restarted_with_backoff_and_counted() {
        let rt = Runtime::new("test");
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = runs.clone();
        rt.spawn_background(
            "sweeper",
            Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
            move |token| {
                let runs = counted.clone();
                async move {
                    if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
                        anyhow::bail!("transient");
                    }
                    token.cancelled().await;
                    Ok(())
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "three failures, then it runs"
        );
        assert!(
            rt.metrics()
                .encode()
                .contains(r#"cairn_task_restarts_total{task="sweeper"} 3"#)
        );
        rt.shutdown();
        rt.run_until_stopped().await.expect("a clean stop");
    }

    #[tokio::test]
    async fn shutdown_steps_run_in_phase_order_and_each_is_bounded() {
        let rt = Runtime::new("test");
        let order = Arc::new(Mutex::new(Vec::new()));
        for (phase, name) in [
            (Phase::Close, "close"),
            (Phase::Flush, "flush"),
            (Phase::StopIntake, "intake"),
        ] {
            let order = order.clone();
            rt.on_shutdown(
                phase,
                name,
                Duration::from_secs(1),
                async move { lock(&order).push(name) },
            );
        }
        rt.on_shutdown(Phase::Drain, "stuck", Duration::from_millis(50), std::future::pending());
        rt.shutdown();
        tokio::time::timeout(Duration::from_secs(5), rt.run_until_stopped())
            .await
            .expect("bounded")
            .expect("clean");
        assert_eq!(*lock(&order), vec!["intake", "flush", "close"]);
    }
}
