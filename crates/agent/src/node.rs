//! This agent in the cluster: its identity, the partitions it leads, and the
//! lease loop that heartbeats, renews, reclaims and acquires partitions.
//!
//! Each round: heartbeat; renew every held lease (a lease that fails to renew
//! is given up at once, and writes stop anyway a safety margin before it could
//! expire); then take free or expired partitions up to this agent's fair share
//! of the live agents. A partition another holder left dirty (acknowledged
//! records not in object storage) is never taken unless unclean takeover is on.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use cairn_object_store::{ObjectStore, StoreError};

use crate::{
    config::Config,
    error::{Error, Result},
    meta::{LeaseRow, Meta, SegmentRow},
    partition::{Partition, WriterConfig, now_ms},
    producers::Producers,
    segment::{self, SegmentBuilder},
};

/// A partition this agent holds the lease of.
pub struct Held {
    pub partition: Arc<Partition>,
    pub epoch: u64,
    /// Whether the lease row says this holder has uncommitted acknowledged records.
    pub dirty: AtomicBool,
    /// Roll a segment once this many bytes are uncommitted…
    segment_bytes: u64,
    /// …or the oldest uncommitted record is this old (ms).
    segment_ms: i64,
    /// When the next upload may be tried, and the current backoff.
    retry: std::sync::Mutex<(tokio::time::Instant, Duration)>,
    /// The first offset in the log: the first segment's, or the WAL's.
    pub log_start: std::sync::atomic::AtomicU64,
    /// When retention last ran for this partition.
    last_retention: std::sync::Mutex<tokio::time::Instant>,
    /// Idempotence state as of the committed offset (what the next segment
    /// commit stores, advanced by that segment's batches).
    committed_producers: std::sync::Mutex<Producers>,
}

type Key = (String, u32);

/// This agent.
pub struct Node {
    pub id: String,
    pub address: String,
    pub meta: Meta,
    pub store: Arc<dyn ObjectStore>,
    roll_wake: tokio::sync::Notify,
    config: Config,
    held: RwLock<HashMap<Key, Arc<Held>>>,
    wake: tokio::sync::Notify,
}

