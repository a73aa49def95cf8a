//! Idempotence: per producer and partition, the last five batches' sequence
//! ranges and offsets. Rebuilt from the WAL on recovery (every batch header
//! carries its producer id, epoch and base sequence), so dedup survives a restart.

use std::collections::{HashMap, VecDeque};

use crate::{
    batch::{BatchHeader, ProducerInfo},
    error::{Error, Result},
};

/// How many recent batches per producer are remembered for dedup.
pub const REMEMBERED_BATCHES: usize = 5;

/// A batch a producer appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_sequence: u64,
    pub count: u32,
    pub base_offset: u64,
    pub append_time_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: u32,
    batches: VecDeque<Appended>,
}

/// One producer's idempotence state as the metadata database stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub producer_id: u64,
    pub epoch: u32,
    /// Oldest first, at most [`REMEMBERED_BATCHES`].
    pub batches: Vec<Appended>,
}

const STATE_VERSION: u8 = 1;
const ENTRY: usize = 8 + 4 + 8 + 8;

impl ProducerState {
    /// The batches, checked: version, count, entries, CRC-32 of all before it.
    pub fn encode_batches(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.batches.len() * ENTRY + 4);
        out.push(STATE_VERSION);
        out.push(self.batches.len() as u8);
        for b in &self.batches {
            out.extend_from_slice(&b.base_sequence.to_le_bytes());
            out.extend_from_slice(&b.count.to_le_bytes());
            out.extend_from_slice(&b.base_offset.to_le_bytes());
            out.extend_from_slice(&b.append_time_ms.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes [`ProducerState::encode_batches`]; anything else is corruption.
    pub fn decode_batches(bytes: &[u8]) -> Result<Vec<Appended>> {
        let corrupt = |why: &str| Error::Corrupt(format!("stored producer state: {why}"));
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err(corrupt("too short"));
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(corrupt("checksum mismatch"));
        }
        let [version, count, entries @ ..] = body else {
            return Err(corrupt("too short"));
        };
        if *version != STATE_VERSION {
            return Err(corrupt("unknown version"));
        }
        if usize::from(*count) > REMEMBERED_BATCHES || entries.len() != usize::from(*count) * ENTRY {
            return Err(corrupt("wrong length"));
        }
        Ok(entries
            .chunks_exact(ENTRY)
            .map(|e| {
                let u64_at = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap_or([0; 8]));
                Appended {
                    base_sequence: u64_at(0),
                    count: u32::from_le_bytes(e[8..12].try_into().unwrap_or([0; 4])),
                    base_offset: u64_at(12),
                    append_time_ms: u64_at(20) as i64,
                }
            })
            .collect())
    }

    /// Parses the text form rows written before the checked encoding held
    /// (`seq:count:offset:time` joined by `,`); anything malformed is corruption.
    pub fn decode_legacy(text: &str) -> Result<Vec<Appended>> {
        text.split(',')
            .filter(|b| !b.is_empty())
            .map(|b| {
                let f: Vec<&str> = b.split(':').collect();
                let parse = || -> Option<Appended> {
                    let [seq, count, offset, time] = f.as_slice() else {
                        return None;
                    };
                    Some(Appended {
                        base_sequence: seq.parse().ok()?,
                        count: count.parse().ok()?,
                        base_offset: offset.parse().ok()?,
                        append_time_ms: time.parse().ok()?,
                    })
                };
                parse().ok_or_else(|| Error::Corrupt(format!("stored producer state: malformed batch `{b}`")))
            })
            .collect()
    }
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// It was appended before: answer with the original offsets.
    Duplicate(Appended),
}

fn starts_at_zero(p: ProducerInfo) -> Result<Verdict> {
    if p.base_sequence == 0 {
        Ok(Verdict::Append)
    } else {
        Err(Error::OutOfOrderSequence {
            producer_id: p.producer_id,
            expected: 0,
            got: p.base_sequence,
        })
    }
}

