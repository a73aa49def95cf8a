//! This agent in the cluster: its identity, the partitions it leads, and the
//! lease loop that heartbeats, renews, reclaims and acquires partitions.
//!
//! Each round: heartbeat; renew every held lease (a lease that fails to renew
//! is given up at once, and writes stop anyway a safety margin before it could
//! expire); then take free or expired partitions up to this agent's fair share
//! of the live agents. A partition another holder left dirty (acknowledged
//! records not in object storage) is never taken unless unclean takeover is on.
//!
//! Taking a partition reads the lease row as the acquire left it (once this
//! agent's epoch is in the row nobody else can move its offsets) and checks
//! the local WAL against the committed segments before anything is served
//! (see [`crate::wal::Wal::recover`]). A partition that cannot be recovered is
//! held but not served, retried with backoff, and said so loudly; one whose
//! segment commit is fenced is given up.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use cairn_object_store::ObjectStore;
use futures::StreamExt;
use tokio::time::Instant;

use cairn_log::store::{CacheLimits, SegmentReader};

use crate::{
    balance,
    config::Config,
    error::{Error, Result},
    ids::{LeaseToken, PartitionId},
    meta::{LeaseRow, Meta},
    partition::{Partition, WriterConfig},
    producers::Producers,
    wal::{self, SegmentSpan, Tenure},
};

/// A partition this agent holds the lease of.
pub struct Held {
    pub partition: Arc<Partition>,
    pub epoch: u64,
    /// Whether the lease row says this holder has uncommitted acknowledged records.
    pub dirty: AtomicBool,
    /// Roll a segment once this many bytes are uncommitted…
    pub(crate) segment_bytes: u64,
    /// …or the oldest uncommitted record is this old (ms).
    pub(crate) segment_ms: i64,
    /// When the next upload may be tried, and how many attempts failed in a row.
    pub(crate) retry: std::sync::Mutex<(Instant, u32)>,
    /// The first offset in the log: the first segment's, or the WAL's.
    pub log_start: AtomicU64,
    /// When retention last ran for this partition.
    pub(crate) last_retention: std::sync::Mutex<Instant>,
    /// Idempotence state as of the committed offset (what the next segment
    /// commit stores, advanced by that segment's batches).
    pub(crate) committed_producers: std::sync::Mutex<Producers>,
    /// One roll at a time per partition (the roller's and a hand-off's).
    pub(crate) roll_lock: tokio::sync::Mutex<()>,
    /// Whether the roller has a roll of this partition in flight.
    pub(crate) rolling: AtomicBool,
}

impl Held {
    /// Which partition this is.
    pub fn id(&self) -> PartitionId {
        PartitionId::new(&self.partition.topic, self.partition.partition)
    }
}

/// A partition this agent holds the lease of but does not serve: recovery
/// failed, or it was given up. Retried with backoff.
#[derive(Debug, Clone)]
pub struct Stuck {
    /// What went wrong, for clients and operators.
    pub reason: String,
    /// When the lease loop tries again.
    pub retry_at: Instant,
    backoff: Duration,
}

