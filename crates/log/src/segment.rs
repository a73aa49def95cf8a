//! Segment files: what a partition's records become in object storage.
//! Self-describing, checksummed, LZ4-compressed in blocks, and indexed by
//! offset and timestamp, so anything with object-store access can read them
//! with three range reads (footer, index, block) and no agent.
//!
//! ```text
//! block*   whole batch frames, about BLOCK_BYTES raw each: LZ4 (size-prepended)
//!          of the frames, or the frames as they are when a block is `stored`
//!          (frames whose producer compressed them are never compressed again)
//! index    one entry per block (see `BlockEntry::SIZE`; version 1: without flags)
//! footer   FOOTER_SIZE bytes, last in the file:
//!          index_pos u64 | index_len u32 | index_crc u32 | base_offset u64 |
//!          next_offset u64 | records u64 | min_ts i64 | max_ts i64 |
//!          epoch u64 | version u32 | footer_crc u32 | magic "CSEG"
//! ```
//!
//! Inside a block the batch frames keep their own CRCs; the index carries a
//! CRC of each block as stored. Decoding never panics on any bytes. Version 1
//! segments (no flags, every block LZ4) are still read.

use std::ops::Range;

use crate::batch::{self, BatchHeader, Compression, Frame, Record, Stored};

/// The last four bytes of every segment.
pub const MAGIC: &[u8; 4] = b"CSEG";
/// Format version written.
pub const VERSION: u32 = 2;
/// Bytes of the footer.
pub const FOOTER_SIZE: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 4 + 4 + 4;
/// Raw bytes gathered into one compressed block.
pub const BLOCK_BYTES: usize = 256 * 1024;

/// Why bytes are not a (part of a) segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment damaged: {0}")]
pub struct SegmentError(pub String);

fn damaged(what: impl Into<String>) -> SegmentError {
    SegmentError(what.into())
}

/// A segment's summary, from its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub index_pos: u64,
    pub index_len: u32,
    index_crc: u32,
    pub base_offset: u64,
    pub next_offset: u64,
    pub records: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Lease epoch of the holder that wrote it.
    pub epoch: u64,
    /// The format version (1 or 2).
    pub version: u32,
}

/// Where one block is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    pub first_offset: u64,
    pub next_offset: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub pos: u64,
    pub len: u32,
    pub raw_len: u32,
    crc: u32,
    /// The frames as they are, not LZ4-compressed (they were compressed by their producer).
    pub stored: bool,
}

const FLAG_STORED: u32 = 1;

impl BlockEntry {
    const SIZE_V1: usize = 8 * 5 + 4 * 3;
    const SIZE: usize = Self::SIZE_V1 + 4;

    fn size(version: u32) -> usize {
        if version == 1 { Self::SIZE_V1 } else { Self::SIZE }
    }

