//! Reads records from committed segments in an object store: a segment's
//! footer and block index once (kept in a bounded cache), then only the
//! blocks a read needs, by range reads, decoded blocks kept in a cache
//! bounded in bytes. Anything with access to the store reads this way —
//! the agent below its WAL, and readers that never touch an agent.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use cairn_object_store::{ObjectStore, StoreError};

use crate::{
    batch::Stored,
    segment::{self, BlockEntry, SegmentError},
};

/// Why a segment could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed (retry later) or the object is gone.
    #[error("reading {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
    /// The object is not a valid segment.
    #[error("{key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: SegmentError,
    },
}

/// A bounded map that evicts its oldest entries first, by a cost per entry.
struct Bounded<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    cost: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cost: 0,
            capacity,
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).map(|(v, _)| v.clone())
    }

    fn insert(&mut self, key: K, value: V, cost: usize) {
        if cost > self.capacity || self.map.contains_key(&key) {
            return;
        }
        while self.cost + cost > self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, c)) = self.map.remove(&old) {
                self.cost -= c;
            }
        }
        self.order.push_back(key.clone());
        self.cost += cost;
        self.map.insert(key, (value, cost));
    }
}

/// Hits and misses of a reader's block cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// How much a reader keeps.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Segments whose block index is kept.
    pub indexes: usize,
    /// Memory the decoded blocks kept may take (0: none), counted as what
    /// they hold on the heap (records, keys, values, headers), not as their
    /// smaller encoded size.
    pub block_bytes: usize,
}

type Block = Arc<[Stored]>;

/// Heap bytes a decoded block holds: each record and every allocation it
/// owns, with an allocator's per-allocation overhead.
fn heap_size(block: &[Stored]) -> usize {
    const PER_ALLOCATION: usize = 16;
    let vec = |capacity: usize| if capacity == 0 { 0 } else { capacity + PER_ALLOCATION };
    PER_ALLOCATION
        + block
            .iter()
            .map(|s| {
                let r = &s.record;
                std::mem::size_of::<Stored>()
                    + r.key.as_ref().map_or(0, |k| vec(k.capacity()))
                    + vec(r.value.capacity())
                    + vec(r.headers.capacity() * std::mem::size_of::<(String, Vec<u8>)>())
                    + r.headers
                        .iter()
                        .map(|(k, v)| vec(k.capacity()) + vec(v.capacity()))
                        .sum::<usize>()
            })
            .sum::<usize>()
}

