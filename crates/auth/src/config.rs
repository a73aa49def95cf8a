//! Configuration of `cairn-auth`.

use cairn_service::{ConfigError, ServerConfig, ServiceConfig, TelemetryConfig};
use serde::{Deserialize, Serialize};

/// Everything `cairn-auth` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The gRPC server.
    pub grpc: ServerConfig,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
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
    pub rotation_grace_secs: u64,
    /// The longest grace period a rotation may ask for.
    pub max_rotation_grace_secs: u64,
    /// How often `last_used_at` is written (in one batch, not a write per request).
    pub last_used_flush_ms: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rotation_grace_secs: 24 * 3600,
            max_rotation_grace_secs: 30 * 24 * 3600,
            last_used_flush_ms: 5_000,
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.store.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "store.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(ConfigError::invalid("store.max_connections", "must be greater than 0"));
        }
        if self.keys.rotation_grace_secs > self.keys.max_rotation_grace_secs {
            return Err(ConfigError::invalid(
                "keys.rotation_grace_secs",
                "must not exceed keys.max_rotation_grace_secs",
            ));
        }
        if self.keys.last_used_flush_ms < 100 {
            return Err(ConfigError::invalid("keys.last_used_flush_ms", "must be at least 100"));
        }
        Ok(())
    }

    cairn_service::standard_sections!();
}
