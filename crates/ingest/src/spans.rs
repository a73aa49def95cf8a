//! Junjo's `ReadSpans` (WIRE.md §1): spans of the whole spans topic in one
//! order, paged by a 16-byte key — 48-bit append time (ms), 16-bit
//! partition, 64-bit offset, big-endian — so bytewise order is (append
//! time, partition, offset).
//!
//! The merge over partitions emits a span only when no partition can still
//! produce a smaller key: a partition with buffered records is bounded by
//! its next record; one read up to its leader's high watermark by the time
//! floor the leader reported (no record it appends later has an earlier
//! append time); one that could not be read blocks everything after its
//! position. So a resumed reader never skips a span that became durable
//! after it moved on, and an idle partition does not stall readers (its
//! floor follows the leader's clock).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_log::batch::Stored;
use cairn_proto::{
    cairn::ingest::v1::telemetry_record::Item,
    ingestion::{ReadSpansRequest, ReadSpansResponse, internal_ingestion_service_server::InternalIngestionService},
};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::{otlp, reader::LogReader};

/// Bytes of a key.
pub const KEY_LEN: usize = 16;
/// Spans in a page when the request says 0.
pub const DEFAULT_BATCH: usize = 100;
/// Most spans in a page.
pub const MAX_BATCH: usize = 10_000;
/// How long a page waits for one partition's read (Junjo's pollers send no
/// deadline; a page must end).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A position in the merged order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub append_ms: u64,
    pub partition: u16,
    pub offset: u64,
}

impl Key {
    /// The key of a stored record of `partition`.
    pub fn of(partition: u32, stored: &Stored) -> Key {
        Key {
            append_ms: u64::try_from(stored.append_time_ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF,
            partition: partition as u16,
            offset: stored.offset,
        }
    }

    /// The smallest key a partition with this floor can still produce.
    fn floor(partition: u32, floor_ms: i64) -> Key {
        Key {
            append_ms: u64::try_from(floor_ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF,
            partition: partition as u16,
            offset: 0,
        }
    }

    /// The 16 bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEY_LEN);
        out.extend_from_slice(&self.append_ms.to_be_bytes()[2..]);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out
    }

    /// Parses 16 wire bytes.
    pub fn decode(bytes: &[u8]) -> Option<Key> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&bytes[..6]);
        Some(Key {
            append_ms: u64::from_be_bytes(ms),
            partition: u16::from_be_bytes([bytes[6], bytes[7]]),
            offset: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
        })
    }
}

/// One partition's part of a page.
struct Lane {
    partition: u32,
    buffer: VecDeque<Stored>,
    next: u64,
    high_watermark: u64,
    /// Set once read up to the high watermark.
    floor: Option<i64>,
    /// Reading it failed: nothing after its position may be emitted.
    blocked: bool,
}

impl Lane {
    /// The offset of the first record not yet emitted.
    fn position(&self) -> u64 {
        self.buffer.front().map_or(self.next, |s| s.offset)
    }

    /// The smallest key this partition may still produce, if known.
    fn bound(&self) -> Option<Key> {
        if let Some(head) = self.buffer.front() {
            return Some(Key::of(self.partition, head));
        }
        if self.blocked {
            return None;
        }
        self.floor.map(|f| Key::floor(self.partition, f))
    }
}

/// Positions after a key, per partition, for pages that resume from it.
struct Cursors {
    map: HashMap<Key, Arc<HashMap<u32, u64>>>,
    order: VecDeque<Key>,
}

const CURSORS: usize = 4096;

/// Serves ReadSpans over the spans topic.
#[derive(Clone)]
pub struct Spans {
    reader: Arc<LogReader>,
    topic: String,
    cursors: Arc<Mutex<Cursors>>,
}

/// A page's messages.
pub type Page = Vec<ReadSpansResponse>;

