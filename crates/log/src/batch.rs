//! Record batches: the unit a producer builds, the WAL appends and a segment
//! holds. A batch is a checksummed frame. Version 2 (`CWB2`), the one written:
//!
//! ```text
//! magic           4  "CWB2"
//! length          4  u32 LE: bytes after this field
//! header_crc      4  u32 LE: CRC-32 of bytes 12..52 (the stamped header below)
//! base_offset     8  u64  offset of the first record      } written by the agent
//! append_time_ms  8  i64  when the leader appended it      } as it appends
//! producer_id     8  u64  0 when not idempotent            } written by the
//! producer_epoch  4  u32                                   } producer as it
//! base_sequence   8  u64                                   } sends
//! body_crc        4  u32 LE: CRC-32 of every byte after it (the body)
//! ── body ──
//! attributes      2  u16: bits 0-2 compression of `records` (0 none, 1 LZ4
//!                    block with no size prefix, 2 zstd); bit 3 some record's
//!                    timestamp is 0 (read as the batch's append time)
//! count           4  u32  records in the batch (≥ 1)
//! min_ts          8  i64  smallest record timestamp that is not 0 (0 if none)
//! max_ts          8  i64  largest record timestamp that is not 0 (0 if none)
//! records_len     4  u32  bytes of `records` uncompressed
//! records         …  count × record, compressed as `attributes` says
//! record: key_len i32 (-1 = no key) | key | value_len u32 | value |
//!         timestamp_ms i64 | header_count u32 | (len u32, key, len u32, value)*
//! ```
//!
//! The body is checksummed once, by whoever encodes the records (the
//! producer); the agent checks it and then only rewrites the 16 stamped bytes
//! and the header CRC (as Kafka's RecordBatch keeps its base offset outside
//! its CRC), so appending never re-encodes or re-checksums records, and a
//! compressed batch stays compressed in the WAL and in segments.
//!
//! Version 1 (`CWB1`, written before) is still read: one CRC over a 40-byte
//! header (base_offset, count, producer_id, producer_epoch, base_sequence,
//! append_time_ms) and the uncompressed records.
//!
//! Decoding never panics on any input: every length is checked against what
//! is left.

/// Marks the start of a version 1 frame.
pub const MAGIC: &[u8; 4] = b"CWB1";
/// Marks the start of a version 2 frame.
pub const MAGIC_V2: &[u8; 4] = b"CWB2";
/// Bytes that say how long a frame is (magic, length and one CRC, both versions).
pub const PREAMBLE: usize = 12;
/// Bytes of a version 1 header inside its checksummed part.
pub const HEADER: usize = 40;
/// Bytes of a version 2 frame up to and including the body CRC.
pub const V2_HEAD: usize = 52;
/// Bytes of a version 2 body before its records.
pub const V2_BODY_HEADER: usize = 26;
/// Bytes of a version 2 frame before its records.
pub const V2_FIXED: usize = V2_HEAD + V2_BODY_HEADER;
/// The largest frame body accepted when decoding (guards allocation).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;
/// Smallest encoded record (no key, value, headers).
const MIN_RECORD: usize = 20;

const ATTR_CODEC: u16 = 0b111;
const ATTR_APPEND_TIME: u16 = 0b1000;

/// How a batch's records are compressed, chosen by whoever builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn code(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u16) -> Result<Self, FrameError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            _ => Err(FrameError::Damaged("unknown compression")),
        }
    }

    /// Compresses `raw`; `None` when that does not make it smaller.
    fn compress(self, raw: &[u8]) -> Option<Vec<u8>> {
        let packed = match self {
            Compression::None => return None,
            Compression::Lz4 => lz4_flex::block::compress(raw),
            Compression::Zstd => zstd::bulk::compress(raw, 1).ok()?,
        };
        (packed.len() < raw.len()).then_some(packed)
    }

    /// Decompresses `packed` into `out`, which must end up exactly `len` bytes.
    fn decompress_into(self, packed: &[u8], len: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
        out.clear();
        out.resize(len, 0);
        let got = match self {
            Compression::None => return Err(FrameError::Damaged("not compressed")),
            Compression::Lz4 => {
                lz4_flex::block::decompress_into(packed, out).map_err(|_| FrameError::Damaged("bad LZ4 data"))?
            }
            Compression::Zstd => zstd::bulk::decompress_to_buffer(packed, out.as_mut_slice())
                .map_err(|_| FrameError::Damaged("bad zstd data"))?,
        };
        if got != len {
            return Err(FrameError::Damaged("records_len does not match the decompressed size"));
        }
        Ok(())
    }
}

