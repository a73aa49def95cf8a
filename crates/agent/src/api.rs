//! The gRPC edge: `cairn.agent.v1.AgentService` and `TopicService`. Requests
//! are checked against the limits and converted here, before anything is written.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use cairn_proto::cairn::agent::v1::{
    self as pb, agent_service_server::AgentService, topic_service_server::TopicService,
};
use cairn_service::{auth, context, scope::Scope};
use tonic::{Request, Response, Status};

use crate::{
    config::Limits,
    error::Error,
    meta::TopicRow,
    node::{Held, Node},
    partition::{Fetched, now_ms},
};

/// Default segment size and age. Large enough to avoid the small-file problem
/// on object storage (per-request cost and listing overhead dominate below a
/// few MiB), small enough that a segment uploads in seconds.
pub const DEFAULT_SEGMENT_BYTES: i64 = 64 * 1024 * 1024;
/// See [`DEFAULT_SEGMENT_BYTES`]: bounds how long records wait before upload.
pub const DEFAULT_SEGMENT_MS: i64 = 10 * 60 * 1000;

pub use crate::convert::check_topic_name;
use crate::convert::{self, timestamp};

/// Both services share the node and the limits.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    limits: Limits,
    auth_enabled: bool,
}

impl Api {
    /// The API over `node`.
    pub fn new(node: Arc<Node>, limits: Limits, auth_enabled: bool) -> Self {
        Api {
            node,
            limits,
            auth_enabled,
        }
    }

    /// Checks the caller may `action` on `topic` (after the topic name was validated).
    fn authorize<T>(&self, request: &Request<T>, action: &str, topic: &str) -> Result<(), Status> {
        if !self.auth_enabled {
            return Ok(());
        }
        let scope =
            Scope::required("topics", action, Some(topic)).map_err(|e| Status::invalid_argument(e.to_string()))?;
        auth::principal(request)?.require(&scope)
    }

    /// The held partition, or the precise reason this agent can't serve it.
    async fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Held>, Error> {
        if let Some(held) = self.node.held(topic, partition) {
            return Ok(held);
        }
        let Some(row) = self.node.meta.topic(topic).await? else {
            return Err(Error::UnknownTopic(topic.to_owned()));
        };
        if partition >= row.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        if let Some(stuck) = self.node.stuck(topic, partition) {
            return Err(Error::PartitionUnavailable {
                topic: topic.to_owned(),
                partition,
                detail: stuck.reason,
            });
        }
        let leader = self.node.leader_of(topic, partition).await?;
        if leader.as_ref().is_some_and(|(id, _)| *id == self.node.id) {
            // This agent has the lease but is still recovering the partition.
            return Err(Error::PartitionMoving {
                topic: topic.to_owned(),
                partition,
            });
        }
        Err(Error::NotLeader {
            topic: topic.to_owned(),
            partition,
            leader,
        })
    }

    async fn partition_metadata(&self, topic: &TopicRow, leases_now: &LeaseView) -> Vec<pb::PartitionMetadata> {
        (0..topic.partitions)
            .map(|p| {
                let (leader_id, leader_address, epoch, published) = leases_now.leader(&topic.name, p);
                // This agent's own partitions are exact; others' as last published.
                let (log_start_offset, high_watermark) = match self.node.held(&topic.name, p) {
                    Some(h) => (h.log_start.load(Ordering::SeqCst), h.partition.high_watermark()),
                    None => published,
                };
                pb::PartitionMetadata {
                    partition: p,
                    leader_id,
                    leader_address,
                    lease_epoch: epoch,
                    log_start_offset,
                    high_watermark,
                }
            })
            .collect()
    }

    async fn lease_view(&self) -> Result<LeaseView, Error> {
        let now = self.node.meta.now().await?;
        let leases = self.node.meta.leases().await?;
        let agents = self.node.meta.live_agents(Duration::from_secs(3600)).await?;
        Ok(LeaseView { now, leases, agents })
    }
}

/// Leases and agents at one moment, for metadata answers.
struct LeaseView {
    now: i64,
    leases: Vec<crate::meta::LeaseRow>,
    agents: Vec<crate::meta::AgentRow>,
}

impl LeaseView {
    /// Leader id, address, lease epoch, and the published (log start, high watermark).
    fn leader(&self, topic: &str, partition: u32) -> (String, String, u64, (u64, u64)) {
        let Some(lease) = self
            .leases
            .iter()
            .find(|l| l.topic == topic && l.partition == partition)
        else {
            return (String::new(), String::new(), 0, (0, 0));
        };
        let offsets = (lease.log_start_offset, lease.high_watermark);
        let live_holder = lease.holder.clone().filter(|_| lease.expires_at > self.now);
        let Some(holder) = live_holder else {
            return (String::new(), String::new(), lease.epoch, offsets);
        };
        let agent = self.agents.iter().find(|a| a.agent_id == holder);
        let address = agent.map(|a| a.address.clone()).unwrap_or_default();
        (holder, address, lease.epoch, offsets)
    }
}

