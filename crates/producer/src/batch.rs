//! Batches: records of one partition encoded side by side, the buffer memory
//! they hold, and the completion every record of the batch waits on.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::Bytes;
use cairn_log::batch::{BatchHeader, Compression, FrameBuilder, ProducerInfo};
use tokio::sync::{Semaphore, watch};

use crate::{
    error::ProduceError,
    record::{self, ProducerRecord, RecordMetadata},
};

/// Buffer memory held by a batch; given back when the batch is dropped, which
/// happens once it is acknowledged or has failed.
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<Semaphore>,
    bytes: usize,
}

impl Reservation {
    /// Takes `bytes` of `memory` that the caller already acquired and forgot.
    pub fn new(memory: Arc<Semaphore>, bytes: usize) -> Self {
        Reservation { memory, bytes }
    }

    /// The memory this reservation draws from.
    pub fn memory(&self) -> Arc<Semaphore> {
        self.memory.clone()
    }

    fn absorb(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.memory.add_permits(self.bytes);
        }
    }
}

/// Batches not yet ended, by creation order, so `flush` can wait for every
/// batch that existed when it was called.
#[derive(Debug)]
pub struct Outstanding {
    state: Mutex<(u64, std::collections::BTreeSet<u64>)>,
    /// The oldest batch still outstanding (`u64::MAX` when none).
    oldest: watch::Sender<u64>,
}

impl Default for Outstanding {
    fn default() -> Self {
        Outstanding {
            state: Mutex::new((0, std::collections::BTreeSet::new())),
            oldest: watch::Sender::new(u64::MAX),
        }
    }
}

impl Outstanding {
    /// Registers a new batch.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = state.0;
        state.0 += 1;
        state.1.insert(id);
        if state.1.len() == 1 {
            self.oldest.send_replace(id);
        }
        Ticket {
            outstanding: self.clone(),
            id,
        }
    }

    /// Waits until every batch registered before this call has ended.
    pub async fn wait_for_earlier(&self) {
        let target = self.state.lock().unwrap_or_else(|p| p.into_inner()).0;
        let mut oldest = self.oldest.subscribe();
        // The sender lives in `self`, so the wait ends only by the condition.
        let _ = oldest.wait_for(|o| *o >= target).await;
    }
}

/// A batch's place in [`Outstanding`]; ends with the batch.
#[derive(Debug)]
pub struct Ticket {
    outstanding: Arc<Outstanding>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.outstanding.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1.remove(&self.id);
        let oldest = state.1.first().copied().unwrap_or(u64::MAX);
        self.outstanding.oldest.send_if_modified(|o| {
            let changed = *o != oldest;
            *o = oldest;
            changed
        });
    }
}

/// How a batch ended: the agent's answer, or why there was none.
pub type BatchResult = Result<Acked, ProduceError>;

/// The agent's acknowledgement of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Offset of the batch's first record (`None` with no acks).
    pub base_offset: Option<u64>,
    pub append_time_ms: i64,
}

/// Set once when a batch ends; every record's [`Delivery`] reads it.
#[derive(Debug, Default)]
pub struct Completion {
    result: OnceLock<BatchResult>,
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl Completion {
    /// Ends the batch. Later calls are ignored.
    pub fn complete(&self, result: BatchResult) {
        if self.result.set(result).is_ok() {
            let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
            for waker in wakers.into_iter().flatten() {
                waker.wake();
            }
        }
    }

    /// The result, once there is one.
    pub fn result(&self) -> Option<&BatchResult> {
        self.result.get()
    }
}

/// Resolves when the record's batch is acknowledged or has failed.
#[derive(Debug)]
pub struct Delivery {
    completion: Arc<Completion>,
    topic: Arc<str>,
    partition: u32,
    index: u32,
    timestamp_ms: Option<i64>,
    slot: Option<usize>,
}

impl Delivery {
    fn resolve(&self, result: &BatchResult) -> Result<RecordMetadata, ProduceError> {
        let acked = result.as_ref().map_err(Clone::clone)?;
        Ok(RecordMetadata {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: acked.base_offset.map(|base| base + u64::from(self.index)),
            timestamp_ms: self.timestamp_ms.unwrap_or(acked.append_time_ms),
        })
    }
}

impl Future for Delivery {
    type Output = Result<RecordMetadata, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.completion.result() {
            return Poll::Ready(self.resolve(result));
        }
        let completion = self.completion.clone();
        let mut wakers = completion.wakers.lock().unwrap_or_else(|p| p.into_inner());
        // Checked again under the lock: `complete` takes the wakers under it.
        if let Some(result) = completion.result() {
            drop(wakers);
            return Poll::Ready(self.resolve(result));
        }
        match self.slot {
            Some(slot) if slot < wakers.len() => wakers[slot] = Some(cx.waker().clone()),
            _ => {
                wakers.push(Some(cx.waker().clone()));
                self.slot = Some(wakers.len() - 1);
            }
        }
        Poll::Pending
    }
}

