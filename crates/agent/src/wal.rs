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
//!
//! Files are preallocated ([`Wal::preallocate_when_needed`]): rotation
//! renames a spare file into place, so frames overwrite written space in
//! place and an fdatasync has no file size or extent change to write (on ext4
//! a 4 KiB fdatasync is then ≈ 2× faster than an appending one). A spare is
//! a committed file recycled as it is ([`Wal::drop_below`]: no zero-filling,
//! no unlink, no discard) or, when no older file is waiting to be deleted,
//! one a niced helper thread fills with zeros once the current file is half
//! full. Recovery finds the true end of such a file: after the last valid
//! frame, zeros or stale frames of the file's earlier life (valid frames
//! whose offsets lie below the file's name; the header CRC covers the base
//! offset) are a clean end, nothing this file's life wrote; a partial or
//! garbled frame with nothing of this life after it is a torn tail, cut off
//! as before; a frame of this life after damage is corruption.

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
    batch::{self, BatchHeader, FrameError, PREAMBLE, Stored},
    error::{Error, Result},
};

fn file_name(base: u64) -> String {
    format!("{base:020}.wal")
}

/// Spare files (which the next rotations rename into place, zero-filled or
/// recycled) are named `spare-N.prealloc`; any such file (or one from before,
/// `spare.prealloc`) found at recovery is a leftover and deleted.
fn spare_name(n: u64) -> String {
    format!("spare-{n}.prealloc")
}

fn is_spare(name: &str) -> bool {
    name.starts_with("spare") && name.contains(".prealloc")
}

/// Spares kept ready at most. Two, so that a rotation rarely finds none
/// (when segments have not covered the file before it yet, the one before
/// that is already recycled).
const MAX_SPARES: usize = 2;

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
    file: Arc<File>,
    file_base: u64,
    /// Bytes of frames in the current file (where the next write goes).
    size: u64,
    /// The current file was preallocated (written space beyond `size`).
    preallocated: bool,
    /// Size of preallocated files (0: files grow as they are written).
    prealloc_bytes: u64,
    /// Spares ready, oldest first.
    spares: std::collections::VecDeque<PathBuf>,
    /// A helper thread zero-filling a spare (its path when done).
    zeroing: Option<std::thread::JoinHandle<std::io::Result<PathBuf>>>,
    /// The number in the next spare's name.
    spare_seq: u64,
    /// The helper thread deleting files segments cover (see [`Wal::drop_below`]).
    deleter: Option<std::thread::JoinHandle<()>>,
    next_offset: u64,
    reader: Arc<WalReader>,
}

/// What the metadata says about a partition as this agent takes it. The
/// local WAL is checked against it before the partition serves: a WAL is the
/// log only for offsets no other tenure has committed.
#[derive(Debug, Clone, Default)]
pub struct Tenure {
    /// The lease epoch this agent now holds.
    pub epoch: u64,
    /// Every record below it is in a committed segment.
    pub committed: u64,
    /// The lease was already this agent's at this epoch (a restart reclaims
    /// it), so no other holder has written since this agent last did.
    pub reclaim: bool,
    /// Committed segments that end above the local WAL's first offset.
    pub segments: Vec<SegmentSpan>,
    /// The latest append time in the committed segments (unix ms): this
    /// tenure never stamps below it.
    pub time_floor: i64,
}

impl Tenure {
    /// This agent's own log, which nobody else has written (tests, benchmarks).
    pub fn local(committed: u64) -> Tenure {
        Tenure {
            epoch: 0,
            committed,
            reclaim: true,
            segments: Vec::new(),
            time_floor: 0,
        }
    }
}

/// A committed segment's offsets and the epoch of the holder that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    pub base: u64,
    pub next: u64,
    pub epoch: u64,
}

/// Local records at or above the committed offset that recovery dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discarded {
    /// The committed offset: the log continues here.
    pub from: u64,
    /// Where the local WAL ended.
    pub to: u64,
    /// The epoch whose committed segment the local records diverged from.
    pub diverged_at_epoch: u64,
}

impl Discarded {
    /// How many records were dropped.
    pub fn records(&self) -> u64 {
        self.to - self.from
    }
}

/// What recovery found.
pub struct Recovered {
    pub wal: Wal,
    /// Headers of every batch, oldest first (to rebuild producer state).
    pub batches: Vec<BatchHeader>,
    /// Bytes of torn tail that were cut off.
    pub truncated: u64,
    /// Durable records above the committed offset that diverge from the log
    /// another tenure committed (only possible after an unclean takeover).
    pub discarded: Option<Discarded>,
    /// Files moved to `set-aside/` (dead data kept for an operator to look at).
    pub set_aside: Vec<PathBuf>,
}

/// Where a WAL's dead or divergent files are moved instead of deleted.
pub const SET_ASIDE_DIR: &str = "set-aside";
/// The file recording which lease epoch wrote which local offsets.
const EPOCHS_FILE: &str = "epochs";

fn wal_files(dir: &Path) -> Result<(Vec<u64>, Vec<String>)> {
    let mut bases = Vec::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".wal") {
            match base.parse::<u64>() {
                Ok(b) if name.len() == 24 => bases.push(b),
                _ => strays.push(name.into_owned()),
            }
        }
    }
    bases.sort_unstable();
    Ok((bases, strays))
}

/// The first offset the WAL in `dir` may hold (by its files' names), if it has any.
pub fn first_offset(dir: &Path) -> Result<Option<u64>> {
    match wal_files(dir) {
        Ok((bases, _)) => Ok(bases.first().copied()),
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The epochs that wrote this WAL, each with the first offset it wrote:
/// Kafka's leader-epoch checkpoint, kept beside the files. `None` when the
/// file is missing or unreadable (a WAL from before it existed).
fn read_epochs(dir: &Path) -> Option<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(dir.join(EPOCHS_FILE)).ok()?;
    let parsed: Option<Vec<(u64, u64)>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (e, s) = l.trim().split_once(' ')?;
            Some((e.parse().ok()?, s.parse().ok()?))
        })
        .collect();
    if parsed.is_none() {
        tracing::warn!(dir = %dir.display(), "unreadable WAL epochs file; treating the local WAL's epochs as unknown");
    }
    parsed
}

