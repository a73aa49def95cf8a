//! Record batches: the unit the WAL stores (and, later, segments). A batch is
//! a checksummed frame:
//!
//! ```text
//! magic    4  "CWB1"
//! length   4  u32 LE: bytes after the checksum (header rest + records)
//! crc32    4  u32 LE: CRC-32 of those bytes
//! base_offset     8  u64   offset of the first record
//! count           4  u32   records in the batch (≥ 1)
//! producer_id     8  u64   0 when not idempotent
//! producer_epoch  4  u32
//! base_sequence   8  u64
//! append_time_ms  8  i64   when the leader appended it
//! records         …        count × record
//! record: key_len i32 (-1 = no key) | key | value_len u32 | value |
//!         timestamp_ms i64 | header_count u32 | (len u32, key, len u32, value)*
//! ```
//!
//! Decoding never panics on any input: every length is checked against what
//! is left.

/// Marks the start of every frame.
pub const MAGIC: &[u8; 4] = b"CWB1";
/// Bytes before the checksummed part: magic, length, crc.
pub const PREAMBLE: usize = 12;
/// Bytes of header inside the checksummed part.
pub const HEADER: usize = 40;
/// The largest frame body accepted when decoding (guards allocation).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// One record as produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Bytes this record takes in a batch.
    pub fn encoded_len(&self) -> usize {
        4 + self.key.as_ref().map_or(0, Vec::len)
            + 4
            + self.value.len()
            + 8
            + 4
            + self.headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
    }
}

/// A record as the log holds it: its offset and when its leader appended it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    pub offset: u64,
    /// The batch's append time (unix ms); non-decreasing along a partition.
    pub append_time_ms: i64,
    pub record: Record,
}

impl BatchHeader {
    /// The batch's records as stored, with their offsets and append time.
    pub fn stored(&self, records: Vec<Record>) -> impl Iterator<Item = Stored> + '_ {
        records.into_iter().enumerate().map(move |(i, record)| Stored {
            offset: self.base_offset + i as u64,
            append_time_ms: self.append_time_ms,
            record,
        })
    }
}

/// Who wrote a batch, for idempotence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerInfo {
    pub producer_id: u64,
    pub epoch: u32,
    pub base_sequence: u64,
}

/// A batch's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub count: u32,
    pub producer: ProducerInfo,
    pub append_time_ms: i64,
}

