//! The metadata database all agents share: topics, one lease row per
//! partition, agent membership, producer ids. One schema and query set for
//! SQLite and Postgres (sqlx `Any`); lease times come from the database's own
//! clock so agents with skewed clocks agree on expiry.

use std::time::Duration;

use sqlx::{AnyPool, Row};

use crate::{
    error::{Error, Result},
    ids::{LeaseToken, PartitionId},
    producers::ProducerState,
};

/// A topic and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRow {
    pub name: String,
    pub partitions: u32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub created_at: i64,
}

/// A partition's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub topic: String,
    pub partition: u32,
    pub holder: Option<String>,
    pub epoch: u64,
    pub expires_at: i64,
    pub dirty: bool,
    /// As last published by the holder.
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Every record below it is in a committed segment.
    pub committed_offset: u64,
}

/// A committed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub topic: String,
    pub partition: u32,
    pub base_offset: u64,
    pub next_offset: u64,
    pub epoch: u64,
    pub object_key: String,
    pub size_bytes: u64,
    pub records: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// The latest append time of its records (unix ms; 0 for segments from before it was kept).
    pub max_append_ms: i64,
    pub created_at: i64,
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub agent_id: String,
    pub address: String,
    pub heartbeat_at: i64,
}

// Column lists as macros, so queries stay `&'static str` (sqlx's SQL-safety rule).
macro_rules! lease_columns {
    () => {
        "topic, partition, holder, epoch, expires_at, dirty, high_watermark, log_start_offset, committed_offset"
    };
}
macro_rules! segment_columns {
    () => {
        "topic, partition, base_offset, next_offset, epoch, object_key, size_bytes, records, min_ts, max_ts, max_append_ms, created_at"
    };
}

fn unsigned(row: &sqlx::any::AnyRow, column: &str) -> Result<u64> {
    Ok(u64::try_from(row.try_get::<i64, _>(column)?).unwrap_or(0))
}

fn lease_row(row: &sqlx::any::AnyRow) -> Result<LeaseRow> {
    Ok(LeaseRow {
        topic: row.try_get("topic")?,
        partition: u32::try_from(row.try_get::<i64, _>("partition")?).unwrap_or(0),
        holder: row.try_get("holder")?,
        epoch: unsigned(row, "epoch")?,
        expires_at: row.try_get("expires_at")?,
        dirty: row.try_get::<i64, _>("dirty")? != 0,
        high_watermark: unsigned(row, "high_watermark")?,
        log_start_offset: unsigned(row, "log_start_offset")?,
        committed_offset: unsigned(row, "committed_offset")?,
    })
}