/// One record as produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Bytes a record with these parts takes in a batch.
pub fn record_len<'h>(key: Option<usize>, value: usize, headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> usize {
    4 + key.unwrap_or(0) + 4 + value + 8 + 4 + headers.map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
}

impl Record {
    /// Bytes this record takes in a batch.
    pub fn encoded_len(&self) -> usize {
        record_len(self.key.as_ref().map(Vec::len), self.value.len(), self.header_pairs())
    }

    /// The headers as borrowed pairs.
    pub fn header_pairs(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + Clone {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
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

fn put_record<'h>(
    out: &mut Vec<u8>,
    key: Option<&[u8]>,
    value: &[u8],
    timestamp_ms: i64,
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) {
    match key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as i32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        let k = k.as_bytes();
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
}

/// Builds a version 2 frame record by record, encoding each once, in place.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    count: u32,
    min_ts: i64,
    max_ts: i64,
    append_time: bool,
}

impl FrameBuilder {
    /// An empty batch with room for about `records_bytes` of records.
    pub fn with_capacity(records_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(V2_FIXED + records_bytes);
        buf.resize(V2_FIXED, 0);
        FrameBuilder {
            buf,
            count: 0,
            min_ts: 0,
            max_ts: 0,
            append_time: false,
        }
    }

    /// Adds a record. A `timestamp_ms` of 0 reads back as the append time.
    pub fn push<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
    ) {
        put_record(&mut self.buf, key, value, timestamp_ms, headers);
        self.note_timestamp(timestamp_ms);
        self.count += 1;
    }

    fn note_timestamp(&mut self, ts: i64) {
        if ts == 0 {
            self.append_time = true;
        } else if self.min_ts == 0 && self.max_ts == 0 {
            (self.min_ts, self.max_ts) = (ts, ts);
        } else {
            self.min_ts = self.min_ts.min(ts);
            self.max_ts = self.max_ts.max(ts);
        }
    }

    /// Adds a record.
    pub fn push_record(&mut self, r: &Record) {
        self.push(r.key.as_deref(), &r.value, r.timestamp_ms, r.header_pairs());
    }

    /// Records so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of the frame so far (uncompressed).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Finishes the frame under `header` (its count is the records'),
    /// compressing the records when that makes them smaller.
    pub fn finish(self, header: &BatchHeader, compression: Compression) -> Vec<u8> {
        let records_len = self.buf.len() - V2_FIXED;
        let (mut buf, codec) = match compression.compress(&self.buf[V2_FIXED..]) {
            Some(packed) => {
                let mut buf = Vec::with_capacity(V2_FIXED + packed.len());
                buf.extend_from_slice(&self.buf[..V2_FIXED]);
                buf.extend_from_slice(&packed);
                (buf, compression)
            }
            None => (self.buf, Compression::None),
        };
        let mut attributes = codec.code();
        if self.append_time {
            attributes |= ATTR_APPEND_TIME;
        }
        let b = &mut buf[V2_HEAD..V2_FIXED];
        b[0..2].copy_from_slice(&attributes.to_le_bytes());
        b[2..6].copy_from_slice(&self.count.to_le_bytes());
        b[6..14].copy_from_slice(&self.min_ts.to_le_bytes());
        b[14..22].copy_from_slice(&self.max_ts.to_le_bytes());
        b[22..26].copy_from_slice(&(records_len as u32).to_le_bytes());
        let body_crc = crc32fast::hash(&buf[V2_HEAD..]);
        let length = (buf.len() - 8) as u32;
        buf[0..4].copy_from_slice(MAGIC_V2);
        buf[4..8].copy_from_slice(&length.to_le_bytes());
        buf[48..52].copy_from_slice(&body_crc.to_le_bytes());
        write_producer(&mut buf[..V2_HEAD], header.producer);
        write_stamp(&mut buf[..V2_HEAD], header.base_offset, header.append_time_ms);
        buf
    }
}

