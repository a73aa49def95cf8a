//! What every Cairn service is built from: layered configuration, telemetry,
//! the standard gRPC server and client, and the pieces of status mapping.
//!
//! A service's `main.rs` calls [`app::main`] with its config type and its
//! library's `run`; `run` builds a [`server::Server`], adds its gRPC services,
//! flips [`server::Readiness`] once its dependencies answer, and serves.

pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod context;
pub mod scope;
pub mod server;
pub mod shutdown;
pub mod sql;
pub mod status;
pub mod task;
pub mod telemetry;

pub use config::{BasicConfig, ClientConfig, ConfigArgs, ConfigError, ServerConfig, ServiceConfig, TelemetryConfig};
pub use server::{Readiness, Server};
pub use shutdown::Shutdown;