/// This agent.
pub struct Node {
    pub id: String,
    pub address: String,
    pub meta: Meta,
    pub store: Arc<dyn ObjectStore>,
    pub(crate) segments: SegmentReader,
    pub(crate) roll_wake: tokio::sync::Notify,
    pub(crate) config: Config,
    held: RwLock<HashMap<PartitionId, Arc<Held>>>,
    stuck: std::sync::Mutex<HashMap<PartitionId, Stuck>>,
    wake: tokio::sync::Notify,
    pub(crate) metrics: crate::metrics::AgentMetrics,
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
            .map_err(Error::store("opening the object store"))?;
        let node = Arc::new(Node {
            id,
            address,
            meta,
            segments: SegmentReader::new(
                store.clone(),
                CacheLimits {
                    indexes: config.agent.segment_index_cache,
                    block_bytes: config.agent.segment_block_cache,
                },
            ),
            store,
            roll_wake: tokio::sync::Notify::new(),
            config,
            held: RwLock::new(HashMap::new()),
            stuck: std::sync::Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            metrics: crate::metrics::AgentMetrics::default(),
        });
        node.round().await?;
        tracing::info!(agent_id = %node.id, address = %node.address, partitions = node.held_count(), "agent started");
        Ok(node)
    }

    fn lease(&self) -> Duration {
        self.config.agent.lease
    }

    fn held_count(&self) -> usize {
        self.held.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The partition if this agent leads it.
    pub fn held(&self, topic: &str, partition: u32) -> Option<Arc<Held>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&PartitionId::new(topic, partition))
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

    /// This agent's claim on `held`'s lease: what its fenced updates carry.
    pub fn token(&self, held: &Held) -> LeaseToken {
        LeaseToken {
            holder: self.id.clone(),
            epoch: held.epoch,
        }
    }

    /// Why this agent holds the partition's lease but does not serve it, if so.
    pub fn stuck(&self, topic: &str, partition: u32) -> Option<Stuck> {
        self.stuck
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&PartitionId::new(topic, partition))
            .cloned()
    }

    /// How many partitions this agent holds but does not serve.
    pub fn stuck_count(&self) -> usize {
        self.stuck.lock().unwrap_or_else(|p| p.into_inner()).len()
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
        if !self.meta.mark_dirty(&held.id(), &self.token(held)).await? {
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
        let interval = self.config.agent.renew_interval;
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

    /// Writes stop a safety margin before a lease renewed at `started`
    /// could expire, by the local monotonic clock (never the wall clock: a
    /// clock step must not stretch the fence past the lease).
    fn fence_until(&self, started: Instant) -> Instant {
        let a = &self.config.agent;
        started + a.lease.saturating_sub(a.lease_safety_margin)
    }

    async fn renew(&self) -> Result<()> {
        for held in self.all_held() {
            let p = &held.partition;
            let started = Instant::now();
            let offsets = (held.log_start.load(Ordering::SeqCst), p.high_watermark());
            let lease = self.lease();
            if self.meta.renew(&held.id(), &self.token(&held), lease, offsets).await? {
                p.fence.extend(self.fence_until(started));
            } else {
                tracing::warn!(topic = %p.topic, partition = p.partition, epoch = held.epoch, "lease lost");
                self.metrics.leases_lost.inc();
                self.drop_partition(&held);
            }
        }
        Ok(())
    }

    /// Stops serving `held` (if it is still the tenure this agent serves).
    fn drop_partition(&self, held: &Arc<Held>) {
        let p = &held.partition;
        let mut map = self.held.write().unwrap_or_else(|p| p.into_inner());
        let key = PartitionId::new(&p.topic, p.partition);
        if map.get(&key).is_some_and(|h| Arc::ptr_eq(h, held)) {
            map.remove(&key);
        }
        p.close();
    }

    /// Gives a partition up after a fenced segment commit: stops serving it,
    /// releases the lease if it is clean, and waits before taking it again, so
    /// a holder whose view is wrong never retries while keeping the lease.
    pub(crate) async fn give_up(&self, held: &Arc<Held>, reason: &str) {
        let p = &held.partition;
        self.drop_partition(held);
        let row = self.meta.lease(&p.topic, p.partition).await.ok().flatten();
        let still_mine = row
            .as_ref()
            .is_some_and(|r| r.holder.as_deref() == Some(self.id.as_str()) && r.epoch == held.epoch);
        tracing::warn!(
            topic = %p.topic,
            partition = p.partition,
            epoch = held.epoch,
            still_mine,
            reason,
            "giving the partition up; it is taken again from metadata after a pause"
        );
        self.metrics.partitions_given_up.inc();
        if still_mine && let Err(error) = self.meta.release(&held.id(), &self.token(held)).await {
            tracing::warn!(topic = %p.topic, partition = p.partition, %error, "releasing the lease failed");
        }
        self.mark_stuck(&PartitionId::new(&p.topic, p.partition), format!("given up: {reason}"));
    }

    /// Records that the partition is not served here, and backs off retrying it.
    fn mark_stuck(&self, key: &PartitionId, reason: String) {
        let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        let backoff = stuck
            .get(key)
            .map_or(Duration::from_secs(1), |s| (s.backoff * 2).min(Duration::from_secs(60)));
        stuck.insert(
            key.clone(),
            Stuck {
                reason,
                retry_at: Instant::now() + backoff,
                backoff,
            },
        );
    }

    async fn acquire(&self) -> Result<()> {
        let leases = self.meta.leases().await?;
        let db_now = self.meta.now().await?;
        // Partitions of deleted topics: stop leading them and drop their WAL.
        let existing: HashSet<PartitionId> = leases.iter().map(|l| PartitionId::new(&l.topic, l.partition)).collect();
        for held in self.all_held() {
            let p = &held.partition;
            if !existing.contains(&PartitionId::new(&p.topic, p.partition)) {
                self.drop_partition(&held);
                let _ = std::fs::remove_dir_all(self.wal_dir(&p.topic, p.partition));
                tracing::info!(topic = %p.topic, partition = p.partition, "topic deleted; partition dropped");
            }
        }
        self.stuck
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| existing.contains(k));
        let agents: Vec<String> = self
            .meta
            .live_agents(self.lease())
            .await?
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        let serving: HashSet<PartitionId> = self
            .held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let plan = balance::plan(&balance::View {
            me: &self.id,
            leases: &leases,
            live: &agents,
            now: db_now,
            serving: &serving,
            unclean: self.config.agent.unclean_takeover,
        });
        let row = |id: &PartitionId| {
            leases
                .iter()
                .find(|l| l.topic == id.topic && l.partition == id.partition)
        };
        for id in &plan.reclaim {
            if let Some(lease) = row(id) {
                self.take(lease).await?;
            }
        }
        let mut taken = 0;
        for id in &plan.take {
            if taken >= plan.room {
                break;
            }
            if let Some(lease) = row(id)
                && self.take(lease).await?
            {
                taken += 1;
            }
        }
        if let Some(id) = plan.give_back
            && let Some(held) = self.held(&id.topic, id.partition)
        {
            let p = &held.partition;
            tracing::info!(topic = %p.topic, partition = p.partition, "rebalancing: handing a partition to a less loaded agent");
            self.drop_partition(&held);
            p.drain().await;
            if !self.hand_off(&held).await {
                // Reclaimed (it is still ours) after a pause rather than
                // handed back and forth every round.
                self.mark_stuck(&id, "a rebalancing hand-off did not complete".into());
            }
        }
        Ok(())
    }

    /// Takes the lease and opens the partition; true if it now serves it.
    async fn take(&self, lease: &LeaseRow) -> Result<bool> {
        let key = PartitionId::new(&lease.topic, lease.partition);
        if self
            .stuck(&lease.topic, lease.partition)
            .is_some_and(|s| Instant::now() < s.retry_at)
        {
            return Ok(false);
        }
        let started = Instant::now();
        let unclean = self.config.agent.unclean_takeover;
        let Some(row) = self
            .meta
            .acquire(&lease.topic, lease.partition, &self.id, self.lease(), unclean)
            .await?
        else {
            return Ok(false);
        };
        let epoch = row.epoch;
        // The epoch grows whenever the holder changes: the same holder at the
        // same epoch means nobody else has written since.
        let reclaim = lease.holder.as_deref() == Some(self.id.as_str()) && lease.epoch == epoch;
        let committed = row.committed_offset;
        let dir = self.wal_dir(&lease.topic, lease.partition);
        let local_start = wal::first_offset(&dir)?.unwrap_or(committed).min(committed);
        let segments: Vec<SegmentSpan> = self
            .meta
            .segments_from(&lease.topic, lease.partition, local_start, i64::MAX)
            .await?
            .into_iter()
            .map(|s| SegmentSpan {
                base: s.base_offset,
                next: s.next_offset,
                epoch: s.epoch,
            })
            .collect();
        let tenure = Tenure {
            epoch,
            committed,
            reclaim,
            segments,
            time_floor: self.meta.last_append_time(&lease.topic, lease.partition).await?,
        };
        let snapshot = Producers::from_states(&self.meta.producer_states(&lease.topic, lease.partition).await?);
        let opened = self
            .open_partition(&lease.topic, lease.partition, &dir, &tenure, &snapshot)
            .await;
        let opened = match opened {
            Err(Error::Corrupt(reason)) if !row.dirty && !unclean => {
                // A clean lease means no holder acknowledged anything above the
                // committed offset: the damaged WAL holds nothing of the log.
                let aside = wal::set_aside_all(&dir);
                tracing::warn!(topic = %lease.topic, partition = lease.partition, %reason, aside = ?aside, "the local WAL is damaged but the partition is clean; set it aside and recovering from segments");
                self.open_partition(&lease.topic, lease.partition, &dir, &tenure, &snapshot)
                    .await
            }
            other => other,
        };
        let (partition, recovery) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                // Hold the lease (nobody else may write over a log we cannot
                // read) but serve nothing, and say what would let it go on.
                let reason = error.to_string();
                tracing::error!(
                    topic = %lease.topic,
                    partition = lease.partition,
                    %error,
                    wal = %dir.display(),
                    "partition recovery failed. Its WAL may hold acknowledged records not yet in object storage, \
                     so this agent keeps the lease and serves nothing rather than lose them. To give those records \
                     up and serve the partition from its committed segments, move the WAL directory out of the way; \
                     recovery is retried with backoff"
                );
                self.mark_stuck(&key, format!("recovery failed: {reason}"));
                return Ok(false);
            }
        };
        if let Some(d) = recovery.discarded {
            self.metrics.records_lost_unclean.inc_by(d.records());
            tracing::warn!(topic = %lease.topic, partition = lease.partition, records = d.records(), from = d.from, to = d.to, "durable records lost to an unclean takeover");
        }
        self.stuck.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        partition.set_committed(committed);
        partition.fence.extend(self.fence_until(started));
        let was_mine = lease.holder.as_deref() == Some(self.id.as_str());
        let topic = self.meta.topic(&lease.topic).await?;
        let first_segment = self.meta.first_segment_base(&lease.topic, lease.partition).await?;
        let log_start = first_segment.map_or(partition.wal_start(), |b| b.min(partition.wal_start()));
        let held = Arc::new(Held {
            committed_producers: std::sync::Mutex::new(snapshot),
            log_start: AtomicU64::new(log_start),
            last_retention: std::sync::Mutex::new(Instant::now()),
            partition,
            epoch,
            dirty: AtomicBool::new(row.dirty && was_mine),
            segment_bytes: topic.as_ref().map_or(64 << 20, |t| t.segment_bytes.max(1) as u64),
            segment_ms: topic.as_ref().map_or(600_000, |t| t.segment_ms.max(1)),
            retry: std::sync::Mutex::new((Instant::now(), 0)),
            roll_lock: tokio::sync::Mutex::new(()),
            rolling: AtomicBool::new(false),
        });
        tracing::info!(topic = %lease.topic, partition = lease.partition, epoch, reclaim, "lease acquired");
        self.metrics.leases_acquired.inc();
        self.held.write().unwrap_or_else(|p| p.into_inner()).insert(key, held);
        Ok(true)
    }

    async fn open_partition(
        &self,
        topic: &str,
        partition: u32,
        dir: &std::path::Path,
        tenure: &Tenure,
        snapshot: &Producers,
    ) -> Result<(Arc<Partition>, crate::partition::Recovery)> {
        let writer = WriterConfig {
            max_round_bytes: self.config.agent.max_round_bytes,
            queue_depth: self.config.agent.write_queue_depth,
            wal_file_bytes: self.config.agent.wal_file_bytes,
            timings: Some(self.metrics.wal.clone()),
            preallocate: self.config.agent.wal_preallocate,
            sequence_hold: self.config.agent.sequence_hold,
            spare_idle: self.config.agent.wal_spare_idle,
        };
        let (topic, dir, tenure, snapshot) = (topic.to_owned(), dir.to_owned(), tenure.clone(), snapshot.clone());
        tokio::task::spawn_blocking(move || Partition::open(&topic, partition, &dir, &tenure, snapshot, writer)).await?
    }

    /// Stops every partition taking writes (shutdown's first phase): produces
    /// are refused and waiting fetches answer at once, so in-flight calls end.
    pub fn close_all(&self) {
        for held in self.all_held() {
            held.partition.close();
        }
    }

    /// Stops writing everywhere, commits what was acknowledged, and gives the
    /// leases back clean so other agents can take the partitions at once.
    /// Bounded by `agent.handoff_timeout` however many partitions there
    /// are: a partition that cannot hand off in time stays dirty under this
    /// agent, which reclaims it when it restarts.
    pub async fn shutdown(&self) {
        let held: Vec<Arc<Held>> = self
            .held
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in &held {
            h.partition.close();
        }
        let bound = self.config.agent.handoff_timeout;
        let total = held.len();
        let hand_offs = futures::stream::iter(held.into_iter().map(|h| self.leave(h)))
            .buffer_unordered(self.config.agent.max_concurrent_uploads.max(1))
            .collect::<Vec<bool>>();
        match tokio::time::timeout(bound, hand_offs).await {
            Ok(done) => {
                let clean = done.iter().filter(|d| **d).count();
                tracing::info!(partitions = total, clean, "partitions handed off");
            }
            Err(_) => tracing::warn!(
                partitions = total,
                bound_ms = bound.as_millis() as u64,
                "hand-off did not finish in time; the rest stay with this agent until it restarts"
            ),
        }
        if let Err(error) = self.meta.deregister(&self.id).await {
            tracing::warn!(%error, "leaving the membership failed; others will notice when the heartbeat ages out");
        }
    }

    /// Hands one closed partition off at shutdown (or just releases it when it
    /// has nothing uncommitted). True if it left clean.
    async fn leave(&self, held: Arc<Held>) -> bool {
        let p = &held.partition;
        p.drain().await;
        if held.dirty.load(Ordering::SeqCst) {
            return self.hand_off(&held).await;
        }
        match self.meta.release(&held.id(), &self.token(&held)).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, topic = %p.topic, partition = p.partition, "releasing lease failed");
                false
            }
        }
    }

    /// Commits the partition's last records and releases it clean, so another
    /// agent may take it over, then deletes its local WAL (segments hold it
    /// all). On any failure the lease stays (dirty) and this agent reclaims it
    /// when it restarts. True if it was handed off clean.
    pub(crate) async fn hand_off(&self, held: &Arc<Held>) -> bool {
        let p = &held.partition;
        let end = p.high_watermark();
        let bound = self.config.agent.handoff_timeout;
        let committed = tokio::time::timeout(bound, self.roll(held, true)).await;
        let result = match committed {
            Ok(Ok(())) if p.committed() >= end => self.meta.release_clean(&held.id(), &self.token(held), end).await,
            Ok(Ok(())) => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout("final segment upload")),
        };
        match result {
            Ok(true) => {
                tracing::info!(topic = %p.topic, partition = p.partition, end, "partition handed off clean");
                if let Err(error) = p.retire().await {
                    tracing::debug!(topic = %p.topic, partition = p.partition, %error, "WAL not deleted at hand-off");
                }
                true
            }
            Ok(false) => {
                tracing::warn!(topic = %p.topic, partition = p.partition, "could not hand off clean; keeping the lease");
                false
            }
            Err(error) => {
                tracing::warn!(topic = %p.topic, partition = p.partition, %error, "could not hand off clean; keeping the lease");
                false
            }
        }
    }

    /// Current leader of a partition per metadata, if a live lease holder exists.
    pub async fn leader_of(&self, topic: &str, partition: u32) -> Result<Option<(String, String)>> {
        let now = self.meta.now().await?;
        let holder = self
            .meta
            .lease(topic, partition)
            .await?
            .filter(|l| l.expires_at > now)
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