fn segment_row(row: &sqlx::any::AnyRow) -> Result<SegmentRow> {
    Ok(SegmentRow {
        topic: row.try_get("topic")?,
        partition: u32::try_from(row.try_get::<i64, _>("partition")?).unwrap_or(0),
        base_offset: unsigned(row, "base_offset")?,
        next_offset: unsigned(row, "next_offset")?,
        epoch: unsigned(row, "epoch")?,
        object_key: row.try_get("object_key")?,
        size_bytes: unsigned(row, "size_bytes")?,
        records: unsigned(row, "records")?,
        min_ts: row.try_get("min_ts")?,
        max_ts: row.try_get("max_ts")?,
        max_append_ms: row.try_get("max_append_ms")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The metadata store.
#[derive(Clone, Debug)]
pub struct Meta {
    pool: AnyPool,
    // SQL for "now in unix ms" by the database's clock.
    now_sql: &'static str,
}

impl Meta {
    /// Connects to `url` and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Meta> {
        let pool = cairn_service::sql::connect(url, max_connections, sqlx::migrate!("./migrations")).await?;
        let now_sql = if cairn_service::sql::is_sqlite(url) {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        };
        Ok(Meta { pool, now_sql })
    }

    /// Closes the pool (at shutdown, after the last metadata write).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The database's clock, unix ms.
    pub async fn now(&self) -> Result<i64> {
        let sql = format!("SELECT {} AS now", self.now_sql);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&self.pool).await?;
        Ok(row.try_get("now")?)
    }

    /// Creates a topic and its lease rows in one transaction.
    pub async fn create_topic(&self, topic: &TopicRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO topics (name, partitions, retention_ms, retention_bytes, segment_bytes, segment_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&topic.name)
        .bind(i64::from(topic.partitions))
        .bind(topic.retention_ms)
        .bind(topic.retention_bytes)
        .bind(topic.segment_bytes)
        .bind(topic.segment_ms)
        .bind(topic.created_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(Error::TopicExists(topic.name.clone()));
            }
            other => {
                other?;
            }
        }
        for partition in 0..topic.partitions {
            sqlx::query(
                "INSERT INTO leases (topic, partition, holder, epoch, expires_at, dirty) VALUES ($1, $2, NULL, 0, 0, 0)",
            )
            .bind(&topic.name)
            .bind(i64::from(partition))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn topic_row(row: &sqlx::any::AnyRow) -> Result<TopicRow> {
        Ok(TopicRow {
            name: row.try_get("name")?,
            partitions: u32::try_from(row.try_get::<i64, _>("partitions")?).unwrap_or(0),
            retention_ms: row.try_get("retention_ms")?,
            retention_bytes: row.try_get("retention_bytes")?,
            segment_bytes: row.try_get("segment_bytes")?,
            segment_ms: row.try_get("segment_ms")?,
            created_at: row.try_get("created_at")?,
        })
    }

    /// Every topic, by name.
    pub async fn topics(&self) -> Result<Vec<TopicRow>> {
        let rows = sqlx::query(
            "SELECT name, partitions, retention_ms, retention_bytes, segment_bytes, segment_ms, created_at \
             FROM topics ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::topic_row).collect()
    }

    /// One topic.
    pub async fn topic(&self, name: &str) -> Result<Option<TopicRow>> {
        let row = sqlx::query(
            "SELECT name, partitions, retention_ms, retention_bytes, segment_bytes, segment_ms, created_at \
             FROM topics WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::topic_row).transpose()
    }

    /// Deletes a topic and its lease rows; false if there was none.
    pub async fn delete_topic(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM topics WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM leases WHERE topic = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // The objects stay behind: the orphan sweep only covers partitions an agent
        // leads, so a deleted topic's objects need a cleanup that is not built yet.
        sqlx::query("DELETE FROM segments WHERE topic = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM producer_states WHERE topic = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Every lease row.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases ORDER BY topic, partition"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lease_row).collect()
    }

    /// One partition's lease row.
    pub async fn lease(&self, topic: &str, partition: u32) -> Result<Option<LeaseRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE topic = $1 AND partition = $2"
        ))
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(lease_row).transpose()
    }

    /// Takes the lease if it is free or expired (and, unless `unclean`, not
    /// dirty under another holder). The epoch grows only when the holder
    /// changes. Returns the row as it is now, or `None` if someone else has
    /// it: once this holder's epoch is in the row no other holder can change
    /// its offsets, so the answer is the state the new tenure starts from.
    pub async fn acquire(
        &self,
        topic: &str,
        partition: u32,
        me: &str,
        lease: Duration,
        unclean: bool,
    ) -> Result<Option<LeaseRow>> {
        let sql = format!(
            "UPDATE leases SET \
               epoch = CASE WHEN holder = $3 THEN epoch ELSE epoch + 1 END, \
               holder = $3, expires_at = {now} + $4 \
             WHERE topic = $1 AND partition = $2 \
               AND (holder IS NULL OR holder = $3 OR expires_at < {now}) \
               AND (holder IS NULL OR holder = $3 OR dirty = 0 OR $5 = 1)",
            now = self.now_sql
        );
        let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(topic)
            .bind(i64::from(partition))
            .bind(me)
            .bind(lease.as_millis() as i64)
            .bind(i64::from(unclean))
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        let row = self.lease(topic, partition).await?;
        Ok(row.filter(|r| r.holder.as_deref() == Some(me)))
    }

    /// Extends a lease this agent holds at `epoch` and publishes the
    /// partition's `(log start, high watermark)`; false if the lease was lost.
    pub async fn renew(
        &self,
        id: &PartitionId,
        token: &LeaseToken,
        lease: Duration,
        offsets: (u64, u64),
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE leases SET expires_at = {now} + $5, log_start_offset = $6, high_watermark = $7 \
             WHERE topic = $1 AND partition = $2 AND holder = $3 AND epoch = $4",
            now = self.now_sql
        );
        let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&id.topic)
            .bind(i64::from(id.partition))
            .bind(&token.holder)
            .bind(token.epoch as i64)
            .bind(lease.as_millis() as i64)
            .bind(offsets.0 as i64)
            .bind(offsets.1 as i64)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Marks that the holder at `epoch` has acknowledged records not yet in
    /// object storage. Fenced by the epoch: false if the lease moved.
    pub async fn mark_dirty(&self, id: &PartitionId, token: &LeaseToken) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE leases SET dirty = 1 WHERE topic = $1 AND partition = $2 AND holder = $3 AND epoch = $4",
        )
        .bind(&id.topic)
        .bind(i64::from(id.partition))
        .bind(&token.holder)
        .bind(token.epoch as i64)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Gives up a clean lease so another agent can take it at once (the holder
    /// is cleared, so this agent does not reclaim it as its own).
    pub async fn release(&self, id: &PartitionId, token: &LeaseToken) -> Result<()> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0, holder = NULL \
             WHERE topic = $1 AND partition = $2 AND holder = $3 AND epoch = $4 AND dirty = 0",
        )
        .bind(&id.topic)
        .bind(i64::from(id.partition))
        .bind(&token.holder)
        .bind(token.epoch as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a segment and moves the committed offset from `segment.base_offset`
    /// to `segment.next_offset`, in one transaction guarded by the holder's
    /// epoch. False (and nothing written) if the lease moved or the committed
    /// offset is not where this segment starts.
    pub async fn commit_segment(&self, segment: &SegmentRow, me: &str, producers: &[ProducerState]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE leases SET committed_offset = $1 \
             WHERE topic = $2 AND partition = $3 AND holder = $4 AND epoch = $5 AND committed_offset = $6",
        )
        .bind(segment.next_offset as i64)
        .bind(&segment.topic)
        .bind(i64::from(segment.partition))
        .bind(me)
        .bind(segment.epoch as i64)
        .bind(segment.base_offset as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO segments (topic, partition, base_offset, next_offset, epoch, object_key, size_bytes, \
             records, min_ts, max_ts, max_append_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&segment.topic)
        .bind(i64::from(segment.partition))
        .bind(segment.base_offset as i64)
        .bind(segment.next_offset as i64)
        .bind(segment.epoch as i64)
        .bind(&segment.object_key)
        .bind(segment.size_bytes as i64)
        .bind(segment.records as i64)
        .bind(segment.min_ts)
        .bind(segment.max_ts)
        .bind(segment.max_append_ms)
        .bind(segment.created_at)
        .execute(&mut *tx)
        .await?;
        for state in producers {
            sqlx::query(
                "INSERT INTO producer_states (topic, partition, producer_id, epoch, batches, state) \
                 VALUES ($1, $2, $3, $4, '', $5) \
                 ON CONFLICT (topic, partition, producer_id) DO UPDATE SET epoch = $4, batches = '', state = $5",
            )
            .bind(&segment.topic)
            .bind(i64::from(segment.partition))
            .bind(state.producer_id as i64)
            .bind(i64::from(state.epoch))
            .bind(state.encode_batches())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Moves the log start to `offset` and deletes the segment rows below it,
    /// in one transaction guarded by the holder's epoch. False if the lease moved.
    pub async fn advance_log_start(&self, id: &PartitionId, token: &LeaseToken, offset: u64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE leases SET log_start_offset = $1 \
             WHERE topic = $2 AND partition = $3 AND holder = $4 AND epoch = $5 AND log_start_offset <= $1",
        )
        .bind(offset as i64)
        .bind(&id.topic)
        .bind(i64::from(id.partition))
        .bind(&token.holder)
        .bind(token.epoch as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM segments WHERE topic = $1 AND partition = $2 AND next_offset <= $3")
            .bind(&id.topic)
            .bind(i64::from(id.partition))
            .bind(offset as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The idempotence state stored with the last segment commit. A row that
    /// does not decode is an error (`Corrupt`), never skipped: exactly-once
    /// state that is silently dropped lets a retry append twice.
    pub async fn producer_states(&self, topic: &str, partition: u32) -> Result<Vec<ProducerState>> {
        let rows = sqlx::query(
            "SELECT producer_id, epoch, batches, state FROM producer_states WHERE topic = $1 AND partition = $2",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let producer_id = unsigned(r, "producer_id")?;
                let epoch = u32::try_from(r.try_get::<i64, _>("epoch")?)
                    .map_err(|_| Error::Corrupt(format!("stored producer state: epoch of producer {producer_id}")))?;
                let batches = match r.try_get::<Option<Vec<u8>>, _>("state")? {
                    Some(bytes) => ProducerState::decode_batches(&bytes)?,
                    None => ProducerState::decode_legacy(&r.try_get::<String, _>("batches")?)?,
                };
                Ok(ProducerState {
                    producer_id,
                    epoch,
                    batches,
                })
            })
            .collect()
    }

    /// Hands the partition back clean: clears the dirty mark and releases the
    /// lease, but only if everything up to `end` is committed under this epoch.
    pub async fn release_clean(&self, id: &PartitionId, token: &LeaseToken, end: u64) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE leases SET dirty = 0, expires_at = 0, holder = NULL \
             WHERE topic = $1 AND partition = $2 AND holder = $3 AND epoch = $4 AND committed_offset = $5",
        )
        .bind(&id.topic)
        .bind(i64::from(id.partition))
        .bind(&token.holder)
        .bind(token.epoch as i64)
        .bind(end as i64)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// A partition's committed segments, by offset.
    pub async fn segments(&self, topic: &str, partition: u32) -> Result<Vec<SegmentRow>> {
        self.segments_from(topic, partition, 0, i64::MAX).await
    }

    /// Up to `limit` committed segments that end above `offset`, by offset
    /// (an index range scan on the primary key).
    pub async fn segments_from(&self, topic: &str, partition: u32, offset: u64, limit: i64) -> Result<Vec<SegmentRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            segment_columns!(),
            " FROM segments WHERE topic = $1 AND partition = $2 AND next_offset > $3 AND base_offset >= \
             COALESCE((SELECT MAX(base_offset) FROM segments WHERE topic = $1 AND partition = $2 AND base_offset <= $3), 0) \
             ORDER BY base_offset LIMIT $4"
        ))
        .bind(topic)
        .bind(i64::from(partition))
        .bind(offset as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(segment_row).collect()
    }

    /// The committed segment holding `offset`, if any: one index lookup,
    /// whatever the number of segments.
    pub async fn segment_at(&self, topic: &str, partition: u32, offset: u64) -> Result<Option<SegmentRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            segment_columns!(),
            " FROM segments WHERE topic = $1 AND partition = $2 AND base_offset <= $3 \
             ORDER BY base_offset DESC LIMIT 1"
        ))
        .bind(topic)
        .bind(i64::from(partition))
        .bind(offset as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .as_ref()
            .map(segment_row)
            .transpose()?
            .filter(|s| offset < s.next_offset))
    }

    /// The latest append time in a partition's committed segments (0 when none
    /// is recorded): where a new leader's clock starts.
    pub async fn last_append_time(&self, topic: &str, partition: u32) -> Result<i64> {
        let row = sqlx::query(
            "SELECT max_append_ms FROM segments WHERE topic = $1 AND partition = $2 ORDER BY base_offset DESC LIMIT 1",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("max_append_ms")).transpose()?.unwrap_or(0))
    }

    /// The first committed segment that may hold a record with timestamp at
    /// or after `ts` (unix ms), if any.
    pub async fn segment_at_time(&self, topic: &str, partition: u32, ts: i64) -> Result<Option<SegmentRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            segment_columns!(),
            " FROM segments WHERE topic = $1 AND partition = $2 AND max_ts >= $3 ORDER BY base_offset LIMIT 1"
        ))
        .bind(topic)
        .bind(i64::from(partition))
        .bind(ts)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(segment_row).transpose()
    }

    /// The first committed segment holding a record appended at or after
    /// `ms` (unix ms), if any. Segments from before append times were kept
    /// (0) never match.
    pub async fn segment_at_append_time(&self, topic: &str, partition: u32, ms: i64) -> Result<Option<SegmentRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            segment_columns!(),
            " FROM segments WHERE topic = $1 AND partition = $2 AND max_append_ms >= $3 ORDER BY base_offset LIMIT 1"
        ))
        .bind(topic)
        .bind(i64::from(partition))
        .bind(ms)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(segment_row).transpose()
    }

    /// The first offset of a partition's first committed segment.
    pub async fn first_segment_base(&self, topic: &str, partition: u32) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT MIN(base_offset) AS base FROM segments WHERE topic = $1 AND partition = $2")
            .bind(topic)
            .bind(i64::from(partition))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("base")?.map(|b| b as u64))
    }

    /// Registers or refreshes this agent.
    pub async fn heartbeat(&self, agent_id: &str, address: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO agents (agent_id, address, heartbeat_at, started_at) VALUES ($1, $2, {now}, {now}) \
             ON CONFLICT (agent_id) DO UPDATE SET address = $2, heartbeat_at = {now}",
            now = self.now_sql
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(agent_id)
            .bind(address)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes this agent from membership (after a graceful shutdown), so the
    /// others count it gone at once instead of after its heartbeat ages out.
    pub async fn deregister(&self, agent_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Agents whose heartbeat is younger than `within`.
    pub async fn live_agents(&self, within: Duration) -> Result<Vec<AgentRow>> {
        let sql = format!(
            "SELECT agent_id, address, heartbeat_at FROM agents WHERE heartbeat_at > {now} - $1 ORDER BY agent_id",
            now = self.now_sql
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(within.as_millis() as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AgentRow {
                    agent_id: row.try_get("agent_id")?,
                    address: row.try_get("address")?,
                    heartbeat_at: row.try_get("heartbeat_at")?,
                })
            })
            .collect()
    }

    /// A producer id and epoch. A named producer gets its existing id with
    /// the epoch bumped (fencing the older instance); an unnamed one a new id.
    pub async fn init_producer(&self, name: Option<&str>, now: i64) -> Result<(u64, u32)> {
        let mut tx = self.pool.begin().await?;
        if let Some(name) = name {
            let updated = sqlx::query("UPDATE producers SET epoch = epoch + 1 WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 1 {
                let row = sqlx::query("SELECT producer_id, epoch FROM producers WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok((
                    row.try_get::<i64, _>("producer_id")? as u64,
                    row.try_get::<i64, _>("epoch")? as u32,
                ));
            }
        }
        // A random positive 63-bit id: no coordination needed. A collision (or
        // a concurrent init of the same name) fails the insert; the caller retries.
        let id = rand::random_range(1..i64::MAX);
        let inserted =
            sqlx::query("INSERT INTO producers (producer_id, name, epoch, created_at) VALUES ($1, $2, 0, $3)")
                .bind(id)
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await;
        match inserted {
            Ok(_) => {
                tx.commit().await?;
                Ok((id as u64, 0))
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Error::InitRace),
            Err(e) => Err(e.into()),
        }
    }
}
