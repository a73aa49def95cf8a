//! The log reader: a partition's records from wherever they are cheapest.
//! Committed segments are listed through any agent (`ListSegments`, answered
//! from the metadata database) and read straight from the object store with
//! range reads through each segment's block index — historical reads never
//! load the agents. Only the tail above the committed offset comes from the
//! partition's leader (`Fetch`), which also reports the time floor readers
//! that merge partitions need. A leader change is handled by refreshing
//! metadata and asking again at the same offset.
//!
//! Reused by everything that reads the log (ReadSpans, ReadRecords, later
//! consumer groups and the SQL gateway).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_client::{Client, ClientConfig, ErrorReason, Metrics, status::reason_of};
use cairn_log::{
    batch::{Record, Stored},
    segment,
    store::{CacheLimits, ReadError, SegmentReader},
};
use cairn_object_store::ObjectStore;
use cairn_proto::cairn::agent::v1::{self as pb, agent_service_client::AgentServiceClient};
use tonic::{Code, Status};

use crate::config::ReaderConfig;

type Agent = AgentServiceClient<Client>;

/// Records read from one partition, and where the partition stands.
#[derive(Debug, Default)]
pub struct Chunk {
    pub records: Vec<Stored>,
    /// The offset to read next.
    pub next: u64,
    /// Set when read from the leader: the high watermark it reported.
    pub high_watermark: Option<u64>,
    /// Set when read from the leader up to its high watermark: records
    /// appended from now on have append times at or above this.
    pub time_floor: Option<i64>,
    /// The oldest retained offset.
    pub log_start: u64,
}

/// A partition's committed segments as last listed.
#[derive(Debug, Clone)]
struct Listing {
    segments: Vec<pb::SegmentInfo>,
    committed: u64,
    log_start: u64,
}

impl Listing {
    fn segment_for(&self, offset: u64) -> Option<&pb::SegmentInfo> {
        self.segments
            .iter()
            .find(|s| s.base_offset <= offset && offset < s.next_offset)
    }
}

/// A partition's state from metadata.
#[derive(Debug, Clone, Default)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start: u64,
    pub high_watermark: u64,
    pub leader: String,
}

/// Reads partitions of any topic.
pub struct LogReader {
    bootstrap: Vec<String>,
    client: ClientConfig,
    key: String,
    metrics: Metrics,
    agents: Mutex<HashMap<String, Agent>>,
    leaders: Mutex<HashMap<(String, u32), String>>,
    listings: Mutex<HashMap<(String, u32), Listing>>,
    segments: Arc<SegmentReader>,
    config: ReaderConfig,
    stats: Arc<ReaderStats>,
}

/// What the reader did, for metrics.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub from_segments: std::sync::atomic::AtomicU64,
    pub from_leaders: std::sync::atomic::AtomicU64,
    /// Partitions being read by open ReadRecords streams.
    pub partitions_read: std::sync::atomic::AtomicI64,
    /// Records those partitions' readers are behind the high watermark, summed.
    pub lag_records: std::sync::atomic::AtomicI64,
}

/// One partition's share of [`ReaderStats`] while a stream reads it; its lag
/// leaves the sum when it is dropped.
pub struct LagShare {
    stats: Arc<ReaderStats>,
    lag: i64,
}

impl LagShare {
    pub fn new(stats: Arc<ReaderStats>) -> Self {
        stats.partitions_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LagShare { stats, lag: 0 }
    }

    /// The reader is at `next` and the partition's high watermark is `hw`.
    pub fn set(&mut self, next: u64, hw: u64) {
        let lag = i64::try_from(hw.saturating_sub(next)).unwrap_or(i64::MAX);
        self.stats
            .lag_records
            .fetch_add(lag - self.lag, std::sync::atomic::Ordering::Relaxed);
        self.lag = lag;
    }
}

