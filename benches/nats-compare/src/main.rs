//! Publishes `--records` messages of `--record-size` bytes to a JetStream file
//! stream, closed loop (up to `--in-flight` unacknowledged publishes) or open
//! loop at `--rate`, and prints throughput and latency like `cairn-producer
//! perf --json` (latency counted from when each message was due).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Messages per second; 0 for as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged publishes allowed at once.
    #[arg(long, default_value_t = 4096)]
    in_flight: usize,
}

fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = async_nats::connect(&args.url).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH").await;
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; args.record_size]);
    // Acks arrive in publish order on one connection: a collector awaits them in
    // turn and stamps each as it lands; the bounded channel caps what is in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, PublishAckFuture)>(args.in_flight);
    let collector = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        let mut acked = 0u64;
        while let Some((due, ack)) = rx.recv().await {
            if ack.await.is_ok() {
                let _ = histogram.record((due.elapsed().as_micros() as u64).max(1));
                acked += 1;
            }
        }
        (histogram, acked)
    });
    let start = Instant::now();
    for i in 0..args.records {
        let due = if let Some(nanos) = (i * 1_000_000_000).checked_div(args.rate) {
            let due = start + Duration::from_nanos(nanos);
            if due > Instant::now() + Duration::from_micros(200) {
                pace_until(due).await;
            }
            due
        } else {
            Instant::now()
        };
        let ack = js.publish("bench", payload.clone()).await?;
        tx.send((due, ack)).await?;
    }
    drop(tx);
    let (histogram, acked) = collector.await?;
    let elapsed = start.elapsed();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let rps = acked as f64 / elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "system": "nats-jetstream",
            "records": args.records, "record_size": args.record_size, "offered_rate": args.rate,
            "acked": acked, "elapsed_s": elapsed.as_secs_f64(), "records_per_s": rps,
            "mb_per_s": rps * args.record_size as f64 / 1e6,
            "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": histogram.max() as f64 / 1000.0},
            "peak_rss_bytes": peak_rss(),
        })
    );
    Ok(())
}

/// Waits until `due`, to within tens of microseconds, as `cairn-producer perf`
/// does: the timer for all but the last millisecond (it ticks in whole
/// milliseconds), a thread sleep off the runtime for the rest.
async fn pace_until(due: Instant) {
    let fine = Duration::from_millis(1);
    if let Some(coarse) = due.checked_sub(fine)
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    let rest = due.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        tokio::task::block_in_place(|| std::thread::sleep(rest));
    }
}