/// Segment reads with caches of block indexes and decoded blocks.
pub struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    indexes: Mutex<Bounded<String, Arc<[BlockEntry]>>>,
    blocks: Mutex<Bounded<(String, u64), Block>>,
    stats: Arc<CacheStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SegmentReader {
    /// Reads from `store` with caches of `limits`.
    pub fn new(store: Arc<dyn ObjectStore>, limits: CacheLimits) -> Self {
        SegmentReader {
            store,
            indexes: Mutex::new(Bounded::new(limits.indexes)),
            blocks: Mutex::new(Bounded::new(limits.block_bytes)),
            stats: Arc::default(),
        }
    }

    /// The block cache's hits and misses.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// The block index of the segment at `key` (`size` bytes long).
    pub async fn index(&self, key: &str, size: u64) -> Result<Arc<[BlockEntry]>, ReadError> {
        if let Some(index) = lock(&self.indexes).get(&key.to_owned()) {
            return Ok(index);
        }
        let corrupt = |source| ReadError::Corrupt {
            key: key.to_owned(),
            source,
        };
        let tail = self
            .range(key, size.saturating_sub(segment::FOOTER_SIZE as u64)..size)
            .await?;
        let footer = segment::read_footer(&tail).map_err(corrupt)?;
        let range = segment::index_range(&footer, size).map_err(corrupt)?;
        let bytes = self.range(key, range).await?;
        let index: Arc<[BlockEntry]> = segment::read_index(&footer, &bytes).map_err(corrupt)?.into();
        lock(&self.indexes).insert(key.to_owned(), index.clone(), 1);
        Ok(index)
    }

    async fn range(&self, key: &str, range: std::ops::Range<u64>) -> Result<bytes::Bytes, ReadError> {
        self.store
            .get_range(key, range)
            .await
            .map_err(|source| ReadError::Store {
                key: key.to_owned(),
                source,
            })
    }

    /// The decoded records of one block, from the cache or the store.
    pub async fn block(&self, key: &str, entry: &BlockEntry) -> Result<Block, ReadError> {
        let id = (key.to_owned(), entry.first_offset);
        if let Some(block) = lock(&self.blocks).get(&id) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(block);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let bytes = self.range(key, entry.range()).await?;
        let block: Block = segment::read_block(entry, &bytes)
            .map_err(|source| ReadError::Corrupt {
                key: key.to_owned(),
                source,
            })?
            .into();
        lock(&self.blocks).insert(id, block.clone(), heap_size(&block));
        Ok(block)
    }

    /// Loads a block into the cache in the background (a streaming reader's
    /// next block, fetched while it sends this one). Errors are left for the
    /// read that needs the block.
    pub fn prefetch(self: &Arc<Self>, key: &str, entry: BlockEntry) {
        if lock(&self.blocks).capacity == 0 || lock(&self.blocks).get(&(key.to_owned(), entry.first_offset)).is_some() {
            return;
        }
        let (reader, key) = (self.clone(), key.to_owned());
        tokio::spawn(async move {
            let _ = reader.block(&key, &entry).await;
        });
    }

    /// Records at or after `offset` from one segment, whole blocks at a time,
    /// while they fit `budget` raw bytes (the first block always does).
    /// Returns them and the raw bytes taken; stopping short of the segment's
    /// end means the budget ran out.
    pub async fn read(
        &self,
        key: &str,
        size: u64,
        offset: u64,
        budget: usize,
    ) -> Result<(Vec<Stored>, usize), ReadError> {
        let index = self.index(key, size).await?;
        let Some(first) = segment::block_for_offset(&index, offset) else {
            return Ok((Vec::new(), 0));
        };
        let mut out = Vec::new();
        let mut taken = 0usize;
        for entry in &index[first..] {
            if taken > 0 && taken + entry.raw_len as usize > budget {
                break;
            }
            let block = self.block(key, entry).await?;
            out.extend(block.iter().filter(|s| s.offset >= offset).cloned());
            taken += entry.raw_len as usize;
        }
        Ok((out, taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounded_cache_evicts_oldest_first_by_cost() {
        let mut cache = Bounded::new(10);
        cache.insert("a", 1, 4);
        cache.insert("b", 2, 4);
        assert_eq!((cache.get(&"a"), cache.get(&"b")), (Some(1), Some(2)));
        cache.insert("c", 3, 4);
        assert_eq!(cache.get(&"a"), None, "the oldest went to make room");
        assert_eq!((cache.get(&"b"), cache.get(&"c")), (Some(2), Some(3)));
        cache.insert("huge", 9, 11);
        assert_eq!(cache.get(&"huge"), None, "larger than the whole cache: not kept");
        assert_eq!(cache.cost, 8);
        let mut none = Bounded::new(0);
        none.insert("a", 1, 1);
        assert_eq!(none.get(&"a"), None);
    }

    #[test]
    fn a_blocks_cost_is_what_its_records_hold_on_the_heap_not_their_encoded_bytes() {
        let stored = |value: usize, headers: usize| Stored {
            offset: 0,
            append_time_ms: 0,
            record: crate::batch::Record {
                key: Some(vec![1; 16]),
                value: vec![0; value],
                timestamp_ms: 0,
                headers: (0..headers).map(|h| (format!("h{h}"), vec![0; 8])).collect(),
            },
        };
        let small: Vec<Stored> = (0..100).map(|_| stored(10, 0)).collect();
        let encoded: usize = small.iter().map(|s| s.record.encoded_len()).sum();
        let cost = heap_size(&small);
        assert!(
            cost >= 100 * (std::mem::size_of::<Stored>() + 16 + 10),
            "{cost} counts each record, its key and its value"
        );
        assert!(
            cost > 3 * encoded,
            "small records cost far more decoded ({cost}) than encoded ({encoded})"
        );
        let with_headers: Vec<Stored> = (0..100).map(|_| stored(10, 2)).collect();
        assert!(heap_size(&with_headers) > cost + 100 * 2 * 8, "headers count too");
    }
}
