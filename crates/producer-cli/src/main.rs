//! `cairn-producer`: produce records from stdin, or generate load and measure it.

mod perf;

use std::{
    collections::{BTreeMap, VecDeque},
    io::BufRead,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use cairn_producer::{Acks, Compression, Delivery, Producer, ProducerBuilder, ProducerConfig, ProducerRecord};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Produce records to Cairn from stdin, or generate load.
#[derive(Parser)]
#[command(name = "cairn-producer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read records from stdin and produce them to a topic; report what was delivered.
    Produce(ProduceArgs),
    /// Generate load and report throughput and latency percentiles.
    Perf(perf::PerfArgs),
}

/// How to reach the agents and how to produce (shared by both commands).
#[derive(Args, Clone)]
pub struct ProducerArgs {
    /// Agent addresses to bootstrap from (comma-separated or repeated).
    #[arg(
        long = "bootstrap",
        alias = "addr",
        env = "CAIRN_AGENT_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:50052"
    )]
    bootstrap: Vec<String>,
    /// API key (or CAIRN_API_KEY).
    #[arg(long, env = "CAIRN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// none, leader, durable or committed.
    #[arg(long, default_value = "durable")]
    acks: Acks,
    /// Turn idempotence off (retries may then duplicate).
    #[arg(long)]
    no_idempotence: bool,
    /// A stable producer name: a second instance with it fences this one.
    #[arg(long)]
    name: Option<String>,
    /// Batch size limit in bytes.
    #[arg(long, default_value_t = ProducerConfig::default().batch_bytes)]
    batch_bytes: usize,
    /// Batch size limit in records.
    #[arg(long, default_value_t = ProducerConfig::default().batch_records)]
    batch_records: usize,
    /// Milliseconds a batch waits for more records.
    #[arg(long, default_value_t = ProducerConfig::default().linger.as_millis() as u64)]
    linger_ms: u64,
    /// Batches in flight per partition.
    #[arg(long, default_value_t = ProducerConfig::default().max_in_flight)]
    max_in_flight: usize,
    /// Buffer memory in MiB.
    #[arg(long, default_value_t = ProducerConfig::default().buffer_bytes >> 20)]
    buffer_mib: usize,
    /// Compression of Produce requests: none or gzip.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Delivery timeout in milliseconds.
    #[arg(long, default_value_t = ProducerConfig::default().delivery_timeout.as_millis() as u64)]
    delivery_timeout_ms: u64,
}

impl ProducerArgs {
    fn builder(&self) -> ProducerBuilder {
        let mut b = Producer::builder()
            .bootstrap(self.bootstrap.clone())
            .acks(self.acks)
            .idempotence(!self.no_idempotence)
            .batch_bytes(self.batch_bytes)
            .batch_records(self.batch_records)
            .linger(Duration::from_millis(self.linger_ms))
            .max_in_flight(self.max_in_flight)
            .buffer_bytes(self.buffer_mib * 1024 * 1024)
            .delivery_timeout(Duration::from_millis(self.delivery_timeout_ms))
            .compression(self.compression);
        if let Some(key) = &self.api_key {
            b = b.api_key(key.clone());
        }
        if let Some(name) = &self.name {
            b = b.name(name.clone());
        }
        b
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One record per line (the newline is not part of it).
    Lines,
    /// Each record is a 4-byte big-endian length followed by that many bytes.
    LengthPrefixed,
}

#[derive(Args)]
struct ProduceArgs {
    #[arg(long)]
    topic: String,
    #[command(flatten)]
    producer: ProducerArgs,
    #[arg(long, value_enum, default_value = "lines")]
    format: Format,
    /// With lines: split each line at the first SEP into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Print each record's partition and offset on stdout.
    #[arg(long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Produce(args) => produce(args).await,
            Command::Perf(args) => perf::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the next record from stdin, or `None` at the end.
fn next_record(input: &mut impl BufRead, format: Format, line: &mut Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
    match format {
        Format::Lines => {
            line.clear();
            if input.read_until(b'\n', line)? == 0 {
                return Ok(None);
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            Ok(Some(line.clone()))
        }
        Format::LengthPrefixed => {
            let mut len = [0u8; 4];
            match input.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let mut record = vec![0u8; u32::from_be_bytes(len) as usize];
            input
                .read_exact(&mut record)
                .context("a record shorter than its length prefix")?;
            Ok(Some(record))
        }
    }
}

async fn produce(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let producer = args.producer.builder().build()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let format = args.format;
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        while let Some(record) = next_record(&mut input, format, &mut line)? {
            if tx.blocking_send(record).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut pending: VecDeque<(u64, Delivery)> = VecDeque::new();
    let mut report = Report::default();
    let mut n = 0u64;
    while let Some(bytes) = rx.recv().await {
        n += 1;
        let mut record = match (&args.key_separator, format) {
            (Some(sep), Format::Lines) => match find(&bytes, sep.as_bytes()) {
                Some(i) => ProducerRecord::new(&args.topic, bytes[i + sep.len()..].to_vec()).key(bytes[..i].to_vec()),
                None => ProducerRecord::new(&args.topic, bytes),
            },
            _ => ProducerRecord::new(&args.topic, bytes),
        };
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        match producer.send(record).await {
            Ok(d) => pending.push_back((n, d)),
            Err(e) => report.failed(n, &e),
        }
        while pending.len() > 100_000 {
            if let Some((i, d)) = pending.pop_front() {
                report.settle(i, d.await, args.verbose);
            }
        }
    }
    reader.await??;
    producer.flush().await;
    for (i, d) in pending {
        report.settle(i, d.await, args.verbose);
    }
    producer.close().await;
    report.print(&args.topic);
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Report {
    delivered: u64,
    failures: u64,
    /// Per partition: records, first and last offset.
    partitions: BTreeMap<u32, (u64, Option<u64>, Option<u64>)>,
}

impl Report {
    fn failed(&mut self, n: u64, error: &cairn_producer::ProduceError) {
        self.failures += 1;
        eprintln!("record {n}: not delivered ({:?}): {error}", error.fate());
    }

    fn settle(
        &mut self,
        n: u64,
        result: Result<cairn_producer::RecordMetadata, cairn_producer::ProduceError>,
        verbose: bool,
    ) {
        match result {
            Ok(m) => {
                self.delivered += 1;
                let entry = self.partitions.entry(m.partition).or_insert((0, None, None));
                entry.0 += 1;
                if let Some(o) = m.offset {
                    entry.1 = Some(entry.1.map_or(o, |f: u64| f.min(o)));
                    entry.2 = Some(entry.2.map_or(o, |l: u64| l.max(o)));
                }
                if verbose {
                    let offset = m.offset.map_or("-".to_owned(), |o| o.to_string());
                    println!("{n}\t{}\t{offset}", m.partition);
                }
            }
            Err(e) => self.failed(n, &e),
        }
    }

    fn print(&self, topic: &str) {
        eprintln!(
            "delivered {} records to {topic}; {} failed",
            self.delivered, self.failures
        );
        for (p, (count, first, last)) in &self.partitions {
            match (first, last) {
                (Some(f), Some(l)) => eprintln!("  {topic}/{p}: {count} records at offsets {f}..={l}"),
                _ => eprintln!("  {topic}/{p}: {count} records"),
            }
        }
    }
}
