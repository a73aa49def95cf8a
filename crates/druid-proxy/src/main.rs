use std::process::ExitCode;

use clap::Parser;

/// SQL gateway speaking Apache Druid's gRPC query protocol.
#[derive(Parser)]
#[command(name = "cairn-druid-proxy", version)]
struct Cli {
    #[command(flatten)]
    config: cairn_service::ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_service::app::main("cairn-druid-proxy", &cli.config, cairn_druid_proxy::run)
}
