//! The per-partition write-ahead log: checksummed batch frames appended to one
//! file, fsynced (fdatasync) in groups by the partition's writer.
//!
//! Recovery reads every frame and verifies its checksum and that offsets are
//! dense. A bad frame with no valid frame after it is a torn tail (a write the
//! crash interrupted, never acknowledged as durable) and is truncated. A bad
//! frame followed by a valid one is corruption in the middle: recovery refuses,
//! loudly, rather than drop acknowledged records.
//!
//! Until segments reach object storage (not built yet) the WAL is never
//! truncated at the front: it is the whole log.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use crate::{
    batch::{self, BatchHeader, FrameError, PREAMBLE, Record},
    error::{Error, Result},
};

const FILE_NAME: &str = "00000000000000000000.wal";

/// Where one batch lives in the file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    base_offset: u64,
    next_offset: u64,
    position: u64,
    len: u32,
    append_time_ms: i64,
}

/// Read access to a partition's WAL, shared with fetches.
pub struct WalReader {
    file: File,
    index: RwLock<Vec<Entry>>,
}

/// The writer's handle: appends and syncs.
pub struct Wal {
    file: File,
    size: u64,
    next_offset: u64,
    reader: Arc<WalReader>,
}

/// What recovery found.
pub struct Recovered {
    pub wal: Wal,
    /// Headers of every batch, oldest first (to rebuild producer state).
    pub batches: Vec<BatchHeader>,
    /// Bytes of torn tail that were cut off.
    pub truncated: u64,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers it. `floor` is
    /// the partition's committed offset: an empty WAL starts there (the disk
    /// was lost or replaced; segments hold everything below), and a WAL that
    /// ends below it is refused (it would hand out offsets segments already hold).
    pub fn open(dir: &Path, floor: u64) -> Result<Recovered> {
        std::fs::create_dir_all(dir)?;
        let path: PathBuf = dir.join(FILE_NAME);
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let (entries, batches, valid_len) = scan(&mut file, &path)?;
        let size = file.metadata()?.len();
        let truncated = size - valid_len;
        if truncated > 0 {
            tracing::warn!(path = %path.display(), bytes = truncated, "truncating torn WAL tail");
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        // Make the directory entry durable too, for a freshly created file.
        File::open(dir)?.sync_all()?;
        if let Some(last) = entries.last()
            && last.next_offset < floor
        {
            return Err(Error::Corrupt(format!(
                "{}: the WAL ends at offset {} but segments are committed up to {floor}",
                path.display(),
                last.next_offset
            )));
        }
        let next_offset = entries.last().map_or(floor, |e| e.next_offset);
        let reader = Arc::new(WalReader {
            file: File::open(&path)?,
            index: RwLock::new(entries),
        });
        Ok(Recovered {
            wal: Wal {
                file,
                size: valid_len,
                next_offset,
                reader,
            },
            batches,
            truncated,
        })
    }

    /// The offset the next batch gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The shared reader.
    pub fn reader(&self) -> Arc<WalReader> {
        self.reader.clone()
    }

    /// Appends encoded frames (whose headers are `headers`, in order). Not
    /// durable until [`Wal::sync`].
    pub fn append(&mut self, frames: &[u8], headers: &[(BatchHeader, u32)]) -> Result<()> {
        self.file.write_all(frames)?;
        let mut position = self.size;
        let mut index = self.reader.index.write().unwrap_or_else(|p| p.into_inner());
        for (header, len) in headers {
            index.push(Entry {
                base_offset: header.base_offset,
                next_offset: header.next_offset(),
                position,
                len: *len,
                append_time_ms: header.append_time_ms,
            });
            position += u64::from(*len);
            self.next_offset = header.next_offset();
        }
        self.size = position;
        Ok(())
    }

    /// fdatasync: everything appended so far survives a crash.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data()?;
        Ok(())
    }
}

