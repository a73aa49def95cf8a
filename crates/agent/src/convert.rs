//! Wire types at the edge: prost messages become domain values once, on
//! receipt (`TryFrom`, answering `INVALID_ARGUMENT` naming the field), and
//! domain values become messages on the way out. The request limits, which are
//! configuration, are checked on the converted values ([`check_limits`]).

use cairn_proto::{Timestamp, cairn::agent::v1 as pb};
use cairn_service::names;

use crate::{
    batch::{ProducerInfo, Record, Stored},
    config::Limits,
    error::Error,
    meta::{SegmentRow, TopicRow},
    partition::{Ack, now_ms},
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

/// A produce request, checked.
#[derive(Debug)]
pub struct Produce {
    pub topic: String,
    pub partition: u32,
    pub records: Vec<Record>,
    pub producer: ProducerInfo,
    pub ack: AckLevel,
}

impl TryFrom<pb::ProduceRequest> for Produce {
    type Error = Error;

    fn try_from(req: pb::ProduceRequest) -> Result<Self, Error> {
        check_topic_name("topic", &req.topic)?;
        let ack = match pb::AckMode::try_from(req.ack_mode) {
            Ok(pb::AckMode::Unspecified | pb::AckMode::Durable) => AckLevel::Wal(Ack::Durable),
            Ok(pb::AckMode::Leader) => AckLevel::Wal(Ack::Leader),
            Ok(pb::AckMode::None) => AckLevel::None,
            Ok(pb::AckMode::Committed) => AckLevel::Committed,
            Err(_) => return Err(Error::invalid("ack_mode", "unknown ack mode")),
        };
        if req.records.is_empty() {
            return Err(Error::invalid("records", "at least one record is required"));
        }
        let producer = ProducerInfo {
            producer_id: req.producer_id,
            epoch: req.producer_epoch,
            base_sequence: req.base_sequence,
        };
        let count = req.records.len() as u64;
        if producer.producer_id != 0 && producer.base_sequence.checked_add(count).is_none() {
            return Err(Error::invalid("base_sequence", "sequence overflows"));
        }
        let now = now_ms();
        let records = req
            .records
            .into_iter()
            .map(|r| Record {
                key: r.key,
                value: r.value,
                timestamp_ms: if r.timestamp_ms == 0 { now } else { r.timestamp_ms },
                headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            })
            .collect();
        Ok(Produce {
            topic: req.topic,
            partition: req.partition,
            records,
            producer,
            ack,
        })
    }
}

/// The request limits (record size, request size, record count).
pub fn check_limits(records: &[Record], limits: &Limits) -> Result<(), Error> {
    if records.len() > limits.max_records_per_request {
        return Err(Error::invalid(
            "records",
            format!("at most {} records per request", limits.max_records_per_request),
        ));
    }
    let mut total = 0usize;
    for (i, record) in records.iter().enumerate() {
        let size = record.encoded_len();
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
        let produce = Produce::try_from(ok.clone()).unwrap();
        assert_eq!(produce.ack, AckLevel::Committed);
        assert!(
            produce.records[0].timestamp_ms > 0,
            "an unset timestamp is the append time"
        );
        let field = |req: pb::ProduceRequest| match Produce::try_from(req) {
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
