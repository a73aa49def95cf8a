//! Segments: the roller turns `[committed, high watermark)` of each held
//! partition into a segment in the object store and commits it in metadata
//! under the holder's epoch; retention deletes whole old segments; reads
//! below the local WAL come from segments.
//!
//! When a segment is rolled: once the uncommitted bytes reach the topic's
//! `segment_bytes`, the oldest uncommitted record reaches `segment_ms`, or a
//! committed-ack produce has waited `agent.commit_linger` (or
//! `agent.commit_linger_bytes` are waiting). So produces waiting for a
//! committed ack within one window share one upload and one metadata commit,
//! and a partition makes at most one segment per window whatever the request
//! rate. Partitions roll concurrently (up to `agent.max_concurrent_uploads`),
//! each at most one roll at a time.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use cairn_object_store::StoreError;
use tokio::time::Instant;

use crate::{
    batch::Stored,
    error::{Error, Result},
    ids::SegmentKey,
    meta::SegmentRow,
    node::{Held, Node},
    partition::now_ms,
    segment::{self, SegmentBuilder},
};

/// When a partition's next roll is due, if it has anything to roll.
enum Due {
    Now,
    At(Instant),
    Idle,
}

impl Node {
    /// Records from `offset` up to `end` (the local WAL's start) read from the
    /// committed segments alone, about `max_bytes` of them, across segment
    /// boundaries; at least one block's worth when any is there.
    pub async fn read_segments(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        let mut taken = 0usize;
        let mut at = offset;
        while at < end {
            let Some(seg) = self.meta.segment_at(topic, partition, at).await? else {
                break;
            };
            let budget = max_bytes.saturating_sub(taken);
            if taken > 0 && budget == 0 {
                break;
            }
            let (records, bytes) = self.segments.read(&seg.object_key, seg.size_bytes, at, budget).await?;
            taken += bytes;
            let next = records.last().map_or(seg.next_offset, |s| s.offset + 1);
            out.extend(records.into_iter().filter(|s| s.offset < end));
            if next < seg.next_offset || next <= at {
                // The budget ran out inside this segment (or it held nothing new).
                break;
            }
            at = next;
        }
        Ok(out)
    }

    /// Asks the roller to look at every partition now (a committed-ack produce waits).
    pub fn wake_roller(&self) {
        self.roll_wake.notify_one();
    }

    fn due(&self, held: &Held, now: Instant) -> Due {
        let p = &held.partition;
        let (from, to) = (p.committed(), p.high_watermark());
        if to <= from {
            return Due::Idle;
        }
        let (bytes, oldest) = p.reader().pending(from, to);
        if bytes >= held.segment_bytes || oldest.is_some_and(|t| now_ms() - t >= held.segment_ms) {
            return Due::Now;
        }
        let a = &self.config.agent;
        let mut at = oldest.map(|t| now + Duration::from_millis((t + held.segment_ms - now_ms()).max(0) as u64));
        if let Some(since) = p.commit_wanted_since() {
            let window = since + a.commit_linger;
            if window <= now || bytes >= a.commit_linger_bytes {
                return Due::Now;
            }
            at = Some(at.map_or(window, |t| t.min(window)));
        }
        at.map_or(Due::Idle, Due::At)
    }