impl Spans {
    /// ReadSpans over `topic`.
    pub fn new(reader: Arc<LogReader>, topic: String) -> Self {
        Spans {
            reader,
            topic,
            cursors: Arc::new(Mutex::new(Cursors {
                map: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    fn remember(&self, key: Key, lanes: &[Lane]) {
        let positions: HashMap<u32, u64> = lanes.iter().map(|l| (l.partition, l.position())).collect();
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        if cursors.map.insert(key, Arc::new(positions)).is_none() {
            cursors.order.push_back(key);
        }
        while cursors.order.len() > CURSORS {
            if let Some(old) = cursors.order.pop_front() {
                cursors.map.remove(&old);
            }
        }
    }

    fn cursor(&self, key: &Key) -> Option<Arc<HashMap<u32, u64>>> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(key)
            .cloned()
    }

    /// Where each partition's records after `start` begin (at or before the
    /// first of them: the page skips keys not after `start`).
    async fn starts(&self, start: Option<Key>, lanes: &mut [Lane]) -> Result<(), Status> {
        let Some(start) = start else { return Ok(()) };
        if let Some(cursor) = self.cursor(&start) {
            for lane in lanes.iter_mut() {
                if let Some(&at) = cursor.get(&lane.partition) {
                    lane.next = lane.next.max(at);
                }
            }
            return Ok(());
        }
        // From the key alone (a restarted ingest, or a key a client made up
        // from a time): each partition from the first segment appended at or
        // after the key's time; the page skips what is not after the key.
        let ms = i64::try_from(start.append_ms).unwrap_or(i64::MAX);
        for lane in lanes.iter_mut() {
            let at = self
                .reader
                .offset_near_append_time(&self.topic, lane.partition, ms)
                .await?;
            lane.next = lane.next.max(at);
        }
        Ok(())
    }

    /// Reads more of `lane` (at once, never waiting for new records).
    async fn refill(&self, lane: &mut Lane, after: Option<Key>) {
        match self
            .reader
            .read(&self.topic, lane.partition, lane.next, Duration::ZERO)
            .await
        {
            Ok(chunk) => {
                lane.next = chunk.next.max(lane.next);
                if let Some(hw) = chunk.high_watermark {
                    lane.high_watermark = lane.high_watermark.max(hw);
                }
                lane.floor = chunk.time_floor;
                let partition = lane.partition;
                lane.buffer.extend(
                    chunk
                        .records
                        .into_iter()
                        .filter(|s| after.is_none_or(|a| Key::of(partition, s) > a)),
                );
            }
            Err(status) => {
                tracing::debug!(topic = %self.topic, partition = lane.partition, %status, "spans partition unreadable for now");
                lane.blocked = true;
            }
        }
    }

    /// One page: at most `batch` spans after `start`.
    pub async fn page(&self, start: Option<Key>, batch: usize) -> Result<Page, Status> {
        let partitions = self.reader.partitions(&self.topic).await?;
        let mut lanes: Vec<Lane> = partitions
            .iter()
            .map(|p| Lane {
                partition: p.partition,
                buffer: VecDeque::new(),
                next: p.log_start,
                high_watermark: p.high_watermark,
                floor: None,
                blocked: false,
            })
            .collect();
        self.starts(start, &mut lanes).await?;
        let mut out: Page = Vec::new();
        let mut last_span: Option<Key> = None;
        let mut last_consumed: Option<Key> = None;
        let mut repolls = 0;
        while out.len() < batch {
            for lane in lanes.iter_mut() {
                if lane.buffer.is_empty() && lane.floor.is_none() && !lane.blocked {
                    self.refill(lane, start).await;
                }
            }
            let head = lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.buffer.front().map(|s| (Key::of(l.partition, s), i)))
                .min();
            let Some((key, i)) = head else {
                break; // every partition is read up to its high watermark
            };
            let holds = lanes
                .iter()
                .filter(|l| l.buffer.is_empty())
                .any(|l| l.bound().is_none_or(|bound| bound <= key));
            if holds {
                // A partition read to its end may still append below this key
                // (its floor is not past it yet): poll it again, briefly.
                if repolls >= 3 || lanes.iter().any(|l| l.blocked && l.buffer.is_empty()) {
                    break;
                }
                repolls += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                for lane in lanes.iter_mut().filter(|l| l.buffer.is_empty()) {
                    lane.floor = None;
                }
                continue;
            }
            let Some(stored) = lanes[i].buffer.pop_front() else {
                break;
            };
            last_consumed = Some(key);
            if let Some(message) = span_message(&key, &stored) {
                last_span = Some(key);
                out.push(message);
                let remaining: u64 = lanes
                    .iter()
                    .map(|l| l.high_watermark.saturating_sub(l.position()))
                    .sum();
                if let Some(m) = out.last_mut() {
                    m.remaining_count = remaining;
                }
            }
        }
        if let Some(consumed) = last_consumed {
            self.remember(consumed, &lanes);
            // Entries that could not be served ended the page: a key-only
            // message moves the reader past them.
            if last_span != Some(consumed) {
                let remaining = lanes
                    .iter()
                    .map(|l| l.high_watermark.saturating_sub(l.position()))
                    .sum();
                out.push(ReadSpansResponse {
                    key_ulid: consumed.encode(),
                    span_bytes: Vec::new(),
                    resource_bytes: Vec::new(),
                    remaining_count: remaining,
                });
            }
        }
        Ok(out)
    }
}

/// The ReadSpans message for a record's value stored at `offset` of
/// `partition`, appended at `append_ms`; `None` when the value is not a span
/// record (a reader skips it).
pub fn message_for(partition: u32, offset: u64, append_ms: i64, value: &[u8]) -> Option<ReadSpansResponse> {
    let stored = Stored {
        offset,
        append_time_ms: append_ms,
        record: cairn_log::batch::Record {
            value: value.to_vec(),
            ..Default::default()
        },
    };
    span_message(&Key::of(partition, &stored), &stored)
}

/// The message for a stored span, or `None` for a record that is not one.
fn span_message(key: &Key, stored: &Stored) -> Option<ReadSpansResponse> {
    let record = otlp::decode_record(&stored.record.value).ok()?;
    let Some(Item::Span(span)) = record.item else {
        return None;
    };
    if span.is_empty() || record.resource.is_empty() {
        return None;
    }
    Some(ReadSpansResponse {
        key_ulid: key.encode(),
        span_bytes: span,
        resource_bytes: record.resource,
        remaining_count: 0,
    })
}

type SpanStream = std::pin::Pin<Box<dyn Stream<Item = Result<ReadSpansResponse, Status>> + Send>>;

#[tonic::async_trait]
impl InternalIngestionService for Spans {
    type ReadSpansStream = SpanStream;

    async fn read_spans(&self, request: Request<ReadSpansRequest>) -> Result<Response<SpanStream>, Status> {
        let request = request.into_inner();
        let start = if request.start_key_ulid.is_empty() {
            None
        } else {
            Some(Key::decode(&request.start_key_ulid).ok_or_else(|| {
                cairn_client::status::invalid_argument(
                    "start_key_ulid",
                    format!("must be empty or {KEY_LEN} bytes, got {}", request.start_key_ulid.len()),
                )
            })?)
        };
        let batch = match request.batch_size as usize {
            0 => DEFAULT_BATCH,
            n => n.min(MAX_BATCH),
        };
        let page = self.page(start, batch).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(page.into_iter().map(Ok)))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_order_bytewise_as_append_time_partition_offset() {
        let keys = [
            Key {
                append_ms: 1_700_000_000_000,
                partition: 3,
                offset: u64::MAX,
            },
            Key {
                append_ms: 1_700_000_000_001,
                partition: 0,
                offset: 0,
            },
            Key {
                append_ms: 1_700_000_000_001,
                partition: 0,
                offset: 1,
            },
            Key {
                append_ms: 1_700_000_000_001,
                partition: 1,
                offset: 0,
            },
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].encode() < w[1].encode(), "bytewise order follows key order");
        }
        for k in keys {
            assert_eq!(k.encode().len(), KEY_LEN);
            assert_eq!(Key::decode(&k.encode()), Some(k));
        }
        assert_eq!(Key::decode(&[0; 15]), None);
        assert_eq!(Key::decode(&[0; 17]), None);
    }
}
