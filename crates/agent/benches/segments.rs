//! Committed acks and history reads through a real `cairn-agent` process:
//!
//! 1. Committed-ack latency at a fixed offered rate (open loop: request `i` is
//!    due at `start + i / rate`, latency measured from then), with the
//!    segments created per second — on the local object store, and on an
//!    S3-compatible server when `CAIRN_TEST_MOTO` names a moto_server binary.
//! 2. History read throughput: 1,000 one-request segments written with
//!    committed acks, the WAL handed off (deleted), then every record fetched
//!    back from offset 0.
//!
//! Build the agent first: `cargo build --release -p cairn-agent`, then
//! `cargo bench -p cairn-agent --bench segments`. Env: BENCH_SECS (10),
//! BENCH_RATE (committed produce requests/s, 500), BENCH_SEGMENTS (1000),
//! BENCH_AGENT (another cairn-agent binary, e.g. an older build, to compare;
//! settings it may not know are left out).

#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cairn_agent::meta::Meta;
use cairn_proto::cairn::agent::v1 as pb;
use cairn_testkit::{Process, TempDir, cluster, percentile};

fn env(name: &str, default: u64) -> u64 {
    cairn_testkit::env_or(name, default)
}

fn agent_binary() -> PathBuf {
    std::env::var_os("BENCH_AGENT").map_or_else(|| cairn_testkit::binary("cairn-agent"), PathBuf::from)
}

struct Agent {
    process: Process,
    meta_url: String,
}

fn start_agent(dir: &TempDir, store: &[String], extra: &[&str]) -> Agent {
    let meta_url = cairn_testkit::sqlite_url(dir.path());
    let data = dir.path().join("data");
    let mut args: Vec<String> = vec![
        "--set".into(),
        "auth.enabled=false".into(),
        "--set".into(),
        format!("metadata.url={meta_url}"),
        "--set".into(),
        format!("agent.data_dir={}", data.display()),
        "--set".into(),
        "telemetry.log=warn".into(),
    ];
    args.extend(store.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = Process::start_binary(&agent_binary(), &args, &[], dir.path());
    Agent { process, meta_url }
}

async fn committed_latency(label: &str, store: &[String]) {
    let secs = env("BENCH_SECS", 10);
    let rate = env("BENCH_RATE", 500);
    let dir = TempDir::new("bench-committed");
    let mut agent = start_agent(&dir, store, &[]);
    agent.process.wait_serving(Duration::from_secs(60)).await;
    let addr = agent.process.addr.clone();
    cluster::create_topic(&addr, "c", 1).await;
    cluster::wait_leader(&addr, "c", 0).await;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let channel = cluster::channel(&addr).await;
    let start = tokio::time::Instant::now();
    let total = rate * secs;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel.clone());
        let (latencies, failures) = (latencies.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let values: Vec<String> = (0..10).map(|j| format!("{i:08}-{j}-{}", "x".repeat(88))).collect();
            let request = pb::ProduceRequest {
                topic: "c".into(),
                partition: 0,
                records: cluster::records(&values),
                ack_mode: pb::AckMode::Committed as i32,
                ..Default::default()
            };
            match client.produce(request).await {
                Ok(_) => latencies.lock().unwrap().push(due.elapsed().as_secs_f64() * 1000.0),
                Err(_) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let meta = Meta::connect(&agent.meta_url, 1).await.unwrap();
    let segments = meta.segments("c", 0).await.unwrap().len();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "committed acks, {label}: offered {rate} req/s (10 x 100 B), {:.0} acked/s, {} failed; \
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} segments = {:.1} segments/s",
        l.len() as f64 / elapsed,
        failures.load(std::sync::atomic::Ordering::Relaxed),
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0.0),
        segments,
        segments as f64 / elapsed,
    );
    agent.process.kill();
}

async fn history_read(store: &[String]) {
    let n = env("BENCH_SEGMENTS", 1000);
    let per = 100u64;
    let dir = TempDir::new("bench-history");
    // One segment per request (an older agent, which does not know the
    // setting, rolls one per committed-ack request anyway).
    let linger: &[&str] = if std::env::var_os("BENCH_AGENT").is_some() {
        &[]
    } else {
        &["--set", "agent.commit_linger=0"]
    };
    let mut agent = start_agent(&dir, store, linger);
    agent.process.wait_serving(Duration::from_secs(60)).await;
    let addr = agent.process.addr.clone();
    cluster::create_topic(&addr, "h", 1).await;
    cluster::wait_leader(&addr, "h", 0).await;
    let mut client = cluster::agent(&addr).await;
    let written = Instant::now();
    for i in 0..n {
        let values: Vec<String> = (0..per)
            .map(|j| format!("{:08}{}", i * per + j, "y".repeat(92)))
            .collect();
        client
            .produce(pb::ProduceRequest {
                topic: "h".into(),
                partition: 0,
                records: cluster::records(&values),
                ack_mode: pb::AckMode::Committed as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let write_secs = written.elapsed().as_secs_f64();
    // Hand the partition off (the WAL is deleted) and come back: every read is from segments.
    assert_eq!(agent.process.terminate(Duration::from_secs(60)).await, Some(0));
    // As if the disk were lost (an older agent keeps its WAL after a hand-off).
    let _ = std::fs::remove_dir_all(dir.path().join("data").join("wal"));
    let mut agent = start_agent(&dir, store, linger);
    agent.process.wait_serving(Duration::from_secs(60)).await;
    let addr = agent.process.addr.clone();
    cluster::wait_leader(&addr, "h", 0).await;
    let meta = Meta::connect(&agent.meta_url, 1).await.unwrap();
    let segments = meta.segments("h", 0).await.unwrap().len();
    let mut client = cluster::agent(&addr).await;
    let started = Instant::now();
    let mut offset = 0u64;
    let mut fetches = 0;
    while offset < n * per {
        let page = client
            .fetch(pb::FetchRequest {
                frames: false,
                topic: "h".into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!page.records.is_empty(), "nothing at {offset}");
        offset += page.records.len() as u64;
        fetches += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "history read: {} records from {segments} segments in {secs:.2} s = {:.0} records/s, {fetches} fetches \
         (written with committed acks at {:.0} segments/s)",
        n * per,
        (n * per) as f64 / secs,
        n as f64 / write_secs,
    );
    agent.process.kill();
}

#[tokio::main]
async fn main() {
    println!("agent binary: {}", agent_binary().display());
    let local = TempDir::new("bench-objects");
    let local_store = vec![
        "--set".to_owned(),
        format!("object_store.url=file://{}", local.path().display()),
    ];
    committed_latency("local object store", &local_store).await;
    if let Some(s3) = cairn_testkit::S3Server::start().await {
        s3.create_bucket("bench").await;
        committed_latency(
            "S3-compatible server (moto)",
            &cluster::s3_store_args("bench", &s3.endpoint),
        )
        .await;
    } else {
        println!("committed acks, S3: skipped (set CAIRN_TEST_MOTO to a moto_server binary)");
    }
    history_read(&local_store).await;
}
