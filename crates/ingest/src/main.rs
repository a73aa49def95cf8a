use std::process::ExitCode;

use clap::Parser;

/// OTLP span receiver and streaming log reader.
#[derive(Parser)]
#[command(name = "cairn-ingest", version)]
struct Cli {
    #[command(flatten)]
    config: cairn_service::ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_service::app::main("cairn-ingest", &cli.config, cairn_ingest::run)
}
