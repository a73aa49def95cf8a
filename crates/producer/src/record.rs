//! Records as an application hands them over, what it gets back, and their
//! encoding straight into a `ProduceRequest`'s `records` field.
//!
//! A batch never exists as a `Vec<pb::Record>`: each record is encoded into the
//! batch's buffer when it is sent, and every attempt to deliver the batch sends
//! that same buffer behind a freshly encoded request head ([`EncodedProduce`]).
//! Protobuf readers accept fields in any order, so the head (topic, partition,
//! producer id, sequence, ack mode) may precede or follow the records.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
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

const RECORDS_FIELD: u32 = 3;
const LENGTH_DELIMITED: u32 = 2;
const VARINT: u32 = 0;

fn key_byte(field: u32, wire_type: u32) -> u8 {
    ((field << 3) | wire_type) as u8
}

fn bytes_field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn header_len(key: &str, value: &[u8]) -> usize {
    let mut len = 0;
    if !key.is_empty() {
        len += bytes_field_len(key.len());
    }
    if !value.is_empty() {
        len += bytes_field_len(value.len());
    }
    len
}

/// The length of the `pb::Record` message body for `record`.
fn record_body_len(record: &ProducerRecord) -> usize {
    let mut len = 0;
    if let Some(key) = &record.key {
        len += bytes_field_len(key.len());
    }
    if !record.value.is_empty() {
        len += bytes_field_len(record.value.len());
    }
    let timestamp = record.timestamp_ms.unwrap_or(0);
    if timestamp != 0 {
        len += 1 + encoded_len_varint(timestamp as u64);
    }
    for (key, value) in &record.headers {
        len += bytes_field_len(header_len(key, value));
    }
    len
}

/// Bytes `record` adds to a batch: its `records` field entry, tag and length included.
pub fn encoded_len(record: &ProducerRecord) -> usize {
    bytes_field_len(record_body_len(record))
}

fn put_bytes(out: &mut BytesMut, field: u32, data: &[u8]) {
    out.put_u8(key_byte(field, LENGTH_DELIMITED));
    encode_varint(data.len() as u64, out);
    out.put_slice(data);
}

/// Appends `record` to `out` as one entry of `ProduceRequest.records`.
pub fn encode(record: &ProducerRecord, out: &mut BytesMut) {
    let body = record_body_len(record);
    out.reserve(bytes_field_len(body));
    out.put_u8(key_byte(RECORDS_FIELD, LENGTH_DELIMITED));
    encode_varint(body as u64, out);
    if let Some(key) = &record.key {
        put_bytes(out, 1, key);
    }
    if !record.value.is_empty() {
        put_bytes(out, 2, &record.value);
    }
    let timestamp = record.timestamp_ms.unwrap_or(0);
    if timestamp != 0 {
        out.put_u8(key_byte(3, VARINT));
        encode_varint(timestamp as u64, out);
    }
    for (key, value) in &record.headers {
        out.put_u8(key_byte(4, LENGTH_DELIMITED));
        encode_varint(header_len(key, value) as u64, out);
        if !key.is_empty() {
            put_bytes(out, 1, key.as_bytes());
        }
        if !value.is_empty() {
            put_bytes(out, 2, value);
        }
    }
}

/// A `ProduceRequest` whose records are already encoded: `head` carries every
/// other field (its `records` stays empty) and `records` the encoded entries.
#[derive(Debug, Clone, Default)]
pub struct EncodedProduce {
    pub head: pb::ProduceRequest,
    pub records: Bytes,
}

impl prost::Message for EncodedProduce {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        buf.put_slice(&self.records);
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
        self.head.encoded_len() + self.records.len()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.records = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message;

    use super::*;

    fn pb_record(r: &ProducerRecord) -> pb::Record {
        pb::Record {
            key: r.key.as_ref().map(|k| k.to_vec()),
            value: r.value.to_vec(),
            timestamp_ms: r.timestamp_ms.unwrap_or(0),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| pb::Header {
                    key: k.clone(),
                    value: v.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn encoded_batches_decode_as_the_generated_message() {
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
        let mut body = BytesMut::new();
        let mut expected_len = 0;
        for r in &records {
            encode(r, &mut body);
            expected_len += encoded_len(r);
            assert_eq!(body.len(), expected_len, "encoded_len agrees with encode");
        }
        let message = EncodedProduce {
            head: pb::ProduceRequest {
                topic: "t".into(),
                partition: 3,
                producer_id: 11,
                producer_epoch: 2,
                base_sequence: 40,
                ack_mode: pb::AckMode::Durable as i32,
                records: vec![],
            },
            records: body.freeze(),
        };
        let wire = message.encode_to_vec();
        assert_eq!(wire.len(), message.encoded_len());
        let decoded = pb::ProduceRequest::decode(wire.as_slice()).unwrap();
        let expected = pb::ProduceRequest {
            records: records.iter().map(pb_record).collect(),
            ..message.head.clone()
        };
        assert_eq!(decoded, expected);
        // An empty key is present; an absent key is absent.
        assert_eq!(decoded.records[0].key, None);
        assert_eq!(decoded.records[1].key, Some(vec![]));
    }
}