/// The idempotence state of one partition.
#[derive(Debug, Clone, Default)]
pub struct Producers {
    by_id: HashMap<u64, Producer>,
}

impl Producers {
    /// Rebuilds state from the WAL's batch headers, oldest first.
    pub fn from_batches(batches: &[BatchHeader]) -> Self {
        let mut state = Producers::default();
        state.replay(batches, 0);
        state
    }

    /// Applies the batches at or after `from` (earlier ones are already in the state).
    pub fn replay(&mut self, batches: &[BatchHeader], from: u64) {
        for b in batches.iter().filter(|b| b.base_offset >= from) {
            self.record(b.producer, b.count, b.base_offset, b.append_time_ms);
        }
    }

    /// The state as typed rows, one per producer, by id.
    pub fn to_states(&self) -> Vec<ProducerState> {
        let mut states: Vec<ProducerState> = self
            .by_id
            .iter()
            .map(|(id, p)| ProducerState {
                producer_id: *id,
                epoch: p.epoch,
                batches: p.batches.iter().copied().collect(),
            })
            .collect();
        states.sort_by_key(|s| s.producer_id);
        states
    }

    /// The state from stored rows.
    pub fn from_states(states: &[ProducerState]) -> Self {
        let mut state = Producers::default();
        for s in states {
            state.by_id.insert(
                s.producer_id,
                Producer {
                    epoch: s.epoch,
                    batches: s.batches.iter().copied().collect(),
                },
            );
        }
        state
    }

    /// Checks a batch of `count` records from `p` without changing anything.
    pub fn check(&self, p: ProducerInfo, count: u32) -> Result<Verdict> {
        if p.producer_id == 0 {
            return Ok(Verdict::Append);
        }
        let known = match self.by_id.get(&p.producer_id) {
            // A producer new here, or a new epoch of one, starts its sequence at 0.
            None => return starts_at_zero(p),
            Some(known) if p.epoch > known.epoch => return starts_at_zero(p),
            Some(known) => known,
        };
        if p.epoch < known.epoch {
            return Err(Error::ProducerFenced {
                producer_id: p.producer_id,
                epoch: p.epoch,
                current: known.epoch,
            });
        }
        if let Some(original) = known
            .batches
            .iter()
            .find(|b| b.base_sequence == p.base_sequence && b.count == count)
        {
            return Ok(Verdict::Duplicate(*original));
        }
        let expected = known.batches.back().map_or(0, |b| b.base_sequence + u64::from(b.count));
        if p.base_sequence == expected {
            Ok(Verdict::Append)
        } else {
            Err(Error::OutOfOrderSequence {
                producer_id: p.producer_id,
                expected,
                got: p.base_sequence,
            })
        }
    }

