//! One partition this agent leads: a writer thread doing group commit over
//! the WAL, the durable high watermark readers see, and reads.
//!
//! Group commit: the writer takes every append waiting in its queue, assigns
//! dense offsets by stamping each frame's header (the records inside are
//! never decoded or re-encoded here), writes all the frames with one `write`,
//! acknowledges leader-acked requests, runs one `fdatasync`, then moves the
//! high watermark and acknowledges durable requests. Many concurrent produces
//! share one fsync.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    batch::{self, BatchHeader, ProducerInfo, Stored},
    error::{Error, Result},
    producers::{Producers, Verdict},
    wal::{Discarded, Tenure, Wal, WalReader},
};

/// What recovery did to the local WAL before the partition opened.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Bytes of torn tail cut off.
    pub truncated: u64,
    /// Divergent records dropped (see [`Tenure`]).
    pub discarded: Option<Discarded>,
    /// Dead files moved aside.
    pub set_aside: Vec<std::path::PathBuf>,
}

/// How far an append must get before its caller hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Written, not yet fsynced.
    Leader,
    /// fsynced.
    Durable,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub count: u32,
    pub append_time_ms: i64,
    pub duplicate: bool,
}

struct Request {
    /// When it entered the queue (the queue-wait stage).
    queued_at: std::time::Instant,
    /// Half the caller's remaining deadline after `queued_at`: a batch held
    /// for its predecessors is refused by then, so the refusal reaches the
    /// caller before it gives up (None: the caller set no deadline).
    answer_within: Option<Duration>,
    /// A checked version 2 frame of `count` records (stamped by the writer
    /// in its round buffer).
    frame: bytes::Bytes,
    count: u32,
    producer: ProducerInfo,
    ack: Ack,
    reply: oneshot::Sender<Result<Appended>>,
    /// Held for its predecessors at least once (counted once).
    held: bool,
}

/// What the writer thread is asked to do, in queue order.
enum Op {
    Append(Request),
    /// Answered once everything queued before it is done.
    Drain(oneshot::Sender<()>),
    /// Segments hold every record (the partition was handed off clean):
    /// delete the WAL and stop.
    Retire(oneshot::Sender<Result<()>>),
}

/// Counters for the benchmark and for operators.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub fsyncs: AtomicU64,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    /// Batches that arrived ahead of their producer's sequence and were held
    /// for their predecessors instead of being refused.
    pub held: AtomicU64,
}

/// Lease validity the writer checks before every write: the moment, by the
/// local monotonic clock, after which this agent must not write.
#[derive(Debug)]
pub struct Fence {
    base: tokio::time::Instant,
    /// Nanoseconds after `base` until which writes are allowed (0: not leading).
    valid_until: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            base: tokio::time::Instant::now(),
            valid_until: AtomicU64::new(0),
        }
    }
}

