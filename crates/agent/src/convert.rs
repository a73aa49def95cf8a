//! Wire types at the edge: prost messages become domain values once, on
//! receipt (`TryFrom`, answering `INVALID_ARGUMENT` naming the field), and
//! domain values become messages on the way out. The request limits, which are
//! configuration, are checked on the converted values ([`check_limits`]).

use cairn_proto::{Timestamp, cairn::agent::v1 as pb};
use cairn_service::names;

use crate::{
    batch::{self, BatchHeader, Compression, FrameBuilder, FrameLimits, ProducerInfo, Stored},
    config::Limits,
    error::Error,
    meta::{SegmentRow, TopicRow},
    partition::Ack,
};

/// Kafka's topic name rule (`cairn_service::names`), naming `field` when broken.
pub fn check_topic_name(field: &str, name: &str) -> Result<(), Error> {
    if names::valid_topic_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(field, names::TOPIC_NAME_RULE))
    }
}

/// Unix milliseconds as a protobuf timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    names::timestamp_from_ms(ms)
}

/// How far a produce must get before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Fire and forget.
    None,
    /// Written, or fsynced.
    Wal(Ack),
    /// In a segment committed to object storage.
    Committed,
}

impl AckLevel {
    /// What the WAL writer is asked for (`None`: do not wait).
    pub fn wal(self) -> Option<Ack> {
        match self {
            AckLevel::None => None,
            AckLevel::Wal(ack) => Some(ack),
            AckLevel::Committed => Some(Ack::Durable),
        }
    }
}

/// A produce request, checked, its records in one version 2 frame.
#[derive(Debug)]
pub struct Produce {
    pub topic: String,
    pub partition: u32,
    /// The frame as it came (a slice of the request's buffer), or the one
    /// built from `records`.
    pub frame: bytes::Bytes,
    pub count: u32,
    pub producer: ProducerInfo,
    pub ack: AckLevel,
}

impl Produce {
    /// Checks a request against the limits: a producer's frame without
    /// decoding it ([`batch::validate`]), or `records` encoded into a frame
    /// here, once.
    pub fn check(req: pb::ProduceRequest, limits: &Limits) -> Result<Self, Error> {
        check_topic_name("topic", &req.topic)?;
        let ack = match pb::AckMode::try_from(req.ack_mode) {
            Ok(pb::AckMode::Unspecified | pb::AckMode::Durable) => AckLevel::Wal(Ack::Durable),
            Ok(pb::AckMode::Leader) => AckLevel::Wal(Ack::Leader),
            Ok(pb::AckMode::None) => AckLevel::None,
            Ok(pb::AckMode::Committed) => AckLevel::Committed,
            Err(_) => return Err(Error::invalid("ack_mode", "unknown ack mode")),
        };
        let requested = ProducerInfo {
            producer_id: req.producer_id,
            epoch: req.producer_epoch,
            base_sequence: req.base_sequence,
        };
        let (frame, count, producer) = match (req.records.is_empty(), req.frame.is_empty()) {
            (false, false) => return Err(Error::invalid("frame", "set records or frame, not both")),
            (true, true) => return Err(Error::invalid("records", "at least one record is required")),
            (false, true) => {
                check_limits(&req.records, limits)?;
                let count = req.records.len() as u32;
                (
                    records_frame(&req.records, requested, Compression::None).into(),
                    count,
                    requested,
                )
            }
            (true, false) => {
                let checked = SCRATCH
                    .with_borrow_mut(|scratch| batch::validate(&req.frame, &frame_limits(limits), scratch))
                    .map_err(|e| Error::invalid("frame", e.to_string()))?;
                let p = checked.producer;
                for (field, asked, framed) in [
                    ("producer_id", requested.producer_id, p.producer_id),
                    ("producer_epoch", u64::from(requested.epoch), u64::from(p.epoch)),
                    ("base_sequence", requested.base_sequence, p.base_sequence),
                ] {
                    if asked != 0 && asked != framed {
                        return Err(Error::invalid(
                            field,
                            format!("{asked} differs from the frame's {framed}; leave it 0 or equal"),
                        ));
                    }
                }
                (req.frame, checked.count, p)
            }
        };
        if producer.producer_id != 0 && producer.base_sequence.checked_add(u64::from(count)).is_none() {
            return Err(Error::invalid("base_sequence", "sequence overflows"));
        }
        Ok(Produce {
            topic: req.topic,
            partition: req.partition,
            frame,
            count,
            producer,
            ack,
        })
    }
}

