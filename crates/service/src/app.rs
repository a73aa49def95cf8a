//! The shared `main` of every service binary: load config, print it if asked,
//! start telemetry, bind the listeners, run until a signal.

use std::{future::Future, process::ExitCode};

use crate::{
    config::{self, ConfigArgs, ServiceConfig},
    exposition,
    runtime::Runtime,
    shutdown, telemetry,
};

/// Runs a service binary; `run` is the service's library entry point.
pub fn main<C, F, Fut>(service: &'static str, args: &ConfigArgs, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Runtime) -> Fut,
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
        let rt = Runtime::new(service);
        let started = async {
            let addr = rt.bind("grpc", config.server().listen).await?;
            if let Some(metrics) = config.metrics().address() {
                exposition::serve_metrics(&rt, metrics).await?;
            }
            for (name, listen) in config.listeners() {
                rt.bind(name, listen).await?;
            }
            anyhow::Ok(addr)
        };
        let addr = match started.await {
            Ok(addr) => addr,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "{service} listening");
        if let Err(error) = write_address_file(&rt) {
            tracing::error!(error = format!("{error:#}"), "cannot write the address file");
            return ExitCode::FAILURE;
        }
        let signals = rt.clone();
        tokio::spawn(async move {
            shutdown::on_signal().await;
            signals.shutdown();
        });
        match run(config, rt).await {
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

/// Where a process started with `--listen 127.0.0.1:0` says what it bound:
/// `name=host:port` lines (e.g. `grpc=127.0.0.1:40123`), written once all
/// listeners are bound, atomically. Test harnesses set it so children choose
/// their own ports and nothing races for one.
pub const ADDRESS_FILE_ENV: &str = "CAIRN_ADDRESS_FILE";

fn write_address_file(rt: &Runtime) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(ADDRESS_FILE_ENV) else {
        return Ok(());
    };
    let path = std::path::PathBuf::from(path);
    let text: String = rt
        .addresses()
        .iter()
        .map(|(name, addr)| format!("{name}={addr}\n"))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