impl WalReader {
    /// Records from `offset` up to (not including) `end`, about `max_bytes`
    /// of them, but at least one batch's worth when any is available.
    pub fn read(&self, offset: u64, end: u64, max_bytes: usize) -> Result<Vec<(u64, Record)>> {
        let entries: Vec<Entry> = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            let first = index.partition_point(|e| e.next_offset <= offset);
            let mut taken = 0usize;
            index[first..]
                .iter()
                .take_while(|e| e.base_offset < end)
                .take_while(|e| {
                    let fits = taken == 0 || taken + e.len as usize <= max_bytes;
                    taken += e.len as usize;
                    fits
                })
                .copied()
                .collect()
        };
        let mut out = Vec::new();
        for entry in entries {
            let mut buf = vec![0u8; entry.len as usize];
            self.file.read_exact_at(&mut buf, entry.position)?;
            let (_, body) = batch::frame(&buf).map_err(|e| Error::Corrupt(format!("at {}: {e}", entry.position)))?;
            let (header, records) = batch::decode(body).map_err(|e| Error::Corrupt(e.to_string()))?;
            for (i, record) in records.into_iter().enumerate() {
                let at = header.base_offset + i as u64;
                if at >= offset && at < end {
                    out.push((at, record));
                }
            }
        }
        Ok(out)
    }
}

impl WalReader {
    /// Whole batches with `from <= base` and `next <= to`, in order (for segments).
    pub fn read_batches(&self, from: u64, to: u64) -> Result<Vec<(BatchHeader, Vec<Record>)>> {
        let entries: Vec<Entry> = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            let first = index.partition_point(|e| e.base_offset < from);
            index[first..]
                .iter()
                .take_while(|e| e.next_offset <= to)
                .copied()
                .collect()
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut buf = vec![0u8; entry.len as usize];
            self.file.read_exact_at(&mut buf, entry.position)?;
            let (_, body) = batch::frame(&buf).map_err(|e| Error::Corrupt(format!("at {}: {e}", entry.position)))?;
            out.push(batch::decode(body).map_err(|e| Error::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    /// Bytes and the oldest append time (unix ms) of the batches in `[from, to)`.
    pub fn pending(&self, from: u64, to: u64) -> (u64, Option<i64>) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let first = index.partition_point(|e| e.base_offset < from);
        let (mut bytes, mut oldest) = (0u64, None);
        for e in index[first..].iter().take_while(|e| e.next_offset <= to) {
            bytes += u64::from(e.len);
            oldest.get_or_insert(e.append_time_ms);
        }
        (bytes, oldest)
    }
}

/// Reads every frame; returns the index, headers, and the length of the valid prefix.
fn scan(file: &mut File, path: &Path) -> Result<(Vec<Entry>, Vec<BatchHeader>, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, &mut *file);
    let mut entries = Vec::new();
    let mut headers = Vec::new();
    let mut position = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.resize(PREAMBLE, 0);
        let got = read_up_to(&mut reader, &mut buf)?;
        if got == 0 {
            break;
        }
        let problem = if got < PREAMBLE {
            Some(FrameError::Truncated {
                need: PREAMBLE,
                have: got,
            })
        } else {
            match batch::frame(&buf) {
                Err(FrameError::Truncated { need, .. }) => {
                    buf.resize(need, 0);
                    let more = read_up_to(&mut reader, &mut buf[PREAMBLE..])?;
                    buf.truncate(PREAMBLE + more);
                    batch::frame(&buf).err()
                }
                Err(e) => Some(e),
                Ok(_) => None,
            }
        };
        let header = match problem {
            None => batch::frame(&buf)
                .and_then(|(_, body)| batch::decode_header(body))
                .map_err(|e| Error::Corrupt(e.to_string()))?,
            Some(problem) => {
                drop(reader);
                return classify_tail(file, path, position, problem, entries, headers);
            }
        };
        let expected = headers.last().map_or(header.base_offset, BatchHeader::next_offset);
        if header.base_offset != expected {
            return Err(Error::Corrupt(format!(
                "{}: batch at byte {position} starts at offset {} but {expected} was expected",
                path.display(),
                header.base_offset
            )));
        }
        entries.push(Entry {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            position,
            len: buf.len() as u32,
            append_time_ms: header.append_time_ms,
        });
        headers.push(header);
        position += buf.len() as u64;
    }
    Ok((entries, headers, position))
}