/// A batch still taking records.
#[derive(Debug)]
pub struct OpenBatch {
    records: FrameBuilder,
    compression: Compression,
    count: u32,
    created: Instant,
    reservation: Reservation,
    completion: Arc<Completion>,
    ticket: Option<Ticket>,
}

impl OpenBatch {
    /// An empty batch holding `reservation`, tracked by `ticket` until it ends.
    pub fn new(reservation: Reservation, capacity: usize, ticket: Option<Ticket>) -> Self {
        OpenBatch {
            records: FrameBuilder::with_capacity(capacity),
            compression: Compression::None,
            count: 0,
            created: Instant::now(),
            reservation,
            completion: Arc::new(Completion::default()),
            ticket,
        }
    }

    /// Compresses the batch's records with `compression` when it is sealed.
    pub fn compressed(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Adds a record (its memory already reserved) and returns what to wait on.
    pub fn push(
        &mut self,
        record: &ProducerRecord,
        reservation: Reservation,
        topic: &Arc<str>,
        partition: u32,
    ) -> Delivery {
        self.reservation.absorb(reservation);
        record::encode(record, &mut self.records);
        let index = self.count;
        self.count += 1;
        Delivery {
            completion: self.completion.clone(),
            topic: topic.clone(),
            partition,
            index,
            timestamp_ms: record.timestamp_ms,
            slot: None,
        }
    }

    /// Encoded bytes of records so far.
    pub fn bytes(&self) -> usize {
        self.records.len() - cairn_log::batch::V2_FIXED
    }

    /// Records so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// When the first record arrived.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Closes the batch to further records: its frame is finished (and
    /// compressed) now, once; the producer fields are filled in per attempt.
    pub fn seal(self) -> Batch {
        let header = BatchHeader {
            base_offset: 0,
            count: self.count,
            producer: ProducerInfo::default(),
            append_time_ms: 0,
        };
        Batch {
            frame: Bytes::from(self.records.finish(&header, self.compression)),
            count: self.count,
            created: self.created,
            _reservation: self.reservation,
            completion: self.completion,
            _ticket: self.ticket,
        }
    }
}

/// A batch ready to send: immutable from here on.
#[derive(Debug)]
pub struct Batch {
    /// The finished frame, producer fields 0.
    pub frame: Bytes,
    pub count: u32,
    pub created: Instant,
    _reservation: Reservation,
    completion: Arc<Completion>,
    _ticket: Option<Ticket>,
}

impl Batch {
    /// Ends the batch for every record in it. Its buffer memory and its place
    /// in `Outstanding` are given back first, so whoever a delivery wakes sees
    /// them free.
    pub fn complete(self, result: BatchResult) {
        let Batch {
            completion,
            _reservation,
            _ticket,
            ..
        } = self;
        drop(_reservation);
        drop(_ticket);
        completion.complete(result);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn deliveries_resolve_with_their_offsets_and_memory_is_returned_on_drop() {
        let memory = Arc::new(Semaphore::new(1000));
        let topic: Arc<str> = Arc::from("t");
        let take = |n: u32| {
            memory.try_acquire_many(n).unwrap().forget();
            Reservation::new(memory.clone(), n as usize)
        };
        let mut open = OpenBatch::new(take(0), 64, None);
        let a = open.push(&ProducerRecord::new("t", "a"), take(100), &topic, 2);
        let b = open.push(&ProducerRecord::new("t", "b").timestamp_ms(7), take(200), &topic, 2);
        assert_eq!(memory.available_permits(), 700);
        let batch = open.seal();
        assert_eq!(batch.count, 2);
        let waiter = tokio::spawn(b);
        tokio::task::yield_now().await;
        batch.complete(Ok(Acked {
            base_offset: Some(40),
            append_time_ms: 99,
        }));
        assert_eq!(memory.available_permits(), 1000, "returned before anyone is woken");
        let a = a.await.unwrap();
        assert_eq!((a.partition, a.offset, a.timestamp_ms), (2, Some(40), 99));
        let b = waiter.await.unwrap().unwrap();
        assert_eq!((b.offset, b.timestamp_ms), (Some(41), 7));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_record() {
        let memory = Arc::new(Semaphore::new(10));
        let mut open = OpenBatch::new(Reservation::new(memory.clone(), 0), 16, None);
        let topic: Arc<str> = Arc::from("t");
        let d = open.push(&ProducerRecord::new("t", "x"), Reservation::new(memory, 0), &topic, 0);
        open.seal().complete(Err(ProduceError::Closed));
        assert!(matches!(d.await, Err(ProduceError::Closed)));
    }

    #[tokio::test]
    async fn flush_waits_for_exactly_the_batches_that_existed() {
        let outstanding = Arc::new(Outstanding::default());
        let first = outstanding.ticket();
        let second = outstanding.ticket();
        let waiter = {
            let o = outstanding.clone();
            tokio::spawn(async move { o.wait_for_earlier().await })
        };
        tokio::task::yield_now().await;
        let later = outstanding.ticket();
        drop(second);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the first batch is still outstanding");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("flush ends once the earlier batches end, though a later one is open")
            .unwrap();
        drop(later);
    }
}