fn write_producer(head: &mut [u8], producer: ProducerInfo) {
    head[28..36].copy_from_slice(&producer.producer_id.to_le_bytes());
    head[36..40].copy_from_slice(&producer.epoch.to_le_bytes());
    head[40..48].copy_from_slice(&producer.base_sequence.to_le_bytes());
    seal_head(head);
}

fn write_stamp(head: &mut [u8], base_offset: u64, append_time_ms: i64) {
    head[12..20].copy_from_slice(&base_offset.to_le_bytes());
    head[20..28].copy_from_slice(&append_time_ms.to_le_bytes());
    seal_head(head);
}

fn seal_head(head: &mut [u8]) {
    let crc = crc32fast::hash(&head[12..V2_HEAD]);
    head[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// The first [`V2_HEAD`] bytes of a version 2 `frame` as sent by `producer`
/// (a retry under a new sequence or producer id): the rest of the frame is
/// sent as it is, never re-encoded.
pub fn head_for(frame: &[u8], producer: ProducerInfo) -> [u8; V2_HEAD] {
    let mut head = [0u8; V2_HEAD];
    let n = frame.len().min(V2_HEAD);
    head[..n].copy_from_slice(&frame[..n]);
    write_producer(&mut head, producer);
    head
}

/// Assigns a checked version 2 frame its offsets and append time (the agent,
/// as it appends): 16 bytes and the header CRC change, nothing else.
pub fn stamp(frame: &mut [u8], base_offset: u64, append_time_ms: i64) {
    if frame.len() >= V2_HEAD && &frame[..4] == MAGIC_V2 {
        write_stamp(&mut frame[..V2_HEAD], base_offset, append_time_ms);
    }
}

/// Encodes an uncompressed version 2 batch frame onto `out`.
pub fn encode(header: &BatchHeader, records: &[Record], out: &mut Vec<u8>) {
    let mut builder = FrameBuilder::with_capacity(records.iter().map(Record::encoded_len).sum());
    for r in records {
        builder.push_record(r);
    }
    let header = BatchHeader {
        count: builder.count(),
        ..*header
    };
    out.extend_from_slice(&builder.finish(&header, Compression::None));
}

/// Encodes a version 1 frame (the format before version 2), for tests that
/// logs written before stay readable.
pub fn encode_v1(header: &BatchHeader, records: &[Record], out: &mut Vec<u8>) {
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
        put_record(out, r.key.as_deref(), &r.value, r.timestamp_ms, r.header_pairs());
    }
    let body_len = (out.len() - start - PREAMBLE) as u32;
    let crc = crc32fast::hash(&out[start + PREAMBLE..]);
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a frame, or not one a producer may send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the frame says it has: a torn write, or a read too short.
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// Not a frame, or damaged.
    #[error("frame damaged: {0}")]
    Damaged(&'static str),
    /// A well-formed frame a producer may not send (a limit, a false claim).
    #[error("{0}")]
    Refused(String),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V1,
    V2 {
        attributes: u16,
        min_ts: i64,
        max_ts: i64,
        records_len: u32,
    },
}

/// A checksum-verified frame, either version, borrowed from the bytes it was found in.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    pub header: BatchHeader,
    kind: Kind,
}

/// The frame at the start of `bytes`, its checksums verified.
pub fn frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < PREAMBLE {
        return Err(FrameError::Truncated {
            need: PREAMBLE,
            have: bytes.len(),
        });
    }
    let v2 = match &bytes[..4] {
        m if m == MAGIC => false,
        m if m == MAGIC_V2 => true,
        _ => return Err(FrameError::Damaged("bad magic")),
    };
    let len = u32_at(bytes, 4) as usize;
    let (fixed, total) = if v2 {
        (V2_FIXED - 8, 8 + len)
    } else {
        (HEADER, PREAMBLE + len)
    };
    if !(fixed..=MAX_FRAME).contains(&len) {
        return Err(FrameError::Damaged("impossible length"));
    }
    if bytes.len() < total {
        return Err(FrameError::Truncated {
            need: total,
            have: bytes.len(),
        });
    }
    let bytes = &bytes[..total];
    if v2 { frame_v2(bytes) } else { frame_v1(bytes) }
}

