//! The shared `main` of every service binary: load config, print it if asked,
//! start telemetry, bind the listener, run until a signal.

use std::{future::Future, process::ExitCode};

use tokio::net::TcpListener;

use crate::{
    config::{self, ConfigArgs, ServiceConfig},
    server, shutdown, telemetry,
};

/// Runs a service binary; `run` is the service's library entry point.
pub fn main<C, F, Fut>(service: &'static str, args: &ConfigArgs, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, shutdown::Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = match config::load(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{service}: {error}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config::render(&config));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service}: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match telemetry::init(service, config.telemetry()) {
            Ok(t) => t,
            Err(error) => {
                eprintln!("{service}: starting telemetry: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match server::bind(config.server().listen).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "{service} listening");
        match run(config, listener, shutdown::on_signal()).await {
            Ok(()) => {
                tracing::info!("{service} stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "{service} failed");
                ExitCode::FAILURE
            }
        }
    })
}