    /// Records an appended batch. Called only after the append it describes.
    pub fn record(&mut self, p: ProducerInfo, count: u32, base_offset: u64, append_time_ms: i64) {
        if p.producer_id == 0 {
            return;
        }
        let entry = self.by_id.entry(p.producer_id).or_default();
        if p.epoch > entry.epoch {
            entry.epoch = p.epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(Appended {
            base_sequence: p.base_sequence,
            count,
            base_offset,
            append_time_ms,
        });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(epoch: u32, seq: u64) -> ProducerInfo {
        ProducerInfo {
            producer_id: 9,
            epoch,
            base_sequence: seq,
        }
    }

    #[test]
    fn sequences_continue_duplicates_return_originals_gaps_fail() {
        let mut s = Producers::default();
        assert_eq!(s.check(p(0, 0), 3).unwrap(), Verdict::Append);
        s.record(p(0, 0), 3, 100, 1);
        assert_eq!(s.check(p(0, 3), 2).unwrap(), Verdict::Append);
        s.record(p(0, 3), 2, 103, 2);
        assert_eq!(
            s.check(p(0, 0), 3).unwrap(),
            Verdict::Duplicate(Appended {
                base_sequence: 0,
                count: 3,
                base_offset: 100,
                append_time_ms: 1
            })
        );
        assert!(matches!(
            s.check(p(0, 6), 1),
            Err(Error::OutOfOrderSequence {
                expected: 5,
                got: 6,
                ..
            })
        ));
        assert!(
            matches!(s.check(p(0, 1), 1), Err(Error::OutOfOrderSequence { .. })),
            "an overlapping batch"
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = Producers::default();
        for i in 0..7 {
            s.record(p(0, i), 1, 10 + i, 0);
        }
        assert!(matches!(s.check(p(0, 6), 1).unwrap(), Verdict::Duplicate(_)));
        assert!(matches!(s.check(p(0, 2), 1).unwrap(), Verdict::Duplicate(_)));
        assert!(
            s.check(p(0, 1), 1).is_err(),
            "too old to dedup is an error, never a second append"
        );
    }

    #[test]
    fn a_new_epoch_fences_the_old_one() {
        let mut s = Producers::default();
        s.record(p(0, 0), 1, 0, 0);
        assert_eq!(s.check(p(1, 0), 1).unwrap(), Verdict::Append);
        s.record(p(1, 0), 1, 1, 0);
        assert!(matches!(
            s.check(p(0, 1), 1),
            Err(Error::ProducerFenced { current: 1, .. })
        ));
        assert!(s.check(p(2, 5), 1).is_err(), "a new epoch starts at sequence 0");
    }

    #[test]
    fn stored_state_round_trips_and_damage_is_corruption() {
        let mut s = Producers::default();
        for i in 0..7 {
            s.record(p(3, i), 1, 100 + i, -5);
        }
        let states = s.to_states();
        assert_eq!(states[0].batches.len(), REMEMBERED_BATCHES);
        let encoded = states[0].encode_batches();
        assert_eq!(ProducerState::decode_batches(&encoded).unwrap(), states[0].batches);
        for i in 0..encoded.len() {
            let mut bad = encoded.clone();
            bad[i] ^= 0x04;
            assert!(ProducerState::decode_batches(&bad).is_err(), "flip at {i} undetected");
        }
        for cut in 0..encoded.len() {
            assert!(ProducerState::decode_batches(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            ProducerState::decode_legacy("0:1:0:0,1:2:1:5").unwrap().len(),
            2,
            "rows from before the checked encoding still read"
        );
        for bad in ["x:y", "1:2:3", "1:2:3:4:5", "a:1:1:1"] {
            assert!(
                matches!(ProducerState::decode_legacy(bad), Err(Error::Corrupt(_))),
                "{bad} is corruption, never skipped"
            );
        }
    }

    #[test]
    fn states_round_trip_and_replay_skips_what_the_snapshot_has() {
        let mut s = Producers::default();
        s.record(p(3, 0), 2, 10, 7);
        s.record(p(3, 2), 1, 12, 8);
        let rows = s.to_states();
        let back = Producers::from_states(&rows);
        assert_eq!(back.to_states(), rows);
        assert!(matches!(back.check(p(3, 0), 2).unwrap(), Verdict::Duplicate(a) if a.base_offset == 10));
        let mut replayed = back.clone();
        let headers = [BatchHeader {
            base_offset: 12,
            count: 1,
            producer: p(3, 2),
            append_time_ms: 8,
        }];
        replayed.replay(&headers, 13);
        assert_eq!(
            replayed.to_states(),
            rows,
            "a batch below the snapshot offset is not applied twice"
        );
    }

    #[test]
    fn state_rebuilt_from_headers_equals_live_state() {
        let headers: Vec<BatchHeader> = (0..4)
            .map(|i| BatchHeader {
                base_offset: i * 2,
                count: 2,
                producer: p(0, i * 2),
                append_time_ms: 0,
            })
            .collect();
        let s = Producers::from_batches(&headers);
        assert!(matches!(s.check(p(0, 4), 2).unwrap(), Verdict::Duplicate(a) if a.base_offset == 4));
        assert_eq!(s.check(p(0, 8), 1).unwrap(), Verdict::Append);
    }
}
