//! The orchestrator under load, through real `cairn-orchestrator` and
//! `cairn-demo-worker` processes (release builds), on SQLite by default:
//!
//! 1. Latency: 4-step `linear_workflow` tasks one at a time; the time from
//!    sending CreateTask to receiving COMPLETE on StreamTaskStatus (opened
//!    right after the create answers; it replays what it missed), median and
//!    p99, and the orchestration overhead per step: (that time − the
//!    handlers' own time, from the audit) / 4.
//! 2. Throughput: many tasks in flight across several workers; step
//!    executions per second (steps reaching COMPLETE, from the
//!    orchestrator's metrics), transitions per group commit, and the
//!    orchestrator's peak RSS.
//!
//! Build first: `cargo build --release -p cairn-orchestrator -p cairn-worker`,
//! then `cargo bench -p cairn-orchestrator --bench orchestrator`. Env:
//! BENCH_TASKS (300, latency phase), BENCH_SECS (10), BENCH_WORKERS (4),
//! BENCH_CONCURRENCY (64 per worker), BENCH_IN_FLIGHT (400 tasks),
//! BENCH_DB (a postgres:// URL instead of SQLite).

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cairn_client::json::to_struct;
use cairn_proto::tasker::v1::{
    self as pb, step_service_client::StepServiceClient, task_service_client::TaskServiceClient,
};
use cairn_service::{Client, ClientConfig};
use cairn_testkit::{Process, TempDir, eventually, metric, peak_rss_mib, percentile, sqlite_url};
use serde_json::json;

fn env(name: &str, default: u64) -> u64 {
    cairn_testkit::env_or(name, default)
}

fn linear(n: u64) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: "linear_workflow".into(),
        namespace: "demo".into(),
        version: "1.0.0".into(),
        context: to_struct(&json!({"even_number": 2, "n": n})),
        ..Default::default()
    }
}