#[tonic::async_trait]
impl AgentService for Api {
    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        let wanted = request.into_inner().topics;
        for (i, t) in wanted.iter().enumerate() {
            check_topic_name(&format!("topics[{i}]"), t)?;
        }
        let view = self.lease_view().await?;
        let mut topics = Vec::new();
        for topic in self.node.meta.topics().await? {
            if wanted.is_empty() || wanted.contains(&topic.name) {
                let partitions = self.partition_metadata(&topic, &view).await;
                topics.push(pb::TopicMetadata {
                    topic: topic.name,
                    partitions,
                });
            }
        }
        for name in &wanted {
            if !topics.iter().any(|t| &t.topic == name) {
                return Err(Error::UnknownTopic(name.clone()).into());
            }
        }
        let agents = view
            .agents
            .iter()
            .filter(|a| a.heartbeat_at > view.now - 60_000)
            .map(|a| pb::AgentInfo {
                agent_id: a.agent_id.clone(),
                address: a.address.clone(),
            })
            .collect();
        Ok(Response::new(pb::GetMetadataResponse { topics, agents }))
    }

    async fn init_producer(
        &self,
        request: Request<pb::InitProducerRequest>,
    ) -> Result<Response<pb::InitProducerResponse>, Status> {
        let name = request.into_inner().name;
        if name.len() > 255 {
            return Err(Error::invalid("name", "at most 255 bytes").into());
        }
        let name = (!name.is_empty()).then_some(name.as_str());
        let (producer_id, producer_epoch) = self.node.meta.init_producer(name, now_ms()).await?;
        Ok(Response::new(pb::InitProducerResponse {
            producer_id,
            producer_epoch,
        }))
    }

    async fn produce(&self, request: Request<pb::ProduceRequest>) -> Result<Response<pb::ProduceResponse>, Status> {
        check_topic_name("topic", &request.get_ref().topic)?;
        self.authorize(&request, "produce", &request.get_ref().topic)?;
        let req = convert::Produce::check(request.into_inner(), &self.limits)?;
        let count = req.count;
        let held = self.partition(&req.topic, req.partition).await?;
        self.node.ensure_dirty(&held).await?;
        let appended = held
            .partition
            .append(req.frame, req.count, req.producer, req.ack.wal())
            .await?;
        if let (Some(a), convert::AckLevel::Committed) = (&appended, req.ack) {
            let end = a.base_offset + u64::from(a.count);
            let mut wait = self.limits.max_commit_wait;
            if let Some(left) = context::remaining() {
                wait = wait.min(left.saturating_sub(Duration::from_millis(50)));
            }
            self.node.wake_roller();
            if !held.partition.wait_committed(end, wait).await {
                // Durable already; an idempotent retry gets the same offsets and waits again.
                return Err(Error::NotCommitted {
                    from: a.base_offset,
                    to: end,
                }
                .into());
            }
        }
        let response = match appended {
            Some(a) => pb::ProduceResponse {
                base_offset: a.base_offset,
                count: a.count,
                log_append_time: Some(timestamp(a.append_time_ms)),
                duplicate: a.duplicate,
            },
            None => pb::ProduceResponse {
                base_offset: 0,
                count,
                log_append_time: None,
                duplicate: false,
            },
        };
        Ok(Response::new(response))
    }

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        check_topic_name("topic", &request.get_ref().topic)?;
        self.authorize(&request, "consume", &request.get_ref().topic)?;
        let req = request.into_inner();
        let max_bytes = match req.max_bytes {
            0 => 1024 * 1024,
            n => (n as usize).min(self.limits.max_fetch_bytes),
        };
        let mut wait = Duration::from_millis(u64::from(req.max_wait_ms)).min(self.limits.max_fetch_wait);
        if let Some(left) = context::remaining() {
            // Answer before the caller gives up, with whatever there is.
            wait = wait.min(left.saturating_sub(Duration::from_millis(50)));
        }
        let held = self.partition(&req.topic, req.partition).await?;
        let log_start = held.log_start.load(Ordering::SeqCst);
        if req.offset < log_start {
            let end = held.partition.high_watermark();
            return Err(Error::OffsetOutOfRange {
                offset: req.offset,
                start: log_start,
                end,
            }
            .into());
        }
        let fetched = if req.offset < held.partition.wal_start() {
            // Below the local WAL: the committed segments have it.
            let time_floor = held.partition.time_floor();
            let wal_start = held.partition.wal_start();
            let mut records = self
                .node
                .read_segments(&req.topic, req.partition, req.offset, wal_start, max_bytes)
                .await?;
            let taken: usize = records.iter().map(|s| s.record.encoded_len()).sum();
            let reached_wal = records.last().is_some_and(|s| s.offset + 1 == wal_start);
            if reached_wal && taken < max_bytes {
                // The segments ran out below the budget: go on in the WAL
                // rather than answer short at a file boundary. (A frames
                // reader gets the segment part as records and asks again.)
                if let Ok(more) = held
                    .partition
                    .fetch(wal_start, max_bytes - taken, Duration::ZERO, false)
                    .await
                {
                    records.extend(more.records);
                }
            }
            Fetched {
                records,
                frames: Vec::new(),
                high_watermark: held.partition.high_watermark(),
                time_floor,
            }
        } else {
            held.partition.fetch(req.offset, max_bytes, wait, req.frames).await?
        };
        Ok(Response::new(pb::FetchResponse {
            records: fetched.records.into_iter().map(convert::stored_record).collect(),
            frames: fetched.frames,
            high_watermark: fetched.high_watermark,
            log_start_offset: held.log_start.load(Ordering::SeqCst),
            time_floor_ms: fetched.time_floor,
        }))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        check_topic_name("topic", &request.get_ref().topic)?;
        self.authorize(&request, "consume", &request.get_ref().topic)?;
        let req = request.into_inner();
        let meta = &self.node.meta;
        let Some(lease) = meta.lease(&req.topic, req.partition).await? else {
            return Err(match meta.topic(&req.topic).await? {
                None => Error::UnknownTopic(req.topic),
                Some(_) => Error::UnknownPartition {
                    topic: req.topic,
                    partition: req.partition,
                },
            }
            .into());
        };
        let limit = match req.limit {
            0 => 100,
            n => i64::from(n.min(1_000)),
        };
        let start = match req.from {
            None => lease.log_start_offset,
            Some(pb::list_segments_request::From::Offset(offset)) => offset.max(lease.log_start_offset),
            Some(pb::list_segments_request::From::TimestampMs(ts)) => {
                let first = meta.segment_at_time(&req.topic, req.partition, ts).await;
                // No committed record at or after `ts`: nothing to list.
                first?.map_or(lease.committed_offset, |s| s.base_offset.max(lease.log_start_offset))
            }
            Some(pb::list_segments_request::From::AppendTimeMs(ms)) => {
                let first = meta.segment_at_append_time(&req.topic, req.partition, ms).await;
                first?.map_or(lease.committed_offset, |s| s.base_offset.max(lease.log_start_offset))
            }
        };
        let segments = meta.segments_from(&req.topic, req.partition, start, limit).await?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: segments
                .into_iter()
                .filter(|s| s.next_offset > lease.log_start_offset)
                .map(convert::segment_info)
                .collect(),
            log_start_offset: lease.log_start_offset,
            committed_offset: lease.committed_offset,
        }))
    }
}

