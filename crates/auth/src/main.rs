use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// API keys: issue, list, revoke, validate; the one place secrets are checked.
#[derive(Parser)]
#[command(name = "cairn-auth", version)]
struct Cli {
    #[command(flatten)]
    config: cairn_service::ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create the first admin key (scope keys:admin) and print it, once. Refuses
    /// if an admin key was bootstrapped before.
    BootstrapAdmin {
        /// Name of the key.
        #[arg(long, default_value = "admin")]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => cairn_service::app::main("cairn-auth", &cli.config, cairn_auth::run),
        Some(Command::BootstrapAdmin { name }) => bootstrap_admin(&cli.config, &name),
    }
}

fn bootstrap_admin(args: &cairn_service::ConfigArgs, name: &str) -> ExitCode {
    let config: cairn_auth::Config = match cairn_service::config::load(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cairn-auth: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cairn-auth: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let keys = match cairn_auth::open(&config).await {
            Ok(keys) => keys,
            Err(error) => {
                eprintln!("cairn-auth: opening the key store: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        let result = keys.bootstrap_admin(name).await;
        keys.store().close().await;
        match result {
            Ok((record, text)) => {
                eprintln!(
                    "Created admin key {} (scope keys:admin). It is shown once; store it now:",
                    record.key_id
                );
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!(
                    "cairn-auth: {error}; nothing was created. Use `cairn keys create` with the existing admin key."
                );
                ExitCode::FAILURE
            }
        }
    })
}
