//! A local directory as object store. Create-only writes: the bytes go to a
//! temporary file, are fsynced, then hard-linked into place — `link` fails if
//! the name exists, so the check and the create are one atomic step.

use std::{
    io::Write,
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use crate::{ObjectMeta, ObjectStore, Result, StoreError, check_key};

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn io(error: std::io::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl LocalStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join(".tmp")).map_err(io)?;
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn put_blocking(root: &Path, path: &Path, key: &str, bytes: &[u8]) -> Result<()> {
        let parent = path.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).map_err(io)?;
        let tmp = root.join(".tmp").join(format!("{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io)?;
            file.write_all(bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::AlreadyExists(key.to_owned()));
                }
                Err(e) => return Err(io(e)),
            }
            // The new name must survive a crash too.
            std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io)
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }

    fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Walk only the directory the prefix points into.
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let start = if dir_part.is_empty() {
            root.to_path_buf()
        } else {
            root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io)?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(root) else { continue };
                let key = rel.to_string_lossy().into_owned();
                if key.starts_with(".tmp") {
                    continue;
                }
                let meta = entry.metadata().map_err(io)?;
                if meta.is_dir() {
                    stack.push(path);
                } else if key.starts_with(prefix) {
                    out.push(ObjectMeta { key, size: meta.len() });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

fn not_found(key: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound(key.to_owned())
        } else {
            io(e)
        }
    }
}

#[tonic::async_trait]
impl ObjectStore for LocalStore {
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let (root, key) = (self.root.clone(), key.to_owned());
        blocking(move || Self::put_blocking(&root, &path, &key, &bytes)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || std::fs::read(&path).map(Bytes::from).map_err(not_found(&key))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || {
            let file = std::fs::File::open(&path).map_err(not_found(&key))?;
            let size = file.metadata().map_err(io)?.len();
            let (start, end) = (range.start.min(size), range.end.min(size));
            let mut buf = vec![0u8; (end.saturating_sub(start)) as usize];
            file.read_exact_at(&mut buf, start).map_err(io)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (root, prefix) = (self.root.clone(), prefix.to_owned());
        blocking(move || Self::list_blocking(&root, &prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        })
        .await
    }
}
