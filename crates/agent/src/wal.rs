//! The per-partition write-ahead log: checksummed batch frames appended to a
//! sequence of files named by the offset they start at, fsynced (fdatasync) in
//! groups by the partition's writer.
//!
//! Recovery reads every file in order and verifies every frame's checksum and
//! that offsets are dense across files. A bad frame at the end of the last
//! file with no valid frame after it is a torn tail (a write the crash
//! interrupted, never acknowledged as durable) and is truncated. Anything else
//! — a bad frame followed by a valid one, a damaged earlier file, a gap — is
//! corruption: recovery refuses, loudly, rather than drop acknowledged records.
//!
//! Once segments cover a file's records, the writer deletes it ([`Wal::drop_below`]);
//! reads below the WAL's start go to the segments.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    batch::{self, BatchHeader, FrameError, PREAMBLE, Record},
    error::{Error, Result},
};

fn file_name(base: u64) -> String {
    format!("{base:020}.wal")
}

/// Where one batch lives.
#[derive(Debug, Clone, Copy)]
struct Entry {
    base_offset: u64,
    next_offset: u64,
    /// Base offset of the file it is in.
    file: u64,
    position: u64,
    len: u32,
    append_time_ms: i64,
}

/// Read access to a partition's WAL, shared with fetches.
pub struct WalReader {
    files: RwLock<Vec<(u64, Arc<File>)>>,
    index: RwLock<Vec<Entry>>,
    start: AtomicU64,
}

