//! `cairn`: the operator's command line.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

mod health;
mod keys;
mod read;
mod rpc;
mod tasks;
mod time;
mod topics;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Operate a Cairn platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum SpansCommand {
    /// Print spans (time, service, name, duration, status, trace id), oldest first.
    Tail(read::SpansTailArgs),
}

#[derive(Subcommand)]
enum Command {
    /// Ask one server's grpc.health.v1 for its status; exits 0 only when SERVING.
    Health {
        /// Server address, e.g. 127.0.0.1:50051.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// Service name to ask about; empty means the whole server.
        #[arg(long, default_value = "")]
        service: String,
        /// Keep asking until SERVING or this many seconds have passed.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Administer API keys (needs a key with keys:admin).
    Keys(keys::KeysArgs),
    /// Create, list, describe and delete topics on an agent.
    Topics(topics::TopicsArgs),
    /// Write stdin lines to a topic, one record per line.
    Produce(topics::ProduceArgs),
    /// Read a topic's records through cairn-ingest and print their values.
    Consume(read::ConsumeArgs),
    /// Read spans as a person wants to: `cairn spans tail`.
    Spans {
        #[command(subcommand)]
        command: SpansCommand,
    },
    /// Workflows on the orchestrator: create, get, list, cancel, watch, templates.
    Tasks(tasks::TasksArgs),
    /// The orchestrator's DLQ (an investigation tracker): list, resolve.
    Dlq(tasks::DlqArgs),
    /// Show the health of every service at its default local address.
    Status {
        /// `name=addr` pairs to check instead of the defaults.
        #[arg(long = "endpoint", value_name = "NAME=ADDR")]
        endpoints: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cairn: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Health { addr, service, wait } => health::check(&addr, &service, Duration::from_secs(wait)).await,
            Command::Status { endpoints } => health::status(&endpoints).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Topics(args) => topics::topics(args).await,
            Command::Produce(args) => topics::produce(args).await,
            Command::Consume(args) => read::consume(args).await,
            Command::Tasks(args) => tasks::tasks(args).await,
            Command::Dlq(args) => tasks::dlq(args).await,
            Command::Spans {
                command: SpansCommand::Tail(args),
            } => read::tail(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("cairn: {:?}: {}", status.code(), status.message()),
                None => eprintln!("cairn: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
