//! WAL append throughput with fsync, through the partition writer (group
//! commit), beside this disk's own sequential O_DSYNC bandwidth measured in
//! the same run with `dd`; then the heap allocations the agent's produce path
//! makes per batch (checking a request as `convert::Produce::check` does, and
//! appending it durably), for a producer's frame and for the `records` form.
//!
//! Run: `cargo bench -p cairn-agent --bench wal` (env: BENCH_SECS, BENCH_DIR —
//! a directory on the disk to measure, default the system temp dir).

#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use cairn_agent::{
    batch::{BatchHeader, Compression, FrameBuilder, ProducerInfo},
    config::Limits,
    convert::Produce,
    partition::{Ack, Partition, WriterConfig},
    wal::Tenure,
};
use cairn_proto::cairn::agent::v1 as pb;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// A producer's frame of `batch` records of `record_size` bytes.
fn frame(record_size: usize, batch: usize, compression: Compression) -> Vec<u8> {
    let mut builder = FrameBuilder::with_capacity(batch * (record_size + 24));
    let value: Vec<u8> = (0..record_size).map(|i| (i % 251) as u8).collect();
    for i in 0..batch {
        builder.push(None, &value, 1_700_000_000_000 + i as i64, std::iter::empty());
    }
    let header = BatchHeader {
        base_offset: 0,
        count: builder.count(),
        producer: ProducerInfo::default(),
        append_time_ms: 0,
    };
    builder.finish(&header, compression)
}

fn open(dir: &Path) -> Arc<Partition> {
    let config = WriterConfig {
        preallocate: true,
        max_round_bytes: 8 << 20,
        queue_depth: 4096,
        wal_file_bytes: 1 << 30,
        timings: None,
        sequence_hold: std::time::Duration::from_millis(500),
        spare_idle: std::time::Duration::ZERO,
    };
    let (partition, _) = Partition::open("bench", 0, dir, &Tenure::local(0), Default::default(), config).unwrap();
    partition
        .fence
        .extend(tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 86_400));
    partition
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `dd` writing 1 MiB blocks with O_DSYNC: the disk's durable sequential bandwidth.
fn dd_baseline(dir: &Path) -> String {
    let file = dir.join("dd-baseline");
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", file.display()),
            "bs=1M",
            "count=256",
            "oflag=dsync",
        ])
        .output();
    let _ = std::fs::remove_file(&file);
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_owned(),
        Err(e) => format!("dd failed: {e}"),
    }
}

/// 4 KiB appends, each followed by fdatasync: the one-fsync-per-request ceiling.
fn fsync_floor(dir: &Path, secs: u64) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-floor");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn run_case(dir: &Path, record_size: usize, batch: usize, producers: usize, secs: u64) {
    let case = dir.join(format!("case-{record_size}-{batch}-{producers}"));
    let partition = open(&case);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let frame = frame(record_size, batch, Compression::None);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let partition = partition.clone();
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                partition
                    .append(
                        frame.clone().into(),
                        batch as u32,
                        ProducerInfo::default(),
                        Some(Ack::Durable),
                    )
                    .await
                    .unwrap();
                n += batch as u64;
            }
            n
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let fsyncs = partition.stats.fsyncs.load(Ordering::Relaxed);
    let bytes = total as f64 * (record_size as f64 + 24.0);
    println!(
        "{record_size:>6} B records, {batch:>4}/request, {producers:>3} producers: {:>10.0} records/s {:>8.1} MB/s  {:>7.0} fsyncs/s  {:>8.1} records/fsync",
        total as f64 / elapsed,
        bytes / elapsed / 1e6,
        fsyncs as f64 / elapsed,
        total as f64 / fsyncs.max(1) as f64,
    );
    drop(partition);
    let _ = std::fs::remove_dir_all(&case);
}

/// Heap allocations (and bytes) per batch on the agent's produce path:
/// requests are built beforehand, then each is checked and appended
/// durably, 16 at a time, inside the counted region.
async fn allocations(dir: &Path, form: &str, compression: Compression, record_size: usize, batch: usize) {
    const REQUESTS: usize = 2_000;
    let case = dir.join(format!("alloc-{form}-{compression:?}"));
    let partition = open(&case);
    let limits = Limits::default();
    let template = frame(record_size, batch, compression);
    let requests: Vec<pb::ProduceRequest> = (0..REQUESTS)
        .map(|_| match form {
            "frame" => pb::ProduceRequest {
                topic: "bench".into(),
                frame: template.clone().into(),
                ..Default::default()
            },
            _ => pb::ProduceRequest {
                topic: "bench".into(),
                records: (0..batch)
                    .map(|i| pb::Record {
                        key: None,
                        value: vec![7u8; record_size],
                        timestamp_ms: 1_700_000_000_000 + i as i64,
                        headers: vec![],
                    })
                    .collect(),
                ..Default::default()
            },
        })
        .collect();
    // Warm the writer (its round buffer, the WAL file) before counting.
    let warm = Produce::check(requests[0].clone(), &limits).unwrap();
    partition
        .append(warm.frame, warm.count, warm.producer, Some(Ack::Durable))
        .await
        .unwrap();
    let region = Region::new(GLOBAL);
    let mut requests = requests.into_iter();
    loop {
        let wave: Vec<_> = requests.by_ref().take(16).collect();
        if wave.is_empty() {
            break;
        }
        let appends = wave.into_iter().map(|req| {
            let p = Produce::check(req, &limits).unwrap();
            let partition = partition.clone();
            async move {
                partition
                    .append(p.frame, p.count, p.producer, Some(Ack::Durable))
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(appends).await;
    }
    let stats = region.change();
    println!(
        "allocations, {form:<7} {:<5} {record_size:>5} B x {batch:>4}/batch: {:>6.2} allocations/batch {:>7.4}/record, {:>9.0} bytes allocated/batch",
        format!("{compression:?}").to_lowercase(),
        stats.allocations as f64 / REQUESTS as f64,
        stats.allocations as f64 / (REQUESTS * batch) as f64,
        stats.bytes_allocated as f64 / REQUESTS as f64,
    );
    drop(partition);
    let _ = std::fs::remove_dir_all(&case);
}

fn main() {
    let secs = env("BENCH_SECS", 5);
    let base = std::env::var("BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = base.join(format!("cairn-wal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "# {} cores, {secs} s per case, files in {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        dir.display()
    );
    println!("disk, dd bs=1M oflag=dsync: {}", dd_baseline(&dir));
    println!(
        "disk, 4 KiB write + fdatasync each: {:.0} fsyncs/s",
        fsync_floor(&dir, secs.min(3))
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (size, batch, producers) in [
            (100, 1, 64),
            (100, 100, 16),
            (100, 1000, 8),
            (10_240, 1, 64),
            (10_240, 100, 8),
        ] {
            run_case(&dir, size, batch, producers, secs).await;
        }
        for (form, compression) in [
            ("frame", Compression::None),
            ("frame", Compression::Lz4),
            ("frame", Compression::Zstd),
            ("records", Compression::None),
        ] {
            allocations(&dir, form, compression, 100, 500).await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Arc::new(());
}
