//! One partition's send pipeline: which sealed batch goes out next, with which
//! sequence number, and what each answer means.
//!
//! [`Pipeline`] is the whole policy and does no I/O, so its rules are tested
//! directly; [`run`] drives it for one partition.
//!
//! The rules:
//! - A batch is sealed when full, or when its linger has passed and nothing of
//!   the partition is unacknowledged ([`Pipeline::has_room`]).
//! - Batches go out in order, and only the `max_in_flight` oldest
//!   unacknowledged batches may be on the wire: answers can arrive out of order
//!   (requests race inside the agent), and this keeps every batch that may have
//!   been appended within the agent's five-batch deduplication window. A
//!   sequence number is given to a batch when it is first sent and kept across
//!   its retries.
//! - Any retryable answer (overload, a leader change, a lost connection) stops
//!   new sends until every batch on the wire has answered, then resends the
//!   unacknowledged ones in order after a backoff. A batch that was appended
//!   but whose answer was lost comes back as a duplicate with its original
//!   offsets; one that was not is appended now. Order is never changed.
//! - "Out of order sequence" means the batch was not appended. Usually a
//!   predecessor had not arrived yet (two requests raced), so it is resent in
//!   turn. When the sequence the agent expects is where a batch of ours was
//!   refused for good, the pipeline waits for the wire to empty and renumbers
//!   the unacknowledged batches from there, so a refused batch never leaves a
//!   gap (the numbers of a refused last batch go straight to the next one).
//!   When it is where a batch timed out, that batch may still land (a request
//!   can linger in a stalled agent), so its numbers must never be reused: the
//!   partition continues under a fresh producer id from sequence 0 instead.
//!   The same happens when the agent is past a batch it does not remember. No
//!   other answer moves numbers: a stale "expected" (sent before a racing
//!   predecessor landed) must not make a new batch look like a duplicate of an
//!   appended one.
//! - A batch whose delivery timeout passes while it is not on the wire fails
//!   with "timed out" (its fate is unknown if an attempt may have landed).

use std::{
    collections::VecDeque,
    sync::{Arc, OnceLock, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use cairn_proto::cairn::agent::v1 as pb;
use tokio::task::JoinSet;
use tonic::{Code, Status};

use crate::{
    Shared,
    batch::{Acked, Batch},
    config::Acks,
    error::ProduceError,
    queue::PartitionQueue,
    record::EncodedProduce,
};

/// What an error answer means for the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Try again after a backoff. `maybe_written`: the attempt may have
    /// landed; `refresh`: the leader may have moved (it is shutting down, the
    /// partition is moving, or the agent could not be reached), so look again.
    Retry {
        maybe_written: bool,
        hint: Option<Duration>,
        refresh: bool,
    },
    /// Another agent leads the partition (named when the answer said so).
    NotLeader { address: Option<String> },
    /// The batch does not continue the sequence; the agent expects `expected`.
    OutOfOrder { expected: Option<u64> },
    /// A newer instance of this producer exists.
    Fenced(String),
    /// Retrying cannot help.
    Fatal(Code, String),
}

/// Sorts an error answer, by the reason it names first (the shared
/// vocabulary, `cairn/common/v1/errors.proto`), then by its code.
pub fn classify(status: &Status) -> Class {
    use cairn_client::{ErrorReason, status::error_metadata};
    let hint = cairn_client::status::retry_after(status);
    match cairn_client::status::reason_of(status) {
        Some(ErrorReason::NotLeader) => {
            return Class::NotLeader {
                address: error_metadata(status, "leader_address").filter(|a| !a.is_empty()),
            };
        }
        Some(ErrorReason::ProducerFenced) => return Class::Fenced(status.message().to_owned()),
        Some(ErrorReason::OutOfOrderSequence) => {
            return Class::OutOfOrder {
                expected: error_metadata(status, "expected_sequence").and_then(|e| e.parse().ok()),
            };
        }
        // Refused before anything was done: retrying cannot duplicate.
        Some(ErrorReason::Overloaded | ErrorReason::RateLimited) => {
            return Class::Retry {
                maybe_written: false,
                hint,
                refresh: false,
            };
        }
        Some(ErrorReason::ShuttingDown | ErrorReason::PartitionUnavailable | ErrorReason::PartitionMoving) => {
            return Class::Retry {
                maybe_written: false,
                hint,
                refresh: true,
            };
        }
        Some(_) => {}
        // No reason: an UNAVAILABLE from the transport (the agent is gone or
        // unreachable) means its partitions may be led elsewhere by now.
        None if status.code() == Code::Unavailable => {
            return Class::Retry {
                maybe_written: true,
                hint,
                refresh: true,
            };
        }
        None => {}
    }
    match status.code() {
        // Refused before anything was done.
        Code::ResourceExhausted => Class::Retry {
            maybe_written: false,
            hint,
            refresh: false,
        },
        // The call may have been carried out before the answer was lost.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Aborted => Class::Retry {
            maybe_written: true,
            hint,
            refresh: false,
        },
        code => Class::Fatal(code, status.message().to_owned()),
    }
}

