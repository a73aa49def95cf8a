//! The log's on-disk and in-object-store formats, shared by the agent that
//! writes them and every reader that decodes them without an agent: `batch`
//! (the checksummed frame a WAL and a segment hold), `segment` (the
//! indexed, compressed object a partition's records become) and `store`
//! (reading segments from an object store with range reads and caches).

pub mod batch;
pub mod segment;
#[cfg(feature = "store")]
pub mod store;
