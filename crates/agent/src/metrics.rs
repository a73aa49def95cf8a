//! The agent's figures in the process registry (`/metrics`): the writers'
//! work (appends, records, fsyncs and their latency), the partitions it leads
//! and how far each one's upload lags, lease changes, partitions held but not
//! served, and durable records given up to unclean takeovers. Per-partition
//! figures are read from the partitions at scrape time.

use std::sync::{Arc, Weak};

use cairn_service::{
    Metrics,
    metrics::prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{
            counter::{ConstCounter, Counter},
            gauge::ConstGauge,
            histogram::{Histogram, exponential_buckets},
        },
    },
};

use crate::{node::Node, partition::WalTimings};

/// Counters and histograms the agent updates as things happen.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// The durable-ack path's stages: queue wait, WAL write, fdatasync.
    pub wal: WalTimings,
    /// Leases this agent took (a new tenure or a reclaim).
    pub leases_acquired: Counter,
    /// Leases this agent found lost at renewal.
    pub leases_lost: Counter,
    /// Partitions given up after a fenced segment commit.
    pub partitions_given_up: Counter,
    /// Durable, uncommitted records dropped because another tenure committed over them.
    pub records_lost_unclean: Counter,
    /// Segments uploaded and committed.
    pub segments_committed: Counter,
    /// Segment uploads or commits that failed and will be retried.
    pub segment_failures: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            // 50 µs to ~400 ms (queue waits from 10 µs).
            wal: WalTimings {
                queue_seconds: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
                write_seconds: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
                fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 14)),
                tidy_seconds: Histogram::new(exponential_buckets(0.00001, 2.0, 16)),
            },
            leases_acquired: Counter::default(),
            leases_lost: Counter::default(),
            partitions_given_up: Counter::default(),
            records_lost_unclean: Counter::default(),
            segments_committed: Counter::default(),
            segment_failures: Counter::default(),
        }
    }
}

impl AgentMetrics {
    /// Registers everything in `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        for (name, help, histogram) in [
            (
                "cairn_agent_wal_queue_seconds",
                "Time a produce waited in its partition's queue for a group-commit round",
                &self.wal.queue_seconds,
            ),
            (
                "cairn_agent_wal_write_seconds",
                "Time of writing one group-commit round to the WAL",
                &self.wal.write_seconds,
            ),
            (
                "cairn_agent_wal_fsync_seconds",
                "Time of each WAL fdatasync (one per group-commit round)",
                &self.wal.fsync_seconds,
            ),
            (
                "cairn_agent_wal_tidy_seconds",
                "Time after each group-commit round spent rotating, recycling and deleting WAL files",
                &self.wal.tidy_seconds,
            ),
        ] {
            metrics.register(name, help, histogram.clone());
        }
        for (name, help, counter) in [
            (
                "cairn_agent_leases_acquired",
                "Partition leases taken (new tenures and reclaims)",
                &self.leases_acquired,
            ),
            (
                "cairn_agent_leases_lost",
                "Leases found lost at renewal",
                &self.leases_lost,
            ),
            (
                "cairn_agent_partitions_given_up",
                "Partitions given up after a fenced segment commit",
                &self.partitions_given_up,
            ),
            (
                "cairn_agent_records_lost_unclean",
                "Durable, uncommitted records dropped because another tenure committed over them (unclean takeover)",
                &self.records_lost_unclean,
            ),
            (
                "cairn_agent_segments_committed",
                "Segments uploaded and committed",
                &self.segments_committed,
            ),
            (
                "cairn_agent_segment_failures",
                "Segment uploads or commits that failed (retried with backoff)",
                &self.segment_failures,
            ),
        ] {
            metrics.register(name, help, counter.clone());
        }
    }
}

/// Per-partition figures, read from the node at scrape time.
#[derive(Debug)]
pub struct PartitionCollector {
    pub node: Weak<Node>,
}

impl Collector for PartitionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.node.upgrade() else {
            return Ok(());
        };
        let held = node.all_held();
        let stuck = node.stuck_count();
        for (name, help, value) in [
            (
                "cairn_agent_partitions_led",
                "Partitions this agent leads and serves",
                held.len() as i64,
            ),
            (
                "cairn_agent_partitions_unrecoverable",
                "Partitions whose lease this agent holds but cannot serve (see the log for what to do)",
                stuck as i64,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        type Figure = (&'static str, &'static str, fn(&crate::node::Held) -> u64, bool);
        let figures: [Figure; 7] = [
            (
                "cairn_agent_high_watermark",
                "Offset after the last durable record",
                |h| h.partition.high_watermark(),
                false,
            ),
            (
                "cairn_agent_upload_lag_records",
                "Durable records not yet in a committed segment (high watermark - committed offset)",
                |h| h.partition.high_watermark().saturating_sub(h.partition.committed()),
                false,
            ),
            (
                "cairn_agent_wal_appends",
                "Batches appended to the WAL under this tenure",
                |h| h.partition.stats.batches.load(std::sync::atomic::Ordering::Relaxed),
                true,
            ),
            (
                "cairn_agent_wal_records",
                "Records appended to the WAL under this tenure",
                |h| h.partition.stats.records.load(std::sync::atomic::Ordering::Relaxed),
                true,
            ),
            (
                "cairn_agent_wal_fsyncs",
                "WAL fdatasyncs under this tenure (records per fsync = records / fsyncs)",
                |h| h.partition.stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed),
                true,
            ),
            (
                "cairn_agent_sequence_held",
                "Batches that arrived ahead of their producer's sequence and waited for their predecessors under this tenure",
                |h| h.partition.stats.held.load(std::sync::atomic::Ordering::Relaxed),
                true,
            ),
            (
                "cairn_agent_lease_epoch",
                "The lease epoch this agent holds",
                |h| h.epoch,
                false,
            ),
        ];
        for (name, help, read, counter) in figures {
            if counter {
                let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
                for h in &held {
                    let labels = [
                        ("topic", h.partition.topic.as_str()),
                        ("partition", &h.partition.partition.to_string()),
                    ];
                    ConstCounter::new(read(h)).encode(family.encode_family(&labels)?)?;
                }
            } else {
                let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
                for h in &held {
                    let labels = [
                        ("topic", h.partition.topic.as_str()),
                        ("partition", &h.partition.partition.to_string()),
                    ];
                    ConstGauge::new(i64::try_from(read(h)).unwrap_or(i64::MAX))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Registers the agent's metrics and its per-partition collector.
pub fn register(node: &Arc<Node>, metrics: &Metrics) {
    node.metrics.register(metrics);
    metrics.register_collector(Box::new(PartitionCollector {
        node: Arc::downgrade(node),
    }));
}
