//! Records as an application hands them over, what it gets back, and their
//! encoding straight into the batch frame a `ProduceRequest` carries.
//!
//! A batch never exists as a `Vec<pb::Record>`: each record is encoded into the
//! batch's frame when it is sent (cairn-log's `batch` format, which the agent
//! appends as it is), and every attempt to deliver the batch sends that same
//! frame behind a freshly encoded request head and frame head ([`EncodedProduce`]).

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use cairn_log::batch::{self, FrameBuilder, ProducerInfo};
use cairn_proto::cairn::agent::v1 as pb;
use prost::encoding::{encode_varint, encoded_len_varint};

/// One record to write.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    /// The topic to write to.
    pub topic: String,
    /// An explicit partition; when absent the partitioner picks one.
    pub partition: Option<u32>,
    /// The key: records with equal keys land in the same partition. `None` is
    /// distinct from an empty key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Unix milliseconds; `None` lets the agent stamp its append time.
    pub timestamp_ms: Option<i64>,
    /// Application headers.
    pub headers: Vec<(String, Bytes)>,
}

impl ProducerRecord {
    /// A keyless record for `topic`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: value.into(),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sends to this partition, bypassing the partitioner.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the record's timestamp (unix milliseconds).
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}

/// Where a delivered record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The record's offset; `None` only with [`crate::Acks::None`], where the
    /// agent answers before assigning one.
    pub offset: Option<u64>,
    /// The record's own timestamp, or the agent's append time when it had none
    /// (0 when neither is known, as with `Acks::None`).
    pub timestamp_ms: i64,
}

const FRAME_FIELD: u32 = 8;
const LENGTH_DELIMITED: u32 = 2;

/// Bytes `record` adds to a batch frame.
pub fn encoded_len(record: &ProducerRecord) -> usize {
    batch::record_len(
        record.key.as_ref().map(Bytes::len),
        record.value.len(),
        record.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())),
    )
}

/// Appends `record` to a batch frame (a timestamp of `None` is 0: the
/// agent's append time).
pub fn encode(record: &ProducerRecord, frame: &mut FrameBuilder) {
    frame.push(
        record.key.as_deref(),
        &record.value,
        record.timestamp_ms.unwrap_or(0),
        record.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())),
    );
}

/// A `ProduceRequest` carrying a batch frame built once: `head` carries
/// every other field, and each attempt sends the frame's bytes as they are
/// behind a fresh 52-byte frame head naming this attempt's producer id,
/// epoch and sequence ([`batch::head_for`]).
#[derive(Debug, Clone, Default)]
pub struct EncodedProduce {
    pub head: pb::ProduceRequest,
    frame_head: Vec<u8>,
    frame: Bytes,
}

impl EncodedProduce {
    /// The request for `frame` under `head`'s producer fields.
    pub fn new(head: pb::ProduceRequest, frame: Bytes) -> Self {
        let producer = ProducerInfo {
            producer_id: head.producer_id,
            epoch: head.producer_epoch,
            base_sequence: head.base_sequence,
        };
        EncodedProduce {
            frame_head: batch::head_for(&frame, producer).to_vec(),
            head,
            frame,
        }
    }

    fn frame_len(&self) -> usize {
        self.frame_head.len() + self.frame.len().saturating_sub(batch::V2_HEAD)
    }
}

impl prost::Message for EncodedProduce {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        buf.put_u8(((FRAME_FIELD << 3) | LENGTH_DELIMITED) as u8);
        encode_varint(self.frame_len() as u64, buf);
        buf.put_slice(&self.frame_head);
        buf.put_slice(self.frame.get(batch::V2_HEAD..).unwrap_or_default());
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        self.head.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let frame = self.frame_len();
        self.head.encoded_len() + 1 + encoded_len_varint(frame as u64) + frame
    }

    fn clear(&mut self) {
        self.head.clear();
        self.frame_head.clear();
        self.frame = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message;

    use super::*;

    #[test]
    fn an_encoded_request_decodes_as_the_generated_message_with_this_attempts_identity() {
        let records = vec![
            ProducerRecord::new("t", "plain"),
            ProducerRecord::new("t", "").key(""),
            ProducerRecord::new("t", vec![7u8; 300])
                .key("k")
                .timestamp_ms(-5)
                .header("a", "b")
                .header("", "")
                .header("only-key", ""),
            ProducerRecord::new("t", "x").timestamp_ms(1_700_000_000_000),
        ];
        let mut frame = FrameBuilder::with_capacity(0);
        let mut expected_len = batch::V2_FIXED;
        for r in &records {
            encode(r, &mut frame);
            expected_len += encoded_len(r);
            assert_eq!(frame.len(), expected_len, "encoded_len agrees with encode");
        }
        let header = batch::BatchHeader {
            base_offset: 0,
            count: frame.count(),
            producer: ProducerInfo::default(),
            append_time_ms: 0,
        };
        let frame = Bytes::from(frame.finish(&header, batch::Compression::None));
        let message = EncodedProduce::new(
            pb::ProduceRequest {
                topic: "t".into(),
                partition: 3,
                producer_id: 11,
                producer_epoch: 2,
                base_sequence: 40,
                ack_mode: pb::AckMode::Durable as i32,
                ..Default::default()
            },
            frame,
        );
        let wire = message.encode_to_vec();
        assert_eq!(wire.len(), message.encoded_len());
        let decoded = pb::ProduceRequest::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded.topic, "t");
        assert_eq!((decoded.producer_id, decoded.base_sequence), (11, 40));
        let f = batch::frame(&decoded.frame).unwrap();
        assert_eq!(f.len(), decoded.frame.len());
        assert_eq!(
            f.header.producer,
            ProducerInfo {
                producer_id: 11,
                epoch: 2,
                base_sequence: 40
            },
            "the frame names this attempt's identity"
        );
        let got = f.records().unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].key, None, "an absent key is absent");
        assert_eq!(got[1].key, Some(vec![]), "an empty key is present");
        assert_eq!(got[2].headers.len(), 3);
        assert_eq!(got[3].timestamp_ms, 1_700_000_000_000);
        assert_eq!(
            got[0].timestamp_ms, 0,
            "no timestamp: the append time (0 here, unstamped)"
        );
    }
}
