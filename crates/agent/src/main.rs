use std::process::ExitCode;

use clap::Parser;

/// Lease-holding partition writer: durable WAL, fenced leases, segments on object storage.
#[derive(Parser)]
#[command(name = "cairn-agent", version)]
struct Cli {
    #[command(flatten)]
    config: cairn_service::ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_service::app::main("cairn-agent", &cli.config, cairn_agent::run)
}