fn write_epochs(dir: &Path, epochs: &[(u64, u64)]) -> Result<()> {
    let text: String = epochs.iter().map(|(e, s)| format!("{e} {s}\n")).collect();
    let tmp = dir.join(format!("{EPOCHS_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(EPOCHS_FILE))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// One file as found on disk.
struct Found {
    base: u64,
    path: PathBuf,
    entries: Vec<Entry>,
    headers: Vec<BatchHeader>,
    size: u64,
    /// Preallocated space (zeros or stale frames) follows the last frame.
    spare_tail: bool,
    valid_len: u64,
    /// A bad frame with valid frames after it: not a torn tail.
    damage: Option<String>,
    end_after_damage: Option<u64>,
}

impl Found {
    /// The offset after the file's last valid record (its name's offset when
    /// empty), counting valid records beyond any damage.
    fn end(&self) -> u64 {
        let clean = self.headers.last().map_or(self.base, BatchHeader::next_offset);
        self.end_after_damage.map_or(clean, |e| e.max(clean))
    }

    fn misnamed(&self) -> bool {
        self.headers.first().is_some_and(|h| h.base_offset != self.base)
    }
}

/// Moves `path` into the WAL's set-aside directory, never over an earlier one.
fn set_aside(dir: &Path, path: &Path) -> Result<PathBuf> {
    let aside = dir.join(SET_ASIDE_DIR);
    std::fs::create_dir_all(&aside)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = crate::partition::now_ms();
    let mut target = aside.join(format!("{name}.{stamp}"));
    let mut n = 0;
    while target.exists() {
        n += 1;
        target = aside.join(format!("{name}.{stamp}.{n}"));
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

/// Moves every WAL file and the epochs record in `dir` aside (a damaged WAL
/// that holds nothing of the log). Returns where they went.
pub fn set_aside_all(dir: &Path) -> Vec<PathBuf> {
    let mut moved = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return moved;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".wal") || name == EPOCHS_FILE)
            && let Ok(to) = set_aside(dir, &path)
        {
            moved.push(to);
        }
    }
    moved
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers it against
    /// what the metadata says (`tenure`), in this order:
    ///
    /// 1. Files whose records all lie below the committed offset are dead
    ///    (segments hold them): deleted, or set aside with a warning when
    ///    they are odd (misnamed, damaged, a stray name). They never stop
    ///    the partition from serving.
    /// 2. The rest must be one clean, dense run of batches (a torn tail of the
    ///    last file is cut off); anything else is refused as corruption.
    /// 3. If a committed segment overlapping the local records was written by
    ///    an epoch that did not write them, the local records diverge from
    ///    the log (an unclean takeover happened meanwhile): every local file
    ///    is set aside and the WAL restarts at the committed offset. So does
    ///    a WAL that ends at or below the committed offset.
    /// 4. The epoch now held is recorded as the writer of what follows.
    ///
    /// A WAL restarted at an offset starts a file named by that offset: a
    /// file is always named by the first offset it holds.
    pub fn recover(dir: &Path, tenure: &Tenure) -> Result<Recovered> {
        std::fs::create_dir_all(dir)?;
        remove_spares(dir)?;
        let committed = tenure.committed;
        let mut set_aside_paths = Vec::new();
        let (bases, strays) = wal_files(dir)?;
        for stray in strays {
            let moved = set_aside(dir, &dir.join(&stray))?;
            tracing::warn!(dir = %dir.display(), file = %stray, to = %moved.display(), "set aside a WAL file with an unexpected name");
            set_aside_paths.push(moved);
        }
        let mut found = Vec::with_capacity(bases.len());
        for &base in &bases {
            let path = dir.join(file_name(base));
            let mut file = File::open(&path)?;
            let scanned = scan(&mut file, &path, base)?;
            let file_len = file.metadata()?.len();
            found.push(Found {
                base,
                // Zeros or stale frames after the last frame are preallocated space, not data.
                size: if scanned.spare_tail {
                    scanned.valid_len
                } else {
                    file_len
                },
                spare_tail: scanned.spare_tail && scanned.valid_len < file_len,
                path,
                entries: scanned.entries,
                headers: scanned.headers,
                valid_len: scanned.valid_len,
                damage: scanned.damage,
                end_after_damage: scanned.end_after_damage,
            });
        }

        // Where the local records start, dead files included: a file that
        // ends exactly at the committed offset still tells which epoch wrote
        // the records just below it, and step 3 must see that.
        let found_start = found.iter().find_map(|f| f.headers.first().map(|h| h.base_offset));

        // 1. Dead files: every valid record (past any damage too) below the
        // committed offset. What a damaged frame held lies between valid ones,
        // and what follows the last valid frame was never acknowledged.
        let mut live = Vec::with_capacity(found.len());
        for (i, f) in found.iter().enumerate() {
            let dead = f.end() <= committed;
            if !dead {
                live.push(i);
                continue;
            }
            let odd = f.misnamed() || f.damage.is_some() || f.valid_len < f.size;
            if odd {
                let moved = set_aside(dir, &f.path)?;
                tracing::warn!(file = %f.path.display(), to = %moved.display(), wal_end = f.end(), committed, "set aside a damaged or misnamed WAL file wholly below the committed offset");
                set_aside_paths.push(moved);
            } else {
                std::fs::remove_file(&f.path)?;
            }
        }
        let live: Vec<Found> = {
            let mut keep = vec![false; found.len()];
            for i in live {
                keep[i] = true;
            }
            found
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(f, _)| f)
                .collect()
        };

        // 2. What is left must be one dense run.
        let mut expected: Option<u64> = None;
        for (i, f) in live.iter().enumerate() {
            let is_last = i + 1 == live.len();
            if let Some(damage) = &f.damage {
                return Err(Error::Corrupt(damage.clone()));
            }
            if f.valid_len < f.size && !is_last {
                return Err(Error::Corrupt(format!(
                    "{}: damaged at byte {}",
                    f.path.display(),
                    f.valid_len
                )));
            }
            if let Some(first) = f.headers.first() {
                let want = expected.unwrap_or(f.base);
                if first.base_offset != f.base || first.base_offset != want {
                    return Err(Error::Corrupt(format!(
                        "{}: starts at offset {} but {want} was expected",
                        f.path.display(),
                        first.base_offset
                    )));
                }
            } else if !is_last {
                return Err(Error::Corrupt(format!(
                    "{}: empty file before the last one",
                    f.path.display()
                )));
            }
            expected = Some(f.end());
        }

        // 3. Divergence from what other tenures committed, over every local
        // record (dead ones too): a live file that starts at the committed
        // offset continues the history of the file below it, which may be
        // one another epoch committed over.
        let local_start = live
            .first()
            .map(|f| f.headers.first().map_or(f.base, |h| h.base_offset));
        let checked_start = local_start.map(|start| found_start.map_or(start, |s| s.min(start)));
        let local_end = live.last().map(Found::end);
        let mut epochs = read_epochs(dir).unwrap_or_default();
        let mut known: Vec<u64> = epochs.iter().map(|(e, _)| *e).collect();
        if tenure.reclaim {
            known.push(tenure.epoch);
        }
        let diverged = match (checked_start, local_end) {
            (Some(start), Some(end)) if end > start => tenure
                .segments
                .iter()
                .find(|s| s.next > start && s.base < end && !known.contains(&s.epoch))
                .map(|s| s.epoch),
            _ => None,
        };
        let restart = match (diverged, local_end) {
            (Some(_), _) | (None, None) => true,
            (None, Some(end)) => end <= committed,
        };
        let mut discarded = None;
        let (files, entries, batches, truncated, tail) = if restart {
            if let (Some(epoch), Some(end)) = (diverged, local_end)
                && end > committed
            {
                discarded = Some(Discarded {
                    from: committed,
                    to: end,
                    diverged_at_epoch: epoch,
                });
            }
            for f in &live {
                if diverged.is_some() && !f.headers.is_empty() {
                    let moved = set_aside(dir, &f.path)?;
                    set_aside_paths.push(moved);
                } else {
                    std::fs::remove_file(&f.path)?;
                }
            }
            if let Some(d) = discarded {
                tracing::warn!(
                    dir = %dir.display(),
                    from = d.from,
                    to = d.to,
                    records = d.records(),
                    diverged_at_epoch = d.diverged_at_epoch,
                    "local WAL records above the committed offset diverge from segments another holder committed \
                     (an unclean takeover happened); they are set aside and the log continues at the committed offset"
                );
            } else if diverged.is_some() {
                tracing::info!(dir = %dir.display(), committed, "local WAL diverged from the committed log below the committed offset; restarting at the committed offset");
            }
            File::create(dir.join(file_name(committed)))?;
            epochs = vec![(tenure.epoch, committed)];
            (
                vec![(committed, Arc::new(File::open(dir.join(file_name(committed)))?))],
                Vec::new(),
                Vec::new(),
                0,
                (0, false),
            )
        } else {
            let mut files = Vec::with_capacity(live.len());
            let mut entries = Vec::new();
            let mut batches = Vec::new();
            let mut truncated = 0;
            let mut tail = (0, false);
            for f in live {
                if f.valid_len < f.size {
                    tracing::warn!(path = %f.path.display(), bytes = f.size - f.valid_len, "truncating torn WAL tail");
                    let file = OpenOptions::new().write(true).open(&f.path)?;
                    file.set_len(f.valid_len)?;
                    file.sync_all()?;
                    truncated = f.size - f.valid_len;
                }
                entries.extend(f.entries.into_iter().map(|e| Entry { file: f.base, ..e }));
                batches.extend(f.headers);
                files.push((f.base, Arc::new(File::open(&f.path)?)));
                tail = (f.valid_len, f.spare_tail);
            }
            let start = local_start.unwrap_or(committed);
            if start > committed {
                // Files were lost: nothing holds the records in between.
                return Err(Error::Corrupt(format!(
                    "{}: the WAL starts at offset {start} but only offsets below {committed} are committed; \
                     records {committed}..{start} are missing",
                    dir.display()
                )));
            }
            // Keep only the epochs that wrote what is still here, then add ours.
            while epochs.len() > 1 && epochs[1].1 <= start {
                epochs.remove(0);
            }
            (files, entries, batches, truncated, tail)
        };
        let next_offset = entries.last().map_or_else(
            || files.last().map_or(committed, |(b, _)| *b),
            |e: &Entry| e.next_offset,
        );
        if epochs.last().map(|(e, _)| *e) != Some(tenure.epoch) {
            epochs.push((tenure.epoch, next_offset));
        }
        write_epochs(dir, &epochs)?;
        // Make the directory entries durable too (new, deleted and moved files).
        File::open(dir)?.sync_all()?;
        let (last_base, _) = *files
            .last()
            .ok_or_else(|| Error::Corrupt("no WAL file after recovery".into()))?;
        let (size, preallocated) = tail;
        let start = entries.first().map_or(next_offset, |e| e.base_offset);
        let file = OpenOptions::new().write(true).open(dir.join(file_name(last_base)))?;
        let reader = Arc::new(WalReader {
            files: RwLock::new(files),
            index: RwLock::new(entries),
            start: AtomicU64::new(start),
        });
        Ok(Recovered {
            wal: Wal {
                dir: dir.to_owned(),
                file: Arc::new(file),
                file_base: last_base,
                size,
                preallocated,
                prealloc_bytes: 0,
                spares: Default::default(),
                zeroing: None,
                spare_seq: 0,
                deleter: None,
                next_offset,
                reader,
            },
            batches,
            truncated,
            discarded,
            set_aside: set_aside_paths,
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
        self.file.write_all_at(frames, self.size)?;
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

    /// The file being appended to, for syncing it on another thread: until
    /// the next [`Wal::rotate`], syncing it makes everything appended so far
    /// durable.
    pub fn current_file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Preallocates files of `bytes` from now on (0: never): starts writing
    /// the first spare, which the writer swaps in at its next
    /// [`Wal::rotate_if_due`].
    pub fn preallocate(&mut self, bytes: u64) {
        self.prealloc_bytes = bytes;
        self.prepare_spare();
    }

    /// Preallocates files of `bytes` from now on (0: never), writing each
    /// spare only once the current file is half full
    /// ([`Wal::rotate_if_due`]): a partition that writes little never holds
    /// a spare, and one just opened does not zero-fill a file while its
    /// first records wait on the disk.
    pub fn preallocate_when_needed(&mut self, bytes: u64) {
        self.prealloc_bytes = bytes;
    }

    fn next_spare_path(&mut self) -> PathBuf {
        self.spare_seq += 1;
        self.dir.join(spare_name(self.spare_seq))
    }

    /// Spares ready or being zero-filled.
    fn spare_count(&self) -> usize {
        self.spares.len() + usize::from(self.zeroing.is_some())
    }

    /// Starts zero-filling a spare unless one is ready or coming.
    fn prepare_spare(&mut self) {
        if self.prealloc_bytes == 0 || self.spare_count() > 0 {
            return;
        }
        let (path, bytes) = (self.next_spare_path(), self.prealloc_bytes);
        let spawned = std::thread::Builder::new().name("wal-prealloc".into()).spawn(move || {
            // Zero-filling competes with the writer for the disk and a core.
            cairn_service::offload::lower_this_thread();
            write_spare(&path, bytes).map(|()| path)
        });
        match spawned {
            Ok(handle) => self.zeroing = Some(handle),
            Err(error) => tracing::warn!(%error, "could not start preallocating a WAL file"),
        }
    }

    /// Takes in the zero-filled spare when its thread is done (or, with
    /// `wait`, waits for it).
    fn collect_zeroed(&mut self, wait: bool) {
        if !self.zeroing.as_ref().is_some_and(|h| wait || h.is_finished()) {
            return;
        }
        let Some(handle) = self.zeroing.take() else { return };
        match handle.join() {
            Ok(Ok(path)) => self.spares.push_back(path),
            Ok(Err(error)) => {
                tracing::warn!(dir = %self.dir.display(), %error, "preallocating a WAL file failed; files grow as written");
            }
            Err(_) => tracing::warn!(dir = %self.dir.display(), "the thread preallocating a WAL file panicked"),
        }
    }

    fn spare_ready(&mut self) -> bool {
        self.collect_zeroed(false);
        !self.spares.is_empty()
    }

    /// Takes a spare if one is ready: `Some(path)` of a preallocated file.
    fn take_spare(&mut self) -> Option<PathBuf> {
        self.collect_zeroed(false);
        self.spares.pop_front()
    }

    /// Rotates when the current file is full, or swaps in a preallocated
    /// file as soon as one is ready when the current one is not. From half
    /// full on, a spare is zero-filled, unless an older file waits for its
    /// segments: that one is recycled instead once they commit
    /// ([`Wal::drop_below`]), and the disk writes no zeros.
    pub fn rotate_if_due(&mut self, file_bytes: u64) -> Result<()> {
        if self.rotation_due(file_bytes) {
            self.rotate()?;
        } else if self.size >= file_bytes / 2 {
            let older_files = self.reader.files.read().unwrap_or_else(|p| p.into_inner()).len() > 1;
            if !older_files {
                self.prepare_spare();
            }
        }
        Ok(())
    }

    /// Whether [`Wal::rotate_if_due`] would start a new file now: the
    /// current one is full, or it is not preallocated and a spare is ready.
    pub fn rotation_due(&mut self, file_bytes: u64) -> bool {
        self.size >= file_bytes || (!self.preallocated && self.spare_ready())
    }

    /// Starts a new file at the next offset (after a [`Wal::sync`]): the
    /// spare when it is ready, else an empty file. An empty current file that
    /// is not preallocated is replaced by the spare under the same name.
    pub fn rotate(&mut self) -> Result<()> {
        if self.size == 0 && (self.preallocated || self.spare_count() == 0) {
            return Ok(());
        }
        let base = self.next_offset;
        let path = self.dir.join(file_name(base));
        let replacing = self.size == 0;
        let (file, preallocated) = match self.take_spare() {
            Some(spare) => {
                // Over the empty current file (same name), or as a new one.
                std::fs::rename(&spare, &path)?;
                (OpenOptions::new().write(true).open(&path)?, true)
            }
            None if replacing => return Ok(()),
            None => (OpenOptions::new().create_new(true).write(true).open(&path)?, false),
        };
        File::open(&self.dir)?.sync_all()?;
        {
            let mut files = self.reader.files.write().unwrap_or_else(|p| p.into_inner());
            if replacing {
                files.retain(|(b, _)| *b != base);
            }
            files.push((base, Arc::new(File::open(&path)?)));
        }
        self.file = Arc::new(file);
        self.file_base = base;
        self.size = 0;
        self.preallocated = preallocated;
        Ok(())
    }

    /// Spare files ready or being zero-filled.
    pub fn spares(&self) -> usize {
        self.spare_count()
    }

    /// Deletes the spares (after waiting for one being zero-filled): a
    /// partition that stopped writing gives their disk back. Writing again,
    /// it recycles or zero-fills new ones as before. Returns how many.
    pub fn release_spares(&mut self) -> Result<usize> {
        self.collect_zeroed(true);
        let mut released = 0;
        while let Some(spare) = self.spares.pop_front() {
            match std::fs::remove_file(&spare) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    self.spares.push_front(spare);
                    return Err(e.into());
                }
                _ => released += 1,
            }
        }
        Ok(released)
    }

    /// Whether the current file was preallocated.
    pub fn is_preallocated(&self) -> bool {
        self.preallocated
    }

    /// Deletes every file and the epochs record: segments hold everything
    /// (a clean hand-off). The WAL must not be used afterwards.
    pub fn retire(&mut self) -> Result<()> {
        self.collect_zeroed(true);
        self.spares.clear();
        self.join_deleter();
        remove_spares(&self.dir)?;
        let (bases, _) = wal_files(&self.dir)?;
        for base in bases {
            std::fs::remove_file(self.dir.join(file_name(base)))?;
        }
        match std::fs::remove_file(self.dir.join(EPOCHS_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Deletes every file whose records are all below `offset` (covered by
    /// committed segments): at once from what readers see, from the disk on a
    /// helper thread. Never deletes the file being appended to. When files
    /// are preallocated, the newest of them become spares instead (up to
    /// two), as they are, if no read still holds them (a later
    /// rotation overwrites them in place).
    pub fn drop_below(&mut self, offset: u64) -> Result<()> {
        // The newest file whose successor starts at or below `offset` (files are in order).
        let last_doomed = {
            let files = self.reader.files.read().unwrap_or_else(|p| p.into_inner());
            files.windows(2).rev().find(|w| w[1].0 <= offset).map(|w| w[0].0)
        };
        let Some(last_doomed) = last_doomed else {
            return Ok(());
        };
        let removed = {
            let mut index = self.reader.index.write().unwrap_or_else(|p| p.into_inner());
            index.retain(|e| e.file > last_doomed);
            let start = index.first().map_or(self.next_offset, |e| e.base_offset);
            self.reader.start.store(start, Ordering::SeqCst);
            let mut files = self.reader.files.write().unwrap_or_else(|p| p.into_inner());
            let keep = files.partition_point(|(b, _)| *b <= last_doomed);
            files.drain(..keep).collect::<Vec<_>>()
        };
        // Newest first: the files most likely still in the page cache.
        let mut paths = Vec::new();
        for (base, handle) in removed.into_iter().rev() {
            let path = self.dir.join(file_name(base));
            if !self.recycle(&path, handle) {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Ok(());
        }
        // Unlinking a 64 MiB file takes the filesystem a while, and nothing
        // acknowledged depends on it: off the writer thread, whose durable
        // acks would wait behind it. No directory fsync either: a deletion a
        // crash undoes leaves a file wholly below the committed offset, which
        // recovery deletes again.
        self.join_deleter();
        let spawned = std::thread::Builder::new().name("wal-delete".into()).spawn({
            let paths = paths.clone();
            move || {
                cairn_service::offload::lower_this_thread();
                for path in paths {
                    if let Err(error) = std::fs::remove_file(&path) {
                        tracing::warn!(file = %path.display(), %error, "deleting a committed WAL file failed; the next recovery deletes it");
                    }
                }
            }
        });
        match spawned {
            Ok(handle) => self.deleter = Some(handle),
            Err(_) => {
                for path in paths {
                    std::fs::remove_file(path)?;
                }
            }
        }
        Ok(())
    }

    /// Makes the committed file at `path` a spare, as it is, if spares are
    /// wanted and no read still holds `handle` (a read that took the file
    /// before it left the list may still be reading it: that file is
    /// deleted, as the read keeps the inode, not overwritten under the read).
    fn recycle(&mut self, path: &Path, handle: Arc<File>) -> bool {
        if self.prealloc_bytes == 0
            || self.spare_count() >= MAX_SPARES
            || Arc::strong_count(&handle) > 1
            || !handle.metadata().is_ok_and(|m| m.len() >= self.prealloc_bytes)
        {
            return false;
        }
        drop(handle);
        let spare = self.next_spare_path();
        match std::fs::rename(path, &spare) {
            Ok(()) => {
                // Durable with the directory fsync of the rotation that uses
                // it; a crash before leaves a dead file or a leftover spare,
                // both deleted by recovery.
                self.spares.push_back(spare);
                true
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "recycling a committed WAL file failed; deleting it");
                false
            }
        }
    }

    /// Waits for deletions under way: nothing deletes in this directory
    /// behind a later recovery's back.
    fn join_deleter(&mut self) {
        if let Some(deleter) = self.deleter.take() {
            let _ = deleter.join();
        }
    }
}

impl Drop for Wal {
    /// A spare still being written is waited for: nothing writes into this
    /// directory after its WAL is gone (a later tenure's recovery starts clean).
    fn drop(&mut self) {
        self.collect_zeroed(true);
        self.join_deleter();
    }
}

/// Most bytes [`WalReader`] reads with one `pread` (more only for one batch
/// that is larger).
const READ_CHUNK: u64 = 4 << 20;

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

    /// Hands each frame of `entries` (in order) to `f`, its bytes and the
    /// frame checked once, read with one `pread` per run of entries that sit
    /// next to each other in one file, up to [`READ_CHUNK`] bytes at a time
    /// into one buffer: a segment's worth of WAL is not read into fresh
    /// memory that the kernel has to fault in page by page.
    fn visit(&self, entries: &[Entry], mut f: impl FnMut(&[u8], &batch::Frame<'_>) -> Result<()>) -> Result<()> {
        let mut buf = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let first = entries[i];
            let mut end = first.position + u64::from(first.len);
            let mut j = i + 1;
            while j < entries.len()
                && entries[j].file == first.file
                && entries[j].position == end
                && end + u64::from(entries[j].len) - first.position <= READ_CHUNK
            {
                end += u64::from(entries[j].len);
                j += 1;
            }
            let file = {
                let files = self.files.read().unwrap_or_else(|p| p.into_inner());
                files.iter().find(|(b, _)| *b == first.file).map(|(_, f)| f.clone())
            };
            let file = file.ok_or(Error::ReadRace)?;
            let len = (end - first.position) as usize;
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let run = &mut buf[..len];
            file.read_exact_at(run, first.position)?;
            let mut at = 0usize;
            for entry in &entries[i..j] {
                let bytes = &run[at..at + entry.len as usize];
                let frame = batch::frame(bytes).map_err(|e| Error::Corrupt(format!("at {}: {e}", entry.position)))?;
                if frame.len() != bytes.len() || frame.header.base_offset != entry.base_offset {
                    return Err(Error::Corrupt(format!("at {}: not the indexed batch", entry.position)));
                }
                f(bytes, &frame)?;
                at += entry.len as usize;
            }
            i = j;
        }
        Ok(())
    }

    fn entries_from(&self, offset: u64, end: u64, max_bytes: usize) -> Vec<Entry> {
        let mut taken = 0usize;
        self.entries(
            |e| e.next_offset <= offset,
            |e| {
                let fits = e.base_offset < end && (taken == 0 || taken + e.len as usize <= max_bytes);
                taken += e.len as usize;
                fits
            },
        )
    }

    /// Records from `offset` up to (not including) `end`, about `max_bytes`
    /// of them, but at least one batch's worth when any is available.
    pub fn read(&self, offset: u64, end: u64, max_bytes: usize) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        self.visit(&self.entries_from(offset, end, max_bytes), |_, frame| {
            let records = frame.records().map_err(|e| Error::Corrupt(e.to_string()))?;
            out.extend(
                frame
                    .header
                    .stored(records)
                    .filter(|s| s.offset >= offset && s.offset < end),
            );
            Ok(())
        })?;
        Ok(out)
    }

    /// Whole frames as stored, from the one holding `offset` to the last
    /// one that starts below `end`, about `max_bytes` of them but at least
    /// one. The first may start below `offset`, the last end above `end`'s
    /// batch boundary never (`end` is a batch boundary: the high watermark).
    pub fn read_frames(&self, offset: u64, end: u64, max_bytes: usize) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.visit(&self.entries_from(offset, end, max_bytes), |bytes, _| {
            out.push(bytes.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// Hands `f` every frame with `from <= base` and `next <= to`, in order,
    /// checked once (for segments: no copy per frame).
    pub fn for_each_batch(
        &self,
        from: u64,
        to: u64,
        f: impl FnMut(&[u8], &batch::Frame<'_>) -> Result<()>,
    ) -> Result<()> {
        let entries = self.entries(|e| e.base_offset < from, |e| e.next_offset <= to);
        self.visit(&entries, f)
    }

    /// Bytes and the oldest append time (unix ms) of the batches in `[from, to)`.
    pub fn pending(&self, from: u64, to: u64) -> (u64, Option<i64>) {
        let entries = self.entries(|e| e.base_offset < from, |e| e.next_offset <= to);
        let bytes = entries.iter().map(|e| u64::from(e.len)).sum();
        (bytes, entries.first().map(|e| e.append_time_ms))
    }
}

/// What one file holds.
struct Scanned {
    entries: Vec<Entry>,
    headers: Vec<BatchHeader>,
    /// Only preallocated space follows the valid prefix (zeros, or what is
    /// left of a recycled file's earlier frames), or nothing.
    spare_tail: bool,
    /// Length of the valid prefix.
    valid_len: u64,
    /// Damage that is not a torn tail (valid frames follow it, or offsets jump).
    damage: Option<String>,
    /// The offset after the last valid frame found beyond the damage.
    end_after_damage: Option<u64>,
}

/// Reads every frame of a file named by offset `base`.
fn scan(file: &mut File, path: &Path, base: u64) -> Result<Scanned> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, &mut *file);
    let mut out = Scanned {
        entries: Vec::new(),
        headers: Vec::new(),
        spare_tail: true,
        valid_len: 0,
        damage: None,
        end_after_damage: None,
    };
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
            None => batch::frame(&buf).map(|f| f.header),
            Some(problem) => Err(problem),
        };
        let header = match header {
            Ok(h) => h,
            Err(problem) => {
                drop(reader);
                if rest_is_zero(file, position)? {
                    return Ok(out);
                }
                let later = later_frames(file, position + 1, base)?;
                match later.end {
                    Some(end) => {
                        out.spare_tail = false;
                        out.end_after_damage = Some(end);
                        out.damage = Some(format!(
                            "{}: damaged batch at byte {position} ({problem}) with valid batches after it; refusing to recover",
                            path.display()
                        ));
                    }
                    // Where the frames of a recycled file's new life end,
                    // what is left of its old ones: a clean end.
                    None => out.spare_tail = later.stale,
                }
                return Ok(out);
            }
        };
        if header.next_offset() <= base {
            // A frame of this file's earlier life (it was recycled): this
            // life's frames end here, unless one of them follows.
            drop(reader);
            let later = later_frames(file, position, base)?;
            if let Some(end) = later.end {
                out.spare_tail = false;
                out.end_after_damage = Some(end);
                out.damage = Some(format!(
                    "{}: batch at byte {position} holds offsets {}..{}, below the file's first offset {base}, \
                     with batches of the file after it; refusing to recover",
                    path.display(),
                    header.base_offset,
                    header.next_offset()
                ));
            }
            return Ok(out);
        }
        let expected = out.headers.last().map_or(header.base_offset, BatchHeader::next_offset);
        if header.base_offset != expected {
            out.spare_tail = false;
            out.damage = Some(format!(
                "{}: batch at byte {position} starts at offset {} but {expected} was expected",
                path.display(),
                header.base_offset
            ));
            drop(reader);
            out.end_after_damage = later_frames(file, position + 1, base)?
                .end
                .map(|e| e.max(header.next_offset()));
            return Ok(out);
        }
        out.entries.push(Entry {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            file: 0,
            position,
            len: buf.len() as u32,
            append_time_ms: header.append_time_ms,
        });
        out.headers.push(header);
        position += buf.len() as u64;
        out.valid_len = position;
    }
    Ok(out)
}

/// Valid frames found anywhere in a file from byte `position` on.
struct Later {
    /// The offset after the last one of the file's own life (offsets from
    /// `base` on), or `None` if there is none (then what comes before is a
    /// torn or clean end, not damage).
    end: Option<u64>,
    /// Some frame of an earlier life (the file was recycled) is there.
    stale: bool,
}

fn later_frames(file: &mut File, position: u64, base: u64) -> Result<Later> {
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(position))?;
    file.read_to_end(&mut rest)?;
    let mut later = Later {
        end: None,
        stale: false,
    };
    let mut i = 0;
    while i < rest.len() {
        if (rest[i..].starts_with(batch::MAGIC) || rest[i..].starts_with(batch::MAGIC_V2))
            && let Ok(frame) = batch::frame(&rest[i..])
        {
            let next = frame.header.next_offset();
            if next <= base {
                later.stale = true;
            } else {
                later.end = Some(later.end.map_or(next, |e: u64| e.max(next)));
            }
            i += frame.len();
        } else {
            i += 1;
        }
    }
    Ok(later)
}

/// Whether every byte of `file` from `position` on is zero (or there are none).
fn rest_is_zero(file: &mut File, position: u64) -> Result<bool> {
    file.seek(SeekFrom::Start(position))?;
    let mut reader = BufReader::with_capacity(1 << 20, &mut *file);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = read_up_to(&mut reader, &mut chunk)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < chunk.len() {
            return Ok(true);
        }
    }
}

/// Deletes every spare file in `dir` (leftovers: nothing uses them yet).
fn remove_spares(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_spare(&entry.file_name().to_string_lossy()) {
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Writes a spare: `bytes` of zeros, durable, at `path`.
/// Bytes of zeros a spare is flushed in: one flush of a whole 64 MiB file
/// holds the disk for tens of milliseconds, and every durable ack waiting on
/// the WAL's fdatasync meanwhile waits behind it; small flushes interleave.
const SPARE_FLUSH_BYTES: u64 = 2 << 20;

fn write_spare(path: &Path, bytes: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("prealloc.tmp");
    let file = File::create(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < bytes {
        let n = zeros.len().min((bytes - written) as usize);
        file.write_all_at(&zeros[..n], written)?;
        written += n as u64;
        if written.is_multiple_of(SPARE_FLUSH_BYTES) {
            file.sync_data()?;
        }
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
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
    use crate::batch::{ProducerInfo, Record};

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

    fn has_spares(dir: &Path) -> bool {
        std::fs::read_dir(dir)
            .unwrap()
            .any(|e| is_spare(&e.unwrap().file_name().to_string_lossy()))
    }

    fn open(dir: &Path, committed: u64) -> Result<Recovered> {
        Wal::recover(dir, &Tenure::local(committed))
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
        let mut wal = open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[3, 1, 5]);
        drop(wal);
        let recovered = open(dir.path(), 0).unwrap();
        assert_eq!(recovered.wal.next_offset(), 9);
        assert_eq!(recovered.batches.len(), 3);
        assert_eq!(recovered.truncated, 0);
        let records = recovered.wal.reader().read(2, 9, usize::MAX).unwrap();
        let offsets: Vec<u64> = records.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, (2..9).collect::<Vec<_>>());
        assert_eq!(records[0].record.value, b"r2");
    }

    #[test]
    fn a_torn_tail_is_truncated_at_every_cut_point() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2, 2]);
        drop(wal);
        let path = dir.path().join(file_name(0));
        let good = std::fs::read(&path).unwrap();
        let (extra, _) = batch_at(4, 3);
        for cut in 1..extra.len() {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&extra[..cut]);
            std::fs::write(&path, &bytes).unwrap();
            let recovered = open(dir.path(), 0).unwrap();
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
        assert_eq!(open(dir.path(), 0).unwrap().wal.next_offset(), 4);
    }

    #[test]
    fn corruption_in_the_middle_is_refused() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2, 2, 2]);
        drop(wal);
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        let (first, _) = batch_at(0, 2);
        bytes[first.len() + 30] ^= 0xff; // inside the second batch
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(open(dir.path(), 0), Err(Error::Corrupt(_))));
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
        assert!(matches!(open(dir.path(), 0), Err(Error::Corrupt(_))));
    }

    #[test]
    fn reads_respect_max_bytes_but_return_at_least_one_batch() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[1, 1, 1, 1]);
        let reader = wal.reader();
        assert_eq!(reader.read(0, 4, 1).unwrap().len(), 1);
        assert_eq!(reader.read(0, 2, usize::MAX).unwrap().len(), 2, "never past end");
        assert!(reader.read(4, 4, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn reads_larger_than_a_chunk_return_every_batch_whole_and_in_order() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        // 1 MiB batches, then one larger than a whole read chunk, then more.
        let mut written = Vec::new();
        for values in [vec![10usize; 9], vec![52], vec![10; 3]].concat() {
            let base = wal.next_offset();
            let header = BatchHeader {
                base_offset: base,
                count: values as u32,
                producer: ProducerInfo::default(),
                append_time_ms: 1,
            };
            let records: Vec<Record> = (0..values)
                .map(|i| Record {
                    value: vec![(base as usize + i) as u8; 100 * 1024],
                    ..Default::default()
                })
                .collect();
            let mut frame = Vec::new();
            batch::encode(&header, &records, &mut frame);
            wal.append(&frame, &[(header, frame.len() as u32)]).unwrap();
            written.push(frame);
        }
        wal.sync().unwrap();
        let total: usize = written.iter().map(Vec::len).sum();
        assert!(total as u64 > 3 * READ_CHUNK && written.iter().any(|f| f.len() as u64 > READ_CHUNK));
        let reader = wal.reader();
        let mut seen = Vec::new();
        reader
            .for_each_batch(0, wal.next_offset(), |bytes, _| {
                seen.push(bytes.to_vec());
                Ok(())
            })
            .unwrap();
        assert!(seen == written, "every frame whole, in order");
        assert_eq!(reader.read_frames(0, wal.next_offset(), usize::MAX).unwrap(), written);
        let records = reader.read(0, wal.next_offset(), usize::MAX).unwrap();
        assert_eq!(records.len() as u64, wal.next_offset());
        assert!(records.iter().all(|s| s.record.value[0] == s.offset as u8));
    }

    #[test]
    fn rotation_and_dropping_keep_offsets_and_recovery_consistent() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2, 2]);
        wal.rotate().unwrap();
        write_batches(&mut wal, &[3]);
        wal.rotate().unwrap();
        write_batches(&mut wal, &[1]);
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![0, 4, 7]);
        let reader = wal.reader();
        assert_eq!(reader.read(0, 8, usize::MAX).unwrap().len(), 8, "reads span files");

        wal.drop_below(5).unwrap();
        wal.join_deleter();
        assert_eq!(
            wal_files(dir.path()).unwrap().0,
            vec![4, 7],
            "only files wholly below 5 go"
        );
        assert_eq!(reader.start(), 4);
        wal.drop_below(100).unwrap();
        wal.join_deleter();
        assert_eq!(
            wal_files(dir.path()).unwrap().0,
            vec![7],
            "never the file being appended to"
        );
        assert_eq!(reader.read(7, 8, usize::MAX).unwrap().len(), 1);
        drop(wal);

        let recovered = open(dir.path(), 7).unwrap();
        assert_eq!(recovered.wal.next_offset(), 8);
        assert_eq!(recovered.wal.reader().start(), 7);
        let stale = open(dir.path(), 9).unwrap();
        assert_eq!(
            stale.wal.next_offset(),
            9,
            "a WAL wholly below the committed offset starts afresh there"
        );
        assert!(stale.batches.is_empty());
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![9]);
    }

    #[test]
    fn an_empty_wal_starts_at_the_committed_offset() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 42).unwrap().wal;
        assert_eq!(wal.next_offset(), 42);
        write_batches(&mut wal, &[2]);
        drop(wal);
        assert_eq!(open(dir.path(), 42).unwrap().wal.next_offset(), 44);
    }

    #[test]
    fn damage_in_an_earlier_file_is_refused() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        write_batches(&mut wal, &[2]);
        wal.rotate().unwrap();
        write_batches(&mut wal, &[2]);
        drop(wal);
        let first = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&first, &bytes).unwrap();
        assert!(
            matches!(open(dir.path(), 0), Err(Error::Corrupt(_))),
            "a torn tail is only allowed at the very end"
        );
    }

    fn tenure(epoch: u64, committed: u64, reclaim: bool, segments: &[(u64, u64, u64)]) -> Tenure {
        Tenure {
            epoch,
            committed,
            reclaim,
            segments: segments
                .iter()
                .map(|&(base, next, epoch)| SegmentSpan { base, next, epoch })
                .collect(),
            time_floor: 0,
        }
    }

    /// Writes `sizes` batches as the holder at `epoch` and closes the WAL.
    fn written_at(dir: &Path, epoch: u64, committed: u64, sizes: &[u32]) {
        let mut wal = Wal::recover(dir, &tenure(epoch, committed, true, &[])).unwrap().wal;
        write_batches(&mut wal, sizes);
    }

    #[test]
    fn a_wal_restarted_at_the_committed_offset_starts_a_file_named_by_it() {
        // The dev-loop sequence: an empty file from a tenure at 1021, then the
        // partition comes back at 2042 after another agent wrote 1021..2042.
        let dir = cairn_testkit::TempDir::new("wal");
        drop(Wal::recover(dir.path(), &tenure(2, 1021, false, &[])).unwrap());
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![1021]);
        let mut wal = Wal::recover(dir.path(), &tenure(4, 2042, false, &[(1021, 2042, 3)]))
            .unwrap()
            .wal;
        assert_eq!(wal.next_offset(), 2042);
        assert_eq!(
            wal_files(dir.path()).unwrap().0,
            vec![2042],
            "the empty file below is gone"
        );
        write_batches(&mut wal, &[1021]);
        drop(wal);
        // Another agent commits to 4084; the next take starts afresh there.
        let wal = Wal::recover(dir.path(), &tenure(6, 4084, false, &[(2042, 3063, 4), (3063, 4084, 5)]))
            .unwrap()
            .wal;
        assert_eq!(wal.next_offset(), 4084);
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![4084]);
    }

    #[test]
    fn a_misnamed_or_damaged_file_wholly_below_the_committed_offset_is_set_aside() {
        let dir = cairn_testkit::TempDir::new("wal");
        let path = dir.path().join(file_name(1021));
        let (frame, _) = batch_at(2042, 3);
        std::fs::write(&path, &frame).unwrap();
        // Above the committed offset a misnamed file is corruption…
        assert!(matches!(
            Wal::recover(dir.path(), &tenure(5, 2000, true, &[])),
            Err(Error::Corrupt(_))
        ));
        // …below it, dead data that never stops the partition.
        let recovered = Wal::recover(dir.path(), &tenure(5, 4084, false, &[])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 4084);
        assert_eq!(recovered.set_aside.len(), 1);
        assert_eq!(
            std::fs::read(&recovered.set_aside[0]).unwrap(),
            frame,
            "kept for an operator"
        );
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![4084]);

        // A file damaged in the middle, wholly below the committed offset, too.
        let dir = cairn_testkit::TempDir::new("wal");
        written_at(dir.path(), 1, 0, &[2, 2, 2]);
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[batch_at(0, 2).0.len() + 30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            matches!(open(dir.path(), 0), Err(Error::Corrupt(_))),
            "above the committed offset"
        );
        let recovered = Wal::recover(dir.path(), &tenure(1, 6, true, &[(0, 6, 1)])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 6);
        assert_eq!(recovered.set_aside.len(), 1);
    }

    #[test]
    fn records_diverging_from_another_epochs_segment_are_dropped_and_the_log_continues_at_the_committed_offset() {
        // A (epoch 1) wrote 0..41; B took over uncleanly (epoch 2) and committed
        // [1, 2); A takes the partition back at epoch 3.
        let dir = cairn_testkit::TempDir::new("wal");
        written_at(dir.path(), 1, 0, &[1, 40]);
        let recovered = Wal::recover(dir.path(), &tenure(3, 2, false, &[(0, 1, 1), (1, 2, 2)])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 2, "appends continue after B's record");
        assert_eq!(recovered.wal.reader().start(), 2, "nothing of A's old WAL is served");
        assert!(recovered.batches.is_empty());
        assert_eq!(
            recovered.discarded,
            Some(Discarded {
                from: 2,
                to: 41,
                diverged_at_epoch: 2
            })
        );
        assert_eq!(
            recovered.set_aside.len(),
            1,
            "the divergent records are kept aside, not served"
        );
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![2]);
        drop(recovered);
        // The epoch now held owns what follows: its own segments are no divergence.
        let mut wal = Wal::recover(dir.path(), &tenure(3, 2, true, &[(1, 2, 2)])).unwrap().wal;
        write_batches(&mut wal, &[3]);
        drop(wal);
        let again = Wal::recover(dir.path(), &tenure(5, 3, false, &[(1, 2, 2), (2, 3, 3)])).unwrap();
        assert_eq!(
            again.wal.next_offset(),
            5,
            "records above the committed offset by our own epoch stay"
        );
        assert_eq!(again.discarded, None);
    }

    #[test]
    fn divergence_below_a_file_boundary_at_the_committed_offset_is_found() {
        // B (epoch 2) wrote 1..3 in one file and 3..22 in the next; A (epoch 3)
        // took over uncleanly and committed [2, 3) over B's record at 2. B comes
        // back at epoch 4 with 3 committed: its first file is dead, but what
        // follows it continues a history the log no longer has.
        let written = || {
            let dir = cairn_testkit::TempDir::new("wal");
            let mut wal = Wal::recover(dir.path(), &tenure(2, 1, false, &[(0, 1, 1)]))
                .unwrap()
                .wal;
            write_batches(&mut wal, &[1, 1]);
            wal.rotate().unwrap();
            write_batches(&mut wal, &[19]);
            drop(wal);
            assert_eq!(wal_files(dir.path()).unwrap().0, vec![1, 3]);
            dir
        };
        let dir = written();
        let recovered = Wal::recover(dir.path(), &tenure(4, 3, false, &[(0, 1, 1), (1, 2, 2), (2, 3, 3)])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 3, "none of B's records above 3 are served");
        assert_eq!(
            recovered.discarded,
            Some(Discarded {
                from: 3,
                to: 22,
                diverged_at_epoch: 3
            })
        );
        // Had A's segment at 2 been B's own, the records above 3 would stay.
        let dir = written();
        let recovered = Wal::recover(dir.path(), &tenure(4, 3, false, &[(0, 1, 1), (1, 3, 2)])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 22);
        assert_eq!(recovered.discarded, None);
    }

    #[test]
    fn a_wal_whose_tenure_nobody_else_committed_over_keeps_its_records() {
        // A (epoch 1) committed [0, 10) and has 10..40 durable; B held the
        // partition at epoch 2 but committed nothing.
        let dir = cairn_testkit::TempDir::new("wal");
        written_at(dir.path(), 1, 0, &[10, 30]);
        let recovered = Wal::recover(dir.path(), &tenure(3, 10, false, &[(0, 10, 1)])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 40);
        assert_eq!(recovered.discarded, None);
        assert_eq!(recovered.batches.len(), 2);
    }

    #[test]
    fn a_wal_without_an_epochs_file_is_trusted_only_on_reclaim() {
        let dir = cairn_testkit::TempDir::new("wal");
        written_at(dir.path(), 1, 0, &[5, 5]);
        std::fs::remove_file(dir.path().join(EPOCHS_FILE)).unwrap();
        let reclaimed = Wal::recover(dir.path(), &tenure(1, 5, true, &[(0, 5, 1)])).unwrap();
        assert_eq!(
            reclaimed.wal.next_offset(),
            10,
            "the holder never changed: the WAL is the log"
        );
        drop(reclaimed);
        std::fs::remove_file(dir.path().join(EPOCHS_FILE)).unwrap();
        let taken = Wal::recover(dir.path(), &tenure(2, 5, false, &[(0, 5, 1)])).unwrap();
        assert_eq!(
            taken.wal.next_offset(),
            5,
            "unknown epochs: any overlapping segment is divergence"
        );
        assert!(taken.discarded.is_some());
    }

    #[test]
    fn a_wal_that_starts_above_the_committed_offset_is_refused() {
        let dir = cairn_testkit::TempDir::new("wal");
        let (frame, _) = batch_at(50, 2);
        std::fs::write(dir.path().join(file_name(50)), frame).unwrap();
        assert!(matches!(open(dir.path(), 40), Err(Error::Corrupt(_))));
    }

    #[test]
    fn the_epochs_file_keeps_only_epochs_that_wrote_what_is_left() {
        let dir = cairn_testkit::TempDir::new("wal");
        written_at(dir.path(), 1, 0, &[2]);
        {
            let mut wal = Wal::recover(dir.path(), &tenure(2, 0, false, &[])).unwrap().wal;
            write_batches(&mut wal, &[2]);
            wal.rotate().unwrap();
            write_batches(&mut wal, &[2]);
        }
        assert_eq!(read_epochs(dir.path()).unwrap(), vec![(1, 0), (2, 2)]);
        // Segments now cover 0..4: the first file goes, and so does epoch 1.
        let recovered = Wal::recover(dir.path(), &tenure(3, 4, false, &[(0, 2, 1), (2, 4, 2)])).unwrap();
        assert_eq!(recovered.wal.next_offset(), 6);
        assert_eq!(read_epochs(dir.path()).unwrap(), vec![(2, 2), (3, 6)]);
    }

    /// A WAL whose current file is a preallocated one (`bytes` of zeros).
    fn preallocated(dir: &Path, bytes: u64) -> Wal {
        let mut wal = open(dir, 0).unwrap().wal;
        wal.preallocate(bytes);
        for _ in 0..500 {
            wal.rotate_if_due(u64::MAX).unwrap();
            if wal.is_preallocated() {
                return wal;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the spare was never ready");
    }

    #[test]
    fn a_preallocated_file_is_written_in_place_and_recovery_finds_its_end() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = preallocated(dir.path(), 64 * 1024);
        assert_eq!(
            wal_files(dir.path()).unwrap().0,
            vec![0],
            "the empty file was replaced, same name"
        );
        write_batches(&mut wal, &[3, 4]);
        let path = dir.path().join(file_name(0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024, "written in place");
        drop(wal);
        let recovered = open(dir.path(), 0).unwrap();
        assert_eq!(recovered.wal.next_offset(), 7);
        assert_eq!(
            recovered.truncated, 0,
            "zeros after the last frame are a clean end, not a torn tail"
        );
        assert!(recovered.wal.is_preallocated());
        let mut wal = recovered.wal;
        write_batches(&mut wal, &[2]);
        drop(wal);
        let recovered = open(dir.path(), 0).unwrap();
        assert_eq!(
            recovered.wal.next_offset(),
            9,
            "appends after recovery continue in place"
        );
        let records = recovered.wal.reader().read(0, 9, usize::MAX).unwrap();
        assert_eq!(
            records.iter().map(|s| s.offset).collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024);
    }

    #[test]
    fn a_torn_frame_before_the_zeros_of_a_preallocated_file_is_cut_off() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = preallocated(dir.path(), 64 * 1024);
        write_batches(&mut wal, &[2, 2]);
        let end = wal.current_file_size();
        drop(wal);
        let path = dir.path().join(file_name(0));
        let (extra, _) = batch_at(4, 3);
        // (A cut whose missing bytes are all zero leaves a whole frame: not torn.)
        let last_nonzero = extra.iter().rposition(|&b| b != 0).unwrap();
        for cut in [1, PREAMBLE - 1, PREAMBLE, PREAMBLE + 1, extra.len() / 2, last_nonzero] {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&extra[..cut], end).unwrap();
            drop(file);
            let recovered = open(dir.path(), 0).unwrap();
            assert_eq!(recovered.wal.next_offset(), 4, "cut {cut}");
            assert_eq!(
                recovered.truncated,
                64 * 1024 - end,
                "cut {cut}: the torn part and the space after it"
            );
            drop(recovered);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), end, "cut {cut}");
            // Back to a preallocated tail for the next cut.
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(64 * 1024).unwrap();
        }
        // Zeros in the middle with frames after them are damage, not an end.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&extra, end + 4096).unwrap();
        drop(file);
        assert!(matches!(open(dir.path(), 0), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_spare_is_written_only_once_the_current_file_is_half_full() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = open(dir.path(), 0).unwrap().wal;
        let file_bytes = 64 * 1024;
        wal.preallocate_when_needed(file_bytes);
        write_batches(&mut wal, &[1]);
        wal.rotate_if_due(file_bytes).unwrap();
        assert_eq!(wal.spare_count(), 0, "a partition that writes little holds no spare");
        while wal.size < file_bytes / 2 {
            write_batches(&mut wal, &[20]);
        }
        assert!(wal.size < file_bytes);
        wal.rotate_if_due(file_bytes).unwrap();
        assert!(wal.spare_count() > 0, "half full: the next file is being prepared");
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![0], "and no rotation yet");
    }

    #[test]
    fn rotation_takes_the_spare_and_recovery_reads_across_preallocated_files() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = preallocated(dir.path(), 16 * 1024);
        for _ in 0..6 {
            write_batches(&mut wal, &[50]);
            // Wait for the next spare so every file is a preallocated one.
            wal.prepare_spare();
            for _ in 0..500 {
                if wal.spare_ready() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            wal.rotate_if_due(1).unwrap();
            assert!(wal.is_preallocated());
        }
        let files = wal_files(dir.path()).unwrap().0;
        assert_eq!(files, vec![0, 50, 100, 150, 200, 250, 300]);
        drop(wal);
        let recovered = open(dir.path(), 0).unwrap();
        assert_eq!(recovered.wal.next_offset(), 300);
        assert_eq!(recovered.truncated, 0);
        assert_eq!(recovered.wal.reader().read(0, 300, usize::MAX).unwrap().len(), 300);
        assert!(!has_spares(dir.path()), "a leftover spare is removed on recovery");
    }

    #[test]
    fn version_1_frames_written_before_stay_readable_and_the_log_continues_in_version_2() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut old = Vec::new();
        for (base, n) in [(0u64, 2u32), (2, 3)] {
            let header = BatchHeader {
                base_offset: base,
                count: n,
                producer: ProducerInfo::default(),
                append_time_ms: 1,
            };
            let records: Vec<Record> = (0..n)
                .map(|i| Record {
                    value: format!("old{}", base + u64::from(i)).into_bytes(),
                    timestamp_ms: 5,
                    ..Default::default()
                })
                .collect();
            batch::encode_v1(&header, &records, &mut old);
        }
        std::fs::write(dir.path().join(file_name(0)), &old).unwrap();
        let mut wal = open(dir.path(), 0).unwrap().wal;
        assert_eq!(wal.next_offset(), 5);
        write_batches(&mut wal, &[2]);
        drop(wal);
        let wal = open(dir.path(), 0).unwrap().wal;
        let records = wal.reader().read(0, 7, usize::MAX).unwrap();
        assert_eq!(records.len(), 7);
        assert_eq!(records[3].record.value, b"old3");
        assert_eq!(records[6].record.value, b"r6");
        let frames = wal.reader().read_frames(3, 7, usize::MAX).unwrap();
        assert_eq!(frames.len(), 2, "from the frame holding offset 3");
        assert_eq!(&frames[0][..4], batch::MAGIC);
        assert_eq!(&frames[1][..4], batch::MAGIC_V2);
    }

    /// A WAL of preallocated files of `bytes` whose files `0..` are full
    /// of frames of `n` records: returns it with `files` files rotated out
    /// and none deleted yet.
    fn recycling(dir: &Path, bytes: u64, files: usize, n: u32) -> Wal {
        let mut wal = preallocated(dir, bytes);
        for _ in 0..files {
            while wal.size < bytes {
                write_batches(&mut wal, &[n]);
            }
            wal.rotate().unwrap();
        }
        wal
    }

    #[test]
    fn a_committed_file_becomes_the_spare_as_it_is_and_recovery_ignores_its_old_frames() {
        let dir = cairn_testkit::TempDir::new("wal");
        let bytes = 16 * 1024;
        let mut wal = recycling(dir.path(), bytes, 2, 7);
        let files = wal_files(dir.path()).unwrap().0;
        assert_eq!(files.len(), 3);
        let (first, second, current) = (files[0], files[1], files[2]);
        assert_eq!(wal.spare_count(), 0);
        wal.drop_below(current).unwrap();
        wal.join_deleter();
        assert_eq!(wal.spares.len(), 2, "both committed files are spares");
        assert_eq!(
            wal_files(dir.path()).unwrap().0,
            vec![current],
            "and no WAL file any more"
        );
        let spare = std::fs::read(&wal.spares[0]).unwrap();
        assert!(spare.len() as u64 >= bytes, "kept whole");
        assert_eq!(
            batch::frame(&spare).unwrap().header.base_offset,
            second,
            "the newest first, not zero-filled: its old frames are still there"
        );
        assert!(first < second);

        // Into place at the next rotation; a few frames overwrite the start.
        write_batches(&mut wal, &[3]);
        wal.rotate().unwrap();
        assert!(wal.is_preallocated());
        let base = wal.next_offset();
        write_batches(&mut wal, &[2, 5]);
        assert_eq!(
            std::fs::metadata(dir.path().join(file_name(base))).unwrap().len(),
            spare.len() as u64,
            "written in place"
        );
        drop(wal);

        let recovered = open(dir.path(), current).unwrap();
        assert_eq!(recovered.wal.next_offset(), base + 7);
        assert_eq!(
            recovered.truncated, 0,
            "the old frames are spare space, not a torn tail"
        );
        assert!(recovered.wal.is_preallocated());
        let records = recovered.wal.reader().read(current, base + 7, usize::MAX).unwrap();
        assert_eq!(
            records.iter().map(|s| s.offset).collect::<Vec<_>>(),
            (current..base + 7).collect::<Vec<_>>()
        );
        // Appends continue in place over the rest of the old frames.
        let mut wal = recovered.wal;
        write_batches(&mut wal, &[4]);
        drop(wal);
        assert_eq!(open(dir.path(), current).unwrap().wal.next_offset(), base + 11);
    }

    #[test]
    fn a_recycled_file_recovers_at_every_end_torn_stale_or_untouched() {
        let dir = cairn_testkit::TempDir::new("wal");
        let bytes = 16 * 1024;
        let mut wal = recycling(dir.path(), bytes, 1, 7);
        let current = wal.next_offset();
        wal.drop_below(current).unwrap();
        assert_eq!(wal.spares.len(), 1);
        wal.rotate().unwrap(); // the empty current file is replaced by the spare, same name
        assert!(wal.is_preallocated());
        let path = dir.path().join(file_name(current));
        drop(wal);
        // Rotated in, nothing written yet: all of it is old frames.
        let recovered = open(dir.path(), current).unwrap();
        assert_eq!(recovered.wal.next_offset(), current);
        assert_eq!(recovered.truncated, 0);
        let mut wal = recovered.wal;
        write_batches(&mut wal, &[2, 2]);
        let end = wal.current_file_size();
        drop(wal);
        let old = std::fs::read(&path).unwrap();
        // A torn new frame over the old ones, at every cut: nothing of this
        // life follows it, so the log ends before it.
        let (extra, _) = batch_at(current + 4, 40);
        for cut in [1, PREAMBLE, PREAMBLE + 1, extra.len() / 2, extra.len() - 1] {
            std::fs::write(&path, &old).unwrap();
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&extra[..cut], end).unwrap();
            drop(file);
            let recovered = open(dir.path(), current).unwrap();
            assert_eq!(recovered.wal.next_offset(), current + 4, "cut {cut}");
            let records = recovered.wal.reader().read(current, current + 4, usize::MAX).unwrap();
            assert_eq!(records.len(), 4, "cut {cut}");
        }
        // A frame of this life after the damage is corruption, even among old frames.
        std::fs::write(&path, &old).unwrap();
        let (later, _) = batch_at(current + 9, 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&extra[..PREAMBLE + 1], end).unwrap();
        file.write_all_at(&later, bytes - later.len() as u64).unwrap();
        drop(file);
        let damaged = std::fs::read(&path).unwrap();
        assert!(matches!(open(dir.path(), current), Err(Error::Corrupt(_))));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            damaged,
            "a refused recovery changes nothing"
        );
        // So is one right after the old frames begin.
        std::fs::write(&path, &old).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&later, bytes - later.len() as u64).unwrap();
        drop(file);
        assert!(matches!(open(dir.path(), current), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_file_a_read_still_holds_is_deleted_not_recycled() {
        let dir = cairn_testkit::TempDir::new("wal");
        let mut wal = recycling(dir.path(), 16 * 1024, 1, 7);
        let current = wal.next_offset();
        let held = wal.reader.files.read().unwrap()[0].1.clone();
        wal.drop_below(current).unwrap();
        wal.join_deleter();
        assert_eq!(wal.spare_count(), 0, "never overwritten under a read");
        assert!(!has_spares(dir.path()));
        assert_eq!(wal_files(dir.path()).unwrap().0, vec![current]);
        let mut first = vec![0u8; PREAMBLE];
        held.read_exact_at(&mut first, 0).unwrap();
        assert_eq!(&first[..4], batch::MAGIC_V2, "the read still sees its frames");
    }

    #[test]
    fn no_zeros_are_written_while_an_older_file_can_be_recycled() {
        let dir = cairn_testkit::TempDir::new("wal");
        let bytes = 16 * 1024;
        let mut wal = recycling(dir.path(), bytes, 1, 7);
        while wal.size < bytes * 3 / 4 {
            write_batches(&mut wal, &[7]);
        }
        wal.rotate_if_due(bytes).unwrap();
        assert_eq!(
            wal.spare_count(),
            0,
            "the older file will be the spare: no zero-filling"
        );
        wal.drop_below(wal.next_offset()).unwrap();
        assert_eq!(wal.spares.len(), 1);
        while wal.size < bytes {
            write_batches(&mut wal, &[7]);
        }
        wal.rotate_if_due(bytes).unwrap();
        assert!(wal.is_preallocated(), "rotated into the recycled file");
        assert_eq!(wal_files(dir.path()).unwrap().0.len(), 2);
    }
}
