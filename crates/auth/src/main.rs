use std::process::ExitCode;

use clap::Parser;

/// API keys: issue, list, revoke, validate; the one place secrets are checked.
#[derive(Parser)]
#[command(name = "cairn-auth", version)]
struct Cli {
    #[command(flatten)]
    config: cairn_service::ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_service::app::main("cairn-auth", &cli.config, cairn_auth::run)
}