fn frame_v1(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if crc32fast::hash(&bytes[PREAMBLE..]) != u32_at(bytes, 8) {
        return Err(FrameError::Damaged("checksum mismatch"));
    }
    let b = &bytes[PREAMBLE..];
    let header = BatchHeader {
        base_offset: u64_at(b, 0),
        count: u32_at(b, 8),
        producer: ProducerInfo {
            producer_id: u64_at(b, 12),
            epoch: u32_at(b, 20),
            base_sequence: u64_at(b, 24),
        },
        append_time_ms: u64_at(b, 32) as i64,
    };
    if header.count == 0 {
        return Err(FrameError::Damaged("empty batch"));
    }
    Ok(Frame {
        bytes,
        header,
        kind: Kind::V1,
    })
}

fn frame_v2(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    if crc32fast::hash(&bytes[12..V2_HEAD]) != u32_at(bytes, 8) {
        return Err(FrameError::Damaged("header checksum mismatch"));
    }
    if crc32fast::hash(&bytes[V2_HEAD..]) != u32_at(bytes, 48) {
        return Err(FrameError::Damaged("checksum mismatch"));
    }
    let attributes = u16_at(bytes, V2_HEAD);
    Compression::from_code(attributes & ATTR_CODEC)?;
    if attributes & !(ATTR_CODEC | ATTR_APPEND_TIME) != 0 {
        return Err(FrameError::Damaged("unknown attributes"));
    }
    let header = BatchHeader {
        base_offset: u64_at(bytes, 12),
        count: u32_at(bytes, V2_HEAD + 2),
        producer: ProducerInfo {
            producer_id: u64_at(bytes, 28),
            epoch: u32_at(bytes, 36),
            base_sequence: u64_at(bytes, 40),
        },
        append_time_ms: u64_at(bytes, 20) as i64,
    };
    if header.count == 0 {
        return Err(FrameError::Damaged("empty batch"));
    }
    let records_len = u32_at(bytes, V2_HEAD + 22);
    if records_len as usize > MAX_FRAME {
        return Err(FrameError::Damaged("impossible records length"));
    }
    Ok(Frame {
        bytes,
        header,
        kind: Kind::V2 {
            attributes,
            min_ts: u64_at(bytes, V2_HEAD + 6) as i64,
            max_ts: u64_at(bytes, V2_HEAD + 14) as i64,
            records_len,
        },
    })
}

/// One record inside a frame, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    /// As encoded: 0 stands for the batch's append time.
    pub timestamp_ms: i64,
    headers: &'a [u8],
    pub header_count: u32,
    /// Bytes the record takes in the batch.
    pub encoded_len: usize,
}

impl<'a> RecordRef<'a> {
    /// The record's headers (already checked by the walk that found it).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let mut r = Reader { bytes: self.headers };
        (0..self.header_count).map_while(move |_| {
            let kl = r.u32().ok()? as usize;
            let k = std::str::from_utf8(r.take(kl).ok()?).ok()?;
            let vl = r.u32().ok()? as usize;
            Some((k, r.take(vl).ok()?))
        })
    }

    fn to_record(self, append_time_ms: i64) -> Record {
        Record {
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.to_vec(),
            timestamp_ms: if self.timestamp_ms == 0 {
                append_time_ms
            } else {
                self.timestamp_ms
            },
            headers: self.headers().map(|(k, v)| (k.to_owned(), v.to_vec())).collect(),
        }
    }
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