/// The writer's handle: appends, syncs, rotates and drops files.
pub struct Wal {
    dir: PathBuf,
    file: File,
    file_base: u64,
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

fn wal_files(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".wal") {
            match base.parse::<u64>() {
                Ok(b) if name.len() == 24 => bases.push(b),
                _ => return Err(Error::Corrupt(format!("{}: unexpected file {name}", dir.display()))),
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers it. `floor` is
    /// the partition's committed offset: an empty WAL starts there (the disk
    /// was lost or replaced; segments hold everything below), and a WAL that
    /// ends below it is discarded and started afresh there (its records are
    /// all in segments; keeping it would hand out offsets segments already hold).
    pub fn open(dir: &Path, floor: u64) -> Result<Recovered> {
        std::fs::create_dir_all(dir)?;
        let mut bases = wal_files(dir)?;
        if bases.is_empty() {
            File::create(dir.join(file_name(floor)))?;
            bases.push(floor);
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut batches: Vec<BatchHeader> = Vec::new();
        let mut truncated = 0;
        let mut files = Vec::with_capacity(bases.len());
        let mut last_size = 0;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(file_name(base));
            let is_last = i + 1 == bases.len();
            let mut file = OpenOptions::new().read(true).append(true).open(&path)?;
            let (found, headers, valid_len) = scan(&mut file, &path)?;
            let size = file.metadata()?.len();
            if size > valid_len {
                if !is_last {
                    return Err(Error::Corrupt(format!(
                        "{}: damaged at byte {valid_len}",
                        path.display()
                    )));
                }
                tracing::warn!(path = %path.display(), bytes = size - valid_len, "truncating torn WAL tail");
                file.set_len(valid_len)?;
                file.sync_all()?;
                truncated = size - valid_len;
            }
            // Each file starts where its name says, and where the previous one ended.
            let expected = entries.last().map_or(base, |e| e.next_offset);
            if let Some(first) = headers.first()
                && (first.base_offset != base || first.base_offset != expected)
            {
                return Err(Error::Corrupt(format!(
                    "{}: starts at offset {} but {expected} was expected",
                    path.display(),
                    first.base_offset
                )));
            }
            if headers.is_empty() && !is_last {
                return Err(Error::Corrupt(format!(
                    "{}: empty file before the last one",
                    path.display()
                )));
            }
            entries.extend(found.into_iter().map(|e| Entry { file: base, ..e }));
            batches.extend(headers);
            files.push((base, Arc::new(File::open(&path)?)));
            last_size = valid_len;
        }
        // Make the directory entries durable too, for freshly created files.
        File::open(dir)?.sync_all()?;
        let last_base = *bases.last().unwrap_or(&floor);
        let next_offset = entries.last().map_or(last_base.max(floor), |e| e.next_offset);
        if next_offset < floor {
            // Everything here is below the committed offset: a WAL left from an
            // earlier tenure (another agent has written and committed since) or
            // from a partly lost disk. Segments hold all of it; start afresh at
            // the committed offset so no offset is handed out twice.
            tracing::warn!(dir = %dir.display(), wal_end = next_offset, committed = floor, "discarding a WAL wholly below the committed offset");
            drop(files);
            for base in &bases {
                std::fs::remove_file(dir.join(file_name(*base)))?;
            }
            return Wal::open(dir, floor);
        }
        let start = entries.first().map_or(next_offset, |e| e.base_offset);
        let file = OpenOptions::new().append(true).open(dir.join(file_name(last_base)))?;
        let reader = Arc::new(WalReader {
            files: RwLock::new(files),
            index: RwLock::new(entries),
            start: AtomicU64::new(start),
        });
        Ok(Recovered {
            wal: Wal {
                dir: dir.to_owned(),
                file,
                file_base: last_base,
                size: last_size,
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

    /// Bytes in the file being appended to.
    pub fn current_file_size(&self) -> u64 {
        self.size
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
                file: self.file_base,
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

    /// Starts a new file at the next offset (after a [`Wal::sync`]).
    pub fn rotate(&mut self) -> Result<()> {
        if self.size == 0 {
            return Ok(());
        }
        let base = self.next_offset;
        let path = self.dir.join(file_name(base));
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.reader
            .files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((base, Arc::new(File::open(&path)?)));
        self.file = file;
        self.file_base = base;
        self.size = 0;
        Ok(())
    }

    /// Deletes every file whose records are all below `offset` (covered by
    /// committed segments). Never deletes the file being appended to.
    pub fn drop_below(&mut self, offset: u64) -> Result<()> {
        let doomed: Vec<u64> = {
            let files = self.reader.files.read().unwrap_or_else(|p| p.into_inner());
            files.windows(2).filter(|w| w[1].0 <= offset).map(|w| w[0].0).collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        let last_doomed = *doomed.last().unwrap_or(&0);
        {
            let mut index = self.reader.index.write().unwrap_or_else(|p| p.into_inner());
            index.retain(|e| e.file > last_doomed);
            let start = index.first().map_or(self.next_offset, |e| e.base_offset);
            self.reader.start.store(start, Ordering::SeqCst);
            self.reader
                .files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(b, _)| *b > last_doomed);
        }
        for base in doomed {
            std::fs::remove_file(self.dir.join(file_name(base)))?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl WalReader {
    /// The first offset still in the WAL.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::SeqCst)
    }

    fn entries(&self, first: impl Fn(&Entry) -> bool, keep: impl FnMut(&&Entry) -> bool) -> Vec<Entry> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let from = index.partition_point(first);
        index[from..].iter().take_while(keep).copied().collect()
    }

    fn frame(&self, entry: &Entry) -> Result<(BatchHeader, Vec<Record>)> {
        let file = {
            let files = self.files.read().unwrap_or_else(|p| p.into_inner());
            files.iter().find(|(b, _)| *b == entry.file).map(|(_, f)| f.clone())
        };
        let file = file.ok_or_else(|| Error::Retryable("WAL file dropped during the read; retry".into()))?;
        let mut buf = vec![0u8; entry.len as usize];
        file.read_exact_at(&mut buf, entry.position)?;
        let (_, body) = batch::frame(&buf).map_err(|e| Error::Corrupt(format!("at {}: {e}", entry.position)))?;
        batch::decode(body).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// Records from `offset` up to (not including) `end`, about `max_bytes`
    /// of them, but at least one batch's worth when any is available.
    pub fn read(&self, offset: u64, end: u64, max_bytes: usize) -> Result<Vec<(u64, Record)>> {
        let mut taken = 0usize;
        let entries = self.entries(
            |e| e.next_offset <= offset,
            |e| {
                let fits = e.base_offset < end && (taken == 0 || taken + e.len as usize <= max_bytes);
                taken += e.len as usize;
                fits
            },
        );
        let mut out = Vec::new();
        for entry in entries {
            let (header, records) = self.frame(&entry)?;
            for (i, record) in records.into_iter().enumerate() {
                let at = header.base_offset + i as u64;
                if at >= offset && at < end {
                    out.push((at, record));
                }
            }
        }
        Ok(out)
    }

    /// Whole batches with `from <= base` and `next <= to`, in order (for segments).
    pub fn read_batches(&self, from: u64, to: u64) -> Result<Vec<(BatchHeader, Vec<Record>)>> {
        let entries = self.entries(|e| e.base_offset < from, |e| e.next_offset <= to);
        entries.iter().map(|e| self.frame(e)).collect()
    }

    /// Bytes and the oldest append time (unix ms) of the batches in `[from, to)`.
    pub fn pending(&self, from: u64, to: u64) -> (u64, Option<i64>) {
        let entries = self.entries(|e| e.base_offset < from, |e| e.next_offset <= to);
        let bytes = entries.iter().map(|e| u64::from(e.len)).sum();
        (bytes, entries.first().map(|e| e.append_time_ms))
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
            file: 0,
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
        let path = dir.path().join(file_name(0));
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
        let path = dir.path().join(file_name(0));
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
        let path = dir.path().join(file_name(0));
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

    #[test]
    fn rotation_and_dropping_keep_offsets_and_recovery_consistent() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2, 2]);
        wal.rotate().unwrap();
        write_batches(&mut wal, &[3]);
        wal.rotate().unwrap();
        write_batches(&mut wal, &[1]);
        assert_eq!(wal_files(dir.path()).unwrap(), vec![0, 4, 7]);
        let reader = wal.reader();
        assert_eq!(reader.read(0, 8, usize::MAX).unwrap().len(), 8, "reads span files");

        wal.drop_below(5).unwrap();
        assert_eq!(
            wal_files(dir.path()).unwrap(),
            vec![4, 7],
            "only files wholly below 5 go"
        );
        assert_eq!(reader.start(), 4);
        wal.drop_below(100).unwrap();
        assert_eq!(
            wal_files(dir.path()).unwrap(),
            vec![7],
            "never the file being appended to"
        );
        assert_eq!(reader.read(7, 8, usize::MAX).unwrap().len(), 1);
        drop(wal);

        let recovered = Wal::open(dir.path(), 7).unwrap();
        assert_eq!(recovered.wal.next_offset(), 8);
        assert_eq!(recovered.wal.reader().start(), 7);
        let stale = Wal::open(dir.path(), 9).unwrap();
        assert_eq!(
            stale.wal.next_offset(),
            9,
            "a WAL wholly below the committed offset starts afresh there"
        );
        assert!(stale.batches.is_empty());
        assert_eq!(wal_files(dir.path()).unwrap(), vec![9]);
    }

    #[test]
    fn an_empty_wal_starts_at_the_committed_offset() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 42).unwrap().wal;
        assert_eq!(wal.next_offset(), 42);
        write_batches(&mut wal, &[2]);
        drop(wal);
        assert_eq!(Wal::open(dir.path(), 42).unwrap().wal.next_offset(), 44);
    }

    #[test]
    fn damage_in_an_earlier_file_is_refused() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = Wal::open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2]);
        wal.rotate().unwrap();
        write_batches(&mut wal, &[2]);
        drop(wal);
        let first = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&first, &bytes).unwrap();
        assert!(
            matches!(Wal::open(dir.path(), 0), Err(Error::Corrupt(_))),
            "a torn tail is only allowed at the very end"
        );
    }
}
