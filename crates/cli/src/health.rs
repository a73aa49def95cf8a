//! `cairn health` and `cairn status`: gRPC health checks.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use cairn_service::{Client, ClientConfig, client};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Default local endpoints (SYSTEM.md).
const DEFAULT_ENDPOINTS: &[(&str, &str)] = &[
    ("auth", "127.0.0.1:50051"),
    ("agent", "127.0.0.1:50052"),
    ("ingest", "127.0.0.1:50053"),
    ("orchestrator", "127.0.0.1:50054"),
    ("druid-proxy", "127.0.0.1:50055"),
];

async fn ask(addr: &str, service: &str) -> anyhow::Result<ServingStatus> {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let channel = client::endpoint(addr, &config)?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = HealthClient::new(Client::new(channel, Duration::from_secs(2)))
        .check(request)
        .await?;
    Ok(response.into_inner().status())
}

/// Checks one server, retrying until SERVING or `wait` has passed.
pub async fn check(addr: &str, service: &str, wait: Duration) -> anyhow::Result<ExitCode> {
    let give_up = tokio::time::Instant::now() + wait;
    loop {
        let result = ask(addr, service).await;
        let serving = matches!(result, Ok(ServingStatus::Serving));
        if serving || tokio::time::Instant::now() >= give_up {
            return match result {
                Ok(status) => {
                    println!("{addr} {}", status.as_str_name());
                    Ok(if serving { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                }
                Err(error) => {
                    println!("{addr} UNREACHABLE ({error:#})");
                    Ok(ExitCode::FAILURE)
                }
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints every endpoint's status; exits 0 only when all are SERVING.
pub async fn status(endpoints: &[String]) -> anyhow::Result<ExitCode> {
    let endpoints: Vec<(String, String)> = if endpoints.is_empty() {
        DEFAULT_ENDPOINTS
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect()
    } else {
        endpoints
            .iter()
            .map(|e| {
                e.split_once('=')
                    .map(|(n, a)| (n.to_owned(), a.to_owned()))
                    .with_context(|| format!("`{e}` is not NAME=ADDR"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut all_serving = true;
    for (name, addr) in endpoints {
        let state = match ask(&addr, "").await {
            Ok(status) => status.as_str_name().to_owned(),
            Err(error) => format!("UNREACHABLE ({error:#})"),
        };
        all_serving &= state == "SERVING";
        println!("{name:<14} {addr:<22} {state}");
    }
    Ok(if all_serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
