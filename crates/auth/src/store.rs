//! The key store: one schema and one set of queries for SQLite and Postgres,
//! through sqlx's `Any` driver. Times are unix milliseconds.

use std::{
    collections::HashMap,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sqlx::{AnyPool, Row, any::AnyRow};

use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A time as unix milliseconds (saturating).
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds as a time.
pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A stored key, without anything secret except the hash (which never leaves
/// the service).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub key_id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub rotated_from: Option<String>,
}

impl KeyRecord {
    /// Whether the key authenticates at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    fn from_row(row: &AnyRow) -> Result<KeyRecord> {
        let scopes: String = row.try_get("scopes")?;
        Ok(KeyRecord {
            key_id: row.try_get("key_id")?,
            name: row.try_get("name")?,
            secret_hash: row.try_get("secret_hash")?,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
            last_used_at: row.try_get("last_used_at")?,
            rotated_from: row.try_get("rotated_from")?,
        })
    }
}

// A macro so queries stay string literals (sqlx only takes audited, static SQL).
macro_rules! columns {
    () => {
        "key_id, name, secret_hash, scopes, created_at, expires_at, revoked_at, last_used_at, rotated_from"
    };
}

/// Where a page of `list` starts: after this (created_at, key_id), newest first.
pub type Cursor = (i64, String);

/// The key store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let pool = cairn_service::sql::connect(url, max_connections, sqlx::migrate!("./migrations")).await?;
        Ok(Store { pool })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert(&self, conn: &mut sqlx::AnyConnection, key: &KeyRecord) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&key.key_id)
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(key.scopes.join(" "))
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .bind(key.last_used_at)
        .bind(key.rotated_from.as_deref())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Stores a new key.
    pub async fn create(&self, key: &KeyRecord) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        self.insert(&mut conn, key).await
    }

    /// The key with `key_id`, if any.
    pub async fn get(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM api_keys WHERE key_id = $1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(KeyRecord::from_row).transpose()
    }

    /// Up to `limit` keys, newest first, after `cursor`.
    pub async fn list(&self, include_revoked: bool, limit: u32, cursor: Option<&Cursor>) -> Result<Vec<KeyRecord>> {
        let (at, id) = cursor.cloned().unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys",
            " WHERE (created_at < $1 OR (created_at = $1 AND key_id < $2) OR $3 = 0)",
            " AND ($5 = 1 OR revoked_at IS NULL)",
            " ORDER BY created_at DESC, key_id DESC LIMIT $4"
        ))
        .bind(at)
        .bind(id)
        .bind(i64::from(cursor.is_some()))
        .bind(i64::from(limit))
        .bind(i64::from(include_revoked))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(KeyRecord::from_row).collect()
    }

    /// Revokes a key at `now`; revoking a revoked key keeps its first time.
    pub async fn revoke(&self, key_id: &str, now: i64) -> Result<KeyRecord> {
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        self.get(key_id)
            .await?
            .ok_or_else(|| Error::NotFound(key_id.to_owned()))
    }

    /// Stores `new` as the replacement of `old_id` and makes the old key
    /// expire at `old_expires_at` (or sooner, if it already would), atomically.
    pub async fn rotate(&self, old_id: &str, new: &KeyRecord, old_expires_at: i64) -> Result<KeyRecord> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM api_keys WHERE key_id = $1"))
            .bind(old_id)
            .fetch_optional(&mut *tx)
            .await?;
        let old = row.as_ref().map(KeyRecord::from_row).transpose()?;
        let old = old.ok_or_else(|| Error::NotFound(old_id.to_owned()))?;
        if old.revoked_at.is_some() {
            return Err(Error::Revoked(old_id.to_owned()));
        }
        let expires = old.expires_at.map_or(old_expires_at, |e| e.min(old_expires_at));
        // The guard on revoked_at makes a concurrent revoke win cleanly.
        let updated = sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE key_id = $2 AND revoked_at IS NULL")
            .bind(expires)
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::Revoked(old_id.to_owned()));
        }
        self.insert(&mut tx, new).await?;
        tx.commit().await?;
        Ok(KeyRecord {
            expires_at: Some(expires),
            ..old
        })
    }

    /// Stores `key` as the bootstrap admin key unless one was bootstrapped before.
    pub async fn bootstrap(&self, key: &KeyRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> = sqlx::query("SELECT key_id FROM bootstrap WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("key_id"))
            .transpose()?;
        if let Some(id) = existing {
            return Err(Error::AlreadyBootstrapped(id));
        }
        let inserted = sqlx::query("INSERT INTO bootstrap (id, key_id, created_at) VALUES (1, $1, $2)")
            .bind(&key.key_id)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await;
        if let Err(error) = inserted {
            // Another bootstrap won the race between our read and insert.
            if is_unique_violation(&error) {
                return Err(Error::AlreadyBootstrapped("(concurrent)".into()));
            }
            return Err(error.into());
        }
        self.insert(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records when keys were last used; never moves a time backwards.
    pub async fn touch(&self, last_used: &HashMap<String, i64>) -> Result<()> {
        if last_used.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (key_id, at) in last_used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1 WHERE key_id = $2 \
                 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(*at)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Encodes a list cursor as an opaque page token.
pub fn encode_cursor(cursor: &Cursor) -> String {
    format!("{}.{}", cursor.0, cursor.1)
}

/// Decodes a page token; `None` if it was not made by [`encode_cursor`].
pub fn decode_cursor(token: &str) -> Option<Cursor> {
    let (at, id) = token.split_once('.')?;
    let at = i64::from_str(at).ok()?;
    crate::key::is_key_id(id).then(|| (at, id.to_owned()))
}