impl BatchHeader {
    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// Encodes a batch frame.
pub fn encode(header: &BatchHeader, records: &[Record], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 8]); // length and crc, filled in below
    out.extend_from_slice(&header.base_offset.to_le_bytes());
    out.extend_from_slice(&header.count.to_le_bytes());
    out.extend_from_slice(&header.producer.producer_id.to_le_bytes());
    out.extend_from_slice(&header.producer.epoch.to_le_bytes());
    out.extend_from_slice(&header.producer.base_sequence.to_le_bytes());
    out.extend_from_slice(&header.append_time_ms.to_le_bytes());
    for r in records {
        match &r.key {
            Some(k) => {
                out.extend_from_slice(&(k.len() as i32).to_le_bytes());
                out.extend_from_slice(k);
            }
            None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        }
        out.extend_from_slice(&(r.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.value);
        out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (k, v) in &r.headers {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    let body_len = (out.len() - start - PREAMBLE) as u32;
    let crc = crc32fast::hash(&out[start + PREAMBLE..]);
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the frame says it has: a torn write, or a read too short.
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// Not a frame, or damaged.
    #[error("frame damaged: {0}")]
    Damaged(&'static str),
}

/// The length of the frame at the start of `bytes` and its checked body.
pub fn frame(bytes: &[u8]) -> Result<(usize, &[u8]), FrameError> {
    if bytes.len() < PREAMBLE {
        return Err(FrameError::Truncated {
            need: PREAMBLE,
            have: bytes.len(),
        });
    }
    if &bytes[..4] != MAGIC {
        return Err(FrameError::Damaged("bad magic"));
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if !(HEADER..=MAX_FRAME).contains(&len) {
        return Err(FrameError::Damaged("impossible length"));
    }
    let total = PREAMBLE + len;
    if bytes.len() < total {
        return Err(FrameError::Truncated {
            need: total,
            have: bytes.len(),
        });
    }
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let body = &bytes[PREAMBLE..total];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Damaged("checksum mismatch"));
    }
    Ok((total, body))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(FrameError::Damaged("record runs past the batch"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decodes a checked body's header.
pub fn decode_header(body: &[u8]) -> Result<BatchHeader, FrameError> {
    let mut r = Reader { bytes: body };
    let base_offset = r.u64()?;
    let count = r.u32()?;
    let producer_id = r.u64()?;
    let epoch = r.u32()?;
    let base_sequence = r.u64()?;
    let append_time_ms = r.u64()? as i64;
    if count == 0 {
        return Err(FrameError::Damaged("empty batch"));
    }
    Ok(BatchHeader {
        base_offset,
        count,
        producer: ProducerInfo {
            producer_id,
            epoch,
            base_sequence,
        },
        append_time_ms,
    })
}

/// Decodes a checked body into its header and records.
pub fn decode(body: &[u8]) -> Result<(BatchHeader, Vec<Record>), FrameError> {
    let header = decode_header(body)?;
    let mut r = Reader { bytes: &body[HEADER..] };
    // Each record takes at least 20 bytes, which bounds the allocation.
    let mut records = Vec::with_capacity((header.count as usize).min(body.len() / 20));
    for _ in 0..header.count {
        let key_len = r.u32()? as i32;
        let key = match key_len {
            -1 => None,
            n if n >= 0 => Some(r.take(n as usize)?.to_vec()),
            _ => return Err(FrameError::Damaged("negative key length")),
        };
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?.to_vec();
        let timestamp_ms = r.u64()? as i64;
        let header_count = r.u32()? as usize;
        let mut headers = Vec::with_capacity(header_count.min(r.bytes.len() / 8));
        for _ in 0..header_count {
            let kl = r.u32()? as usize;
            let k = std::str::from_utf8(r.take(kl)?).map_err(|_| FrameError::Damaged("header key not UTF-8"))?;
            let vl = r.u32()? as usize;
            headers.push((k.to_owned(), r.take(vl)?.to_vec()));
        }
        records.push(Record {
            key,
            value,
            timestamp_ms,
            headers,
        });
    }
    if !r.bytes.is_empty() {
        return Err(FrameError::Damaged("bytes after the last record"));
    }
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> (BatchHeader, Vec<Record>) {
        let header = BatchHeader {
            base_offset: 42,
            count: 3,
            producer: ProducerInfo {
                producer_id: 7,
                epoch: 2,
                base_sequence: 100,
            },
            append_time_ms: 1_700_000_000_000,
        };
        let records = vec![
            Record {
                key: Some(b"k".to_vec()),
                value: b"v1".to_vec(),
                timestamp_ms: 5,
                headers: vec![],
            },
            Record {
                key: None,
                value: vec![],
                timestamp_ms: 6,
                headers: vec![("h".into(), b"x".to_vec())],
            },
            Record {
                key: Some(vec![]),
                value: vec![0; 1000],
                timestamp_ms: -1,
                headers: vec![],
            },
        ];
        (header, records)
    }

    #[test]
    fn round_trip() {
        let (header, records) = sample();
        let mut buf = Vec::new();
        encode(&header, &records, &mut buf);
        let (len, body) = frame(&buf).unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(decode(body).unwrap(), (header, records.clone()));
        let sizes: usize = records.iter().map(Record::encoded_len).sum();
        assert_eq!(buf.len(), PREAMBLE + HEADER + sizes);
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let (header, records) = sample();
        let mut buf = Vec::new();
        encode(&header, &records, &mut buf);
        for cut in 0..buf.len() {
            assert!(
                matches!(frame(&buf[..cut]), Err(FrameError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let (header, records) = sample();
        let mut buf = Vec::new();
        encode(&header, &records, &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let decoded = frame(&bad).and_then(|(_, body)| decode(body));
            assert!(
                decoded.is_err() || decoded.unwrap() != (header, records.clone()),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = frame(&bytes);
            let _ = decode(&bytes);
        }
    }
}
