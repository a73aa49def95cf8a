//! Which partition a record goes to.
//!
//! - An explicit partition is used as given.
//! - A keyed record goes to `(murmur2(key) & 0x7fff_ffff) % partitions`, the
//!   32-bit MurmurHash2 with seed `0x9747b28c` that Kafka's default partitioner
//!   uses, so a key lands on the same partition number as it would in Kafka.
//!   The mapping changes only when the partition count does.
//! - Keyless records stick to one partition until its batch fills, then move on
//!   to another (preferring partitions that have a leader), which keeps batches
//!   large without skewing load over time.

/// Kafka's `murmur2`: MurmurHash2, 32-bit, seed `0x9747b28c`, little-endian words.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions`.
pub fn for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions.max(1)
}

/// The next sticky partition for keyless records: a random one other than
/// `current`, taken from `available` (partitions with a leader) when any are.
pub fn next_sticky(current: Option<u32>, partitions: u32, available: &[u32]) -> u32 {
    let pool: Vec<u32> = if available.is_empty() {
        (0..partitions).collect()
    } else {
        available.to_vec()
    };
    let choices: Vec<u32> = match current {
        Some(c) if pool.len() > 1 => pool.into_iter().filter(|p| *p != c).collect(),
        _ => pool,
    };
    if choices.is_empty() {
        return 0;
    }
    choices[rand::random_range(0..choices.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values Kafka's Utils.murmur2 gives for these UTF-8 strings.
        for (input, expected) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
        ] {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn keys_map_stably_and_spread() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let key = format!("user-{i}");
            let p = for_key(key.as_bytes(), 8);
            assert_eq!(p, for_key(key.as_bytes(), 8));
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn sticky_moves_on_and_prefers_available_partitions() {
        for _ in 0..100 {
            let next = next_sticky(Some(1), 4, &[]);
            assert!(next < 4 && next != 1);
            let next = next_sticky(Some(1), 4, &[1, 3]);
            assert_eq!(next, 3);
        }
        assert_eq!(next_sticky(Some(0), 1, &[]), 0);
    }
}