impl Drop for LagShare {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.lag_records.fetch_sub(self.lag, Relaxed);
        self.stats.partitions_read.fetch_sub(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_error(e: ReadError) -> Status {
    match e {
        ReadError::Store { .. } => cairn_client::status::with_reason(
            Code::Unavailable,
            e.to_string(),
            ErrorReason::DependencyUnavailable,
            Some(Duration::from_millis(500)),
        ),
        ReadError::Corrupt { .. } => Status::data_loss(e.to_string()),
    }
}

impl LogReader {
    /// A reader asking `bootstrap` agents, reading segments from `store`.
    pub fn new(
        bootstrap: Vec<String>,
        client: ClientConfig,
        key: String,
        store: Arc<dyn ObjectStore>,
        config: ReaderConfig,
        metrics: &Metrics,
    ) -> Self {
        let segments = Arc::new(SegmentReader::new(
            store,
            CacheLimits {
                indexes: config.index_cache,
                block_bytes: config.block_cache,
            },
        ));
        LogReader {
            bootstrap,
            client,
            key,
            metrics: metrics.clone(),
            agents: Mutex::default(),
            leaders: Mutex::default(),
            listings: Mutex::default(),
            segments,
            config,
            stats: Arc::default(),
        }
    }

    /// Segment block cache hits and misses.
    pub fn cache_stats(&self) -> Arc<cairn_log::store::CacheStats> {
        self.segments.stats()
    }

    /// Where records were read from.
    pub fn stats(&self) -> Arc<ReaderStats> {
        self.stats.clone()
    }

    fn agent(&self, address: &str) -> Result<Agent, Status> {
        if let Some(agent) = lock(&self.agents).get(address) {
            return Ok(agent.clone());
        }
        let client = Client::connect_lazy(address, &self.client)
            .map_err(|e| Status::unavailable(format!("agent {address}: {e}")))?
            .with_metrics(&self.metrics);
        let client = if self.key.is_empty() {
            client
        } else {
            client.with_key(&self.key)?
        };
        let agent = AgentServiceClient::new(client)
            .max_decoding_message_size(self.client.max_message_bytes)
            .max_encoding_message_size(self.client.max_message_bytes);
        lock(&self.agents).insert(address.to_owned(), agent.clone());
        Ok(agent)
    }

    /// Calls `call` on the bootstrap agents in turn until one answers with
    /// something other than UNAVAILABLE.
    async fn any_agent<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Agent) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = Status::unavailable("no agents configured");
        for address in &self.bootstrap {
            match call(self.agent(address)?).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::Unavailable || status.code() == Code::DeadlineExceeded => {
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// Every partition of `topic` with its leader, log start and high
    /// watermark (refreshing the leader cache). Any agent knows the leaders;
    /// only a leader knows its partitions' high watermarks now (the others
    /// know the last one a lease renewal wrote), so each leader is asked too.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionInfo>, Status> {
        let request = pb::GetMetadataRequest {
            topics: vec![topic.to_owned()],
        };
        let metadata = self
            .any_agent(|mut agent| {
                let request = request.clone();
                async move { agent.get_metadata(request).await }
            })
            .await?;
        let Some(topic_metadata) = metadata.topics.into_iter().find(|t| t.topic == topic) else {
            return Err(Status::not_found(format!("unknown topic {topic}")));
        };
        let mut infos: Vec<PartitionInfo> = topic_metadata
            .partitions
            .into_iter()
            .map(|p| PartitionInfo {
                partition: p.partition,
                log_start: p.log_start_offset,
                high_watermark: p.high_watermark,
                leader: p.leader_address,
            })
            .collect();
        let mut leaders: Vec<String> = infos
            .iter()
            .map(|i| i.leader.clone())
            .filter(|l| !l.is_empty())
            .collect();
        leaders.sort();
        leaders.dedup();
        let answers = futures::future::join_all(leaders.iter().map(|address| {
            let request = request.clone();
            async move {
                let mut agent = self.agent(address).ok()?;
                agent
                    .get_metadata(request)
                    .await
                    .ok()
                    .map(|r| (address, r.into_inner()))
            }
        }))
        .await;
        for (address, answer) in answers.into_iter().flatten() {
            let partitions = answer
                .topics
                .into_iter()
                .filter(|t| t.topic == topic)
                .flat_map(|t| t.partitions);
            for p in partitions.filter(|p| p.leader_address == *address) {
                if let Some(info) = infos.iter_mut().find(|i| i.partition == p.partition) {
                    // Both only grow: the larger is the fresher.
                    info.high_watermark = info.high_watermark.max(p.high_watermark);
                    info.log_start = info.log_start.max(p.log_start_offset);
                }
            }
        }
        let mut cache = lock(&self.leaders);
        for info in infos.iter().filter(|i| !i.leader.is_empty()) {
            cache.insert((topic.to_owned(), info.partition), info.leader.clone());
        }
        Ok(infos)
    }

    async fn list(
        &self,
        topic: &str,
        partition: u32,
        from: pb::list_segments_request::From,
    ) -> Result<Listing, Status> {
        let request = pb::ListSegmentsRequest {
            topic: topic.to_owned(),
            partition,
            from: Some(from),
            limit: 0,
        };
        let listed = self
            .any_agent(|mut agent| {
                let request = request.clone();
                async move { agent.list_segments(request).await }
            })
            .await?;
        Ok(Listing {
            segments: listed.segments,
            committed: listed.committed_offset,
            log_start: listed.log_start_offset,
        })
    }

    /// The listing that covers `offset`, listing again when the cached one does not.
    async fn listing(&self, topic: &str, partition: u32, offset: u64) -> Result<Listing, Status> {
        let key = (topic.to_owned(), partition);
        if let Some(listing) = lock(&self.listings).get(&key)
            && listing.segment_for(offset).is_some()
        {
            return Ok(listing.clone());
        }
        let listing = self
            .list(topic, partition, pb::list_segments_request::From::Offset(offset))
            .await?;
        lock(&self.listings).insert(key, listing.clone());
        Ok(listing)
    }

    /// The first offset of `partition` whose record was appended at or after
    /// `ms` may be at or after the answer (never before it): the start of
    /// the first segment appended at or after `ms`, or the committed offset
    /// when none is (the tail holds the rest).
    pub async fn offset_near_append_time(&self, topic: &str, partition: u32, ms: i64) -> Result<u64, Status> {
        self.offset_near(topic, partition, pb::list_segments_request::From::AppendTimeMs(ms))
            .await
    }

    /// Like [`LogReader::offset_near_append_time`], by record timestamp.
    pub async fn offset_near_timestamp(&self, topic: &str, partition: u32, ts: i64) -> Result<u64, Status> {
        self.offset_near(topic, partition, pb::list_segments_request::From::TimestampMs(ts))
            .await
    }

    async fn offset_near(
        &self,
        topic: &str,
        partition: u32,
        from: pb::list_segments_request::From,
    ) -> Result<u64, Status> {
        let listing = self.list(topic, partition, from).await?;
        Ok(listing
            .segments
            .first()
            .map_or(listing.committed, |s| s.base_offset)
            .max(listing.log_start))
    }

    /// Records of `partition` from `offset` (clamped up to the log start):
    /// from a segment when one holds it, else from the leader, waiting up
    /// to `wait` at the end of the log.
    pub async fn read(&self, topic: &str, partition: u32, offset: u64, wait: Duration) -> Result<Chunk, Status> {
        let listing = self.listing(topic, partition, offset).await?;
        let offset = offset.max(listing.log_start);
        if let Some(seg) = listing.segment_for(offset) {
            return self.read_segment(seg, offset, listing.log_start).await;
        }
        let mut refreshed = false;
        loop {
            match self.fetch(topic, partition, offset, wait, refreshed).await {
                Ok(chunk) => return Ok(chunk),
                Err(status) if !refreshed && moved(&status) => {
                    // Leader change, or the offset fell out of the tail: ask again.
                    lock(&self.listings).remove(&(topic.to_owned(), partition));
                    refreshed = true;
                }
                Err(status) if status.code() == Code::OutOfRange => {
                    // Below the log start (retention moved on): resume there.
                    let listing = self.listing(topic, partition, offset).await?;
                    if listing.log_start > offset {
                        return Ok(Chunk {
                            next: listing.log_start,
                            log_start: listing.log_start,
                            ..Chunk::default()
                        });
                    }
                    return Err(status);
                }
                Err(status) => return Err(status),
            }
        }
    }

    async fn read_segment(&self, seg: &pb::SegmentInfo, offset: u64, log_start: u64) -> Result<Chunk, Status> {
        let index = self
            .segments
            .index(&seg.object_key, seg.size_bytes)
            .await
            .map_err(read_error)?;
        let (records, _) = self
            .segments
            .read(&seg.object_key, seg.size_bytes, offset, self.config.fetch_bytes)
            .await
            .map_err(read_error)?;
        let next = records.last().map_or(seg.next_offset, |s| s.offset + 1);
        // While this chunk is consumed, the next block loads.
        if let Some(i) = segment::block_for_offset(&index, next) {
            self.segments.prefetch(&seg.object_key, index[i]);
        }
        self.stats
            .from_segments
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Chunk {
            records,
            next,
            high_watermark: None,
            time_floor: None,
            log_start,
        })
    }

    async fn leader(&self, topic: &str, partition: u32, refresh: bool) -> Result<String, Status> {
        if !refresh && let Some(address) = lock(&self.leaders).get(&(topic.to_owned(), partition)) {
            return Ok(address.clone());
        }
        let partitions = self.partitions(topic).await?;
        match partitions.into_iter().find(|p| p.partition == partition) {
            Some(p) if !p.leader.is_empty() => Ok(p.leader),
            Some(_) => Err(cairn_client::status::with_reason(
                Code::Unavailable,
                format!("{topic}/{partition} has no leader right now"),
                ErrorReason::NotLeader,
                Some(Duration::from_millis(500)),
            )),
            None => Err(Status::not_found(format!("{topic} has no partition {partition}"))),
        }
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        wait: Duration,
        refresh: bool,
    ) -> Result<Chunk, Status> {
        let leader = self.leader(topic, partition, refresh).await?;
        let mut agent = self.agent(&leader)?;
        let response = agent
            .fetch(pb::FetchRequest {
                // Whole frames as the log stores them: the agent reads and
                // sends bytes, this reader decodes (records only from segments).
                frames: true,
                topic: topic.to_owned(),
                partition,
                offset,
                max_bytes: u32::try_from(self.config.fetch_bytes).unwrap_or(u32::MAX),
                max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            })
            .await?
            .into_inner();
        let records: Vec<Stored> = if response.frames.is_empty() {
            response.records.into_iter().map(stored).collect()
        } else {
            cairn_log::batch::stored_from_frames(&response.frames, offset)
                .map_err(|e| Status::data_loss(format!("{topic}/{partition}: a fetched batch frame is damaged: {e}")))?
        };
        let next = records.last().map_or(offset, |s| s.offset + 1);
        self.stats
            .from_leaders
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Chunk {
            next,
            high_watermark: Some(response.high_watermark),
            time_floor: (next >= response.high_watermark).then_some(response.time_floor_ms),
            log_start: response.log_start_offset,
            records,
        })
    }
}

/// Whether a Fetch refusal means "ask again after refreshing metadata".
fn moved(status: &Status) -> bool {
    matches!(
        reason_of(status),
        Some(ErrorReason::NotLeader) | Some(ErrorReason::PartitionMoving)
    ) || status.code() == Code::Unavailable
}

/// A fetched record in the log's own form.
pub fn stored(r: pb::StoredRecord) -> Stored {
    Stored {
        offset: r.offset,
        append_time_ms: r.append_time_ms,
        record: Record {
            key: r.key,
            value: r.value,
            timestamp_ms: r.timestamp_ms,
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        },
    }
}