impl Fence {
    /// Allows writes until `until` (already minus the safety margin).
    pub fn extend(&self, until: tokio::time::Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos();
        self.valid_until
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Stops writes at once.
    pub fn revoke(&self) {
        self.valid_until.store(0, Ordering::SeqCst);
    }

    /// Whether writes are allowed now.
    pub fn is_valid(&self) -> bool {
        let now = tokio::time::Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        now < u128::from(self.valid_until.load(Ordering::SeqCst))
    }
}

/// The partition's append times: non-decreasing along the log, across
/// leaders (a tenure starts at the latest time already in the log), and a
/// floor readers can trust: no record that becomes readable after
/// [`AppendClock::floor`] is read carries an earlier append time. Readers
/// that merge partitions by append time emit up to the floor and never skip
/// a record that became durable after they moved on.
#[derive(Debug)]
pub struct AppendClock {
    state: std::sync::Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    /// The latest stamp handed out (or found in the log).
    last: i64,
    /// The stamps of the rounds written but not yet readable, oldest first
    /// (a round's sync overlaps the next round's write).
    in_flight: std::collections::VecDeque<i64>,
}

impl AppendClock {
    /// A clock that never stamps below `floor`.
    pub fn new(floor: i64) -> Self {
        AppendClock {
            state: std::sync::Mutex::new(ClockState {
                last: floor,
                in_flight: std::collections::VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The append time of the next round: now, or the last stamp if the
    /// clock stepped back. In flight until [`AppendClock::published`] (or
    /// [`AppendClock::withdraw`]).
    fn stamp(&self) -> i64 {
        let mut state = self.lock();
        let stamp = now_ms().max(state.last);
        state.last = stamp;
        state.in_flight.push_back(stamp);
        stamp
    }

    /// The oldest round in flight is readable (or failed).
    fn published(&self) {
        self.lock().in_flight.pop_front();
    }

    /// The newest round stamped wrote nothing.
    fn withdraw(&self) {
        self.lock().in_flight.pop_back();
    }

    /// No record made readable after this call has an append time below it.
    /// Read it before the high watermark it goes with.
    pub fn floor(&self) -> i64 {
        let state = self.lock();
        state
            .in_flight
            .front()
            .copied()
            .unwrap_or_else(|| now_ms().max(state.last))
    }
}

/// Durable records read from a partition, and what a reader may conclude.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<Stored>,
    /// Whole frames as stored, when asked for instead of records.
    pub frames: Vec<Vec<u8>>,
    pub high_watermark: u64,
    /// Records at or above the high watermark will have append times at or
    /// above this (unix ms).
    pub time_floor: i64,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A partition this agent leads.
pub struct Partition {
    pub topic: String,
    pub partition: u32,
    queue: mpsc::Sender<Op>,
    reader: Arc<WalReader>,
    high_watermark: watch::Receiver<u64>,
    pub fence: Arc<Fence>,
    failed: Arc<AtomicBool>,
    pub stats: Arc<WriterStats>,
    committed: watch::Sender<u64>,
    /// When the oldest committed-ack produce not yet covered by a roll began waiting.
    commit_wanted: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Set by [`Partition::close`]: long-polls and committed-ack waits end.
    closed: watch::Sender<bool>,
    clock: Arc<AppendClock>,
}

/// Where a durable ack's time goes, stage by stage: waiting in the
/// partition's queue for a group-commit round, writing the round, its
/// fdatasync, and the upkeep after it that the next round waits behind.
#[derive(Debug, Clone)]
pub struct WalTimings {
    /// From a request's arrival in the queue to its round starting.
    pub queue_seconds: cairn_service::metrics::prometheus_client::metrics::histogram::Histogram,
    /// Writing one round's frames to the WAL file.
    pub write_seconds: cairn_service::metrics::prometheus_client::metrics::histogram::Histogram,
    /// One round's fdatasync.
    pub fsync_seconds: cairn_service::metrics::prometheus_client::metrics::histogram::Histogram,
    /// After a round: rotating, recycling and deleting WAL files.
    pub tidy_seconds: cairn_service::metrics::prometheus_client::metrics::histogram::Histogram,
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Stop adding requests to a round past this many bytes.
    pub max_round_bytes: usize,
    /// Queued appends beyond which produce is refused as overloaded.
    pub queue_depth: usize,
    /// Start a new WAL file past this size, so files below the committed
    /// offset can be deleted.
    pub wal_file_bytes: u64,
    /// Where the durable-ack path's time goes (none: not recorded).
    pub timings: Option<WalTimings>,
    /// Write WAL files into preallocated space (recycled or zero-filled files).
    pub preallocate: bool,
    /// How long a batch that arrived ahead of its producer's sequence waits
    /// for the batches before it (zero: refused at once as out of order).
    pub sequence_hold: Duration,
    /// After this long without an append, the WAL's spare files are deleted
    /// (zero: kept).
    pub spare_idle: Duration,
}

impl Partition {
    /// Recovers the WAL in `dir` against `tenure` (see [`Wal::recover`]) and
    /// starts the writer thread.
    pub fn open(
        topic: &str,
        partition: u32,
        dir: &Path,
        tenure: &Tenure,
        snapshot: Producers,
        config: WriterConfig,
    ) -> Result<(Arc<Partition>, Recovery)> {
        let committed = tenure.committed;
        let recovered = Wal::recover(dir, tenure)?;
        let recovery = Recovery {
            truncated: recovered.truncated,
            discarded: recovered.discarded,
            set_aside: recovered.set_aside.clone(),
        };
        // The stored snapshot is the state at `committed`; the WAL adds what came after.
        let mut producers = snapshot;
        producers.replay(&recovered.batches, committed);
        let floor = recovered
            .batches
            .last()
            .map_or(0, |h| h.append_time_ms)
            .max(tenure.time_floor);
        let clock = Arc::new(AppendClock::new(floor));
        let mut wal = recovered.wal;
        if config.preallocate {
            wal.preallocate_when_needed(config.wal_file_bytes);
        }
        let reader = wal.reader();
        let (hw_tx, hw_rx) = watch::channel(wal.next_offset());
        let (queue, rx) = mpsc::channel(config.queue_depth);
        let (committed_tx, committed_rx) = watch::channel(committed);
        let fence = Arc::new(Fence::default());
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WriterStats::default());
        let (sync, to_sync) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
        let syncer = Syncer {
            hw: hw_tx,
            failed: failed.clone(),
            stats: stats.clone(),
            timings: config.timings.clone(),
            clock: clock.clone(),
            name: format!("{topic}/{partition}"),
        };
        let syncer = std::thread::Builder::new()
            .name(format!("wal-sync-{topic}-{partition}"))
            .spawn(move || syncer.run(to_sync))?;
        let writer = Writer {
            wal,
            producers,
            rx,
            sync: Some(sync),
            syncer: Some(syncer),
            fence: fence.clone(),
            failed: failed.clone(),
            stats: stats.clone(),
            config,
            round: Vec::new(),
            topic: topic.to_owned(),
            partition,
            name: format!("{topic}/{partition}"),
            committed: committed_rx,
            clock: clock.clone(),
            held: Vec::new(),
            // The hold's timer: without a runtime (never in the agent) nothing is held.
            runtime: tokio::runtime::Handle::try_current().ok(),
        };
        std::thread::Builder::new()
            .name(format!("wal-{topic}-{partition}"))
            .spawn(move || writer.run())?;
        tracing::info!(%topic, partition, next_offset = *hw_rx.borrow(), truncated = recovered.truncated, "partition recovered");
        let partition = Arc::new(Partition {
            topic: topic.to_owned(),
            partition,
            queue,
            reader,
            high_watermark: hw_rx,
            fence,
            failed,
            stats,
            committed: committed_tx,
            commit_wanted: std::sync::Mutex::new(None),
            closed: watch::channel(false).0,
            clock,
        });
        Ok((partition, recovery))
    }

    /// Offset after the last durable record.
    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// The first offset in the local WAL (segments hold what is below it).
    pub fn wal_start(&self) -> u64 {
        self.reader.start()
    }

    /// Queues an append of a checked version 2 `frame` of `count` records
    /// (see [`batch::validate`]). `Ok(None)` means queued without waiting
    /// (fire and forget).
    pub async fn append(
        &self,
        frame: bytes::Bytes,
        count: u32,
        producer: ProducerInfo,
        ack: Option<Ack>,
    ) -> Result<Option<Appended>> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::StorageFailed {
                partition: format!("{}/{}", self.topic, self.partition),
                source: Arc::new(Error::Corrupt("an earlier write failed; see the agent's log".into())),
            });
        }
        if !self.fence.is_valid() {
            return Err(Error::NotLeader {
                topic: self.topic.clone(),
                partition: self.partition,
                leader: None,
            });
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            queued_at: std::time::Instant::now(),
            answer_within: cairn_service::context::remaining().map(|left| left / 2),
            frame,
            count,
            producer,
            ack: ack.unwrap_or(Ack::Durable),
            reply,
            held: false,
        };
        // A full queue is overload: refuse now, retryably, instead of queueing without bound.
        self.queue.try_send(Op::Append(request)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded {
                partition: format!("{}/{}", self.topic, self.partition),
            },
            mpsc::error::TrySendError::Closed(_) => Error::PartitionMoving {
                topic: self.topic.clone(),
                partition: self.partition,
            },
        })?;
        if ack.is_none() {
            return Ok(None);
        }
        answer.await.map_err(|_| self.writer_stopped())?.map(Some)
    }

