//! The client library applications embed to write to Cairn.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_producer::ProduceError> {
//! use cairn_producer::{Producer, ProducerRecord};
//! let producer = Producer::builder().bootstrap(["127.0.0.1:50052"]).api_key("cairn_…").build()?;
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").key("customer-7")).await?;
//! let landed = delivery.await?; // topic, partition, offset, timestamp
//! producer.close().await;
//! # Ok(()) }
//! ```
//!
//! `send` hands the record over (waiting, bounded by `max_block`, when the
//! buffer is full) and returns a [`Delivery`] that resolves once the record is
//! acknowledged — or with an error naming its [`Fate`]. Records are batched per
//! partition ([`queue`]), each partition's batches are pipelined, retried and
//! numbered for idempotence by its sender ([`sender`]), over a small pool of
//! connections per agent ([`pool`]), routed by cached metadata ([`metadata`]).

pub mod batch;
pub mod config;
pub mod error;
pub mod metadata;
pub mod partitioner;
pub mod pool;
pub mod queue;
pub mod record;
pub mod rpc;
pub mod sender;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

pub use batch::Delivery;
pub use config::{Acks, Compression, ProducerBuilder, ProducerConfig};
pub use error::{Fate, ProduceError};
pub use record::{ProducerRecord, RecordMetadata};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::Status;

use crate::{
    batch::{Outstanding, Reservation},
    metadata::{Metadata, TopicInfo},
    pool::Pool,
    queue::{BatchLimits, PartitionQueue},
    rpc::Rpc,
};

/// Writes records to Cairn. Cheap to clone; all clones share one buffer,
/// connection pool and producer identity. Dropping the last clone without
/// [`Producer::close`] fails whatever is still buffered.
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    _last: Arc<LastHandle>,
}

/// Dropped with the last `Producer` clone: stops the background tasks.
#[derive(Debug)]
struct LastHandle(Arc<Shared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.abandoned.store(true, Ordering::Release);
        self.0.stop.send_replace(true);
    }
}

/// State shared by the handles and the background tasks.
#[derive(Debug)]
pub struct Shared {
    pub(crate) config: ProducerConfig,
    pub(crate) rpc: Rpc,
    metadata: Metadata,
    memory: Arc<Semaphore>,
    queues: Mutex<HashMap<String, Vec<Option<Arc<PartitionQueue>>>>>,
    sticky: Mutex<HashMap<String, u32>>,
    identity: tokio::sync::OnceCell<(u64, u32)>,
    pub(crate) fenced: Arc<OnceLock<String>>,
    closed: AtomicBool,
    abandoned: AtomicBool,
    refresh_scheduled: AtomicBool,
    pub(crate) stop: watch::Sender<bool>,
    outstanding: Arc<Outstanding>,
    pub(crate) counters: Counters,
}

/// Running totals of what the producer did on the wire.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub duplicates: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The producer's counters in the embedding application's registry, read at
/// scrape time (nothing is added to the send path). Labelled by a per-process
/// producer number, since an application may run several.
#[derive(Debug)]
struct StatsCollector {
    shared: std::sync::Weak<Shared>,
    id: String,
}

impl cairn_client::metrics::prometheus_client::collector::Collector for StatsCollector {
    fn encode(
        &self,
        mut encoder: cairn_client::metrics::prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use cairn_client::metrics::prometheus_client::{
            encoding::EncodeMetric,
            metrics::{counter::ConstCounter, gauge::ConstGauge},
        };
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let labels = [("producer", self.id.as_str())];
        let c = &shared.counters;
        for (name, help, value) in [
            (
                "cairn_producer_requests",
                "Produce requests sent, retries included",
                &c.requests,
            ),
            (
                "cairn_producer_errors",
                "Produce requests answered with an error",
                &c.errors,
            ),
            (
                "cairn_producer_duplicates",
                "Retries the agent recognised as already appended",
                &c.duplicates,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let mut metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric.encode_family(&labels)?)?;
        }
        let used = shared
            .config
            .buffer_bytes
            .saturating_sub(shared.memory.available_permits()) as i64;
        let gauge = ConstGauge::new(used);
        let mut metric = encoder.encode_descriptor(
            "cairn_producer_buffer_used_bytes",
            "Buffer memory held by records not yet acknowledged",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric.encode_family(&labels)?)?;
        Ok(())
    }
}