#[tonic::async_trait]
impl TopicService for Api {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let req = request.into_inner();
        check_topic_name("name", &req.name)?;
        let config = req.config.unwrap_or_default();
        let max = self.limits.max_partitions_per_topic;
        if config.partitions == 0 || config.partitions > max {
            return Err(Error::invalid("config.partitions", format!("must be between 1 and {max}")).into());
        }
        for (field, value) in [
            ("config.retention_ms", config.retention_ms),
            ("config.retention_bytes", config.retention_bytes),
            ("config.segment_bytes", config.segment_bytes),
            ("config.segment_ms", config.segment_ms),
        ] {
            if value < 0 {
                return Err(Error::invalid(field, "must not be negative").into());
            }
        }
        if config.segment_bytes != 0 && config.segment_bytes < 1024 * 1024 {
            return Err(Error::invalid("config.segment_bytes", "must be at least 1 MiB (or 0 for the default)").into());
        }
        let row = TopicRow {
            name: req.name,
            partitions: config.partitions,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: if config.segment_bytes == 0 {
                DEFAULT_SEGMENT_BYTES
            } else {
                config.segment_bytes
            },
            segment_ms: if config.segment_ms == 0 {
                DEFAULT_SEGMENT_MS
            } else {
                config.segment_ms
            },
            created_at: now_ms(),
        };
        self.node.meta.create_topic(&row).await?;
        self.node.wake();
        tracing::info!(topic = %row.name, partitions = row.partitions, "topic created");
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(convert::topic(&row)),
        }))
    }

    async fn list_topics(&self, _: Request<pb::ListTopicsRequest>) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self.node.meta.topics().await?.iter().map(convert::topic).collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        check_topic_name("name", &name)?;
        let row = self.node.meta.topic(&name).await?.ok_or(Error::UnknownTopic(name))?;
        let view = self.lease_view().await?;
        let partitions = self.partition_metadata(&row, &view).await;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(convert::topic(&row)),
            partitions,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        check_topic_name("name", &name)?;
        if !self.node.meta.delete_topic(&name).await? {
            return Err(Error::UnknownTopic(name).into());
        }
        self.node.wake();
        tracing::info!(topic = %name, "topic deleted");
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }
}
