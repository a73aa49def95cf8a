//! Reads records from committed segments in the object store: a segment's
//! footer and block index once (kept in a bounded cache), then only the
//! blocks a read needs, by range reads. Which segment holds an offset is one
//! indexed metadata lookup (`Meta::segment_at`), so reading a partition's
//! history costs the same per record whatever its number of segments.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use cairn_object_store::{ObjectStore, StoreError};

use crate::{
    batch::Stored,
    error::{Error, Result},
    segment::{self, BlockEntry},
};

/// Segment reads with a cache of block indexes.
pub struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    cache: Mutex<IndexCache>,
}

/// Block indexes by object key, the oldest evicted first.
struct IndexCache {
    map: HashMap<String, Arc<[BlockEntry]>>,
    order: VecDeque<String>,
    capacity: usize,
}

impl IndexCache {
    fn get(&self, key: &str) -> Option<Arc<[BlockEntry]>> {
        self.map.get(key).cloned()
    }

    fn insert(&mut self, key: &str, index: Arc<[BlockEntry]>) {
        if self.capacity == 0 || self.map.contains_key(key) {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(key.to_owned());
        self.map.insert(key.to_owned(), index);
    }
}

impl SegmentReader {
    /// Reads from `store`, caching up to `capacity` segments' indexes.
    pub fn new(store: Arc<dyn ObjectStore>, capacity: usize) -> Self {
        SegmentReader {
            store,
            cache: Mutex::new(IndexCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                capacity,
            }),
        }
    }

    /// The block index of the segment at `key` (`size` bytes long).
    pub async fn index(&self, key: &str, size: u64) -> Result<Arc<[BlockEntry]>> {
        if let Some(index) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(index);
        }
        let corrupt = |e: segment::SegmentError| Error::Corrupt(format!("{key}: {e}"));
        let tail = self
            .store
            .get_range(key, size.saturating_sub(segment::FOOTER_SIZE as u64)..size)
            .await
            .map_err(|e| store_error(key, e))?;
        let footer = segment::read_footer(&tail).map_err(corrupt)?;
        let range = segment::index_range(&footer, size).map_err(corrupt)?;
        let bytes = self
            .store
            .get_range(key, range)
            .await
            .map_err(|e| store_error(key, e))?;
        let index: Arc<[BlockEntry]> = segment::read_index(&footer, &bytes).map_err(corrupt)?.into();
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, index.clone());
        Ok(index)
    }

    /// Records at or after `offset` from one segment, whole blocks at a time,
    /// while they fit `budget` raw bytes (the first block always does).
    /// Returns them and the raw bytes taken; stopping short of the segment's
    /// end means the budget ran out.
    pub async fn read(&self, key: &str, size: u64, offset: u64, budget: usize) -> Result<(Vec<Stored>, usize)> {
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
            let block = self
                .store
                .get_range(key, entry.range())
                .await
                .map_err(|e| store_error(key, e))?;
            let records = segment::read_block(entry, &block).map_err(|e| Error::Corrupt(format!("{key}: {e}")))?;
            out.extend(records.into_iter().filter(|s| s.offset >= offset));
            taken += entry.raw_len as usize;
        }
        Ok((out, taken))
    }
}

fn store_error(key: &str, e: StoreError) -> Error {
    Error::ObjectStore {
        what: format!("reading {key}"),
        source: e,
    }
}
