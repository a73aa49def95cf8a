//! `cairn.ingest.v1.ReadService/ReadRecords`: a topic's records from a start
//! per partition, through the log reader. One task per partition reads
//! ahead into a small bounded channel (so a slow client slows the readers
//! instead of growing a buffer); without `follow` each partition ends at its
//! high watermark as of the call, with it the stream keeps long-polling the
//! leaders.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use cairn_log::batch::Stored;
use cairn_proto::cairn::{
    agent::v1::Header,
    ingest::v1::{
        ReadRecord, ReadRecordsRequest, ReadRecordsResponse, StartPosition, read_service_server::ReadService,
        start_position::Position,
    },
};
use cairn_service::{auth, scope::Scope};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::{
    config::ReaderConfig,
    reader::{LagShare, LogReader},
};

/// Records per message when the request says 0.
pub const DEFAULT_MAX_RECORDS: usize = 500;

/// Serves ReadRecords.
#[derive(Clone)]
pub struct Read {
    reader: Arc<LogReader>,
    config: ReaderConfig,
    auth_enabled: bool,
}

impl Read {
    /// ReadRecords over `reader`.
    pub fn new(reader: Arc<LogReader>, config: ReaderConfig, auth_enabled: bool) -> Self {
        Read {
            reader,
            config,
            auth_enabled,
        }
    }
}

/// Where one partition starts and ends.
struct Plan {
    partition: u32,
    start: u64,
    /// Records before this timestamp are skipped until the first at or after it.
    skip_before_ts: Option<i64>,
    end: u64,
}

fn record(partition: u32, s: Stored) -> ReadRecord {
    ReadRecord {
        partition,
        offset: s.offset,
        key: s.record.key,
        value: s.record.value,
        timestamp_ms: s.record.timestamp_ms,
        append_time_ms: s.append_time_ms,
        headers: s
            .record
            .headers
            .into_iter()
            .map(|(key, value)| Header { key, value })
            .collect(),
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<ReadRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ReadService for Read {
    type ReadRecordsStream = RecordStream;

    async fn read_records(&self, request: Request<ReadRecordsRequest>) -> Result<Response<RecordStream>, Status> {
        let topic = request.get_ref().topic.clone();
        if !cairn_client::names::valid_topic_name(&topic) {
            return Err(cairn_client::status::invalid_argument(
                "topic",
                cairn_client::names::TOPIC_NAME_RULE,
            ));
        }
        if self.auth_enabled {
            let scope = Scope::required("topics", "consume", Some(&topic))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            auth::principal(&request)?.require(&scope)?;
        }
        let req = request.into_inner();
        let partitions = self.reader.partitions(&topic).await?;
        let wanted: Vec<u32> = if req.partitions.is_empty() {
            partitions.iter().map(|p| p.partition).collect()
        } else {
            req.partitions.clone()
        };
        let mut plans = Vec::new();
        for p in wanted {
            let Some(info) = partitions.iter().find(|i| i.partition == p) else {
                return Err(cairn_client::status::invalid_argument(
                    "partitions",
                    format!("{topic} has no partition {p} (it has {})", partitions.len()),
                ));
            };
            let position = req
                .start
                .as_ref()
                .and_then(|s: &StartPosition| s.position)
                .unwrap_or(Position::Earliest(true));
            let (start, skip_before_ts) = match req.start_offsets.get(&p) {
                Some(&offset) => (offset.max(info.log_start), None),
                None => match position {
                    Position::Earliest(_) => (info.log_start, None),
                    Position::Latest(_) => (info.high_watermark, None),
                    Position::Offset(offset) => (offset.max(info.log_start), None),
                    Position::TimestampMs(ts) => (self.reader.offset_near_timestamp(&topic, p, ts).await?, Some(ts)),
                },
            };
            let end = if req.end_offset > 0 {
                req.end_offset
            } else if req.follow {
                u64::MAX
            } else {
                info.high_watermark
            };
            plans.push(Plan {
                partition: p,
                start,
                skip_before_ts,
                end,
            });
        }
        let max_records = match req.max_records as usize {
            0 => DEFAULT_MAX_RECORDS,
            n => n.min(10_000),
        };
        let (tx, rx) = mpsc::channel::<Result<ReadRecordsResponse, Status>>(4);
        for plan in plans {
            let (reader, topic, tx) = (self.reader.clone(), topic.clone(), tx.clone());
            let wait = if req.follow {
                self.config.follow_wait
            } else {
                std::time::Duration::ZERO
            };
            let mut lag = LagShare::new(self.reader.stats());
            tokio::spawn(async move {
                let Plan {
                    partition,
                    mut start,
                    mut skip_before_ts,
                    end,
                } = plan;
                while start < end {
                    let chunk = tokio::select! {
                        chunk = reader.read(&topic, partition, start, wait) => chunk,
                        () = tx.closed() => return,
                    };
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    if let Some(hw) = chunk.high_watermark {
                        lag.set(chunk.next, hw.min(end));
                    }
                    let caught_up = chunk.records.is_empty() && chunk.high_watermark.is_some_and(|hw| chunk.next >= hw);
                    let mut records: Vec<ReadRecord> = Vec::with_capacity(chunk.records.len());
                    for s in chunk.records {
                        if s.offset >= end {
                            break;
                        }
                        if let Some(ts) = skip_before_ts {
                            if s.record.timestamp_ms < ts {
                                continue;
                            }
                            skip_before_ts = None;
                        }
                        records.push(record(partition, s));
                    }
                    let next = chunk.next.min(end);
                    for part in records.chunks(max_records) {
                        let cursor_at = part.last().map_or(next, |r| r.offset + 1);
                        let message = ReadRecordsResponse {
                            records: part.to_vec(),
                            cursor: HashMap::from([(partition, cursor_at)]),
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    start = next.max(start);
                    if caught_up && wait.is_zero() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}