/// Walks `count` encoded records, checking every length, and calls `f` on each.
/// No allocation.
fn walk<'a>(
    records: &'a [u8],
    count: u32,
    mut f: impl FnMut(RecordRef<'a>) -> Result<(), FrameError>,
) -> Result<(), FrameError> {
    let mut r = Reader { bytes: records };
    for _ in 0..count {
        let before = r.bytes.len();
        let key_len = r.u32()? as i32;
        let key = match key_len {
            -1 => None,
            n if n >= 0 => Some(r.take(n as usize)?),
            _ => return Err(FrameError::Damaged("negative key length")),
        };
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?;
        let timestamp_ms = r.u64()? as i64;
        let header_count = r.u32()?;
        let headers_start = r.bytes;
        for _ in 0..header_count {
            let kl = r.u32()? as usize;
            std::str::from_utf8(r.take(kl)?).map_err(|_| FrameError::Damaged("header key not UTF-8"))?;
            let vl = r.u32()? as usize;
            r.take(vl)?;
        }
        let headers = &headers_start[..headers_start.len() - r.bytes.len()];
        f(RecordRef {
            key,
            value,
            timestamp_ms,
            headers,
            header_count,
            encoded_len: before - r.bytes.len(),
        })?;
    }
    if !r.bytes.is_empty() {
        return Err(FrameError::Damaged("bytes after the last record"));
    }
    Ok(())
}

impl<'a> Frame<'a> {
    /// The whole frame's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How its records are stored (version 1: never compressed).
    pub fn compression(&self) -> Compression {
        match self.kind {
            Kind::V1 => Compression::None,
            Kind::V2 { attributes, .. } => Compression::from_code(attributes & ATTR_CODEC).unwrap_or_default(),
        }
    }

    /// The records' bytes, decompressed into `scratch` when compressed.
    fn raw_records<'s>(&self, scratch: &'s mut Vec<u8>) -> Result<&'s [u8], FrameError>
    where
        'a: 's,
    {
        match self.kind {
            Kind::V1 => Ok(&self.bytes[PREAMBLE + HEADER..]),
            Kind::V2 { records_len, .. } => match self.compression() {
                Compression::None => {
                    let raw = &self.bytes[V2_FIXED..];
                    if raw.len() != records_len as usize {
                        return Err(FrameError::Damaged("records_len does not match the records"));
                    }
                    Ok(raw)
                }
                codec => {
                    codec.decompress_into(&self.bytes[V2_FIXED..], records_len as usize, scratch)?;
                    Ok(scratch.as_slice())
                }
            },
        }
    }

    /// Calls `f` on every record, checking every length (decompressing into
    /// `scratch` first when compressed).
    pub fn for_each_record(
        &self,
        scratch: &mut Vec<u8>,
        f: impl FnMut(RecordRef<'_>) -> Result<(), FrameError>,
    ) -> Result<(), FrameError> {
        let raw = self.raw_records(scratch)?;
        walk(raw, self.header.count, f)
    }

    /// Decodes the records (timestamps of 0 become the append time).
    pub fn records(&self) -> Result<Vec<Record>, FrameError> {
        let mut scratch = Vec::new();
        // Each record takes at least MIN_RECORD bytes, which bounds the allocation.
        let bound = match self.kind {
            Kind::V1 => self.bytes.len(),
            Kind::V2 { records_len, .. } => records_len as usize,
        } / MIN_RECORD;
        let mut out = Vec::with_capacity((self.header.count as usize).min(bound));
        let at = self.header.append_time_ms;
        self.for_each_record(&mut scratch, |r| {
            out.push(r.to_record(at));
            Ok(())
        })?;
        Ok(out)
    }

    /// The smallest and largest record timestamp, timestamps of 0 counted as
    /// the append time.
    pub fn timestamps(&self) -> Result<(i64, i64), FrameError> {
        let at = self.header.append_time_ms;
        match self.kind {
            Kind::V2 {
                attributes,
                min_ts,
                max_ts,
                ..
            } => {
                let explicit = !(min_ts == 0 && max_ts == 0);
                Ok(match (explicit, attributes & ATTR_APPEND_TIME != 0) {
                    (true, true) => (min_ts.min(at), max_ts.max(at)),
                    (true, false) => (min_ts, max_ts),
                    (false, _) => (at, at),
                })
            }
            Kind::V1 => {
                let mut range: Option<(i64, i64)> = None;
                walk(&self.bytes[PREAMBLE + HEADER..], self.header.count, |r| {
                    let ts = if r.timestamp_ms == 0 { at } else { r.timestamp_ms };
                    range = Some(range.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))));
                    Ok(())
                })?;
                Ok(range.unwrap_or((at, at)))
            }
        }
    }
}

