//! One partition's accumulator: the batch taking records and the sealed ones
//! its sender has not picked up yet. `send` appends here; the partition's
//! sender task takes from here.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::{
    ProduceError,
    batch::{Batch, Delivery, OpenBatch, Outstanding, Reservation},
    record::ProducerRecord,
};

#[derive(Debug, Default)]
struct State {
    open: Option<OpenBatch>,
    sealed: VecDeque<Batch>,
    flush: bool,
}

/// Size limits of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub bytes: usize,
    pub records: usize,
    /// How a batch's records are compressed when it is sealed.
    pub compression: cairn_log::batch::Compression,
}

/// A partition's batches before they reach its pipeline.
#[derive(Debug)]
pub struct PartitionQueue {
    pub topic: Arc<str>,
    pub partition: u32,
    state: Mutex<State>,
    /// Woken when a batch is sealed, a new batch starts its linger, or a flush is asked for.
    pub wake: Notify,
}

impl PartitionQueue {
    pub fn new(topic: Arc<str>, partition: u32) -> Self {
        PartitionQueue {
            topic,
            partition,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `record` (of `size` encoded bytes, already reserved). Returns its
    /// delivery and whether the batch it joined is now sealed (full).
    pub fn append(
        &self,
        record: &ProducerRecord,
        size: usize,
        reservation: Reservation,
        limits: BatchLimits,
        outstanding: &Arc<Outstanding>,
    ) -> (Delivery, bool) {
        let mut state = self.lock();
        let mut wake = false;
        // A record that does not fit closes the current batch and starts the next.
        if let Some(open) = &state.open
            && open.count() > 0
            && open.bytes() + size > limits.bytes
        {
            let batch = state.open.take().map(OpenBatch::seal);
            state.sealed.extend(batch);
            wake = true;
        }
        let open = state.open.get_or_insert_with(|| {
            wake = true;
            OpenBatch::new(
                Reservation::new(reservation.memory(), 0),
                limits.bytes.min(size.max(64 * 1024)),
                Some(outstanding.ticket()),
            )
            .compressed(limits.compression)
        });
        let delivery = open.push(record, reservation, &self.topic, self.partition);
        let full = open.count() as usize >= limits.records || open.bytes() >= limits.bytes;
        if full {
            let batch = state.open.take().map(OpenBatch::seal);
            state.sealed.extend(batch);
            wake = true;
        }
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        (delivery, full)
    }

    /// Takes the sealed batches. The open batch is sealed too when the pipeline
    /// has room and its linger has passed (or a flush asked for it); otherwise
    /// the returned instant is when its linger ends.
    pub fn take(&self, room: bool, linger: Duration, now: Instant) -> (Vec<Batch>, Option<Instant>) {
        let mut state = self.lock();
        let mut out: Vec<Batch> = state.sealed.drain(..).collect();
        let mut due = None;
        if let Some(open) = &state.open {
            let linger_end = open.created() + linger;
            if room && out.is_empty() && (state.flush || linger_end <= now) {
                let batch = state.open.take().map(OpenBatch::seal);
                out.extend(batch);
                state.flush = false;
            } else if linger_end > now {
                due = Some(linger_end);
            }
        } else {
            state.flush = false;
        }
        (out, due)
    }

    /// Asks for the open batch to be sent without waiting for its linger.
    pub fn request_flush(&self) {
        self.lock().flush = true;
        self.wake.notify_one();
    }

    /// Whether nothing is buffered here.
    pub fn is_empty(&self) -> bool {
        let state = self.lock();
        state.open.is_none() && state.sealed.is_empty()
    }

    /// Fails everything buffered here.
    pub fn fail_all(&self, error: ProduceError) {
        let mut state = self.lock();
        let open = state.open.take().map(OpenBatch::seal);
        let sealed: Vec<Batch> = state.sealed.drain(..).chain(open).collect();
        drop(state);
        for batch in sealed {
            batch.complete(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::sync::Semaphore;

    use super::*;
    use crate::record;

    #[test]
    fn batches_seal_at_the_size_limits_and_after_the_linger() {
        let q = PartitionQueue::new(Arc::from("t"), 0);
        let memory = Arc::new(Semaphore::new(0));
        let outstanding = Arc::new(Outstanding::default());
        let limits = BatchLimits {
            bytes: 100,
            records: 3,
            compression: Default::default(),
        };
        let r = ProducerRecord::new("t", vec![1u8; 5]);
        let size = record::encoded_len(&r);
        let mut sealed_at = Vec::new();
        for i in 0..7 {
            let (_, full) = q.append(&r, size, Reservation::new(memory.clone(), 0), limits, &outstanding);
            if full {
                sealed_at.push(i);
            }
        }
        assert_eq!(sealed_at, [2, 5], "three records per batch");
        let now = Instant::now();
        let (batches, due) = q.take(true, Duration::from_secs(1), now);
        assert_eq!(batches.iter().map(|b| b.count).collect::<Vec<_>>(), [3, 3]);
        assert!(due.is_some(), "the seventh record lingers");
        let (batches, _) = q.take(true, Duration::from_secs(1), now + Duration::from_secs(2));
        assert_eq!(batches.len(), 1);
        assert!(q.is_empty());

        // By bytes: 25-byte records, 100-byte batches → 4 per batch.
        assert_eq!(size, 25);
        let limits = BatchLimits {
            bytes: 100,
            records: 100,
            compression: Default::default(),
        };
        for _ in 0..5 {
            q.append(&r, size, Reservation::new(memory.clone(), 0), limits, &outstanding);
        }
        let (batches, _) = q.take(false, Duration::from_secs(1), now);
        assert_eq!(
            batches
                .iter()
                .map(|b| b.frame.len() - cairn_log::batch::V2_FIXED)
                .collect::<Vec<_>>(),
            [4 * size]
        );
        q.request_flush();
        let (batches, _) = q.take(false, Duration::from_secs(1), now);
        assert!(batches.is_empty(), "no room in the pipeline: keep filling");
        let (batches, _) = q.take(true, Duration::from_secs(1), now);
        assert_eq!(batches[0].count, 1, "a flush seals the open batch once there is room");
    }
}