thread_local! {
    /// Where a compressed frame's records are inflated to be checked,
    /// reused by every request a worker thread handles.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a frame may hold, from the request limits.
pub fn frame_limits(limits: &Limits) -> FrameLimits {
    FrameLimits {
        max_records: limits.max_records_per_request,
        max_record_bytes: limits.max_record_bytes,
        max_bytes: limits.max_request_bytes,
    }
}

/// Records of the `records` form in one frame (a timestamp of 0 stays 0:
/// it reads back as the append time, as in a producer's frame), its records
/// compressed as `compression` says (the agent itself never compresses).
pub fn records_frame(records: &[pb::Record], producer: ProducerInfo, compression: Compression) -> Vec<u8> {
    let mut builder = FrameBuilder::with_capacity(records.iter().map(record_len).sum());
    for r in records {
        builder.push(
            r.key.as_deref(),
            &r.value,
            r.timestamp_ms,
            r.headers.iter().map(|h| (h.key.as_str(), h.value.as_slice())),
        );
    }
    let header = BatchHeader {
        base_offset: 0,
        count: builder.count(),
        producer,
        append_time_ms: 0,
    };
    builder.finish(&header, compression)
}

fn record_len(r: &pb::Record) -> usize {
    batch::record_len(
        r.key.as_ref().map(Vec::len),
        r.value.len(),
        r.headers.iter().map(|h| (h.key.as_str(), h.value.as_slice())),
    )
}

/// The request limits (record size, request size, record count).
pub fn check_limits(records: &[pb::Record], limits: &Limits) -> Result<(), Error> {
    if records.len() > limits.max_records_per_request {
        return Err(Error::invalid(
            "records",
            format!("at most {} records per request", limits.max_records_per_request),
        ));
    }
    let mut total = 0usize;
    for (i, record) in records.iter().enumerate() {
        let size = record_len(record);
        if size > limits.max_record_bytes {
            return Err(Error::invalid(
                format!("records[{i}]"),
                format!("{size} bytes is larger than the {} byte limit", limits.max_record_bytes),
            ));
        }
        total += size;
    }
    if total > limits.max_request_bytes {
        return Err(Error::invalid(
            "records",
            format!(
                "{total} bytes in one request is more than the {} byte limit",
                limits.max_request_bytes
            ),
        ));
    }
    Ok(())
}

/// A stored record as the wire carries it.
pub fn stored_record(stored: Stored) -> pb::StoredRecord {
    let Stored {
        offset,
        append_time_ms,
        record: r,
    } = stored;
    pb::StoredRecord {
        offset,
        append_time_ms,
        key: r.key,
        value: r.value,
        timestamp_ms: r.timestamp_ms,
        headers: r
            .headers
            .into_iter()
            .map(|(key, value)| pb::Header { key, value })
            .collect(),
    }
}

/// A committed segment as the wire carries it.
pub fn segment_info(row: SegmentRow) -> pb::SegmentInfo {
    pb::SegmentInfo {
        base_offset: row.base_offset,
        next_offset: row.next_offset,
        object_key: row.object_key,
        size_bytes: row.size_bytes,
        records: row.records,
        min_timestamp_ms: row.min_ts,
        max_timestamp_ms: row.max_ts,
        max_append_time_ms: row.max_append_ms,
        epoch: row.epoch,
    }
}

/// A topic as the wire carries it.
pub fn topic(row: &TopicRow) -> pb::Topic {
    pb::Topic {
        name: row.name.clone(),
        config: Some(pb::TopicConfig {
            partitions: row.partitions,
            retention_ms: row.retention_ms,
            retention_bytes: row.retention_bytes,
            segment_bytes: row.segment_bytes,
            segment_ms: row.segment_ms,
        }),
        created_at: Some(timestamp(row.created_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        assert!(check_topic_name("t", "clicks").is_ok());
        let err = check_topic_name("topics[2]", "a b").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "topics[2]"));
    }

    #[test]
    fn a_produce_request_is_checked_on_receipt() {
        let ok = pb::ProduceRequest {
            topic: "t".into(),
            records: vec![pb::Record::default()],
            ack_mode: pb::AckMode::Committed as i32,
            ..Default::default()
        };
        let limits = Limits::default();
        let produce = Produce::check(ok.clone(), &limits).unwrap();
        assert_eq!(produce.ack, AckLevel::Committed);
        assert_eq!(produce.count, 1);
        let field = |req: pb::ProduceRequest| match Produce::check(req, &limits) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(pb::ProduceRequest {
                ack_mode: 99,
                ..ok.clone()
            }),
            "ack_mode"
        );
        assert_eq!(
            field(pb::ProduceRequest {
                records: vec![],
                ..ok.clone()
            }),
            "records"
        );
        assert_eq!(
            field(pb::ProduceRequest {
                topic: "..".into(),
                ..ok.clone()
            }),
            "topic"
        );
        let overflow = pb::ProduceRequest {
            producer_id: 1,
            base_sequence: u64::MAX,
            ..ok
        };
        assert_eq!(field(overflow), "base_sequence");
    }
}