    /// Durable records from `offset` (whole frames as stored, with
    /// `frames`), waiting up to `wait` for some when at the end.
    pub async fn fetch(&self, offset: u64, max_bytes: usize, wait: Duration, frames: bool) -> Result<Fetched> {
        let mut hw_rx = self.high_watermark.clone();
        let mut time_floor = self.clock.floor();
        let mut hw = *hw_rx.borrow_and_update();
        let start = self.wal_start();
        if offset < start || offset > hw {
            return Err(Error::OffsetOutOfRange { offset, start, end: hw });
        }
        if offset == hw && !wait.is_zero() {
            let mut closed = self.closed.subscribe();
            tokio::select! {
                _ = tokio::time::timeout(wait, hw_rx.wait_for(|&h| h > offset)) => {}
                _ = closed.wait_for(|c| *c) => {}
            }
            time_floor = self.clock.floor();
            hw = *hw_rx.borrow();
        }
        let reader = self.reader.clone();
        let (records, frames) = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok(if frames {
                (Vec::new(), reader.read_frames(offset, hw, max_bytes)?)
            } else {
                (reader.read(offset, hw, max_bytes)?, Vec::new())
            })
        })
        .await??;
        Ok(Fetched {
            records,
            frames,
            high_watermark: hw,
            time_floor,
        })
    }

    /// See [`AppendClock::floor`].
    pub fn time_floor(&self) -> i64 {
        self.clock.floor()
    }

    fn writer_stopped(&self) -> Error {
        Error::WriterStopped {
            partition: format!("{}/{}", self.topic, self.partition),
        }
    }

    /// Offset below which every record is in a committed segment.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Records that segments now cover everything below `offset`.
    pub fn set_committed(&self, offset: u64) {
        self.committed.send_if_modified(|c| {
            let moved = offset > *c;
            *c = (*c).max(offset);
            moved
        });
    }

    /// Since when a committed-ack produce has waited for a segment that no
    /// roll has started on yet.
    pub fn commit_wanted_since(&self) -> Option<tokio::time::Instant> {
        *self.commit_wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A roll is starting that covers every record written so far: the
    /// waiters until now are served by it.
    pub fn take_commit_wanted(&self) {
        *self.commit_wanted.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Waits until everything below `offset` is committed; false on timeout.
    pub async fn wait_committed(&self, offset: u64, timeout: Duration) -> bool {
        let mut rx = self.committed.subscribe();
        if *rx.borrow_and_update() >= offset {
            return true;
        }
        self.commit_wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(tokio::time::Instant::now);
        let mut closed = self.closed.subscribe();
        tokio::select! {
            done = tokio::time::timeout(timeout, rx.wait_for(|&c| c >= offset)) => done.is_ok_and(|r| r.is_ok()),
            // Closing: the caller is told to retry; the records are durable and
            // the hand-off commits them, so a retry finds them as duplicates.
            _ = closed.wait_for(|c| *c) => *self.committed.borrow() >= offset,
        }
    }

    /// Waits until the writer has finished every append queued before this
    /// call (after [`Partition::close`], they all fail), so the high watermark is final.
    pub async fn drain(&self) {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Op::Drain(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// Deletes the local WAL and stops the writer, once segments hold every
    /// record (after a clean hand-off; call [`Partition::close`] first).
    pub async fn retire(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Op::Retire(reply))
            .await
            .map_err(|_| self.writer_stopped())?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// The WAL reader, for segment building.
    pub fn reader(&self) -> Arc<WalReader> {
        self.reader.clone()
    }

    /// Stops accepting writes (lease lost, given up, shutting down). Queued
    /// appends fail; long-polls and committed-ack waits end at once.
    pub fn close(&self) {
        self.fence.revoke();
        self.closed.send_replace(true);
    }
}

struct Writer {
    wal: Wal,
    producers: Producers,
    rx: mpsc::Receiver<Op>,
    /// Written rounds go to the sync thread (None once the writer stops).
    sync: Option<std::sync::mpsc::SyncSender<ToSync>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    fence: Arc<Fence>,
    failed: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
    config: WriterConfig,
    /// The round's frames, back to back (kept to reuse its allocation).
    round: Vec<u8>,
    topic: String,
    partition: u32,
    /// `topic/partition`, for logs and errors.
    name: String,
    committed: watch::Receiver<u64>,
    clock: Arc<AppendClock>,
    /// Batches ahead of their producer's sequence, oldest first, waiting up
    /// to `sequence_hold` for their predecessors (see [`Writer::may_hold`]).
    held: Vec<Request>,
    runtime: Option<tokio::runtime::Handle>,
}

/// At most this many batches are held per partition; more ahead of their
/// sequence are refused at once.
const MAX_HELD: usize = 16;

/// Written rounds waiting for the sync thread; past this the writer waits.
const SYNC_QUEUE: usize = 4;

/// A round written to the WAL, on its way to the disk: the sync thread makes
/// it durable, publishes it (the high watermark) and answers its durable acks.
struct Written {
    /// The file written to (None: the round wrote nothing; it only answers
    /// duplicates, whose originals may still be syncing).
    file: Option<Arc<std::fs::File>>,
    durable: Vec<Pending>,
    next_offset: u64,
    batches: u64,
    records: u64,
}

enum ToSync {
    Round(Written),
    /// Answered once every round sent before it is durable and answered.
    Barrier(std::sync::mpsc::Sender<()>),
}

/// A partition's sync thread. The writer hands it each written round and
/// goes on writing the next, so one round's write overlaps the previous
/// round's fdatasync; rounds that arrive during a sync share the next one.
/// Rounds are made durable, published and answered in order.
struct Syncer {
    hw: watch::Sender<u64>,
    failed: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
    timings: Option<WalTimings>,
    clock: Arc<AppendClock>,
    name: String,
}

impl Syncer {
    fn run(self, rx: std::sync::mpsc::Receiver<ToSync>) {
        // Once a sync fails nothing after it is durable: every later round fails.
        let mut broken: Option<Arc<Error>> = None;
        while let Ok(first) = rx.recv() {
            let mut rounds = Vec::new();
            let mut barriers = Vec::new();
            for op in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                match op {
                    ToSync::Round(round) => rounds.push(round),
                    ToSync::Barrier(reply) => barriers.push(reply),
                }
            }
            // One fdatasync per file, in write order (the writer waits for a
            // barrier before it rotates, so this is one file).
            let mut files: Vec<&Arc<std::fs::File>> = Vec::new();
            for file in rounds.iter().filter_map(|r| r.file.as_ref()) {
                if !files.last().is_some_and(|last| Arc::ptr_eq(last, file)) {
                    files.push(file);
                }
            }
            if broken.is_none() && !files.is_empty() {
                let started = std::time::Instant::now();
                let synced = files.iter().try_for_each(|file| file.sync_data());
                if let Some(t) = &self.timings {
                    t.fsync_seconds.observe(started.elapsed().as_secs_f64());
                }
                match synced {
                    Ok(()) => {
                        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::error!(partition = %self.name, %error, "WAL sync failed; partition stops accepting writes");
                        self.failed.store(true, Ordering::SeqCst);
                        broken = Some(Arc::new(Error::Io(error)));
                    }
                }
            }
            for round in rounds {
                match &broken {
                    None => {
                        if round.file.is_some() {
                            self.stats.batches.fetch_add(round.batches, Ordering::Relaxed);
                            self.stats.records.fetch_add(round.records, Ordering::Relaxed);
                            self.hw.send_replace(round.next_offset);
                        }
                        for p in round.durable {
                            let _ = p.reply.send(Ok(p.appended));
                        }
                    }
                    Some(error) => {
                        for p in round.durable {
                            let _ = p.reply.send(Err(Error::StorageFailed {
                                partition: self.name.clone(),
                                source: error.clone(),
                            }));
                        }
                    }
                }
                // After the high watermark: readers take the floor first.
                if round.file.is_some() {
                    self.clock.published();
                }
            }
            for reply in barriers {
                let _ = reply.send(());
            }
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Result<Appended>>,
    appended: Appended,
    ack: Ack,
}

impl Writer {
    /// Waits until every round written so far is durable and answered.
    fn synced(&self) {
        let Some(sync) = &self.sync else { return };
        let (reply, done) = std::sync::mpsc::channel();
        if sync.send(ToSync::Barrier(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Rotates a full WAL file and deletes files segments now cover. Neither
    /// failing stops appends: it is retried after the next round.
    fn tidy(&mut self) {
        // The file being left must be durable before writes go to the next.
        if self.wal.rotation_due(self.config.wal_file_bytes) {
            self.synced();
        }
        if let Err(error) = self.wal.rotate_if_due(self.config.wal_file_bytes) {
            tracing::warn!(partition = %self.name, %error, "rotating the WAL file failed");
        }
        let committed = *self.committed.borrow();
        if let Err(error) = self.wal.drop_below(committed) {
            tracing::warn!(partition = %self.name, %error, "deleting committed WAL files failed");
        }
    }

    /// Whether a batch ahead of its producer's sequence may wait for the
    /// batches before it (`holding` are already waiting): requests of one
    /// producer race inside the agent, so a later one often arrives first.
    /// It waits only a while, and only this many at a time.
    fn may_hold(&self, request: &Request, holding: usize, now: std::time::Instant) -> bool {
        self.runtime.is_some() && holding < MAX_HELD && self.hold_ends(request) > now
    }

    /// When `request`'s hold runs out: after `sequence_hold`, or earlier if
    /// its caller's deadline is near.
    fn hold_ends(&self, request: &Request) -> std::time::Instant {
        let hold = request.answer_within.map_or(self.config.sequence_hold, |within| {
            within.min(self.config.sequence_hold)
        });
        request.queued_at + hold
    }

    /// The next queued op. While waiting for it, answers held batches whose
    /// hold ran out, and deletes the WAL's spares once the partition has
    /// been idle for `spare_idle`.
    fn next_op(&mut self) -> Option<Op> {
        loop {
            let now = std::time::Instant::now();
            let hold_ends = self.held.iter().map(|r| self.hold_ends(r)).min();
            let idle_ends =
                (self.wal.spares() > 0 && !self.config.spare_idle.is_zero()).then(|| now + self.config.spare_idle);
            let until = hold_ends.into_iter().chain(idle_ends).min();
            // Nothing is held without a runtime (see `may_hold`).
            let (Some(until), Some(runtime)) = (until, self.runtime.clone()) else {
                return self.rx.blocking_recv();
            };
            let deadline = tokio::time::Instant::from_std(until);
            let rx = &mut self.rx;
            // The timer is made inside the runtime: it needs the runtime's clock.
            if let Ok(op) = runtime.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                return op;
            }
            let now = std::time::Instant::now();
            self.release_held(now);
            if idle_ends.is_some_and(|t| t <= now) {
                match self.wal.release_spares() {
                    Ok(n) => tracing::debug!(partition = %self.name, spares = n, "idle: WAL spares deleted"),
                    Err(error) => tracing::warn!(partition = %self.name, %error, "deleting idle WAL spares failed"),
                }
            }
        }
    }

    /// Refuses the held batches whose hold has run out (or all of them,
    /// `now` = None): their predecessors did not come, so they are out of
    /// order, as they were when they arrived.
    fn release_held(&mut self, now: impl Into<Option<std::time::Instant>>) {
        let now = now.into();
        let (expired, kept): (Vec<Request>, Vec<Request>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|r| now.is_none_or(|now| self.hold_ends(r) <= now));
        self.held = kept;
        for request in expired {
            let answer = match self.producers.check(request.producer, request.count) {
                Err(error) => error,
                // Cannot happen (every round re-checks held batches), but if
                // the state moved on, the producer resends and learns which.
                Ok(_) => Error::OutOfOrderSequence {
                    producer_id: request.producer.producer_id,
                    expected: request.producer.base_sequence,
                    got: request.producer.base_sequence,
                },
            };
            let _ = request.reply.send(Err(answer));
        }
    }

    fn run(mut self) {
        let mut next = self.next_op();
        while let Some(op) = next.take() {
            let first = match op {
                Op::Append(request) => request,
                Op::Drain(reply) => {
                    // Held batches were queued before the drain: they end now.
                    self.release_held(None);
                    self.synced();
                    let _ = reply.send(());
                    next = self.next_op();
                    continue;
                }
                Op::Retire(reply) => {
                    self.synced();
                    let result = self.wal.retire();
                    if let Err(error) = &result {
                        tracing::warn!(partition = %self.name, %error, "deleting the handed-off WAL failed; the next take deletes it");
                    }
                    let _ = reply.send(result);
                    break;
                }
            };
            let mut round = vec![first];
            let mut bytes = 0usize;
            while bytes < self.config.max_round_bytes {
                match self.rx.try_recv() {
                    Ok(Op::Append(request)) => {
                        bytes += request.frame.len();
                        round.push(request);
                    }
                    // Handled after this round, in queue order.
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(t) = &self.config.timings {
                let started = std::time::Instant::now();
                for request in &round {
                    t.queue_seconds
                        .observe(started.saturating_duration_since(request.queued_at).as_secs_f64());
                }
            }
            if let Err(error) = self.commit(round) {
                tracing::error!(partition = %self.name, %error, "WAL write failed; partition stops accepting writes");
                self.failed.store(true, Ordering::SeqCst);
                break;
            }
            if next.is_none() {
                next = self.next_op();
            }
        }
        // What was written becomes durable and is answered.
        drop(self.sync.take());
        if let Some(syncer) = self.syncer.take()
            && syncer.join().is_err()
        {
            tracing::error!(partition = %self.name, "the WAL sync thread panicked");
        }
        // Whatever is still queued fails rather than waiting forever.
        for request in std::mem::take(&mut self.held) {
            let _ = request.reply.send(Err(Error::WriterStopped {
                partition: self.name.clone(),
            }));
        }
        self.rx.close();
        while let Ok(op) = self.rx.try_recv() {
            match op {
                Op::Append(request) => {
                    let _ = request.reply.send(Err(Error::WriterStopped {
                        partition: self.name.clone(),
                    }));
                }
                Op::Drain(reply) => {
                    let _ = reply.send(());
                }
                Op::Retire(reply) => {
                    let _ = reply.send(Err(Error::WriterStopped {
                        partition: self.name.clone(),
                    }));
                }
            }
        }
    }

    /// Answers every waiting append with the storage failure, and returns it.
    fn fail_all(&self, waiting: Vec<Pending>, error: Error) -> Error {
        let error = Arc::new(error);
        let failed = || Error::StorageFailed {
            partition: self.name.clone(),
            source: error.clone(),
        };
        for p in waiting {
            let _ = p.reply.send(Err(failed()));
        }
        failed()
    }

    fn commit(&mut self, round: Vec<Request>) -> Result<()> {
        let now = self.clock.stamp();
        let result = self.commit_at(round, now);
        // A written round is published by the sync thread.
        if !matches!(result, Ok(true)) {
            self.clock.withdraw();
        }
        result.map(|_| ())
    }

    /// Writes a round and hands it to the sync thread; true when it wrote
    /// anything.
    fn commit_at(&mut self, round: Vec<Request>, now: i64) -> Result<bool> {
        if self.failed.load(Ordering::SeqCst) {
            // A sync failed: nothing written from here on would be durable.
            let source = Arc::new(Error::Corrupt("an earlier WAL sync failed; see the agent's log".into()));
            let failed = || Error::StorageFailed {
                partition: self.name.clone(),
                source: source.clone(),
            };
            for request in std::mem::take(&mut self.held).into_iter().chain(round) {
                let _ = request.reply.send(Err(failed()));
            }
            return Err(failed());
        }
        if !self.fence.is_valid() {
            for request in std::mem::take(&mut self.held).into_iter().chain(round) {
                let _ = request.reply.send(Err(Error::NotLeader {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    leader: None,
                }));
            }
            return Ok(false);
        }
        // Sequences are checked against a working copy that includes this
        // round's earlier batches; the real state changes only after the write.
        let mut tentative = self.producers.clone();
        let mut frames = std::mem::take(&mut self.round);
        frames.clear();
        let mut headers = Vec::new();
        let mut pending = Vec::new();
        let mut next = self.wal.next_offset();
        // Held batches first (they came earlier), then the round's. A batch
        // appended may be what a held one waits for, so go over the waiting
        // ones again until a pass appends nothing.
        let mut waiting = std::mem::take(&mut self.held);
        if waiting.is_empty() {
            waiting = round;
        } else {
            waiting.extend(round);
        }
        let arrived = std::time::Instant::now();
        loop {
            let mut progress = false;
            let mut ahead = Vec::new();
            for mut request in waiting {
                let count = request.count;
                match tentative.check(request.producer, count) {
                    Err(Error::OutOfOrderSequence { expected, got, .. })
                        if got > expected && self.may_hold(&request, ahead.len(), arrived) =>
                    {
                        if !std::mem::replace(&mut request.held, true) {
                            self.stats.held.fetch_add(1, Ordering::Relaxed);
                        }
                        ahead.push(request);
                    }
                    Err(error) => {
                        let _ = request.reply.send(Err(error));
                    }
                    Ok(Verdict::Duplicate(original)) => pending.push(Pending {
                        reply: request.reply,
                        appended: Appended {
                            base_offset: original.base_offset,
                            count,
                            append_time_ms: original.append_time_ms,
                            duplicate: true,
                        },
                        ack: Ack::Durable,
                    }),
                    Ok(Verdict::Append) => {
                        let header = BatchHeader {
                            base_offset: next,
                            count,
                            producer: request.producer,
                            append_time_ms: now,
                        };
                        let at = frames.len();
                        frames.extend_from_slice(&request.frame);
                        batch::stamp(&mut frames[at..], next, now);
                        headers.push((header, request.frame.len() as u32));
                        tentative.record(request.producer, count, next, now);
                        pending.push(Pending {
                            reply: request.reply,
                            appended: Appended {
                                base_offset: next,
                                count,
                                append_time_ms: now,
                                duplicate: false,
                            },
                            ack: request.ack,
                        });
                        next += u64::from(count);
                        progress = true;
                    }
                }
            }
            waiting = ahead;
            if !progress || waiting.is_empty() {
                break;
            }
        }
        self.held = waiting;
        if !headers.is_empty() {
            let started = std::time::Instant::now();
            let written = self.wal.append(&frames, &headers);
            if let Some(t) = &self.config.timings {
                t.write_seconds.observe(started.elapsed().as_secs_f64());
            }
            // Keep the buffer for the next round unless one huge round grew it.
            if frames.capacity() <= self.config.max_round_bytes * 2 {
                self.round = frames;
            }
            if let Err(error) = written {
                return Err(self.fail_all(pending, error));
            }
        }
        let mut durable = Vec::with_capacity(pending.len());
        for p in pending {
            if p.ack == Ack::Leader {
                let _ = p.reply.send(Ok(p.appended));
            } else {
                durable.push(p);
            }
        }
        self.producers = tentative;
        let wrote = !headers.is_empty();
        if wrote || !durable.is_empty() {
            let written = Written {
                file: wrote.then(|| self.wal.current_file()),
                durable,
                next_offset: self.wal.next_offset(),
                batches: headers.len() as u64,
                records: headers.iter().map(|(h, _)| u64::from(h.count)).sum(),
            };
            let sent = self.sync.as_ref().map(|sync| sync.send(ToSync::Round(written)));
            if let Some(Err(std::sync::mpsc::SendError(ToSync::Round(lost)))) = sent {
                // The sync thread is gone (it panicked): nothing is durable.
                let error = Error::Corrupt("the WAL sync thread stopped".into());
                return Err(self.fail_all(lost.durable, error));
            }
        }
        let started = std::time::Instant::now();
        self.tidy();
        if let Some(t) = &self.config.timings {
            t.tidy_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(wrote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_times_never_go_back_and_the_floor_covers_the_round_in_flight() {
        // The log's last stamp is an hour ahead of this machine's clock (a
        // previous leader's clock was fast): stamps stay at it, never below.
        let ahead = now_ms() + 3_600_000;
        let clock = AppendClock::new(ahead);
        assert!(clock.floor() >= ahead);
        let first = clock.stamp();
        assert_eq!(first, ahead);
        assert_eq!(clock.floor(), first, "a round in flight holds the floor at its stamp");
        let second = clock.stamp();
        assert!(second >= first);
        assert_eq!(clock.floor(), first, "the oldest round in flight holds it");
        clock.published();
        assert_eq!(clock.floor(), second);
        let nothing = clock.stamp();
        clock.withdraw();
        assert_eq!(clock.floor(), second, "a round that wrote nothing does not hold it");
        assert!(nothing >= second);
        clock.published();
        // A clock behind the machine's starts at now.
        let fresh = AppendClock::new(0);
        let before = now_ms();
        let stamp = fresh.stamp();
        assert!(stamp >= before && stamp <= now_ms());
        assert_eq!(fresh.floor(), stamp);
        fresh.published();
        assert!(fresh.floor() >= stamp, "idle: the floor follows the clock");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_ends_by_the_monotonic_clock() {
        let fence = Fence::default();
        assert!(!fence.is_valid(), "not leading until extended");
        fence.extend(tokio::time::Instant::now() + Duration::from_secs(7));
        assert!(fence.is_valid());
        tokio::time::advance(Duration::from_millis(6_999)).await;
        assert!(fence.is_valid());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!fence.is_valid(), "past the fence, whatever the wall clock says");
        fence.extend(tokio::time::Instant::now() + Duration::from_secs(1));
        fence.revoke();
        assert!(!fence.is_valid());
    }
}