/// What the producer has done on the wire so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerStats {
    /// Produce requests sent, retries included.
    pub requests: u64,
    /// Requests answered with an error (each is retried or ends its batch).
    pub errors: u64,
    /// Retries the agent recognised as already appended (their first answer was lost).
    pub duplicates: u64,
}

impl Producer {
    /// Starts building a producer (defaults: durable acks, idempotence on).
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    pub(crate) fn start(config: ProducerConfig, metrics: Option<cairn_client::Metrics>) -> Producer {
        let pool = Pool::new(
            config.connections_per_agent,
            config.connection_idle_timeout,
            config.connect_timeout,
        );
        let shared = Arc::new(Shared {
            rpc: Rpc::new(
                pool,
                config.api_key.clone(),
                config.request_timeout,
                config.compression,
                metrics.clone(),
                config.untraced,
            ),
            metadata: Metadata::new(config.bootstrap.clone()),
            memory: Arc::new(Semaphore::new(config.buffer_bytes)),
            queues: Mutex::new(HashMap::new()),
            sticky: Mutex::new(HashMap::new()),
            identity: tokio::sync::OnceCell::new(),
            fenced: Arc::default(),
            closed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            refresh_scheduled: AtomicBool::new(false),
            stop: watch::Sender::new(false),
            outstanding: Arc::new(Outstanding::default()),
            counters: Counters::default(),
            config,
        });
        tokio::spawn(housekeeping(shared.clone()));
        if let Some(metrics) = metrics {
            metrics.register_collector(Box::new(StatsCollector {
                shared: Arc::downgrade(&shared),
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string(),
            }));
        }
        Producer {
            _last: Arc::new(LastHandle(shared.clone())),
            shared,
        }
    }

