//! Object storage for segments: one abstraction, [`ObjectStore`], with two
//! implementations — a local directory ([`LocalStore`], the embedded default)
//! and S3 or any S3-compatible store ([`S3Store`]) — and one behaviour suite
//! that runs against both.
//!
//! Writes are create-only ([`ObjectStore::put_if_absent`]): an object, once
//! written, is never overwritten. Agents put their lease epoch in every key, so
//! a fenced holder's late write lands on a key nobody reads, never over a
//! committed one.

mod local;
mod s3;

use std::{ops::Range, sync::Arc};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use local::LocalStore;
pub use s3::S3Store;

/// What can go wrong with an object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object at this key.
    #[error("no object at {0}")]
    NotFound(String),
    /// An object is already at this key (create-only write refused).
    #[error("an object already exists at {0}")]
    AlreadyExists(String),
    /// The key is not allowed (empty, absolute, `..`, odd characters).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The store could not be reached or failed; retry later.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// The store URL or settings are wrong.
    #[error("object store misconfigured: {0}")]
    Config(String),
}

/// Results of object store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An object's key and size, from [`ObjectStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// A store of immutable objects.
#[tonic::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes `bytes` at `key` unless an object is already there
    /// ([`StoreError::AlreadyExists`], and the existing object is untouched).
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<()>;
    /// The whole object.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// Bytes `range` of the object (clamped to its end).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Deletes the object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// Keys are relative paths of `[A-Za-z0-9._=-]` segments separated by `/`.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'='))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_owned()))
    }
}

/// S3 settings used when the URL is `s3://…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint override (MinIO, a test server); empty means AWS.
    pub endpoint: String,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and most
    /// S3-compatible servers need.
    pub path_style: bool,
    /// Static credentials; empty means `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Bound on each request.
    #[serde(with = "cairn_client::units::duration")]
    pub request_timeout: std::time::Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Opens the store `url` names: `file:///path` (or a bare path) or `s3://bucket[/prefix]`.
pub fn open(url: &str, s3: &S3Config) -> Result<Arc<dyn ObjectStore>> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config(format!("{url}: no bucket")));
        }
        return Ok(Arc::new(S3Store::new(bucket, prefix, s3)?));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.is_empty() {
        return Err(StoreError::Config("empty object store path".into()));
    }
    Ok(Arc::new(LocalStore::new(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "t/0/00000000000000000000-e3.seg", "x=1/y"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a/.", "sp ace", "a\\b", "é"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
