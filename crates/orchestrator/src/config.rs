//! Configuration of `cairn-orchestrator`.

use std::{path::PathBuf, time::Duration};

use cairn_service::{ConfigError, MetricsConfig, ServerConfig, ServiceConfig, TelemetryConfig, auth::AuthClientConfig};
use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;

/// Everything `cairn-orchestrator` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// tasker.v1 and the worker stream.
    pub grpc: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub metrics: MetricsConfig,
    /// How callers' API keys are checked.
    pub auth: AuthClientConfig,
    pub database: DatabaseConfig,
    pub orchestrator: OrchestratorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc: ServerConfig::on_port(50054),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::beside(50054),
            auth: AuthClientConfig::default(),
            database: DatabaseConfig::default(),
            orchestrator: OrchestratorConfig::default(),
        }
    }
}

/// The orchestrator's own database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH?mode=rwc` (embedded default) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://cairn-orchestrator.db?mode=rwc".into(),
            max_connections: 8,
        }
    }
}

/// Scheduling, leases, limits and the DLQ's thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// Templates (`*.yaml`, `*.yml`) registered at start; "" for none.
    pub templates_dir: String,
    /// How long an assignment lives without a heartbeat or result.
    #[serde(with = "cairn_service::units::duration")]
    pub lease: Duration,
    /// How often workers are told to send heartbeats (under a third of the lease).
    #[serde(with = "cairn_service::units::duration")]
    pub heartbeat_interval: Duration,
    /// Most commands (results, creates, …) written in one transaction.
    pub max_batch: usize,
    /// Ready steps waiting for workers past which CreateTask is refused
    /// (UNAVAILABLE with retry info): the ready queue's bound.
    pub max_ready_steps: usize,
    /// The pause a refused CreateTask is told to take.
    #[serde(with = "cairn_service::units::duration")]
    pub retry_after: Duration,
    /// A task this long in one unfinished state gets a STALENESS_TIMEOUT DLQ entry.
    #[serde(with = "cairn_service::units::duration")]
    pub staleness_threshold: Duration,
    /// A ready step whose handler no connected worker serves for this long
    /// gets its task a WORKER_UNAVAILABLE DLQ entry.
    #[serde(with = "cairn_service::units::duration")]
    pub no_worker_timeout: Duration,
    /// How often staleness and missing workers are checked.
    #[serde(with = "cairn_service::units::duration")]
    pub sweep_interval: Duration,
    /// Most steps one worker may declare it runs at once.
    pub max_worker_concurrency: u32,
    /// Reported by HealthService and ConfigService.
    pub environment: String,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            templates_dir: String::new(),
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            max_batch: 1024,
            max_ready_steps: 10_000,
            retry_after: Duration::from_secs(5),
            staleness_threshold: Duration::from_secs(3600),
            no_worker_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(5),
            max_worker_concurrency: 1024,
            environment: "development".into(),
        }
    }
}

impl OrchestratorConfig {
    /// The engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            lease: self.lease,
            heartbeat_interval: self.heartbeat_interval,
            max_batch: self.max_batch,
            max_ready_steps: self.max_ready_steps,
            staleness: self.staleness_threshold,
            no_worker_timeout: self.no_worker_timeout,
            sweep_interval: self.sweep_interval,
        }
    }

    /// The templates directory, if set.
    pub fn templates_dir(&self) -> Option<PathBuf> {
        (!self.templates_dir.is_empty()).then(|| PathBuf::from(&self.templates_dir))
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate("auth")?;
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be greater than 0",
            ));
        }
        let o = &self.orchestrator;
        if o.lease < Duration::from_millis(100) {
            return Err(ConfigError::invalid("orchestrator.lease", "must be at least 100ms"));
        }
        if o.heartbeat_interval.is_zero() || o.heartbeat_interval * 3 > o.lease {
            return Err(ConfigError::invalid(
                "orchestrator.heartbeat_interval",
                "must be above 0 and at most a third of orchestrator.lease",
            ));
        }
        if o.max_batch == 0 {
            return Err(ConfigError::invalid("orchestrator.max_batch", "must be greater than 0"));
        }
        if o.max_ready_steps == 0 {
            return Err(ConfigError::invalid(
                "orchestrator.max_ready_steps",
                "must be greater than 0",
            ));
        }
        if o.sweep_interval < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "orchestrator.sweep_interval",
                "must be at least 10ms",
            ));
        }
        if o.max_worker_concurrency == 0 {
            return Err(ConfigError::invalid(
                "orchestrator.max_worker_concurrency",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    cairn_service::standard_sections!();
}
