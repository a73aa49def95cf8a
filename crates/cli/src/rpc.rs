//! Channels and authenticated requests for CLI commands.

use std::time::Duration;

use anyhow::Context;
use cairn_service::{ClientConfig, auth::attach_key, client};
use clap::Args;
use tonic::transport::Channel;

/// Where to connect and as whom (shared by commands that talk to services).
#[derive(Args, Clone)]
pub struct Target {
    /// Server address.
    #[arg(long, global = true)]
    pub addr: Option<String>,
    /// API key (or CAIRN_API_KEY).
    #[arg(long, env = "CAIRN_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

/// Opens a channel to `addr`.
pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    client::endpoint(addr, &ClientConfig::default())?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// A request with a 10 s deadline, carrying `key` when there is one.
pub fn request<T>(message: T, key: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = client::request(message, Duration::from_secs(10));
    if let Some(key) = key {
        attach_key(&mut request, key)?;
    }
    Ok(request)
}