fn resolve_id(config: &Config) -> Result<String> {
    if !config.agent.id.is_empty() {
        return Ok(config.agent.id.clone());
    }
    std::fs::create_dir_all(&config.agent.data_dir)?;
    let path = config.agent.data_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = format!("agent-{:016x}", rand::random::<u64>());
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

impl Node {
    /// Connects to metadata, registers, and reclaims and recovers this agent's
    /// partitions before returning (so it serves only recovered partitions).
    pub async fn start(config: Config, address: String) -> Result<Arc<Node>> {
        let id = resolve_id(&config)?;
        let meta = Meta::connect(&config.metadata.url, config.metadata.max_connections).await?;
        let store = cairn_object_store::open(&config.object_store.url, &config.object_store.s3)
            .map_err(|e| Error::Retryable(format!("object store: {e}")))?;
        let node = Arc::new(Node {
            id,
            address,
            meta,
            store,
            roll_wake: tokio::sync::Notify::new(),
            config,
            held: RwLock::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        });
        node.round().await?;
        tracing::info!(agent_id = %node.id, address = %node.address, partitions = node.held_count(), "agent started");
        Ok(node)
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.agent.lease_ms)
    }

    fn held_count(&self) -> usize {
        self.held.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The partition if this agent leads it.
    pub fn held(&self, topic: &str, partition: u32) -> Option<Arc<Held>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// Every held partition.
    pub fn all_held(&self) -> Vec<Arc<Held>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Asks the lease loop to run a round now (e.g. after a topic was created).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn wal_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.config
            .agent
            .data_dir
            .join("wal")
            .join(topic)
            .join(partition.to_string())
    }

    /// Marks the partition dirty in metadata before its first acknowledgement
    /// under this lease. Fenced by the epoch.
    pub async fn ensure_dirty(&self, held: &Held) -> Result<()> {
        if held.dirty.load(Ordering::SeqCst) {
            return Ok(());
        }
        let p = &held.partition;
        if !self
            .meta
            .mark_dirty(&p.topic, p.partition, &self.id, held.epoch)
            .await?
        {
            p.close();
            return Err(Error::NotLeader {
                topic: p.topic.clone(),
                partition: p.partition,
                leader: None,
            });
        }
        held.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Runs lease rounds until `stop` resolves.
    pub async fn run_leases(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let interval = Duration::from_millis(self.config.agent.renew_interval_ms);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
                () = self.wake.notified() => {}
            }
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "lease round failed; writes stop when leases run out");
            }
        }
    }

    async fn round(&self) -> Result<()> {
        self.meta.heartbeat(&self.id, &self.address).await?;
        self.renew().await?;
        self.acquire().await
    }

    fn fence_until(&self, started_ms: i64) -> u64 {
        let a = &self.config.agent;
        (started_ms + a.lease_ms as i64 - a.lease_safety_margin_ms as i64).max(0) as u64
    }

    async fn renew(&self) -> Result<()> {
        for held in self.all_held() {
            let p = &held.partition;
            let started = now_ms();
            let offsets = (held.log_start.load(Ordering::SeqCst), p.high_watermark());
            let lease = self.lease();
            if self
                .meta
                .renew(&p.topic, p.partition, &self.id, held.epoch, lease, offsets)
                .await?
            {
                p.fence.extend(self.fence_until(started));
            } else {
                tracing::warn!(topic = %p.topic, partition = p.partition, epoch = held.epoch, "lease lost");
                self.drop_partition(&p.topic, p.partition);
            }
        }
        Ok(())
    }

    fn drop_partition(&self, topic: &str, partition: u32) {
        if let Some(held) = self
            .held
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(topic.to_owned(), partition))
        {
            held.partition.close();
        }
    }

    async fn acquire(&self) -> Result<()> {
        let leases = self.meta.leases().await?;
        let db_now = self.meta.now().await?;
        // Partitions of deleted topics: stop leading them and drop their WAL.
        let existing: std::collections::HashSet<Key> = leases.iter().map(|l| (l.topic.clone(), l.partition)).collect();
        for held in self.all_held() {
            let p = &held.partition;
            if !existing.contains(&(p.topic.clone(), p.partition)) {
                self.drop_partition(&p.topic, p.partition);
                let _ = std::fs::remove_dir_all(self.wal_dir(&p.topic, p.partition));
                tracing::info!(topic = %p.topic, partition = p.partition, "topic deleted; partition dropped");
            }
        }
        let agents = self.meta.live_agents(self.lease()).await?;
        let live = agents.len().max(1);
        let floor = leases.len() / live;
        let held_by = |agent: &str| {
            leases
                .iter()
                .filter(|l| l.holder.as_deref() == Some(agent) && l.expires_at > db_now)
                .count()
        };
        // While another live agent has less than the floor share, take no more
        // than the floor: the free partitions are for it.
        let starved = agents
            .iter()
            .any(|a| a.agent_id != self.id && held_by(&a.agent_id) < floor);
        let share = if starved {
            floor.max(1)
        } else {
            leases.len().div_ceil(live)
        };
        // Ours first (a restart reclaims), then free ones in an order that
        // differs per agent so agents starting together spread out.
        let mut candidates: Vec<&LeaseRow> = leases
            .iter()
            .filter(|l| self.held(&l.topic, l.partition).is_none())
            .filter(|l| {
                let mine = l.holder.as_deref() == Some(self.id.as_str());
                let free = l.holder.is_none() || l.expires_at < db_now;
                mine || (free && (!l.dirty || self.config.agent.unclean_takeover || l.holder.is_none()))
            })
            .collect();
        candidates.sort_by_key(|l| {
            let mine = l.holder.as_deref() == Some(self.id.as_str());
            (!mine, spread(&self.id, &l.topic, l.partition))
        });
        for lease in candidates {
            let mine = lease.holder.as_deref() == Some(self.id.as_str());
            if !mine && self.held_count() >= share {
                break;
            }
            self.take(lease).await?;
        }
        // Give one partition back per round while this agent has more than the
        // floor and another has less: newcomers get work, nobody drops below
        // the floor, and the spread settles.
        if starved && self.held_count() > floor {
            let victim = self
                .all_held()
                .into_iter()
                .max_by_key(|h| spread(&self.id, &h.partition.topic, h.partition.partition));
            if let Some(held) = victim {
                let p = &held.partition;
                tracing::info!(topic = %p.topic, partition = p.partition, "rebalancing: handing a partition to a less loaded agent");
                self.held
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(p.topic.clone(), p.partition));
                p.close();
                p.drain().await;
                self.hand_off(&held).await;
            }
        }
        Ok(())
    }

    async fn take(&self, lease: &LeaseRow) -> Result<()> {
        let started = now_ms();
        let unclean = self.config.agent.unclean_takeover;
        let Some(epoch) = self
            .meta
            .acquire(&lease.topic, lease.partition, &self.id, self.lease(), unclean)
            .await?
        else {
            return Ok(());
        };
        let dir = self.wal_dir(&lease.topic, lease.partition);
        let writer = WriterConfig {
            max_round_bytes: self.config.agent.max_round_bytes,
            queue_depth: self.config.agent.write_queue_depth,
            wal_file_bytes: self.config.agent.wal_file_bytes,
        };
        let (topic, partition) = (lease.topic.clone(), lease.partition);
        let committed = lease.committed_offset;
        let snapshot = Producers::from_rows(&self.meta.producer_states(&lease.topic, lease.partition).await?);
        let for_writer = snapshot.clone();
        let opened = tokio::task::spawn_blocking(move || {
            Partition::open(&topic, partition, &dir, committed, for_writer, writer)
        })
        .await
        .map_err(|e| Error::Retryable(format!("recovery task failed: {e}")))?;
        let partition = match opened {
            Ok(p) => p,
            Err(error) => {
                // Hold the lease (nobody else may write over a log we cannot
                // read) but serve nothing; an operator must look.
                tracing::error!(topic = %lease.topic, partition = lease.partition, %error, "partition recovery failed");
                return Ok(());
            }
        };
        if partition.high_watermark() < lease.committed_offset {
            // Segments hold records this WAL lacks (a lost disk): new appends would
            // reuse their offsets. Hold the lease, serve nothing, and say so.
            tracing::error!(
                topic = %lease.topic,
                partition = lease.partition,
                wal_end = partition.high_watermark(),
                committed = lease.committed_offset,
                "local WAL is behind the committed segments; recovery from segments is not built yet"
            );
            return Ok(());
        }
        partition.set_committed(lease.committed_offset);
        partition.fence.extend(self.fence_until(started));
        let was_mine = lease.holder.as_deref() == Some(self.id.as_str());
        let topic = self.meta.topic(&lease.topic).await?;
        let segments = self.meta.segments(&lease.topic, lease.partition).await?;
        let log_start = segments
            .first()
            .map_or(partition.wal_start(), |s| s.base_offset.min(partition.wal_start()));
        let held = Arc::new(Held {
            committed_producers: std::sync::Mutex::new(snapshot),
            log_start: std::sync::atomic::AtomicU64::new(log_start),
            last_retention: std::sync::Mutex::new(tokio::time::Instant::now()),
            partition,
            epoch,
            dirty: AtomicBool::new(lease.dirty && was_mine),
            segment_bytes: topic.as_ref().map_or(64 << 20, |t| t.segment_bytes.max(1) as u64),
            segment_ms: topic.as_ref().map_or(600_000, |t| t.segment_ms.max(1)),
            retry: std::sync::Mutex::new((tokio::time::Instant::now(), Duration::ZERO)),
        });
        tracing::info!(topic = %lease.topic, partition = lease.partition, epoch, "lease acquired");
        self.held
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((lease.topic.clone(), lease.partition), held);
        Ok(())
    }

    /// Records from `offset` read from the committed segments alone (for
    /// offsets below the local WAL), about `max_bytes` of them.
    pub async fn read_segments(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, crate::batch::Record)>> {
        let segments = self.meta.segments(topic, partition).await?;
        let Some(seg) = segments
            .iter()
            .find(|s| s.base_offset <= offset && offset < s.next_offset)
        else {
            return Ok(Vec::new());
        };
        let fail = |e: StoreError| Error::Retryable(format!("reading {}: {e}", seg.object_key));
        let corrupt = |e: segment::SegmentError| Error::Corrupt(format!("{}: {e}", seg.object_key));
        let size = seg.size_bytes;
        let tail = self
            .store
            .get_range(&seg.object_key, size.saturating_sub(segment::FOOTER_SIZE as u64)..size)
            .await
            .map_err(fail)?;
        let footer = segment::read_footer(&tail).map_err(corrupt)?;
        let index_range = segment::index_range(&footer, size).map_err(corrupt)?;
        let index_bytes = self.store.get_range(&seg.object_key, index_range).await.map_err(fail)?;
        let index = segment::read_index(&footer, &index_bytes).map_err(corrupt)?;
        let Some(first) = segment::block_for_offset(&index, offset) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut taken = 0usize;
        for entry in &index[first..] {
            if taken > 0 && taken + entry.raw_len as usize > max_bytes {
                break;
            }
            let block = self
                .store
                .get_range(&seg.object_key, entry.range())
                .await
                .map_err(fail)?;
            out.extend(
                segment::read_block(entry, &block)
                    .map_err(corrupt)?
                    .into_iter()
                    .filter(|(o, _)| *o >= offset),
            );
            taken += entry.raw_len as usize;
        }
        Ok(out)
    }

    /// Asks the roller to look at every partition now (a committed-ack produce waits).
    pub fn wake_roller(&self) {
        self.roll_wake.notify_one();
    }

    /// Rolls due partitions into segments until `stop` resolves.
    pub async fn run_roller(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = self.roll_wake.notified() => {}
            }
            for held in self.all_held() {
                let now = tokio::time::Instant::now();
                let next_try = held.retry.lock().unwrap_or_else(|p| p.into_inner()).0;
                if now < next_try {
                    continue;
                }
                let retention_due = {
                    let mut last = held.last_retention.lock().unwrap_or_else(|p| p.into_inner());
                    let due =
                        now.duration_since(*last) >= Duration::from_millis(self.config.agent.retention_interval_ms);
                    if due {
                        *last = now;
                    }
                    due
                };
                if retention_due && let Err(error) = self.apply_retention(&held).await {
                    let p = &held.partition;
                    tracing::warn!(topic = %p.topic, partition = p.partition, %error, "retention failed; will retry");
                }
                match self.roll(&held, false).await {
                    Ok(()) => *held.retry.lock().unwrap_or_else(|p| p.into_inner()) = (now, Duration::ZERO),
                    Err(error) => {
                        let o = &self.config.object_store;
                        let mut retry = held.retry.lock().unwrap_or_else(|p| p.into_inner());
                        let backoff = (retry.1 * 2).clamp(
                            Duration::from_millis(o.min_backoff_ms),
                            Duration::from_millis(o.max_backoff_ms),
                        );
                        *retry = (now + backoff, backoff);
                        let p = &held.partition;
                        let retry_in_ms = backoff.as_millis() as u64;
                        tracing::warn!(topic = %p.topic, partition = p.partition, %error, retry_in_ms, "segment upload failed; will retry");
                    }
                }
            }
        }
    }

    /// Applies the topic's retention to a partition's committed segments, then
    /// removes objects no segment row refers to.
    ///
    /// Whole segments only, oldest first: those whose newest record is older
    /// than `retention_ms`, then while the rest exceed `retention_bytes`. The
    /// log start moves in metadata (fenced by the epoch) before any object is
    /// deleted, so a reader never finds a row whose object is gone.
    async fn apply_retention(&self, held: &Held) -> Result<()> {
        let p = &held.partition;
        let Some(topic) = self.meta.topic(&p.topic).await? else {
            return Ok(());
        };
        let segments = self.meta.segments(&p.topic, p.partition).await?;
        let now = now_ms();
        let mut keep_from = 0usize;
        if topic.retention_ms > 0 {
            keep_from = segments
                .iter()
                .take_while(|s| s.max_ts < now - topic.retention_ms)
                .count();
        }
        if topic.retention_bytes > 0 {
            let mut total: u64 = segments[keep_from..].iter().map(|s| s.size_bytes).sum();
            while keep_from < segments.len() && total > topic.retention_bytes as u64 {
                total -= segments[keep_from].size_bytes;
                keep_from += 1;
            }
        }
        if keep_from > 0 {
            let new_start = segments[keep_from - 1].next_offset;
            if !self
                .meta
                .advance_log_start(&p.topic, p.partition, &self.id, held.epoch, new_start)
                .await?
            {
                return Ok(());
            }
            held.log_start.store(new_start, Ordering::SeqCst);
            for s in &segments[..keep_from] {
                if let Err(error) = self.store.delete(&s.object_key).await {
                    // The row is gone; the orphan sweep below retries the object.
                    tracing::warn!(key = %s.object_key, %error, "deleting an expired segment object failed");
                }
            }
            tracing::info!(topic = %p.topic, partition = p.partition, log_start = new_start, segments = keep_from, "retention deleted segments");
        }
        // Objects without a row: a fenced holder's upload, an upload whose
        // commit never happened, or a delete that failed above. Only objects
        // that no commit of this holder can still claim are removed.
        let referenced: std::collections::HashSet<String> = self
            .meta
            .segments(&p.topic, p.partition)
            .await?
            .into_iter()
            .map(|s| s.object_key)
            .collect();
        let committed = p.committed();
        for object in self
            .store
            .list(&format!("{}/{}/", p.topic, p.partition))
            .await
            .map_err(|e| Error::Retryable(e.to_string()))?
        {
            if referenced.contains(&object.key) {
                continue;
            }
            let Some((base, epoch)) = parse_segment_key(&object.key) else {
                continue;
            };
            if epoch != held.epoch || base < committed {
                if let Err(error) = self.store.delete(&object.key).await {
                    tracing::warn!(key = %object.key, %error, "deleting an orphaned object failed");
                } else {
                    tracing::info!(key = %object.key, "deleted an orphaned segment object");
                }
            }
        }
        Ok(())
    }

    /// Uploads `[committed, high watermark)` as one segment if it is due, then
    /// commits it in metadata under this holder's epoch.
    async fn roll(&self, held: &Held, force: bool) -> Result<()> {
        let p = &held.partition;
        let (from, to) = (p.committed(), p.high_watermark());
        if to <= from {
            return Ok(());
        }
        let reader = p.reader();
        let (bytes, oldest) = reader.pending(from, to);
        let old = oldest.is_some_and(|t| now_ms() - t >= held.segment_ms);
        if !force && bytes < held.segment_bytes && !old && !p.has_commit_waiters() {
            return Ok(());
        }
        // Reading the WAL and compressing a segment take a while: off the async
        // workers, or every request on this agent waits behind them.
        let epoch = held.epoch;
        let built = tokio::task::spawn_blocking(move || -> Result<_> {
            let batches = reader.read_batches(from, to)?;
            let mut builder = SegmentBuilder::new(epoch);
            for (header, records) in &batches {
                builder
                    .push(header, records)
                    .map_err(|e| Error::Corrupt(e.to_string()))?;
            }
            let headers: Vec<crate::batch::BatchHeader> = batches.iter().map(|(h, _)| *h).collect();
            let (Some(range), Some(bytes)) = (builder.offsets(), builder.finish()) else {
                return Ok(None);
            };
            let footer = segment::read_footer(&bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
            Ok(Some((headers, range, bytes, footer)))
        })
        .await
        .map_err(|e| Error::Retryable(format!("segment build task failed: {e}")))??;
        let Some((headers, range, bytes, footer)) = built else {
            return Ok(());
        };
        // The epoch is in the key: a fenced holder's upload never lands on a key
        // the current holder writes, and writes are create-only anyway.
        let key = format!(
            "{}/{}/{:020}-{:020}-e{}.seg",
            p.topic, p.partition, range.start, range.end, held.epoch
        );
        let size = bytes.len() as u64;
        match self.store.put_if_absent(&key, bytes::Bytes::from(bytes)).await {
            Ok(()) => {}
            // An earlier attempt under this epoch uploaded the same range (same
            // WAL, same bytes) but stopped before committing it.
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(Error::Retryable(format!("uploading {key}: {e}"))),
        }
        let row = SegmentRow {
            topic: p.topic.clone(),
            partition: p.partition,
            base_offset: range.start,
            next_offset: range.end,
            epoch: held.epoch,
            object_key: key.clone(),
            size_bytes: size,
            records: footer.records,
            min_ts: footer.min_ts,
            max_ts: footer.max_ts,
            created_at: now_ms(),
        };
        let mut producers = held
            .committed_producers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        producers.replay(&headers, range.start);
        if self.meta.commit_segment(&row, &self.id, &producers.to_rows()).await? {
            *held.committed_producers.lock().unwrap_or_else(|p| p.into_inner()) = producers;
            p.set_committed(range.end);
            tracing::debug!(topic = %p.topic, partition = p.partition, %key, "segment committed");
        } else {
            tracing::warn!(topic = %p.topic, partition = p.partition, epoch = held.epoch, "segment commit fenced; lease lost");
            self.drop_partition(&p.topic, p.partition);
        }
        Ok(())
    }

    /// Stops writing everywhere, commits what was acknowledged, and gives the
    /// leases back clean so other agents can take the partitions at once.
    pub async fn shutdown(&self) {
        let held: Vec<Arc<Held>> = self
            .held
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in held {
            let p = &h.partition;
            p.close();
            p.drain().await;
            if h.dirty.load(Ordering::SeqCst) {
                self.hand_off(&h).await;
            } else if let Err(error) = self.meta.release(&p.topic, p.partition, &self.id, h.epoch).await {
                tracing::warn!(%error, topic = %p.topic, partition = p.partition, "releasing lease failed");
            }
        }
        if let Err(error) = self.meta.deregister(&self.id).await {
            tracing::warn!(%error, "leaving the membership failed; others will notice when the heartbeat ages out");
        }
    }

    /// Commits the partition's last records and releases it clean, so another
    /// agent may take it over; on any failure the lease stays (dirty) and this
    /// agent reclaims it when it restarts.
    async fn hand_off(&self, held: &Held) {
        let p = &held.partition;
        let end = p.high_watermark();
        let committed = tokio::time::timeout(Duration::from_secs(10), self.roll(held, true)).await;
        let result = match committed {
            Ok(Ok(())) if p.committed() >= end => {
                self.meta
                    .release_clean(&p.topic, p.partition, &self.id, held.epoch, end)
                    .await
            }
            Ok(Ok(())) => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Retryable("final segment upload timed out".into())),
        };
        match result {
            Ok(true) => tracing::info!(topic = %p.topic, partition = p.partition, end, "partition handed off clean"),
            Ok(false) => {
                tracing::warn!(topic = %p.topic, partition = p.partition, "could not hand off clean; keeping the lease")
            }
            Err(error) => {
                tracing::warn!(topic = %p.topic, partition = p.partition, %error, "could not hand off clean; keeping the lease")
            }
        }
    }

    /// Current leader of a partition per metadata, if a live lease holder exists.
    pub async fn leader_of(&self, topic: &str, partition: u32) -> Result<Option<(String, String)>> {
        let now = self.meta.now().await?;
        let holder = self
            .meta
            .leases()
            .await?
            .into_iter()
            .find(|l| l.topic == topic && l.partition == partition && l.expires_at > now)
            .and_then(|l| l.holder);
        let Some(holder) = holder else {
            return Ok(None);
        };
        let agents = self.meta.live_agents(self.lease()).await?;
        Ok(agents
            .into_iter()
            .find(|a| a.agent_id == holder)
            .map(|a| (a.agent_id, a.address)))
    }
}

/// `(base offset, epoch)` from a key `topic/partition/BASE-NEXT-eEPOCH.seg`.
fn parse_segment_key(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".seg")?;
    let (offsets, epoch) = name.split_once("-e")?;
    let (base, _next) = offsets.split_once('-')?;
    Some((base.parse().ok()?, epoch.parse().ok()?))
}

fn spread(agent: &str, topic: &str, partition: u32) -> u32 {
    crc32fast::hash(format!("{agent}/{topic}/{partition}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_keys_parse() {
        assert_eq!(
            parse_segment_key("t/0/00000000000000000100-00000000000000000200-e7.seg"),
            Some((100, 7))
        );
        for bad in ["t/0/x.seg", "t/0/1-2.seg", "t/0/1-2-e.seg", "t/0/1-2-e3.txt", ""] {
            assert_eq!(parse_segment_key(bad), None, "{bad}");
        }
    }
}