/// The error a caller sees for a status that ended an operation.
pub fn status_error(status: &Status) -> ProduceError {
    match classify(status) {
        Class::Fenced(message) => ProduceError::Fenced(message),
        _ => ProduceError::Rejected {
            code: status.code(),
            message: status.message().to_owned(),
        },
    }
}

/// The shared retry policy (`cairn_client::Backoff`): full jitter under
/// `min(max, base × 2^attempt)`, but no sooner than the server asked.
pub fn backoff(attempt: u32, base: Duration, max: Duration, hint: Option<Duration>) -> Duration {
    cairn_client::Backoff::new(base, max).delay(attempt, hint)
}

#[derive(Debug)]
struct Pending {
    id: u64,
    batch: Batch,
    sequence: Option<u64>,
    in_flight: bool,
    attempts: u32,
    maybe_written: bool,
    last_error: Option<String>,
}

/// A batch to put on the wire now.
#[derive(Debug, Clone)]
pub struct Send {
    pub id: u64,
    pub base_sequence: u64,
    /// The batch's frame (producer fields 0: each attempt sends its own head).
    pub frame: Bytes,
    pub count: u32,
    /// When the batch's delivery timeout runs out.
    pub expires: Instant,
}

/// What the driver must do after an answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Metadata for this partition is stale.
    pub refresh_metadata: bool,
    /// The leader an answer named.
    pub leader: Option<String>,
    /// This producer is fenced: stop everything.
    pub fenced: Option<String>,
}

/// Settings the pipeline needs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_in_flight: usize,
    pub idempotent: bool,
    pub acks: Acks,
    pub delivery_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// One partition's unacknowledged batches, in order.
#[derive(Debug)]
pub struct Pipeline {
    limits: Limits,
    pending: VecDeque<Pending>,
    next_sequence: u64,
    next_id: u64,
    in_flight: usize,
    /// A retryable answer arrived: send nothing new until the wire is empty.
    recovering: bool,
    /// Renumber unacknowledged batches from here once the wire is empty.
    rewind: Option<u64>,
    /// First sequence numbers of batches the agent refused (never appended)
    /// whose numbers were not reused: the only places a rewind may go to.
    gaps: VecDeque<u64>,
    /// First sequence numbers of batches that timed out (they may still land).
    expired: VecDeque<u64>,
    /// Continue under a fresh producer id once the wire is empty.
    fresh_identity: bool,
    not_before: Option<Instant>,
    /// The producer-wide fenced flag, set before any batch fails for it, so a
    /// caller who sees a record fail as fenced also sees `send` refuse.
    fenced: Arc<OnceLock<String>>,
}

impl Pipeline {
    pub fn new(limits: Limits, fenced: Arc<OnceLock<String>>) -> Self {
        Pipeline {
            fenced,
            limits,
            pending: VecDeque::new(),
            next_sequence: 0,
            next_id: 0,
            in_flight: 0,
            recovering: false,
            rewind: None,
            gaps: VecDeque::new(),
            expired: VecDeque::new(),
            fresh_identity: false,
            not_before: None,
        }
    }

    /// Queues a sealed batch behind the others.
    pub fn push(&mut self, batch: Batch) {
        self.next_id += 1;
        self.pending.push_back(Pending {
            id: self.next_id,
            batch,
            sequence: None,
            in_flight: false,
            attempts: 0,
            maybe_written: false,
            last_error: None,
        });
    }