    /// The byte range of the compressed block in the segment.
    pub fn range(&self) -> Range<u64> {
        self.pos..self.pos + u64::from(self.len)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.first_offset,
            self.next_offset,
            self.min_ts as u64,
            self.max_ts as u64,
            self.pos,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let flags = if self.stored { FLAG_STORED } else { 0 };
        for v in [self.len, self.raw_len, self.crc, flags] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Builds a segment from batches in offset order.
pub struct SegmentBuilder {
    epoch: u64,
    out: Vec<u8>,
    index: Vec<BlockEntry>,
    raw: Vec<u8>,
    block: Option<BlockEntry>,
    footer: Option<(u64, u64, u64, i64, i64)>, // base, next, records, min_ts, max_ts
}

impl SegmentBuilder {
    /// A builder for a segment written under lease `epoch`.
    pub fn new(epoch: u64) -> Self {
        SegmentBuilder {
            epoch,
            out: Vec::new(),
            index: Vec::new(),
            raw: Vec::new(),
            block: None,
            footer: None,
        }
    }

    /// Adds a batch; batches must be contiguous in offset.
    pub fn push(&mut self, header: &BatchHeader, records: &[Record]) -> Result<(), SegmentError> {
        let mut frame = Vec::new();
        batch::encode(header, records, &mut frame);
        self.push_frame(&batch::frame(&frame).map_err(|e| damaged(e.to_string()))?)
    }

    /// Adds a checked frame as it is; frames must be contiguous in offset.
    pub fn push_frame(&mut self, frame: &Frame<'_>) -> Result<(), SegmentError> {
        let header = &frame.header;
        let (min_ts, max_ts) = frame.timestamps().map_err(|e| damaged(e.to_string()))?;
        match &mut self.footer {
            Some((_, next, count, lo, hi)) => {
                if header.base_offset != *next {
                    return Err(damaged(format!(
                        "batch at {} does not follow {next}",
                        header.base_offset
                    )));
                }
                *next = header.next_offset();
                *count += u64::from(header.count);
                *lo = (*lo).min(min_ts);
                *hi = (*hi).max(max_ts);
            }
            None => {
                self.footer = Some((
                    header.base_offset,
                    header.next_offset(),
                    u64::from(header.count),
                    min_ts,
                    max_ts,
                ))
            }
        }
        let stored = frame.compression() != Compression::None;
        if self.block.is_some_and(|b| b.stored != stored) {
            self.seal_block();
        }
        let block = self.block.get_or_insert(BlockEntry {
            first_offset: header.base_offset,
            next_offset: header.base_offset,
            min_ts,
            max_ts,
            pos: 0,
            len: 0,
            raw_len: 0,
            crc: 0,
            stored,
        });
        block.next_offset = header.next_offset();
        block.min_ts = block.min_ts.min(min_ts);
        block.max_ts = block.max_ts.max(max_ts);
        self.raw.extend_from_slice(frame.bytes());
        if self.raw.len() >= BLOCK_BYTES {
            self.seal_block();
        }
        Ok(())
    }

    fn seal_block(&mut self) {
        let Some(mut entry) = self.block.take() else { return };
        entry.pos = self.out.len() as u64;
        entry.raw_len = self.raw.len() as u32;
        if entry.stored {
            entry.len = self.raw.len() as u32;
            entry.crc = crc32fast::hash(&self.raw);
            self.out.extend_from_slice(&self.raw);
        } else {
            let compressed = lz4_flex::compress_prepend_size(&self.raw);
            entry.len = compressed.len() as u32;
            entry.crc = crc32fast::hash(&compressed);
            self.out.extend_from_slice(&compressed);
        }
        self.index.push(entry);
        self.raw.clear();
    }

    /// The offsets covered so far: `[base, next)`.
    pub fn offsets(&self) -> Option<Range<u64>> {
        self.footer.map(|(base, next, ..)| base..next)
    }

    /// Finishes the segment. `None` if no batch was pushed.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        self.seal_block();
        let (base, next, records, min_ts, max_ts) = self.footer?;
        let index_pos = self.out.len() as u64;
        let mut index = Vec::with_capacity(self.index.len() * BlockEntry::SIZE);
        for entry in &self.index {
            entry.encode(&mut index);
        }
        let index_crc = crc32fast::hash(&index);
        self.out.extend_from_slice(&index);
        let start = self.out.len();
        self.out.extend_from_slice(&index_pos.to_le_bytes());
        self.out.extend_from_slice(&(index.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&index_crc.to_le_bytes());
        for v in [base, next, records, min_ts as u64, max_ts as u64, self.epoch] {
            self.out.extend_from_slice(&v.to_le_bytes());
        }
        self.out.extend_from_slice(&VERSION.to_le_bytes());
        let crc = crc32fast::hash(&self.out[start..]);
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.out.extend_from_slice(MAGIC);
        Some(self.out)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the footer from a segment's last [`FOOTER_SIZE`] bytes.
pub fn read_footer(tail: &[u8]) -> Result<Footer, SegmentError> {
    if tail.len() < FOOTER_SIZE {
        return Err(damaged("shorter than a footer"));
    }
    let f = &tail[tail.len() - FOOTER_SIZE..];
    if &f[FOOTER_SIZE - 4..] != MAGIC {
        return Err(damaged("bad magic"));
    }
    let crc_at = FOOTER_SIZE - 8;
    if crc32fast::hash(&f[..crc_at]) != u32_at(f, crc_at) {
        return Err(damaged("footer checksum mismatch"));
    }
    let version = u32_at(f, crc_at - 4);
    if !(1..=VERSION).contains(&version) {
        return Err(damaged(format!("unknown version {version}")));
    }
    let footer = Footer {
        index_pos: u64_at(f, 0),
        index_len: u32_at(f, 8),
        index_crc: u32_at(f, 12),
        base_offset: u64_at(f, 16),
        next_offset: u64_at(f, 24),
        records: u64_at(f, 32),
        min_ts: u64_at(f, 40) as i64,
        max_ts: u64_at(f, 48) as i64,
        epoch: u64_at(f, 56),
        version,
    };
    if footer.next_offset < footer.base_offset || !(footer.index_len as usize).is_multiple_of(BlockEntry::size(version))
    {
        return Err(damaged("impossible footer"));
    }
    Ok(footer)
}

/// The byte range of the index, given the segment's size.
pub fn index_range(footer: &Footer, size: u64) -> Result<Range<u64>, SegmentError> {
    let end = footer
        .index_pos
        .checked_add(u64::from(footer.index_len))
        .ok_or_else(|| damaged("index overflows"))?;
    if end + FOOTER_SIZE as u64 != size {
        return Err(damaged("index does not end at the footer"));
    }
    Ok(footer.index_pos..end)
}

/// Parses and checks the index.
pub fn read_index(footer: &Footer, bytes: &[u8]) -> Result<Vec<BlockEntry>, SegmentError> {
    if bytes.len() != footer.index_len as usize || crc32fast::hash(bytes) != footer.index_crc {
        return Err(damaged("index checksum mismatch"));
    }
    let entries: Vec<BlockEntry> = bytes
        .chunks_exact(BlockEntry::size(footer.version))
        .map(|c| BlockEntry {
            first_offset: u64_at(c, 0),
            next_offset: u64_at(c, 8),
            min_ts: u64_at(c, 16) as i64,
            max_ts: u64_at(c, 24) as i64,
            pos: u64_at(c, 32),
            len: u32_at(c, 40),
            raw_len: u32_at(c, 44),
            crc: u32_at(c, 48),
            stored: footer.version >= 2 && u32_at(c, 52) & FLAG_STORED != 0,
        })
        .collect();
    let dense = entries.windows(2).all(|w| w[0].next_offset == w[1].first_offset);
    let bounds = entries.first().is_none_or(|e| e.first_offset == footer.base_offset)
        && entries.last().is_none_or(|e| e.next_offset == footer.next_offset);
    if !dense || !bounds || entries.iter().any(|e| e.pos + u64::from(e.len) > footer.index_pos) {
        return Err(damaged("index entries are not contiguous"));
    }
    Ok(entries)
}

/// The block holding `offset`.
pub fn block_for_offset(index: &[BlockEntry], offset: u64) -> Option<usize> {
    let i = index.partition_point(|e| e.next_offset <= offset);
    (i < index.len() && index[i].first_offset <= offset).then_some(i)
}

/// The first block that may hold a record with timestamp ≥ `ts`.
pub fn block_for_timestamp(index: &[BlockEntry], ts: i64) -> Option<usize> {
    index.iter().position(|e| e.max_ts >= ts)
}

/// Decompresses and decodes a block's records with their offsets.
pub fn read_block(entry: &BlockEntry, compressed: &[u8]) -> Result<Vec<Stored>, SegmentError> {
    if compressed.len() != entry.len as usize || crc32fast::hash(compressed) != entry.crc {
        return Err(damaged("block checksum mismatch"));
    }
    let inflated;
    let raw = if entry.stored {
        compressed
    } else {
        inflated = lz4_flex::decompress_size_prepended(compressed).map_err(|e| damaged(e.to_string()))?;
        &inflated[..]
    };
    if raw.len() != entry.raw_len as usize {
        return Err(damaged("block size mismatch"));
    }
    let mut out = Vec::new();
    let mut rest = raw;
    let mut expected = entry.first_offset;
    while !rest.is_empty() {
        let frame = batch::frame(rest).map_err(|e| damaged(e.to_string()))?;
        let header = frame.header;
        if header.base_offset != expected {
            return Err(damaged("batches in a block are not contiguous"));
        }
        expected = header.next_offset();
        out.extend(header.stored(frame.records().map_err(|e| damaged(e.to_string()))?));
        rest = &rest[frame.len()..];
    }
    if expected != entry.next_offset {
        return Err(damaged("block ends at the wrong offset"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::ProducerInfo;

    fn build(batches: u64, per: u32, value_len: usize) -> Vec<u8> {
        let mut b = SegmentBuilder::new(7);
        for i in 0..batches {
            let header = BatchHeader {
                base_offset: 100 + i * u64::from(per),
                count: per,
                producer: ProducerInfo::default(),
                append_time_ms: 0,
            };
            let records: Vec<Record> = (0..per)
                .map(|j| Record {
                    value: format!("{:0>width$}", i * 1000 + u64::from(j), width = value_len).into_bytes(),
                    timestamp_ms: (i * 10) as i64,
                    ..Default::default()
                })
                .collect();
            b.push(&header, &records).unwrap();
        }
        b.finish().unwrap()
    }

    fn read_all(seg: &[u8]) -> Vec<Stored> {
        let footer = read_footer(seg).unwrap();
        let range = index_range(&footer, seg.len() as u64).unwrap();
        let index = read_index(&footer, &seg[range.start as usize..range.end as usize]).unwrap();
        index
            .iter()
            .flat_map(|e| read_block(e, &seg[e.range().start as usize..e.range().end as usize]).unwrap())
            .collect()
    }

    #[test]
    fn round_trip_across_blocks() {
        let seg = build(400, 10, 100);
        let footer = read_footer(&seg).unwrap();
        assert_eq!(
            (footer.base_offset, footer.next_offset, footer.records, footer.epoch),
            (100, 4100, 4000, 7)
        );
        assert_eq!((footer.min_ts, footer.max_ts), (0, 3990));
        let range = index_range(&footer, seg.len() as u64).unwrap();
        let index = read_index(&footer, &seg[range.start as usize..range.end as usize]).unwrap();
        assert!(index.len() > 1, "several blocks");
        let records = read_all(&seg);
        assert_eq!(records.len(), 4000);
        assert!(records.iter().enumerate().all(|(i, s)| s.offset == 100 + i as u64));
        assert!(seg.len() < 4000 * 100 / 2, "compressed: {} bytes", seg.len());

        let b = block_for_offset(&index, 2345).unwrap();
        assert!(index[b].first_offset <= 2345 && 2345 < index[b].next_offset);
        assert_eq!(block_for_offset(&index, 99), None);
        assert_eq!(block_for_offset(&index, 4100), None);
        let t = block_for_timestamp(&index, 2000).unwrap();
        assert!(index[t].max_ts >= 2000 && (t == 0 || index[t - 1].max_ts < 2000));
    }

    #[test]
    fn every_byte_flip_is_detected_or_harmless() {
        let seg = build(20, 5, 10);
        let good = read_all(&seg);
        for i in 0..seg.len() {
            let mut bad = seg.clone();
            bad[i] ^= 0x41;
            let outcome = std::panic::catch_unwind(|| {
                let footer = read_footer(&bad)?;
                let range = index_range(&footer, bad.len() as u64)?;
                let index = read_index(&footer, &bad[range.start as usize..range.end as usize])?;
                let mut all = Vec::new();
                for e in &index {
                    let r = e.range();
                    let block = bad
                        .get(r.start as usize..r.end as usize)
                        .ok_or_else(|| damaged("range"))?;
                    all.extend(read_block(e, block)?);
                }
                Ok::<_, SegmentError>(all)
            });
            match outcome {
                Err(_) => panic!("decoding panicked after flipping byte {i}"),
                Ok(Ok(all)) => assert_eq!(all, good, "byte {i} changed the data undetected"),
                Ok(Err(_)) => {}
            }
        }
    }

    #[test]
    fn truncated_segments_are_rejected() {
        let seg = build(5, 5, 10);
        for cut in 0..seg.len() {
            assert!(
                read_footer(&seg[..cut])
                    .and_then(|f| index_range(&f, cut as u64))
                    .is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn non_contiguous_batches_are_refused() {
        let mut b = SegmentBuilder::new(1);
        let h = |base| BatchHeader {
            base_offset: base,
            count: 1,
            producer: ProducerInfo::default(),
            append_time_ms: 0,
        };
        b.push(&h(0), &[Record::default()]).unwrap();
        assert!(b.push(&h(5), &[Record::default()]).is_err());
        assert_eq!(b.offsets(), Some(0..1));
        assert!(SegmentBuilder::new(1).finish().is_none());
    }

    #[test]
    fn frames_compressed_by_their_producer_are_stored_as_they_are() {
        let mut b = SegmentBuilder::new(3);
        let mut frames = Vec::new();
        for (i, compression) in [
            Compression::None,
            Compression::Zstd,
            Compression::Lz4,
            Compression::None,
        ]
        .into_iter()
        .enumerate()
        {
            let mut fb = batch::FrameBuilder::with_capacity(0);
            for j in 0..50 {
                fb.push(None, format!("{i}-{j:0>40}").as_bytes(), 0, std::iter::empty());
            }
            let header = BatchHeader {
                base_offset: 10 + 50 * i as u64,
                count: 50,
                producer: ProducerInfo::default(),
                append_time_ms: 1_000 + i as i64,
            };
            let frame = fb.finish(&header, compression);
            b.push_frame(&batch::frame(&frame).unwrap()).unwrap();
            frames.push(frame);
        }
        let seg = b.finish().unwrap();
        for f in &frames[1..3] {
            assert!(
                seg.windows(f.len()).any(|w| w == &f[..]),
                "a compressed frame is in the segment byte for byte"
            );
        }
        let footer = read_footer(&seg).unwrap();
        assert_eq!(
            (footer.min_ts, footer.max_ts),
            (1_000, 1_003),
            "timestamps of 0 are append times"
        );
        let range = index_range(&footer, seg.len() as u64).unwrap();
        let index = read_index(&footer, &seg[range.start as usize..range.end as usize]).unwrap();
        assert_eq!(
            index.iter().map(|e| e.stored).collect::<Vec<_>>(),
            [false, true, false],
            "stored frames get a block of their own"
        );
        let records = read_all(&seg);
        assert_eq!(records.len(), 200);
        assert!(records.iter().enumerate().all(|(i, s)| s.offset == 10 + i as u64));
        assert_eq!(records[60].record.value, format!("1-{:0>40}", 10).into_bytes());
        assert_eq!(records[60].record.timestamp_ms, 1_001);
    }

    /// The same segment in version 1 (every block LZ4, no flags in the index).
    fn as_version_1(seg: &[u8]) -> Vec<u8> {
        let footer = read_footer(seg).unwrap();
        let range = index_range(&footer, seg.len() as u64).unwrap();
        let index = read_index(&footer, &seg[range.start as usize..range.end as usize]).unwrap();
        assert!(index.iter().all(|e| !e.stored));
        let mut out = seg[..footer.index_pos as usize].to_vec();
        let mut v1_index = Vec::new();
        for e in &index {
            let mut entry = Vec::new();
            e.encode(&mut entry);
            v1_index.extend_from_slice(&entry[..BlockEntry::SIZE_V1]);
        }
        out.extend_from_slice(&v1_index);
        let start = out.len();
        out.extend_from_slice(&footer.index_pos.to_le_bytes());
        out.extend_from_slice(&(v1_index.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&v1_index).to_le_bytes());
        for v in [
            footer.base_offset,
            footer.next_offset,
            footer.records,
            footer.min_ts as u64,
            footer.max_ts as u64,
            footer.epoch,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(MAGIC);
        out
    }

    #[test]
    fn version_1_segments_stay_readable() {
        let seg = build(50, 10, 20);
        let v1 = as_version_1(&seg);
        assert_eq!(read_footer(&v1).unwrap().version, 1);
        assert_eq!(read_all(&v1), read_all(&seg));
    }
}
