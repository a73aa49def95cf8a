//! Channels and authenticated requests for CLI commands.

use std::time::Duration;

use anyhow::Context;
use cairn_service::{Client, ClientConfig, auth::attach_key, client};
use clap::Args;

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

/// How long a CLI call may take before it is given up here.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` through the shared client layer: every call gets a
/// deadline, is ended here when it passes, and carries trace context.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let channel = client::endpoint(addr, &ClientConfig::default())?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(Client::new(channel, CALL_TIMEOUT))
}

/// A request carrying `key` when there is one.
pub fn request<T>(message: T, key: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        attach_key(&mut request, key)?;
    }
    Ok(request)
}
