use std::process::ExitCode;

use clap::Parser;

/// Workflow orchestration: templates, tasks, workers, retries, DLQ.
#[derive(Parser)]
#[command(name = "cairn-orchestrator", version)]
struct Cli {
    #[command(flatten)]
    config: cairn_service::ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_service::app::main("cairn-orchestrator", &cli.config, cairn_orchestrator::run)
}
