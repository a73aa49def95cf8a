//! `cairn consume` and `cairn spans tail`: read the log through cairn-ingest
//! (ReadRecords and ReadSpans), so history comes from the object store and
//! the agents serve only the tail.

use std::{collections::HashMap, io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use cairn_proto::{
    cairn::ingest::v1::{
        ReadRecordsRequest, StartPosition, read_service_client::ReadServiceClient, start_position::Position,
    },
    ingestion::{ReadSpansRequest, internal_ingestion_service_client::InternalIngestionServiceClient},
};
use clap::Args;
use opentelemetry_proto::tonic::{
    common::v1::any_value,
    resource::v1::Resource,
    trace::v1::{Span, status::StatusCode},
};
use prost::Message;

use crate::{
    rpc::{Target, connect, request},
    time::{format_timestamp, parse_duration},
};

const DEFAULT_INGEST: &str = "127.0.0.1:50053";
/// A following stream is open this long per call (the server may end it
/// sooner; the command resumes from its cursor).
const FOLLOW_CALL: Duration = Duration::from_secs(3600);

/// `cairn consume …`
#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    topic: String,
    /// Partitions to read (repeatable); all when none is given.
    #[arg(long)]
    partition: Vec<u32>,
    /// `earliest`, `latest`, an offset, or a time: `time:<unix ms>` or
    /// `ago:<duration>` (e.g. `ago:15m`).
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Keep streaming records as they become durable.
    #[arg(long)]
    follow: bool,
    /// Print `partition<TAB>offset<TAB>value` instead of just the value.
    #[arg(long)]
    offsets: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn start_position(from: &str) -> anyhow::Result<Position> {
    Ok(match from {
        "earliest" => Position::Earliest(true),
        "latest" => Position::Latest(true),
        other => {
            if let Some(ms) = other.strip_prefix("time:") {
                Position::TimestampMs(ms.parse().with_context(|| format!("--from {other}: not unix ms"))?)
            } else if let Some(ago) = other.strip_prefix("ago:") {
                Position::TimestampMs(now_ms() - parse_duration(ago)?.as_millis() as i64)
            } else {
                Position::Offset(other.parse().with_context(|| {
                    format!("--from {other}: not earliest, latest, an offset, time:<ms> or ago:<duration>")
                })?)
            }
        }
    })
}

fn addr(target: &Target) -> &str {
    target.addr.as_deref().unwrap_or(DEFAULT_INGEST)
}

/// Streams records to stdout; with `--follow`, resumes from the cursor when
/// the server ends a stream (its lifetime or idle limit).
pub async fn consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let key = args.target.api_key.as_deref();
    let position = start_position(&args.from)?;
    let mut cursor: HashMap<u32, u64> = HashMap::new();
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let client = connect(addr(&args.target)).await?;
        let client = if args.follow {
            client.with_timeout(FOLLOW_CALL)
        } else {
            client
        };
        let mut reader = ReadServiceClient::new(client);
        let read = ReadRecordsRequest {
            topic: args.topic.clone(),
            partitions: args.partition.clone(),
            start: Some(StartPosition {
                position: Some(position),
            }),
            start_offsets: cursor.clone(),
            follow: args.follow,
            ..Default::default()
        };
        let mut stream = reader.read_records(request(read, key)?).await?.into_inner();
        let ended = loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    for r in &message.records {
                        if args.offsets {
                            write!(out, "{}\t{}\t", r.partition, r.offset)?;
                        }
                        out.write_all(&r.value)?;
                        out.write_all(b"\n")?;
                        printed += 1;
                        if args.max.is_some_and(|m| printed >= m) {
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    cursor.extend(message.cursor);
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        match ended {
            Some(status) if args.follow && status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(status) => return Err(status.into()),
            None if args.follow => {}
            None => break,
        }
    }
    eprintln!("read {printed} records from {}", args.topic);
    Ok(ExitCode::SUCCESS)
}

/// `cairn spans tail …`
#[derive(Args)]
pub struct SpansTailArgs {
    #[command(flatten)]
    target: Target,
    /// Only spans of this service (`service.name`).
    #[arg(long)]
    service: Option<String>,
    /// Start this far back (`30s`, `15m`, `2h`, `7d`); `all` for the oldest span.
    #[arg(long, default_value = "15m")]
    since: String,
    /// Keep polling for new spans.
    #[arg(long)]
    follow: bool,
    /// Spans per ReadSpans page.
    #[arg(long, default_value_t = 500)]
    batch: u32,
}

/// The first key of spans appended at or after `ms`.
fn key_at(ms: i64) -> Vec<u8> {
    let mut key = (u64::try_from(ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF).to_be_bytes()[2..].to_vec();
    key.resize(16, 0);
    key
}

fn service_of(resource: &Resource) -> String {
    resource
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_else(|| "unknown_service".into())
}

/// One line for a person: start time, service, name, duration, status, trace id.
pub fn span_line(service: &str, span: &Span) -> String {
    let start = span.start_time_unix_nano;
    let time = format_timestamp(&cairn_proto::Timestamp {
        seconds: (start / 1_000_000_000) as i64,
        nanos: 0,
    });
    let millis = (start / 1_000_000) % 1_000;
    let duration = span.end_time_unix_nano.saturating_sub(start) as f64 / 1e6;
    let status = match span.status.as_ref().map(|s| s.code()) {
        Some(StatusCode::Error) => "ERROR",
        Some(StatusCode::Ok) => "OK",
        _ => "-",
    };
    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}.{millis:03}Z  {service:<20} {:<40} {duration:>10.3}ms  {status:<5}  {trace}",
        time.trim_end_matches('Z'),
        span.name
    )
}

/// Prints spans from ReadSpans, oldest first.
pub async fn tail(args: SpansTailArgs) -> anyhow::Result<ExitCode> {
    let key = args.target.api_key.as_deref();
    let mut start = if args.since == "all" {
        Vec::new()
    } else {
        key_at(now_ms() - parse_duration(&args.since)?.as_millis() as i64)
    };
    let mut client = InternalIngestionServiceClient::new(connect(addr(&args.target)).await?);
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    loop {
        let page = ReadSpansRequest {
            start_key_ulid: start.clone(),
            batch_size: args.batch,
        };
        let mut stream = client.read_spans(request(page, key)?).await?.into_inner();
        let mut got = 0;
        while let Some(m) = stream.message().await? {
            start = m.key_ulid.clone();
            if m.span_bytes.is_empty() || m.resource_bytes.is_empty() {
                continue;
            }
            got += 1;
            let span = Span::decode(&m.span_bytes[..])?;
            let service = service_of(&Resource::decode(&m.resource_bytes[..])?);
            if args.service.as_ref().is_some_and(|s| *s != service) {
                continue;
            }
            writeln!(out, "{}", span_line(&service, &span))?;
            printed += 1;
        }
        out.flush()?;
        if got == 0 {
            if !args.follow {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!("{printed} spans");
    Ok(ExitCode::SUCCESS)
}