    /// Whether a batch that is not full should be sealed and sent now: only
    /// when nothing of this partition is unacknowledged. Full batches go out
    /// pipelined; a partly filled one waits for the wire to empty and keeps
    /// filling meanwhile, so batches grow with the load by themselves (at a
    /// moderate rate one request at a time with everything that arrived during
    /// the last round trip; under heavy load full batches, five at a time).
    pub fn has_room(&self) -> bool {
        self.pending.is_empty()
    }

    /// Batches not yet acknowledged or failed.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next sequence number a new batch would get.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// When something will be due without any answer arriving: the end of a
    /// backoff, or a waiting batch's delivery timeout.
    pub fn next_timer(&self) -> Option<Instant> {
        let expiry = self
            .pending
            .iter()
            .filter(|p| !p.in_flight)
            .map(|p| p.batch.created + self.limits.delivery_timeout)
            .min();
        match (self.not_before, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fails waiting batches whose delivery timeout has passed.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.limits.delivery_timeout;
        // Runs on every turn of the sender loop: rebuild the queue only when needed.
        if !self
            .pending
            .iter()
            .any(|p| !p.in_flight && p.batch.created + timeout <= now)
        {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if !p.in_flight && p.batch.created + timeout <= now {
                if let Some(seq) = p.sequence {
                    remember_gap(&mut self.expired, seq);
                }
                p.batch.complete(Err(ProduceError::TimedOut {
                    after: timeout,
                    maybe_written: p.maybe_written,
                    last_error: p.last_error.clone(),
                }));
                continue;
            }
            kept.push_back(p);
        }
        self.pending = kept;
    }

    /// Whether the driver must get a fresh producer id for this partition
    /// (and then call [`Pipeline::identity_replaced`]) before anything is sent.
    pub fn wants_identity(&self) -> bool {
        self.fresh_identity && self.in_flight == 0
    }

    /// The partition now writes as a fresh producer: sequences restart at 0.
    pub fn identity_replaced(&mut self) {
        self.fresh_identity = false;
        self.rewind = None;
        self.next_sequence = 0;
        self.gaps.clear();
        self.expired.clear();
        for p in &mut self.pending {
            p.sequence = None;
        }
    }

    /// Sends nothing before `until`.
    pub fn pause_until(&mut self, until: Instant) {
        self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
    }

    /// The batches to send now, marked in flight.
    pub fn ready(&mut self, now: Instant) -> Vec<Send> {
        if self.not_before.is_some_and(|t| now < t) || self.fresh_identity {
            return Vec::new();
        }
        self.not_before = None;
        if self.recovering {
            if self.in_flight > 0 {
                return Vec::new();
            }
            self.recovering = false;
            if let Some(from) = self.rewind.take() {
                self.next_sequence = from;
                self.gaps.retain(|g| *g < from);
                for p in &mut self.pending {
                    p.sequence = None;
                }
            }
        }
        let mut out = Vec::new();
        // Ids count every batch pushed, acknowledged ones included, so this bounds
        // the span from the oldest unacknowledged batch to the newest sent.
        let window_end = self.pending.front().map_or(0, |p| p.id) + self.limits.max_in_flight as u64;
        for p in self.pending.iter_mut().take_while(|p| p.id < window_end) {
            if self.in_flight >= self.limits.max_in_flight {
                break;
            }
            if p.in_flight {
                continue;
            }
            let sequence = *p.sequence.get_or_insert_with(|| {
                let s = self.next_sequence;
                self.next_sequence += u64::from(p.batch.count);
                s
            });
            p.in_flight = true;
            p.attempts += 1;
            self.in_flight += 1;
            out.push(Send {
                id: p.id,
                base_sequence: if self.limits.idempotent { sequence } else { 0 },
                frame: p.batch.frame.clone(),
                count: p.batch.count,
                expires: p.batch.created + self.limits.delivery_timeout,
            });
        }
        out
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.pending.iter().position(|p| p.id == id)
    }

    fn back_off(&mut self, now: Instant, attempts: u32, hint: Option<Duration>) {
        let delay = backoff(attempts, self.limits.backoff_base, self.limits.backoff_max, hint);
        let until = now + delay;
        self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
    }

    /// Ends batch `index` unacknowledged. `appended_not`: the agent refused it,
    /// so its numbers may be reused.
    fn fail_at(&mut self, index: usize, error: ProduceError, appended_not: bool) {
        if let Some(p) = self.pending.remove(index) {
            if let Some(seq) = p.sequence
                && appended_not
            {
                let last = seq + u64::from(p.batch.count) == self.next_sequence
                    && !self.pending.iter().skip(index).any(|q| q.sequence.is_some());
                if last {
                    // Nothing after it was numbered: the next batch takes its numbers.
                    self.next_sequence = seq;
                } else {
                    remember_gap(&mut self.gaps, seq);
                }
            }
            p.batch.complete(Err(error));
        }
    }

    /// Applies the answer to batch `id`.
    pub fn on_answer(&mut self, id: u64, answer: Result<pb::ProduceResponse, Status>, now: Instant) -> Effects {
        let Some(index) = self.position(id) else {
            return Effects::default();
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pending[index].in_flight = false;
        let mut effects = Effects::default();
        let status = match answer {
            Ok(response) => {
                let acked = Acked {
                    base_offset: (self.limits.acks != Acks::None).then_some(response.base_offset),
                    append_time_ms: response
                        .log_append_time
                        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                        .unwrap_or(0),
                };
                if let Some(p) = self.pending.remove(index) {
                    // Numbers at or below an appended batch are filled, not gaps.
                    if let Some(seq) = p.sequence {
                        self.gaps.retain(|g| *g > seq);
                        self.expired.retain(|g| *g > seq);
                    }
                    p.batch.complete(Ok(acked));
                }
                return effects;
            }
            Err(status) => status,
        };
        let attempts = self.pending[index].attempts;
        self.pending[index].last_error = Some(format!("{:?}: {}", status.code(), status.message()));
        match classify(&status) {
            Class::Retry {
                maybe_written,
                hint,
                refresh,
            } => {
                self.pending[index].maybe_written |= maybe_written;
                self.recovering = true;
                effects.refresh_metadata |= refresh;
                self.back_off(now, attempts, hint);
            }
            Class::NotLeader { address } => {
                self.recovering = true;
                effects.refresh_metadata = true;
                effects.leader = address.clone();
                if address.is_none() || attempts > 1 {
                    self.back_off(now, attempts, None);
                }
            }
            Class::OutOfOrder { expected } => {
                self.recovering = true;
                let first = index == 0;
                let sequence = self.pending[index].sequence.unwrap_or_default();
                match expected {
                    // The agent waits where one of ours was refused: renumber from there.
                    Some(e) if first && e < sequence && self.gaps.contains(&e) => self.rewind = Some(e),
                    // It waits where one of ours timed out, which may still land; or it
                    // is past this batch without remembering it (a timed-out batch
                    // landed late). Either way these numbers are spoken for.
                    Some(e) if first && (e > sequence || self.expired.contains(&e)) => self.fresh_identity = true,
                    // A predecessor had not landed yet: resend in turn, after a pause
                    // if this keeps happening.
                    _ => {
                        if attempts > 2 {
                            self.back_off(now, attempts - 2, None);
                        }
                    }
                }
            }
            Class::Fenced(message) => {
                let _ = self.fenced.set(message.clone());
                effects.fenced = Some(message.clone());
                self.fail_all(ProduceError::Fenced(message));
            }
            Class::Fatal(code, message) => {
                self.recovering = true;
                self.fail_at(index, ProduceError::Rejected { code, message }, true);
            }
        }
        effects
    }

    /// Fails every pending batch (the producer is fenced, closed or dropped).
    pub fn fail_all(&mut self, error: ProduceError) {
        for p in self.pending.drain(..) {
            p.batch.complete(Err(error.clone()));
        }
        self.in_flight = 0;
        self.recovering = false;
        self.rewind = None;
        self.fresh_identity = false;
    }
}

const REMEMBERED_GAPS: usize = 16;

fn remember_gap(gaps: &mut VecDeque<u64>, sequence: u64) {
    if !gaps.contains(&sequence) {
        gaps.push_back(sequence);
    }
    while gaps.len() > REMEMBERED_GAPS {
        gaps.pop_front();
    }
}

/// Drives one partition: takes sealed batches, sends, handles answers, until
/// the producer is closed and everything is settled, or it is dropped.
pub async fn run(shared: Arc<Shared>, queue: Arc<PartitionQueue>) {
    let config = &shared.config;
    let mut pipeline = Pipeline::new(
        Limits {
            max_in_flight: config.max_in_flight,
            idempotent: config.idempotence,
            acks: config.acks,
            delivery_timeout: config.delivery_timeout,
            backoff_base: config.retry_backoff_base,
            backoff_max: config.retry_backoff_max,
        },
        shared.fenced.clone(),
    );
    let mut wire: JoinSet<(u64, Result<pb::ProduceResponse, Status>)> = JoinSet::new();
    let mut stop = shared.stop.subscribe();
    // Set once this partition had to leave the producer's shared identity.
    let mut own_identity: Option<(u64, u32)> = None;
    loop {
        let now = Instant::now();
        if let Some(reason) = shared.fenced.get() {
            pipeline.fail_all(ProduceError::Fenced(reason.clone()));
            queue.fail_all(ProduceError::Fenced(reason.clone()));
        }
        let (sealed, linger_due) = queue.take(pipeline.has_room(), config.linger, now);
        for batch in sealed {
            pipeline.push(batch);
        }
        pipeline.expire(now);
        if pipeline.wants_identity() {
            match shared.fresh_identity(&queue).await {
                Ok(identity) => {
                    tracing::info!(
                        topic = %queue.topic,
                        partition = queue.partition,
                        producer_id = identity.0,
                        "a timed-out batch may still land: continuing under a fresh producer id"
                    );
                    own_identity = Some(identity);
                    pipeline.identity_replaced();
                }
                Err(status) => {
                    tracing::debug!(error = %status, "fresh producer id not obtained yet");
                    pipeline.pause_until(now + config.retry_backoff_max);
                }
            }
        }
        let sends = pipeline.ready(now);
        if !sends.is_empty() {
            match shared.route(&queue).await {
                Ok((address, identity)) => {
                    let identity = own_identity.unwrap_or(identity);
                    for send in sends {
                        let message = EncodedProduce::new(
                            pb::ProduceRequest {
                                topic: queue.topic.to_string(),
                                partition: queue.partition,
                                producer_id: identity.0,
                                producer_epoch: identity.1,
                                base_sequence: send.base_sequence,
                                ack_mode: config.acks.wire() as i32,
                                ..Default::default()
                            },
                            send.frame,
                        );
                        let timeout = config
                            .request_timeout
                            .min(send.expires.saturating_duration_since(now))
                            .max(Duration::from_millis(1));
                        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
                        let shared = shared.clone();
                        let address = address.clone();
                        wire.spawn(async move { (send.id, shared.rpc.produce(&address, message, timeout).await) });
                    }
                }
                Err(status) => {
                    // No leader known, or no producer id yet: answer every send
                    // with the error so the usual retry rules apply.
                    for send in sends {
                        let effects = pipeline.on_answer(send.id, Err(status.clone()), now);
                        shared.apply(&queue, effects);
                    }
                }
            }
        }
        if *stop.borrow() && (shared.is_closed() && pipeline.is_empty() && queue.is_empty() || shared.abandoned()) {
            pipeline.fail_all(ProduceError::Closed);
            queue.fail_all(ProduceError::Closed);
            wire.abort_all();
            return;
        }
        let timer = [pipeline.next_timer(), linger_due].into_iter().flatten().min();
        let sleep = tokio::time::sleep_until(
            timer
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
        );
        tokio::select! {
            _ = queue.wake.notified() => {}
            Some(joined) = wire.join_next(), if !wire.is_empty() => {
                if let Ok((id, answer)) = joined {
                    match &answer {
                        Ok(r) if r.duplicate => shared.counters.duplicates.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => 0,
                        Err(_) => shared.counters.errors.fetch_add(1, Ordering::Relaxed),
                    };
                    let effects = pipeline.on_answer(id, answer, Instant::now());
                    shared.apply(&queue, effects);
                }
            }
            _ = sleep => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::{
        batch::{OpenBatch, Reservation},
        record::ProducerRecord,
    };
    use tonic_types::StatusExt;

    fn limits(max_in_flight: usize) -> Limits {
        Limits {
            max_in_flight,
            idempotent: true,
            acks: Acks::Durable,
            delivery_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        }
    }

    /// A batch of `n` records and the deliveries of its records.
    fn batch(n: u32) -> (Batch, Vec<crate::Delivery>) {
        let memory = Arc::new(Semaphore::new(0));
        let topic: Arc<str> = Arc::from("t");
        let mut open = OpenBatch::new(Reservation::new(memory.clone(), 0), 64, None);
        let deliveries = (0..n)
            .map(|i| {
                open.push(
                    &ProducerRecord::new("t", format!("{i}")),
                    Reservation::new(memory.clone(), 0),
                    &topic,
                    0,
                )
            })
            .collect();
        (open.seal(), deliveries)
    }

    impl Pipeline {
        fn new_for_test(limits: Limits) -> Pipeline {
            Pipeline::new(limits, Arc::default())
        }
    }

    fn ok(base_offset: u64, count: u32) -> Result<pb::ProduceResponse, Status> {
        Ok(pb::ProduceResponse {
            base_offset,
            count,
            log_append_time: None,
            duplicate: false,
        })
    }

    fn out_of_order(expected: u64) -> Result<pb::ProduceResponse, Status> {
        let info = tonic_types::ErrorDetails::with_error_info(
            "OUT_OF_ORDER_SEQUENCE",
            "cairn.dev",
            [("expected_sequence".to_owned(), expected.to_string())],
        );
        Err(Status::with_error_details(Code::FailedPrecondition, "gap", info))
    }

    fn later(t: Instant) -> Instant {
        t + Duration::from_millis(50)
    }

    fn resolved(d: crate::Delivery) -> Option<Result<crate::RecordMetadata, ProduceError>> {
        use std::future::Future;
        let mut d = d;
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(&mut d).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn batches_pipeline_in_order_with_consecutive_sequences_up_to_the_limit() {
        let mut p = Pipeline::new_for_test(limits(2));
        for n in [3, 2, 4] {
            p.push(batch(n).0);
        }
        let now = Instant::now();
        let sends = p.ready(now);
        assert_eq!(sends.iter().map(|s| s.base_sequence).collect::<Vec<_>>(), [0, 3]);
        assert!(p.ready(now).is_empty(), "two in flight is the limit");
        p.on_answer(sends[0].id, ok(10, 3), now);
        let third = p.ready(now);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].base_sequence, 5);
        assert_eq!(p.next_sequence(), 9);
    }

    #[test]
    fn a_lost_answer_resends_the_same_sequences_in_order_after_the_wire_drains() {
        let mut p = Pipeline::new_for_test(limits(5));
        let (b0, d0) = batch(2);
        p.push(b0);
        p.push(batch(2).0);
        p.push(batch(2).0);
        let now = Instant::now();
        let sends = p.ready(now);
        assert_eq!(sends.len(), 3);
        // The first answer is lost; the others arrive (appended behind it).
        p.on_answer(sends[0].id, Err(Status::unavailable("connection reset")), now);
        assert!(
            p.ready(later(now)).is_empty(),
            "nothing new while batches are on the wire"
        );
        p.on_answer(sends[1].id, ok(2, 2), now);
        p.on_answer(sends[2].id, ok(4, 2), now);
        let again = p.ready(later(now));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].base_sequence, 0, "the retry keeps its sequence");
        p.on_answer(again[0].id, ok(0, 2), now);
        let delivered = d0
            .into_iter()
            .map(|d| resolved(d).unwrap().unwrap().offset)
            .collect::<Vec<_>>();
        assert_eq!(delivered, [Some(0), Some(1)]);
        assert!(p.is_empty());
        assert_eq!(p.next_sequence(), 6);
    }

    #[test]
    fn a_batch_refused_for_good_gives_its_sequence_numbers_to_the_next() {
        let mut p = Pipeline::new_for_test(limits(5));
        let (b0, d0) = batch(3);
        p.push(b0);
        p.push(batch(2).0);
        let now = Instant::now();
        let sends = p.ready(now);
        p.on_answer(sends[0].id, Err(Status::invalid_argument("records[1]: too large")), now);
        // The second was sent with sequence 3, which the agent refuses: it expects 0.
        p.on_answer(sends[1].id, out_of_order(0), now);
        let again = p.ready(later(now));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].base_sequence, 0, "renumbered from where the agent is");
        assert!(matches!(
            resolved(d0.into_iter().next().unwrap()),
            Some(Err(ProduceError::Rejected {
                code: Code::InvalidArgument,
                ..
            }))
        ));
        p.on_answer(again[0].id, ok(0, 2), now);
        assert_eq!(p.next_sequence(), 2);
    }

    #[test]
    fn only_the_oldest_unacknowledged_batches_may_be_on_the_wire() {
        let mut p = Pipeline::new_for_test(limits(2));
        for _ in 0..4 {
            p.push(batch(1).0);
        }
        let now = Instant::now();
        let s = p.ready(now);
        // The second is acknowledged before the first: the third may not go out
        // yet, or an appended first batch could fall out of the agent's window.
        p.on_answer(s[1].id, ok(1, 1), now);
        assert!(p.ready(now).is_empty());
        p.on_answer(s[0].id, ok(0, 1), now);
        assert_eq!(p.ready(now).len(), 2);
    }

    #[test]
    fn a_stale_expected_sequence_from_a_race_does_not_renumber() {
        let mut p = Pipeline::new_for_test(limits(5));
        p.push(batch(2).0);
        let (b1, d1) = batch(2);
        p.push(b1);
        let now = Instant::now();
        let s = p.ready(now);
        // The agent handled the second request first (expected 0), then the first.
        p.on_answer(s[0].id, ok(0, 2), now);
        p.on_answer(s[1].id, out_of_order(0), now);
        let again = p.ready(later(now));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].base_sequence, 2, "keeps its number: 0 was appended, not a gap");
        p.on_answer(again[0].id, ok(2, 2), now);
        assert_eq!(
            resolved(d1.into_iter().next().unwrap()).unwrap().unwrap().offset,
            Some(2)
        );
    }

    #[test]
    fn a_failed_last_batch_does_not_spend_sequence_numbers() {
        let mut p = Pipeline::new_for_test(limits(5));
        p.push(batch(3).0);
        let now = Instant::now();
        let s = p.ready(now);
        p.on_answer(s[0].id, Err(Status::permission_denied("no")), now);
        assert_eq!(p.next_sequence(), 0);
        p.push(batch(1).0);
        assert_eq!(p.ready(later(now))[0].base_sequence, 0);
    }

    #[test]
    fn out_of_order_behind_an_unanswered_batch_is_retried_not_failed() {
        let mut p = Pipeline::new_for_test(limits(5));
        p.push(batch(1).0);
        let (b1, d1) = batch(1);
        p.push(b1);
        let now = Instant::now();
        let s = p.ready(now);
        p.on_answer(s[1].id, out_of_order(0), now);
        p.on_answer(s[0].id, Err(Status::resource_exhausted("busy")), now);
        let again = p.ready(later(now));
        assert_eq!(again.iter().map(|s| s.base_sequence).collect::<Vec<_>>(), [0, 1]);
        assert!(resolved(d1.into_iter().next().unwrap()).is_none(), "still pending");
    }

    #[test]
    fn expiry_fails_waiting_batches_and_says_whether_they_may_have_landed() {
        let mut l = limits(5);
        l.delivery_timeout = Duration::from_millis(100);
        let mut p = Pipeline::new_for_test(l);
        let (b0, d0) = batch(1);
        let (b1, d1) = batch(1);
        p.push(b0);
        p.push(b1);
        let now = Instant::now();
        let s = p.ready(now);
        p.on_answer(s[0].id, Err(Status::unavailable("reset")), now);
        p.on_answer(s[1].id, Err(Status::resource_exhausted("busy")), now);
        // Batch 1 was refused, but batch 0 was answered only by a lost connection.
        p.expire(now + Duration::from_millis(150));
        assert!(p.is_empty());
        let e0 = resolved(d0.into_iter().next().unwrap()).unwrap().unwrap_err();
        let e1 = resolved(d1.into_iter().next().unwrap()).unwrap().unwrap_err();
        assert_eq!(e0.fate(), crate::Fate::Unknown);
        assert_eq!(
            e1.fate(),
            crate::Fate::NotWritten,
            "batch 1 was refused before anything was done"
        );
        // The next batch continues the sequence. The agent waits where a timed-out
        // batch starts: that batch may still land, so its numbers are not reused.
        p.push(batch(1).0);
        let s = p.ready(now + Duration::from_millis(150));
        assert_eq!(s[0].base_sequence, 2);
        p.on_answer(s[0].id, out_of_order(0), now);
        assert!(p.wants_identity());
        assert!(
            p.ready(now + Duration::from_millis(300)).is_empty(),
            "nothing goes out under the old id"
        );
        p.identity_replaced();
        assert_eq!(p.ready(now + Duration::from_millis(300))[0].base_sequence, 0);
    }

    #[test]
    fn an_emptied_pipeline_has_room_even_while_recovering() {
        let mut l = limits(5);
        l.delivery_timeout = Duration::from_millis(100);
        let mut p = Pipeline::new_for_test(l);
        p.push(batch(1).0);
        let now = Instant::now();
        let s = p.ready(now);
        p.on_answer(s[0].id, Err(Status::unavailable("down")), now);
        assert!(!p.has_room(), "a partly filled batch waits while one is unacknowledged");
        p.expire(now + Duration::from_millis(150));
        assert!(p.has_room(), "a batch lingering in the queue must be sealed and sent");
    }

    #[test]
    fn fencing_fails_everything() {
        let flag: Arc<OnceLock<String>> = Arc::default();
        let mut p = Pipeline::new(limits(5), flag.clone());
        let (b0, d0) = batch(1);
        p.push(b0);
        p.push(batch(1).0);
        let now = Instant::now();
        let s = p.ready(now);
        let info = tonic_types::ErrorDetails::with_error_info("PRODUCER_FENCED", "cairn.dev", []);
        let fenced = Status::with_error_details(Code::FailedPrecondition, "epoch 0 is fenced by 1", info);
        let effects = p.on_answer(s[0].id, Err(fenced), now);
        assert_eq!(effects.fenced.as_deref(), Some("epoch 0 is fenced by 1"));
        assert_eq!(
            flag.get().map(String::as_str),
            Some("epoch 0 is fenced by 1"),
            "set before records fail"
        );
        assert!(p.is_empty());
        assert!(matches!(
            resolved(d0.into_iter().next().unwrap()),
            Some(Err(ProduceError::Fenced(_)))
        ));
    }

    #[test]
    fn not_leader_with_a_named_leader_retries_at_once_and_reports_it() {
        let mut p = Pipeline::new_for_test(limits(5));
        p.push(batch(1).0);
        let now = Instant::now();
        let s = p.ready(now);
        let info = tonic_types::ErrorDetails::with_error_info(
            "NOT_LEADER",
            "cairn.dev",
            [("leader_address".to_owned(), "10.0.0.2:7200".to_owned())],
        );
        let effects = p.on_answer(
            s[0].id,
            Err(Status::with_error_details(
                Code::FailedPrecondition,
                "not the leader",
                info,
            )),
            now,
        );
        assert!(effects.refresh_metadata);
        assert_eq!(effects.leader.as_deref(), Some("10.0.0.2:7200"));
        assert_eq!(p.ready(now)[0].base_sequence, 0);
    }

    #[test]
    fn an_unreachable_or_departing_leader_makes_the_producer_look_again() {
        let refresh = |status: Status| match classify(&status) {
            Class::Retry { refresh, .. } => refresh,
            other => panic!("{other:?}"),
        };
        assert!(refresh(Status::unavailable("tcp connect error")), "the agent is gone");
        assert!(refresh(cairn_client::status::with_reason(
            Code::Unavailable,
            "shutting down",
            cairn_client::ErrorReason::ShuttingDown,
            None
        )));
        assert!(
            !refresh(cairn_client::status::overloaded("busy", Duration::from_millis(5))),
            "an overloaded leader is still the leader"
        );
        let mut p = Pipeline::new_for_test(limits(5));
        p.push(batch(1).0);
        let now = Instant::now();
        let s = p.ready(now);
        let effects = p.on_answer(s[0].id, Err(Status::unavailable("connection refused")), now);
        assert!(effects.refresh_metadata);
    }

    #[test]
    fn backoff_is_full_jitter_within_bounds_and_honours_hints() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(500);
        for attempt in 0..20 {
            let d = backoff(attempt, base, max, None);
            assert!(d <= (base * 2u32.pow(attempt.min(16))).min(max));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(5, base, max, None)).collect();
        assert!(spread.len() > 10, "jittered");
        assert!(backoff(0, base, max, Some(Duration::from_millis(200))) >= Duration::from_millis(200));
    }
}