    /// Hands `record` over for delivery. Waits only for metadata of a topic not
    /// seen before and for buffer space (at most `max_block`); the returned
    /// [`Delivery`] resolves when the record is acknowledged or has failed.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ProduceError> {
        self.shared.send(record).await
    }

    /// Sends `record` and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata, ProduceError> {
        self.send(record).await?.await
    }

    /// Sends every buffered record now and waits until all records handed over
    /// before this call are acknowledged or have failed.
    pub async fn flush(&self) {
        self.shared.flush().await;
    }

    /// Refuses new records, delivers the buffered ones (each bounded by the
    /// delivery timeout), then stops the background tasks.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.flush().await;
        self.shared.stop.send_replace(true);
    }

    /// Bytes of buffer memory free right now.
    pub fn available_memory(&self) -> usize {
        self.shared.memory.available_permits()
    }

    /// The producer id and epoch in use, once one was obtained.
    pub fn identity(&self) -> Option<(u64, u32)> {
        self.shared.identity.get().copied()
    }

    /// Requests, errors and recognised duplicates so far.
    pub fn stats(&self) -> ProducerStats {
        let c = &self.shared.counters;
        ProducerStats {
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
        }
    }

    /// The settings this producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    async fn send(self: &Arc<Self>, record: ProducerRecord) -> Result<Delivery, ProduceError> {
        if self.is_closed() {
            return Err(ProduceError::Closed);
        }
        if let Some(reason) = self.fenced.get() {
            return Err(ProduceError::Fenced(reason.clone()));
        }
        let size = record::encoded_len(&record);
        let (limit, what) = if self.config.buffer_bytes < config::MAX_REQUEST_BYTES {
            (self.config.buffer_bytes, "buffer_bytes")
        } else {
            (config::MAX_REQUEST_BYTES, "request size")
        };
        if size > limit {
            return Err(ProduceError::RecordTooLarge { size, limit, what });
        }
        let info = self.topic(&record.topic).await?;
        let (partition, keyless) = match (record.partition, &record.key) {
            (Some(p), _) => (self.check_partition(&record.topic, p, info.clone()).await?, false),
            (None, Some(key)) => (partitioner::for_key(key, info.partitions()), false),
            (None, None) => (self.sticky(&record.topic, &info), true),
        };
        let permit = self.reserve(size).await?;
        permit.forget();
        let reservation = Reservation::new(self.memory.clone(), size);
        let queue = self.queue(&record.topic, partition);
        let limits = BatchLimits {
            bytes: self.config.batch_bytes,
            records: self.config.batch_records,
            compression: self.config.compression.frame(),
        };
        let (delivery, sealed) = queue.append(&record, size, reservation, limits, &self.outstanding);
        if sealed && keyless {
            self.move_sticky(&record.topic, partition, &info);
        }
        Ok(delivery)
    }

    /// The topic's metadata, retrying transient failures for up to `max_block`.
    async fn topic(self: &Arc<Self>, topic: &str) -> Result<Arc<TopicInfo>, ProduceError> {
        if let Some(info) = self.metadata.cached(topic) {
            return Ok(info);
        }
        let give_up = tokio::time::Instant::now() + self.config.max_block;
        let mut attempt = 0;
        loop {
            match self.metadata.topic(&self.rpc, topic).await {
                Ok(info) => return Ok(info),
                Err(ProduceError::Rejected { code, message }) if cairn_client::status::is_retryable(code) => {
                    let pause = sender::backoff(
                        attempt,
                        self.config.retry_backoff_base,
                        self.config.retry_backoff_max,
                        None,
                    );
                    if tokio::time::Instant::now() + pause >= give_up {
                        return Err(ProduceError::TimedOut {
                            after: self.config.max_block,
                            maybe_written: false,
                            last_error: Some(format!("metadata for {topic}: {message}")),
                        });
                    }
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn check_partition(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        info: Arc<TopicInfo>,
    ) -> Result<u32, ProduceError> {
        let mut info = info;
        if partition >= info.partitions() {
            // Partitions may have been added since the cache was filled.
            self.metadata.refresh(&self.rpc, Some(topic)).await?;
            info = self.topic(topic).await?;
        }
        if partition >= info.partitions() {
            return Err(ProduceError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: info.partitions(),
            });
        }
        Ok(partition)
    }

    fn sticky(&self, topic: &str, info: &TopicInfo) -> u32 {
        let mut sticky = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
        match sticky.get(topic) {
            Some(p) if *p < info.partitions() => *p,
            _ => {
                let p = partitioner::next_sticky(None, info.partitions(), &info.available());
                sticky.insert(topic.to_owned(), p);
                p
            }
        }
    }

    fn move_sticky(&self, topic: &str, from: u32, info: &TopicInfo) {
        let mut sticky = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = sticky.get_mut(topic)
            && *current == from
        {
            *current = partitioner::next_sticky(Some(from), info.partitions(), &info.available());
        }
    }

    async fn reserve(&self, size: usize) -> Result<OwnedSemaphorePermit, ProduceError> {
        let n = size as u32;
        if let Ok(permit) = self.memory.clone().try_acquire_many_owned(n) {
            return Ok(permit);
        }
        match tokio::time::timeout(self.config.max_block, self.memory.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ProduceError::Closed),
            Err(_) => Err(ProduceError::BufferFull(self.config.max_block)),
        }
    }

    fn queue(self: &Arc<Self>, topic: &str, partition: u32) -> Arc<PartitionQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Some(q)) = queues.get(topic).and_then(|v| v.get(partition as usize)) {
            return q.clone();
        }
        let slots = queues.entry(topic.to_owned()).or_default();
        if slots.len() <= partition as usize {
            slots.resize(partition as usize + 1, None);
        }
        let queue = Arc::new(PartitionQueue::new(Arc::from(topic), partition));
        slots[partition as usize] = Some(queue.clone());
        tokio::spawn(sender::run(self.clone(), queue.clone()));
        queue
    }

    fn all_queues(&self) -> Vec<Arc<PartitionQueue>> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|v| v.iter().flatten().cloned())
            .collect()
    }

    async fn flush(&self) {
        let waiting = self.outstanding.wait_for_earlier();
        for queue in self.all_queues() {
            queue.request_flush();
        }
        waiting.await;
    }

    /// Where to send a partition's batches, and as whom.
    pub(crate) async fn route(self: &Arc<Self>, queue: &PartitionQueue) -> Result<(String, (u64, u32)), Status> {
        let Some(info) = self.metadata.cached(&queue.topic) else {
            return Err(Status::not_found(format!("topic {} no longer exists", queue.topic)));
        };
        let Some(slot) = info.leaders.get(queue.partition as usize) else {
            return Err(Status::not_found(format!(
                "topic {} has no partition {}",
                queue.topic, queue.partition
            )));
        };
        let Some(address) = slot.clone() else {
            self.refresh_soon();
            return Err(Status::unavailable(format!(
                "no agent leads {}/{} yet",
                queue.topic, queue.partition
            )));
        };
        if !self.config.idempotence {
            return Ok((address, (0, 0)));
        }
        let name = self.config.name.clone().unwrap_or_default();
        let identity = self
            .identity
            .get_or_try_init(|| async {
                let r = self.rpc.init_producer(&address, &name).await?;
                tracing::debug!(
                    producer_id = r.producer_id,
                    epoch = r.producer_epoch,
                    "producer identity"
                );
                Ok::<_, Status>((r.producer_id, r.producer_epoch))
            })
            .await?;
        Ok((address, *identity))
    }

    /// A producer id for this partition alone (a timed-out batch there may still
    /// land under the shared one).
    pub(crate) async fn fresh_identity(&self, queue: &PartitionQueue) -> Result<(u64, u32), Status> {
        let address = self
            .metadata
            .cached(&queue.topic)
            .and_then(|info| info.leaders.get(queue.partition as usize).cloned().flatten())
            .or_else(|| self.config.bootstrap.first().cloned())
            .ok_or_else(|| Status::unavailable("no agent to ask for a producer id"))?;
        let r = self.rpc.init_producer(&address, "").await?;
        Ok((r.producer_id, r.producer_epoch))
    }

    /// Acts on what a partition's pipeline learned from an answer.
    pub(crate) fn apply(self: &Arc<Self>, queue: &PartitionQueue, effects: sender::Effects) {
        if let Some(address) = effects.leader {
            self.metadata.set_leader(&queue.topic, queue.partition, Some(address));
        }
        if effects.refresh_metadata {
            self.refresh_soon();
        }
        if let Some(reason) = effects.fenced {
            tracing::warn!(%reason, "producer fenced by a newer instance; failing every buffered record");
            let _ = self.fenced.set(reason);
            for q in self.all_queues() {
                q.wake.notify_one();
            }
        }
    }

    /// Refreshes metadata in the background (one refresh at a time).
    fn refresh_soon(self: &Arc<Self>) {
        if self.refresh_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.metadata.refresh(&shared.rpc, None).await {
                tracing::debug!(error = %e, "metadata refresh failed");
            }
            shared.refresh_scheduled.store(false, Ordering::Release);
            for q in shared.all_queues() {
                q.wake.notify_one();
            }
        });
    }
}

/// Periodic metadata refresh and idle connection cleanup.
async fn housekeeping(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let period = shared.config.metadata_max_age.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = shared.metadata.refresh(&shared.rpc, None).await {
                    tracing::debug!(error = %e, "periodic metadata refresh failed");
                }
                let closed = shared.rpc.pool.close_idle();
                if closed > 0 {
                    tracing::debug!(agents = closed, "closed idle connections");
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}