/// A bad frame at `position`: a torn tail if nothing valid follows, else corruption.
fn classify_tail(
    file: &mut File,
    path: &Path,
    position: u64,
    problem: FrameError,
    entries: Vec<Entry>,
    headers: Vec<BatchHeader>,
) -> Result<(Vec<Entry>, Vec<BatchHeader>, u64)> {
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(position))?;
    file.read_to_end(&mut rest)?;
    let later_valid = (1..rest.len()).any(|i| rest[i..].starts_with(batch::MAGIC) && batch::frame(&rest[i..]).is_ok());
    if later_valid {
        return Err(Error::Corrupt(format!(
            "{}: damaged batch at byte {position} ({problem}) with valid batches after it; refusing to recover",
            path.display()
        )));
    }
    Ok((entries, headers, position))
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::ProducerInfo;

    fn batch_at(base_offset: u64, n: u32) -> (Vec<u8>, BatchHeader) {
        let header = BatchHeader {
            base_offset,
            count: n,
            producer: ProducerInfo::default(),
            append_time_ms: 1,
        };
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                value: format!("r{}", base_offset + u64::from(i)).into_bytes(),
                ..Default::default()
            })
            .collect();
        let mut buf = Vec::new();
        batch::encode(&header, &records, &mut buf);
        (buf, header)
    }

    fn write_batches(wal: &mut Wal, sizes: &[u32]) {
        for &n in sizes {
            let (frame, header) = batch_at(wal.next_offset(), n);
            wal.append(&frame, &[(header, frame.len() as u32)]).unwrap();
        }
        wal.sync().unwrap();
    }

    #[test]
    fn recovery_rebuilds_offsets_and_reads() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[3, 1, 5]);
        drop(wal);
        let recovered = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(recovered.wal.next_offset(), 9);
        assert_eq!(recovered.batches.len(), 3);
        assert_eq!(recovered.truncated, 0);
        let records = recovered.wal.reader().read(2, 9, usize::MAX).unwrap();
        let offsets: Vec<u64> = records.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (2..9).collect::<Vec<_>>());
        assert_eq!(records[0].1.value, b"r2");
    }

    #[test]
    fn a_torn_tail_is_truncated_at_every_cut_point() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2, 2]);
        drop(wal);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        let (extra, _) = batch_at(4, 3);
        for cut in 1..extra.len() {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&extra[..cut]);
            std::fs::write(&path, &bytes).unwrap();
            let recovered = Wal::open(dir.path(), 0).unwrap();
            assert_eq!(recovered.wal.next_offset(), 4, "cut {cut}");
            assert_eq!(recovered.truncated, cut as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good.len() as u64);
        }
        // A complete but garbled last frame (length written, data not) is a torn tail too.
        let mut bytes = good.clone();
        let mut garbled = extra.clone();
        for b in &mut garbled[PREAMBLE..] {
            *b = 0;
        }
        bytes.extend_from_slice(&garbled);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Wal::open(dir.path(), 0).unwrap().wal.next_offset(), 4);
    }

    #[test]
    fn corruption_in_the_middle_is_refused() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2, 2, 2]);
        drop(wal);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let (first, _) = batch_at(0, 2);
        bytes[first.len() + 30] ^= 0xff; // inside the second batch
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Wal::open(dir.path(), 0), Err(Error::Corrupt(_))));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "a refused recovery changes nothing"
        );
    }

    #[test]
    fn a_gap_in_offsets_is_refused() {
        let dir = cairn_testkit::TempDir::new("wal");
        let path = dir.path().join(FILE_NAME);
        let (a, _) = batch_at(0, 2);
        let (b, _) = batch_at(5, 2);
        std::fs::write(&path, [a, b].concat()).unwrap();
        assert!(matches!(Wal::open(dir.path(), 0), Err(Error::Corrupt(_))));
    }

    #[test]
    fn reads_respect_max_bytes_but_return_at_least_one_batch() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[1, 1, 1, 1]);
        let reader = wal.reader();
        assert_eq!(reader.read(0, 4, 1).unwrap().len(), 1);
        assert_eq!(reader.read(0, 2, usize::MAX).unwrap().len(), 2, "never past end");
        assert!(reader.read(4, 4, usize::MAX).unwrap().is_empty());
    }
}
