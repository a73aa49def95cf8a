//! What every Cairn service is built from: layered configuration, telemetry,
//! the standard gRPC server and client, and the pieces of status mapping.
//!
//! A service's `main.rs` calls [`app::main`] with its config type and its
//! library's `run`; `run` builds a [`server::Server`], adds its gRPC services,
//! flips [`server::Readiness`] once its dependencies answer, and serves.

pub mod app;
pub mod auth;
pub mod config;
pub mod exposition;
pub mod layers;
pub mod offload;
pub mod runtime;
pub mod scope;
pub mod server;
pub mod shutdown;
pub mod sql;
pub mod telemetry;

/// Channels and the client layer (`cairn-client`).
pub use cairn_client::channel as client;
pub use cairn_client::{Backoff, Client, ClientConfig, ErrorReason, Metrics, ServiceError};
/// Shared with clients (`cairn-client`), re-exported so services name one crate.
pub use cairn_client::{backoff, context, metrics, names, status, units};
pub use config::{BasicConfig, ConfigArgs, ConfigError, MetricsConfig, ServerConfig, ServiceConfig, TelemetryConfig};
pub use runtime::{CancellationToken, Phase, Runtime};
pub use server::{Readiness, Server};
pub use shutdown::Shutdown;
