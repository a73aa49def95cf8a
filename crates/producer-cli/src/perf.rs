//! `cairn-producer perf`: a load generator. Open loop when `--rate` is set:
//! record `i` is due at `start + i / rate`, and its latency is measured from
//! when it was due (not from when it was sent), so a stalled producer shows up
//! in the percentiles instead of hiding behind a slower offered load.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use cairn_client::{Client, ClientConfig};
use cairn_producer::{Delivery, ProduceError, ProducerRecord};
use cairn_proto::cairn::agent::v1::{self as pb, topic_service_client::TopicServiceClient};
use clap::Args;
use hdrhistogram::Histogram;

use crate::ProducerArgs;

#[derive(Args)]
pub struct PerfArgs {
    #[arg(long, default_value = "perf")]
    topic: String,
    /// Records to send.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Offered load in records per second; 0 sends as fast as the producer takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Create the topic with this many partitions when it does not exist,
    /// and send one warm-up record to each before the clock starts.
    #[arg(long)]
    partitions: Option<u32>,
    /// Keyed records over this many distinct keys (0: keyless, sticky partitioning).
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1)]
    progress_secs: u64,
    #[command(flatten)]
    producer: ProducerArgs,
}

async fn ensure_topic(args: &PerfArgs, partitions: u32) -> anyhow::Result<()> {
    let address = args.producer.bootstrap.first().context("no bootstrap address")?;
    let mut client = Client::connect_lazy(address, &ClientConfig::default())?.with_timeout(Duration::from_secs(10));
    if let Some(key) = &args.producer.api_key {
        client = client.with_key(key)?;
    }
    let request = pb::CreateTopicRequest {
        name: args.topic.clone(),
        config: Some(pb::TopicConfig {
            partitions,
            ..Default::default()
        }),
    };
    match TopicServiceClient::new(client).create_topic(request).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(anyhow::anyhow!("creating topic {}: {}", args.topic, s.message())),
    }
}

/// Peak resident memory of this process, in bytes (Linux).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Waits until `due`, to within tens of microseconds. Tokio's timer ticks in
/// whole milliseconds and rounds up, which would make every paced record up
/// to a millisecond late before it is even sent: the coarse part of the wait
/// goes to the timer, the last millisecond to a thread sleep off the runtime.
async fn pace_until(due: Instant) {
    let fine = Duration::from_millis(1);
    if let Some(coarse) = due.checked_sub(fine)
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(tokio::time::Instant::from_std(coarse)).await;
    }
    let rest = due.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        tokio::task::block_in_place(|| std::thread::sleep(rest));
    }
}

struct Tally {
    histogram: Histogram<u64>,
    acked: u64,
    failed: u64,
    first_error: Option<String>,
}

pub async fn run(args: PerfArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = args.partitions {
        ensure_topic(&args, p).await?;
    }
    let producer = args.producer.builder().build()?;
    let value = Bytes::from(vec![b'x'; args.record_size]);
    if let Some(partitions) = args.partitions {
        // One record per partition before the clock starts: a topic just
        // created has no leaders yet, and the first request to each
        // partition pays for finding its leader and opening a connection.
        let mut warmups = Vec::new();
        for p in 0..partitions {
            warmups.push(
                producer
                    .send(ProducerRecord::new(&args.topic, value.clone()).partition(p))
                    .await?,
            );
        }
        for delivery in warmups {
            delivery.await.context("warm-up record")?;
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Delivery)>();
    let acked = Arc::new(AtomicU64::new(0));
    // The worst latency since the last progress line, in microseconds.
    let worst = Arc::new(AtomicU64::new(0));
    let collector = {
        let acked = acked.clone();
        let worst = worst.clone();
        tokio::spawn(async move {
            let mut tally = Tally {
                histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
                acked: 0,
                failed: 0,
                first_error: None,
            };
            // Deliveries of one partition complete in order, so awaiting them in
            // sending order costs at most the skew between partitions.
            while let Some((due, delivery)) = rx.recv().await {
                match delivery.await {
                    Ok(_) => {
                        tally.acked += 1;
                        let micros = due.elapsed().as_micros() as u64;
                        let _ = tally.histogram.record(micros.max(1));
                        acked.fetch_add(1, Ordering::Relaxed);
                        worst.fetch_max(micros, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.failed += 1;
                        tally.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            tally
        })
    };
    let start = Instant::now();
    let mut last_progress = start;
    let mut last_acked = 0;
    let mut send_errors = 0u64;
    let mut first_send_error: Option<ProduceError> = None;
    for i in 0..args.records {
        let due = if let Some(nanos) = (i * 1_000_000_000).checked_div(args.rate) {
            let due = start + Duration::from_nanos(nanos);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                pace_until(due).await;
            }
            due
        } else {
            Instant::now()
        };
        let mut record = ProducerRecord::new(&args.topic, value.clone());
        if args.keys > 0 {
            record = record.key(format!("key-{}", i % args.keys));
        }
        match producer.send(record).await {
            Ok(d) => {
                let _ = tx.send((due, d));
            }
            Err(e) => {
                send_errors += 1;
                first_send_error.get_or_insert(e);
            }
        }
        if args.progress_secs > 0 && i % 1024 == 0 && last_progress.elapsed() >= Duration::from_secs(args.progress_secs)
        {
            let now_acked = acked.load(Ordering::Relaxed);
            let rate = (now_acked - last_acked) as f64 / last_progress.elapsed().as_secs_f64();
            eprintln!(
                "{:>6.1}s  sent {:>10}  acked {:>10}  {:>10.0} records/s  worst latency {:>8.2} ms",
                start.elapsed().as_secs_f64(),
                i + 1,
                now_acked,
                rate,
                worst.swap(0, Ordering::Relaxed) as f64 / 1000.0
            );
            last_progress = Instant::now();
            last_acked = now_acked;
        }
    }
    drop(tx);
    producer.flush().await;
    let tally = collector.await?;
    let elapsed = start.elapsed();
    producer.close().await;
    let h = &tally.histogram;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rps = tally.acked as f64 / elapsed.as_secs_f64();
    let result = serde_json::json!({
        "topic": args.topic,
        "records": args.records,
        "record_size": args.record_size,
        "offered_rate": args.rate,
        "acks": format!("{:?}", args.producer.acks).to_lowercase(),
        "acked": tally.acked,
        "warmup_records": args.partitions.unwrap_or(0),
        "failed": tally.failed + send_errors,
        "elapsed_s": elapsed.as_secs_f64(),
        "records_per_s": rps,
        "mb_per_s": rps * args.record_size as f64 / 1e6,
        "latency_ms": {
            "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0,
        },
        "peak_rss_bytes": peak_rss(),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} records ({} B) in {:.2}s: {:.0} records/s, {:.1} MB/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; peak RSS {} MiB; {} failed",
            tally.acked,
            args.record_size,
            elapsed.as_secs_f64(),
            rps,
            rps * args.record_size as f64 / 1e6,
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            peak_rss().unwrap_or(0) / (1024 * 1024),
            tally.failed + send_errors,
        );
    }
    if let Some(e) = first_send_error.map(|e| e.to_string()).or(tally.first_error) {
        eprintln!("first error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
