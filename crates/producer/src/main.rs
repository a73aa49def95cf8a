use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Produce records to Cairn from stdin, or generate load.
#[derive(Parser)]
#[command(name = "cairn-producer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read records from stdin and produce them to a topic.
    Produce {
        #[arg(long)]
        topic: String,
    },
    /// Generate load and report throughput and latency.
    Perf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Produce { .. } => "produce",
        Command::Perf => "perf",
    };
    eprintln!("cairn-producer {what}: UNIMPLEMENTED: the producer client is not built yet");
    ExitCode::from(2)
}
