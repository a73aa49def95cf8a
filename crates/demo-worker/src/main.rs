//! `cairn-demo-worker`: demo handlers and their templates in namespace
//! `demo`, version `1.0.0` (linear, diamond, failing and slow workflows).
//! Every step result is a JSON object with the number under `result`.

use std::{process::ExitCode, time::Duration};

use cairn_worker::{Step, StepError, StepResult, Worker};
use clap::Parser;
use serde_json::json;

/// Runs the demo workflows' steps for cairn-orchestrator.
#[derive(Parser)]
#[command(name = "cairn-demo-worker", version)]
struct Cli {
    /// The orchestrator's gRPC address.
    #[arg(long, env = "CAIRN_ORCHESTRATOR", default_value = "http://127.0.0.1:50054")]
    orchestrator: String,
    /// API key with scope `workers:connect` (when auth is on).
    #[arg(long, env = "CAIRN_API_KEY", default_value = "")]
    api_key: String,
    /// Steps run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// Name shown in the orchestrator's logs and audits.
    #[arg(long)]
    name: Option<String>,
    /// Log filter.
    #[arg(long, env = "CAIRN_LOG", default_value = "info")]
    log: String,
}

const TEMPLATES: [&str; 4] = [
    include_str!("../templates/linear_workflow.yaml"),
    include_str!("../templates/diamond_workflow.yaml"),
    include_str!("../templates/failing_workflow.yaml"),
    include_str!("../templates/slow_workflow.yaml"),
];

/// The value a step works on: its one parent's result, or the task's
/// `even_number` for a root step.
fn input_number(step: &Step) -> Result<i64, StepError> {
    let mut parents = step.parents();
    let value = match parents.next() {
        Some((_, result)) => &result["result"],
        None => &step.context()["even_number"],
    };
    value
        .as_i64()
        .ok_or_else(|| StepError::permanent(format!("expected an integer, got {value}")).with_type("bad_input"))
}

fn result(n: Option<i64>) -> StepResult {
    n.map(|n| json!({ "result": n }))
        .ok_or_else(|| StepError::permanent("the result does not fit in 64 bits").with_type("overflow"))
}

async fn square(step: Step) -> StepResult {
    let n = input_number(&step)?;
    result(n.checked_mul(n))
}

async fn multiply(step: Step) -> StepResult {
    let mut product: i64 = 1;
    for (name, parent) in step.parents() {
        let n = parent["result"]
            .as_i64()
            .ok_or_else(|| StepError::permanent(format!("parent {name} has no integer result")))?;
        product = product
            .checked_mul(n)
            .ok_or_else(|| StepError::permanent("the result does not fit in 64 bits").with_type("overflow"))?;
    }
    result(Some(product))
}

async fn fail(step: Step) -> StepResult {
    Err(StepError::retryable(format!(
        "demo.fail always fails (attempt {} of {})",
        step.attempt, step.max_attempts
    ))
    .with_type("demo_failure"))
}

async fn sleep(step: Step) -> StepResult {
    let ms = step.context()["sleep_ms"].as_u64().unwrap_or(1000);
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
        () = step.cancelled() => return Err(StepError::permanent("cancelled").with_type("cancelled")),
    }
    let n = step.context()["even_number"].as_i64().unwrap_or(2);
    Ok(json!({ "result": n, "slept_ms": ms }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-demo-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let telemetry = cairn_service::TelemetryConfig {
            log: cli.log.clone(),
            ..Default::default()
        };
        let _telemetry = cairn_service::telemetry::init("cairn-demo-worker", &telemetry)?;
        let mut builder = Worker::builder(&cli.orchestrator)
            .api_key(cli.api_key)
            .concurrency(cli.concurrency)
            .handler("demo.square", square)
            .handler("demo.multiply", multiply)
            .handler("demo.fail", fail)
            .handler("demo.sleep", sleep);
        if let Some(name) = cli.name {
            builder = builder.name(name);
        }
        for t in TEMPLATES {
            builder = builder.template(t);
        }
        builder.build()?.run(cairn_service::shutdown::on_signal()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-demo-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