/// The records of whole frames as a Fetch with `frames` returns them, from
/// `offset` on (the first frame may start below it).
pub fn stored_from_frames<B: AsRef<[u8]>>(frames: &[B], offset: u64) -> Result<Vec<Stored>, FrameError> {
    let mut out = Vec::new();
    for bytes in frames {
        let bytes = bytes.as_ref();
        let f = frame(bytes)?;
        if f.len() != bytes.len() {
            return Err(FrameError::Damaged("bytes after the frame"));
        }
        out.extend(f.header.stored(f.records()?).filter(|s| s.offset >= offset));
    }
    Ok(out)
}

/// What a producer may send in one frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_records: usize,
    pub max_record_bytes: usize,
    /// Uncompressed bytes of records.
    pub max_bytes: usize,
}

/// What checking a producer's frame found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub count: u32,
    pub producer: ProducerInfo,
    pub compression: Compression,
    /// Uncompressed bytes of records.
    pub records_len: usize,
}

/// Checks a frame a producer sent, without decoding its records into values:
/// version 2, exactly one frame, both checksums, the limits, and that its
/// count, lengths, timestamps range and attributes tell the truth (so nothing
/// downstream needs to look inside it again). `scratch` holds the
/// decompressed records of a compressed frame.
pub fn validate(bytes: &[u8], limits: &FrameLimits, scratch: &mut Vec<u8>) -> Result<Checked, FrameError> {
    if bytes.len() >= 4 && &bytes[..4] == MAGIC {
        return Err(FrameError::Refused(
            "version 1 frames are not accepted from producers; send version 2".into(),
        ));
    }
    let f = frame(bytes)?;
    if f.len() != bytes.len() {
        return Err(FrameError::Refused(format!(
            "{} bytes after the frame; send one frame per request",
            bytes.len() - f.len()
        )));
    }
    let Kind::V2 {
        attributes,
        min_ts,
        max_ts,
        records_len,
    } = f.kind
    else {
        return Err(FrameError::Damaged("not a version 2 frame"));
    };
    let count = f.header.count as usize;
    if count > limits.max_records {
        return Err(FrameError::Refused(format!(
            "{count} records in one request; at most {}",
            limits.max_records
        )));
    }
    if records_len as usize > limits.max_bytes {
        return Err(FrameError::Refused(format!(
            "{records_len} bytes of records in one request is more than the {} byte limit",
            limits.max_bytes
        )));
    }
    let (mut lo, mut hi, mut zero) = (0i64, 0i64, false);
    let mut i = 0usize;
    f.for_each_record(scratch, |r| {
        if r.encoded_len > limits.max_record_bytes {
            return Err(FrameError::Refused(format!(
                "record {i} is {} bytes, larger than the {} byte limit",
                r.encoded_len, limits.max_record_bytes
            )));
        }
        match r.timestamp_ms {
            0 => zero = true,
            ts if lo == 0 && hi == 0 => (lo, hi) = (ts, ts),
            ts => (lo, hi) = (lo.min(ts), hi.max(ts)),
        }
        i += 1;
        Ok(())
    })?;
    if (lo, hi) != (min_ts, max_ts) || zero != (attributes & ATTR_APPEND_TIME != 0) {
        return Err(FrameError::Refused(
            "the header's timestamp range or attributes do not match the records".into(),
        ));
    }
    Ok(Checked {
        count: f.header.count,
        producer: f.header.producer,
        compression: f.compression(),
        records_len: records_len as usize,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header() -> BatchHeader {
        BatchHeader {
            base_offset: 42,
            count: 3,
            producer: ProducerInfo {
                producer_id: 7,
                epoch: 2,
                base_sequence: 100,
            },
            append_time_ms: 1_700_000_000_000,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record {
                key: Some(b"k".to_vec()),
                value: b"v1".to_vec(),
                timestamp_ms: 5,
                headers: vec![],
            },
            Record {
                key: None,
                value: vec![],
                timestamp_ms: -6,
                headers: vec![("h".into(), b"x".to_vec())],
            },
            Record {
                key: Some(vec![]),
                value: vec![0; 1000],
                timestamp_ms: 9,
                headers: vec![],
            },
        ]
    }

    fn built(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut b = FrameBuilder::with_capacity(0);
        for r in records {
            b.push_record(r);
        }
        b.finish(&header(), compression)
    }

    fn limits() -> FrameLimits {
        FrameLimits {
            max_records: 1000,
            max_record_bytes: 1 << 20,
            max_bytes: 4 << 20,
        }
    }

    #[test]
    fn round_trip_in_every_compression_and_the_old_version() {
        let records = sample();
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let buf = built(&records, compression);
            let f = frame(&buf).unwrap();
            assert_eq!(f.len(), buf.len());
            assert_eq!(f.header, header());
            assert_eq!(f.compression(), compression, "1,000 zeros compress");
            assert_eq!(f.records().unwrap(), records);
            assert_eq!(f.timestamps().unwrap(), (-6, 9));
            let checked = validate(&buf, &limits(), &mut Vec::new()).unwrap();
            assert_eq!((checked.count, checked.producer), (3, header().producer));
            assert_eq!(
                checked.records_len,
                records.iter().map(Record::encoded_len).sum::<usize>()
            );
        }
        let uncompressed = built(&records, Compression::None);
        let sizes: usize = records.iter().map(Record::encoded_len).sum();
        assert_eq!(uncompressed.len(), V2_FIXED + sizes);
        assert!(built(&records, Compression::Lz4).len() < uncompressed.len() / 3);

        let mut v1 = Vec::new();
        encode_v1(&header(), &records, &mut v1);
        let f = frame(&v1).unwrap();
        assert_eq!((f.header, f.records().unwrap()), (header(), records));
        assert!(
            matches!(validate(&v1, &limits(), &mut Vec::new()), Err(FrameError::Refused(_))),
            "producers send version 2"
        );
    }

    #[test]
    fn incompressible_records_are_stored_as_they_are() {
        let mut seed = 1u64;
        let noise: Vec<u8> = (0..500)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        let records = vec![Record {
            value: noise,
            timestamp_ms: 1,
            ..Default::default()
        }];
        let f = built(&records, Compression::Zstd);
        assert_eq!(frame(&f).unwrap().compression(), Compression::None);
    }

    #[test]
    fn stamping_changes_offsets_and_time_but_not_the_body() {
        let mut buf = built(&sample(), Compression::Lz4);
        let body = buf[V2_HEAD..].to_vec();
        stamp(&mut buf, 9_000, 77);
        assert_eq!(&buf[V2_HEAD..], &body[..], "records untouched");
        let f = frame(&buf).unwrap();
        assert_eq!((f.header.base_offset, f.header.append_time_ms), (9_000, 77));
        assert_eq!(f.header.producer, header().producer);
        // A retry under another identity: only the head is new.
        let producer = ProducerInfo {
            producer_id: 8,
            epoch: 0,
            base_sequence: 5,
        };
        let head = head_for(&buf, producer);
        let resent = [&head[..], &buf[V2_HEAD..]].concat();
        assert_eq!(frame(&resent).unwrap().header.producer, producer);
    }

    #[test]
    fn timestamps_of_zero_read_as_the_append_time() {
        let records = vec![
            Record {
                timestamp_ms: 0,
                ..Default::default()
            },
            Record {
                timestamp_ms: 1_800_000_000_000,
                ..Default::default()
            },
        ];
        let buf = built(&records, Compression::None);
        let f = frame(&buf).unwrap();
        let at = header().append_time_ms;
        assert_eq!(f.records().unwrap()[0].timestamp_ms, at);
        assert_eq!(f.timestamps().unwrap(), (at, 1_800_000_000_000));
        let only_zero = built(&records[..1], Compression::None);
        assert_eq!(frame(&only_zero).unwrap().timestamps().unwrap(), (at, at));
        validate(&only_zero, &limits(), &mut Vec::new()).unwrap();
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        for buf in [built(&sample(), Compression::None), {
            let mut v1 = Vec::new();
            encode_v1(&header(), &sample(), &mut v1);
            v1
        }] {
            for cut in 0..buf.len() {
                assert!(
                    matches!(frame(&buf[..cut]), Err(FrameError::Truncated { .. })),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        for compression in [Compression::None, Compression::Zstd] {
            let buf = built(&sample(), compression);
            let good = (frame(&buf).unwrap().header, sample());
            for i in 0..buf.len() {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                let decoded = frame(&bad).and_then(|f| Ok((f.header, f.records()?)));
                assert!(decoded.is_err() || decoded.unwrap() != good, "flip at {i} undetected");
                assert!(
                    validate(&bad, &limits(), &mut Vec::new()).is_err(),
                    "flip at {i} validated"
                );
            }
        }
    }

    /// A frame whose checksums are right but whose claims are not: what a
    /// buggy or hostile producer could send.
    fn resealed(mut buf: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        edit(&mut buf);
        let length = (buf.len() - 8) as u32;
        buf[4..8].copy_from_slice(&length.to_le_bytes());
        let body_crc = crc32fast::hash(&buf[V2_HEAD..]);
        buf[48..52].copy_from_slice(&body_crc.to_le_bytes());
        seal_head(&mut buf[..V2_HEAD]);
        buf
    }

    #[test]
    fn validation_refuses_what_the_limits_or_the_truth_forbid() {
        let buf = built(&sample(), Compression::None);
        let refused = |bytes: &[u8], limits: FrameLimits| match validate(bytes, &limits, &mut Vec::new()) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("validated {c:?}"),
        };
        let small = FrameLimits {
            max_records: 2,
            ..limits()
        };
        assert!(refused(&buf, small).contains("3 records"));
        let small = FrameLimits {
            max_record_bytes: 100,
            ..limits()
        };
        assert!(refused(&buf, small).contains("record 2 is 1020 bytes"));
        let small = FrameLimits {
            max_bytes: 1000,
            ..limits()
        };
        assert!(refused(&buf, small).contains("byte limit"));
        let two = [&buf[..], &buf[..]].concat();
        assert!(refused(&two, limits()).contains("one frame per request"));
        // A count that claims fewer records than there are.
        let lying = resealed(buf.clone(), |b| {
            b[V2_HEAD + 2..V2_HEAD + 6].copy_from_slice(&2u32.to_le_bytes())
        });
        assert!(refused(&lying, limits()).contains("after the last record"));
        // A timestamp range that is not the records'.
        let lying = resealed(buf.clone(), |b| {
            b[V2_HEAD + 14..V2_HEAD + 22].copy_from_slice(&99i64.to_le_bytes())
        });
        assert!(refused(&lying, limits()).contains("timestamp range"));
        // records_len that is not the records' length.
        let lying = resealed(buf.clone(), |b| {
            b[V2_HEAD + 22..V2_HEAD + 26].copy_from_slice(&5u32.to_le_bytes())
        });
        assert!(refused(&lying, limits()).contains("records_len"));
        // A compressed frame that inflates past what it declared.
        let zipped = built(&sample(), Compression::Lz4);
        let bomb = resealed(zipped, |b| {
            b[V2_HEAD + 22..V2_HEAD + 26].copy_from_slice(&10u32.to_le_bytes())
        });
        assert!(validate(&bomb, &limits(), &mut Vec::new()).is_err());
        // An unknown attribute bit.
        let odd = resealed(buf, |b| b[V2_HEAD] |= 0x40);
        assert!(refused(&odd, limits()).contains("attributes"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut scratch = Vec::new();
        for len in 0..3000 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if len > 8 && len % 2 == 0 {
                bytes[..4].copy_from_slice(if len % 4 == 0 { MAGIC_V2 } else { MAGIC });
                bytes[4..8].copy_from_slice(&((len - 8) as u32).to_le_bytes());
            }
            if let Ok(f) = frame(&bytes) {
                let _ = f.records();
                let _ = f.timestamps();
            }
            let _ = validate(&bytes, &limits(), &mut scratch);
        }
    }
}