/// Creates a task and waits for its end on StreamTaskStatus.
async fn run_one(tasks: &mut TaskServiceClient<Client>, n: u64) -> (String, Duration) {
    let started = Instant::now();
    let task = tasks.create_task(linear(n)).await.unwrap().into_inner().task.unwrap();
    let mut stream = tasks
        .stream_task_status(pb::StreamTaskStatusRequest {
            task_uuid: task.task_uuid.clone(),
            include_steps: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(u) = stream.message().await.unwrap() {
        last = u.task_state;
    }
    assert_eq!(last, Some(pb::TaskState::Complete as i32));
    (task.task_uuid, started.elapsed())
}

async fn scrape_counter(orch: &Process, series: &str) -> f64 {
    metric(&orch.scrape().await, series).unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let dir = TempDir::new("bench-orch");
    let db = std::env::var("BENCH_DB").unwrap_or_else(|_| sqlite_url(dir.path()));
    let database = format!("database.url={db}");
    let mut orch = Process::start(
        "cairn-orchestrator",
        &[
            "--set",
            "auth.enabled=false",
            "--set",
            &database,
            "--set",
            "telemetry.log=info",
            "--set",
            "orchestrator.max_ready_steps=100000",
            "--set",
            "grpc.max_concurrent_streams=4096",
            "--set",
            "grpc.max_concurrent_requests=8192",
        ],
        &[],
        dir.path(),
    );
    orch.wait_serving(Duration::from_secs(60)).await;
    let workers_n = env("BENCH_WORKERS", 4);
    let concurrency = env("BENCH_CONCURRENCY", 64).to_string();
    let addr = format!("http://{}", orch.addr);
    let workers: Vec<Process> = (0..workers_n)
        .map(|i| {
            Process::start_plain(
                "cairn-demo-worker",
                &[
                    "--orchestrator",
                    &addr,
                    "--concurrency",
                    &concurrency,
                    "--name",
                    &format!("bench-{i}"),
                    "--log",
                    "warn",
                ],
                &[],
                dir.path(),
            )
        })
        .collect();
    eventually(Duration::from_secs(30), "workers to connect", || async {
        (scrape_counter(&orch, "cairn_orchestrator_workers").await == workers_n as f64).then_some(())
    })
    .await;
    let client = Client::connect_lazy(&orch.addr, &ClientConfig::default())
        .unwrap()
        .with_timeout(Duration::from_secs(120));
    let mut tasks = TaskServiceClient::new(client.clone());
    let mut steps = StepServiceClient::new(client.clone());

    // 1. One at a time.
    let count = env("BENCH_TASKS", 300);
    for n in 0..20 {
        run_one(&mut tasks, 1_000_000 + n).await; // warm-up
    }
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap());
    let mut handler_ms = 0i64;
    for n in 0..count {
        let (uuid, took) = run_one(&mut tasks, n).await;
        latencies.push(took.as_secs_f64() * 1000.0);
        if n % 50 == 0 {
            // The handlers' own time, from the audit (a sample).
            let listed = steps
                .list_steps(pb::ListStepsRequest {
                    task_uuid: uuid.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .steps;
            for s in listed {
                let audit = steps
                    .get_step_audit(pb::GetStepAuditRequest {
                        task_uuid: uuid.clone(),
                        step_uuid: s.step_uuid,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .audit_records;
                handler_ms += audit.iter().filter_map(|a| a.execution_time_ms).sum::<i64>();
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let median = percentile(&latencies, 0.5);
    let samples = count.div_ceil(50) as f64;
    let handler_per_task = handler_ms as f64 / samples;
    println!(
        "latency (4-step linear, one at a time, {count} tasks): median {median:.2} ms, p99 {:.2} ms; handler time {handler_per_task:.2} ms/task; overhead {:.2} ms/step",
        percentile(&latencies, 0.99),
        (median - handler_per_task) / 4.0
    );

    // 2. Many in flight.
    let secs = env("BENCH_SECS", 10);
    let in_flight = env("BENCH_IN_FLIGHT", 400);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(10_000_000));
    let done = Arc::new(AtomicU64::new(0));
    let completed = "cairn_orchestrator_step_transitions_total{state=\"complete\"}";
    let before = scrape_counter(&orch, completed).await;
    let commits_before = scrape_counter(&orch, "cairn_orchestrator_commit_transitions_count").await;
    let transitions_before = scrape_counter(&orch, "cairn_orchestrator_commit_transitions_sum").await;
    let started = Instant::now();
    let mut drivers = Vec::new();
    for _ in 0..in_flight {
        let (stop, next, done) = (stop.clone(), next.clone(), done.clone());
        let mut tasks = TaskServiceClient::new(client.clone());
        drivers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                run_one(&mut tasks, n).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            let scrape = orch.scrape().await;
            eprintln!(
                "  {:.1} s: {} steps complete, {} commits ({:.1} s committing), {} ready, {} in flight, {} tasks done",
                started.elapsed().as_secs_f64(),
                metric(&scrape, completed).unwrap_or(-1.0),
                metric(&scrape, "cairn_orchestrator_commit_transitions_count").unwrap_or(-1.0),
                metric(&scrape, "cairn_orchestrator_commit_seconds_sum").unwrap_or(-1.0),
                metric(&scrape, "cairn_orchestrator_ready_steps").unwrap_or(-1.0),
                metric(&scrape, "cairn_orchestrator_assignments_in_flight").unwrap_or(-1.0),
                done.load(Ordering::Relaxed)
            );
        }
    }
    let after = scrape_counter(&orch, completed).await;
    let elapsed = started.elapsed().as_secs_f64();
    let commits = scrape_counter(&orch, "cairn_orchestrator_commit_transitions_count").await - commits_before;
    let transitions = scrape_counter(&orch, "cairn_orchestrator_commit_transitions_sum").await - transitions_before;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        let log = orch.log_text();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
    }
    stop.store(true, Ordering::Relaxed);
    for d in drivers {
        d.await.unwrap();
    }
    println!(
        "throughput ({workers_n} workers x {concurrency}, {in_flight} tasks in flight, {secs} s): {:.0} step executions/s, {:.0} tasks/s, {:.0} transitions/s in {:.0} commits/s ({:.1} per commit)",
        (after - before) / elapsed,
        done.load(Ordering::Relaxed) as f64 / elapsed,
        transitions / elapsed,
        commits / elapsed,
        transitions / commits.max(1.0)
    );
    println!(
        "orchestrator peak RSS {:.1} MiB; database {}",
        peak_rss_mib(&orch),
        if db.starts_with("sqlite") { "SQLite" } else { "Postgres" }
    );
    drop(workers);
}
