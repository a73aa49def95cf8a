//! Configuration of `cairn-auth`.

use cairn_service::{ConfigError, MetricsConfig, ServerConfig, ServiceConfig, TelemetryConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything `cairn-auth` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The gRPC server.
    pub grpc: ServerConfig,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The metrics listener.
    pub metrics: MetricsConfig,
    /// Where keys are kept.
    pub store: StoreConfig,
    /// Key lifecycle settings.
    pub keys: KeysConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc: ServerConfig::on_port(50051),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::beside(50051),
            store: StoreConfig::default(),
            keys: KeysConfig::default(),
        }
    }
}

/// The key database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH?mode=rwc` (embedded default) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://cairn-auth.db?mode=rwc".into(),
            max_connections: 8,
        }
    }
}

/// Key lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// How long a rotated key stays valid when the request names no grace period.
    #[serde(with = "cairn_service::units::duration")]
    pub rotation_grace: Duration,
    /// The longest grace period a rotation may ask for.
    #[serde(with = "cairn_service::units::duration")]
    pub max_rotation_grace: Duration,
    /// How often `last_used_at` is written (in one batch, not a write per request).
    #[serde(with = "cairn_service::units::duration")]
    pub last_used_flush: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rotation_grace: Duration::from_secs(24 * 3600),
            max_rotation_grace: Duration::from_secs(30 * 24 * 3600),
            last_used_flush: Duration::from_secs(5),
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        cairn_service::sql::check_config("store", &self.store.url, self.store.max_connections)?;
        if self.keys.rotation_grace > self.keys.max_rotation_grace {
            return Err(ConfigError::invalid(
                "keys.rotation_grace",
                "must not exceed keys.max_rotation_grace",
            ));
        }
        if self.keys.last_used_flush < Duration::from_millis(100) {
            return Err(ConfigError::invalid("keys.last_used_flush", "must be at least 100ms"));
        }
        Ok(())
    }

    cairn_service::standard_sections!();
}