    /// Rolls due partitions into segments until `stop` resolves.
    pub async fn run_roller(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let uploads = Arc::new(tokio::sync::Semaphore::new(
            self.config.agent.max_concurrent_uploads.max(1),
        ));
        let mut next = Instant::now() + Duration::from_millis(500);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep_until(next) => {}
                () = self.roll_wake.notified() => {}
            }
            let now = Instant::now();
            next = now + Duration::from_millis(500);
            for held in self.all_held() {
                if held.rolling.load(Ordering::SeqCst) {
                    continue;
                }
                let retry_at = held.retry.lock().unwrap_or_else(|p| p.into_inner()).0;
                if now < retry_at {
                    next = next.min(retry_at);
                    continue;
                }
                let retention_due = {
                    let last = *held.last_retention.lock().unwrap_or_else(|p| p.into_inner());
                    now.duration_since(last) >= self.config.agent.retention_interval
                };
                let roll_due = match self.due(&held, now) {
                    Due::Now => true,
                    Due::At(at) => {
                        next = next.min(at);
                        false
                    }
                    Due::Idle => false,
                };
                if !roll_due && !retention_due {
                    continue;
                }
                held.rolling.store(true, Ordering::SeqCst);
                let node = self.clone();
                let uploads = uploads.clone();
                tokio::spawn(async move {
                    let _permit = uploads.acquire().await;
                    if retention_due {
                        *held.last_retention.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                        if let Err(error) = node.apply_retention(&held).await {
                            let p = &held.partition;
                            tracing::warn!(topic = %p.topic, partition = p.partition, %error, "retention failed; will retry");
                        }
                    }
                    if roll_due {
                        node.roll_with_backoff(&held).await;
                    }
                    held.rolling.store(false, Ordering::SeqCst);
                    // Waiters that came during this roll may be due now.
                    node.roll_wake.notify_one();
                });
            }
        }
    }

    async fn roll_with_backoff(&self, held: &Arc<Held>) {
        let now = Instant::now();
        match self.roll(held, false).await {
            Ok(()) => *held.retry.lock().unwrap_or_else(|p| p.into_inner()) = (now, 0),
            Err(error) => {
                self.metrics.segment_failures.inc();
                let mut retry = held.retry.lock().unwrap_or_else(|p| p.into_inner());
                let attempt = retry.1;
                let backoff = self.config.object_store.upload_backoff.delay(attempt, None);
                *retry = (now + backoff, attempt.saturating_add(1));
                let p = &held.partition;
                let retry_in_ms = backoff.as_millis() as u64;
                tracing::warn!(topic = %p.topic, partition = p.partition, %error, retry_in_ms, "segment upload failed; will retry");
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
    pub(crate) async fn apply_retention(&self, held: &Held) -> Result<()> {
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
                .advance_log_start(&held.id(), &self.token(held), new_start)
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
        let referenced: std::collections::HashSet<String> =
            segments[keep_from..].iter().map(|s| s.object_key.clone()).collect();
        let committed = p.committed();
        // Rows committed after the list above was read are this holder's own,
        // at or above `committed` as it was then: never swept below.
        for object in self
            .store
            .list(&format!("{}/{}/", p.topic, p.partition))
            .await
            .map_err(Error::store("listing the partition's objects"))?
        {
            if referenced.contains(&object.key) {
                continue;
            }
            let Some(SegmentKey { base, epoch, .. }) = SegmentKey::parse(&object.key) else {
                continue;
            };
            if epoch != held.epoch || base < committed {
                if self
                    .meta
                    .segment_at(&p.topic, p.partition, base)
                    .await?
                    .is_some_and(|s| s.object_key == object.key)
                {
                    continue;
                }
                if let Err(error) = self.store.delete(&object.key).await {
                    tracing::warn!(key = %object.key, %error, "deleting an orphaned object failed");
                } else {
                    tracing::info!(key = %object.key, "deleted an orphaned segment object");
                }
            }
        }
        Ok(())
    }

    /// Uploads `[committed, high watermark)` as one segment if it is due (or
    /// `force`), then commits it in metadata under this holder's epoch. A
    /// fenced commit gives the partition up.
    pub(crate) async fn roll(&self, held: &Arc<Held>, force: bool) -> Result<()> {
        let _one_at_a_time = held.roll_lock.lock().await;
        let p = &held.partition;
        if !force && !matches!(self.due(held, Instant::now()), Due::Now) {
            return Ok(());
        }
        let (from, to) = (p.committed(), p.high_watermark());
        if to <= from {
            return Ok(());
        }
        // Every waiter so far waits for an offset below `to`: this roll serves them.
        p.take_commit_wanted();
        let reader = p.reader();
        // Reading the WAL and compressing a segment take a while: off the async
        // workers, or every request on this agent waits behind them, and at a
        // lower priority, so the threads answering requests get a core first.
        let epoch = held.epoch;
        let built = cairn_service::offload::run_low_priority("cairn-roll", move || -> Result<_> {
            let mut builder = SegmentBuilder::new(epoch);
            let mut headers = Vec::new();
            reader.for_each_batch(from, to, |_, frame| {
                builder.push_frame(frame).map_err(|e| Error::Corrupt(e.to_string()))?;
                headers.push(frame.header);
                Ok(())
            })?;
            let (Some(range), Some(bytes)) = (builder.offsets(), builder.finish()) else {
                return Ok(None);
            };
            let footer = segment::read_footer(&bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
            Ok(Some((headers, range, bytes, footer)))
        })
        .await??;
        let Some((headers, range, bytes, footer)) = built else {
            return Ok(());
        };
        // The epoch is in the key: a fenced holder's upload never lands on a key
        // the current holder writes, and writes are create-only anyway.
        let key = SegmentKey {
            topic: p.topic.clone(),
            partition: p.partition,
            base: range.start,
            next: range.end,
            epoch: held.epoch,
        }
        .to_string();
        let size = bytes.len() as u64;
        match self.store.put_if_absent(&key, bytes::Bytes::from(bytes)).await {
            Ok(()) => {}
            // An earlier attempt under this epoch uploaded the same range (same
            // WAL, same bytes) but stopped before committing it.
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(Error::store(format!("uploading {key}"))(e)),
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
            max_append_ms: headers.iter().map(|h| h.append_time_ms).max().unwrap_or(0),
            created_at: now_ms(),
        };
        let mut producers = held
            .committed_producers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        producers.replay(&headers, range.start);
        if self.meta.commit_segment(&row, &self.id, &producers.to_states()).await? {
            *held.committed_producers.lock().unwrap_or_else(|p| p.into_inner()) = producers;
            p.set_committed(range.end);
            self.metrics.segments_committed.inc();
            tracing::debug!(topic = %p.topic, partition = p.partition, %key, "segment committed");
            Ok(())
        } else {
            self.give_up(held, "segment commit fenced").await;
            Err(Error::NotLeader {
                topic: p.topic.clone(),
                partition: p.partition,
                leader: None,
            })
        }
    }
}
