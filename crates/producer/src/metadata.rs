//! Which agent leads each partition: fetched from any agent that answers,
//! cached, and refreshed on a "not the leader" answer, on an unknown
//! partition, and every `metadata_max_age`. Concurrent refreshes coalesce into
//! one call.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use cairn_proto::cairn::agent::v1 as pb;
use tonic::{Code, Status};

use crate::{error::ProduceError, rpc::Rpc};

/// What the producer knows of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Leader address of each partition; `None` while no agent holds it.
    pub leaders: Vec<Option<String>>,
}

impl TopicInfo {
    pub fn partitions(&self) -> u32 {
        self.leaders.len() as u32
    }

    /// Partitions that currently have a leader.
    pub fn available(&self) -> Vec<u32> {
        (0..self.partitions())
            .filter(|p| self.leaders[*p as usize].is_some())
            .collect()
    }

    fn from_wire(topic: pb::TopicMetadata) -> Self {
        let count = topic.partitions.iter().map(|p| p.partition + 1).max().unwrap_or(0);
        let mut leaders = vec![None; count as usize];
        for p in topic.partitions {
            if !p.leader_address.is_empty() {
                leaders[p.partition as usize] = Some(p.leader_address);
            }
        }
        TopicInfo { leaders }
    }
}

/// The metadata cache.
#[derive(Debug)]
pub struct Metadata {
    bootstrap: Vec<String>,
    /// Agents learned from answers, tried after the bootstrap list.
    learned: Mutex<Vec<String>>,
    /// The agent that answered last, tried first.
    preferred: Mutex<Option<String>>,
    topics: RwLock<HashMap<String, Arc<TopicInfo>>>,
    refreshing: tokio::sync::Mutex<()>,
    refreshes: AtomicU64,
}

fn unavailable(what: String) -> ProduceError {
    ProduceError::Rejected {
        code: Code::Unavailable,
        message: what,
    }
}

impl Metadata {
    pub fn new(bootstrap: Vec<String>) -> Self {
        Metadata {
            bootstrap,
            learned: Mutex::new(Vec::new()),
            preferred: Mutex::new(None),
            topics: RwLock::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The cached view of `topic`.
    pub fn cached(&self, topic: &str) -> Option<Arc<TopicInfo>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
    }

    /// The view of `topic`, fetched when not cached. Unknown topics fail.
    pub async fn topic(&self, rpc: &Rpc, topic: &str) -> Result<Arc<TopicInfo>, ProduceError> {
        if let Some(info) = self.cached(topic) {
            return Ok(info);
        }
        self.refresh(rpc, Some(topic)).await?;
        self.cached(topic)
            .ok_or_else(|| ProduceError::UnknownTopic(topic.to_owned()))
    }

    /// How many refreshes have completed (a refresh started after a reading of
    /// this sees everything that was true at the reading).
    pub fn generation(&self) -> u64 {
        self.refreshes.load(Ordering::Acquire)
    }

    /// Re-reads every cached topic and `extra`; concurrent calls coalesce.
    pub async fn refresh(&self, rpc: &Rpc, extra: Option<&str>) -> Result<(), ProduceError> {
        let seen = self.generation();
        let _one = self.refreshing.lock().await;
        if self.generation() > seen && extra.is_none_or(|t| self.cached(t).is_some()) {
            return Ok(());
        }
        self.fetch(rpc, extra).await
    }

    /// Records a leader named by a "not the leader" answer.
    pub fn set_leader(&self, topic: &str, partition: u32, address: Option<String>) {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(info) = topics.get_mut(topic)
            && let Some(slot) = Arc::make_mut(info).leaders.get_mut(partition as usize)
        {
            *slot = address;
        }
    }

    async fn fetch(&self, rpc: &Rpc, extra: Option<&str>) -> Result<(), ProduceError> {
        let mut wanted: Vec<String> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if let Some(t) = extra
            && !wanted.iter().any(|w| w == t)
        {
            wanted.push(t.to_owned());
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let result = match self.call(rpc, wanted.clone()).await {
            // One of them is gone: ask topic by topic so the others still refresh.
            Err(status) if status.code() == Code::NotFound && wanted.len() > 1 => {
                let mut merged = pb::GetMetadataResponse::default();
                for topic in wanted.iter() {
                    match self.call(rpc, vec![topic.clone()]).await {
                        Ok(r) => {
                            merged.topics.extend(r.topics);
                            merged.agents = r.agents;
                        }
                        Err(s) if s.code() == Code::NotFound => {}
                        Err(s) => return Err(unavailable(format!("metadata: {}", s.message()))),
                    }
                }
                Ok(merged)
            }
            other => other,
        };
        let response = match result {
            Ok(r) => r,
            Err(status) if status.code() == Code::NotFound => pb::GetMetadataResponse::default(),
            Err(status) => return Err(crate::sender::status_error(&status)),
        };
        let learned: Vec<String> = response.agents.iter().map(|a| a.address.clone()).collect();
        if !learned.is_empty() {
            *self.learned.lock().unwrap_or_else(|p| p.into_inner()) = learned;
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        for name in &wanted {
            topics.remove(name);
        }
        for topic in response.topics {
            topics.insert(topic.topic.clone(), Arc::new(TopicInfo::from_wire(topic)));
        }
        drop(topics);
        self.refreshes.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Asks agents in turn (the last one that answered first) until one answers.
    async fn call(&self, rpc: &Rpc, topics: Vec<String>) -> Result<pb::GetMetadataResponse, Status> {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(p) = self.preferred.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            candidates.push(p);
        }
        candidates.extend(self.bootstrap.iter().cloned());
        candidates.extend(self.learned.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| seen.insert(c.clone()));
        let mut last = Status::unavailable("no agent to ask for metadata");
        for address in candidates {
            match rpc.metadata(&address, topics.clone()).await {
                Ok(response) => {
                    *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
                    return Ok(response);
                }
                // The answer is authoritative: any agent would say the same.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::NotFound | Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
                    ) =>
                {
                    return Err(s);
                }
                Err(s) => {
                    tracing::debug!(agent = %address, error = %s, "metadata request failed; trying the next agent");
                    last = s;
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_metadata_maps_leaders_by_partition() {
        let info = TopicInfo::from_wire(pb::TopicMetadata {
            topic: "t".into(),
            partitions: vec![
                pb::PartitionMetadata {
                    partition: 1,
                    leader_address: "a:1".into(),
                    ..Default::default()
                },
                pb::PartitionMetadata {
                    partition: 0,
                    ..Default::default()
                },
                pb::PartitionMetadata {
                    partition: 2,
                    leader_address: "b:2".into(),
                    ..Default::default()
                },
            ],
        });
        assert_eq!(info.partitions(), 3);
        assert_eq!(info.leaders, vec![None, Some("a:1".to_owned()), Some("b:2".to_owned())]);
        assert_eq!(info.available(), vec![1, 2]);
    }
}
