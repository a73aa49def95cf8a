//! Lease and metadata invariants, run against SQLite and a real Postgres.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_agent::ids::{LeaseToken, PartitionId};
use cairn_agent::meta::{Meta, TopicRow};

fn topic(name: &str, partitions: u32) -> TopicRow {
    TopicRow {
        name: name.into(),
        partitions,
        retention_ms: 0,
        retention_bytes: 0,
        segment_bytes: 1 << 26,
        segment_ms: 600_000,
        created_at: 1,
    }
}

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(200);

fn id() -> PartitionId {
    PartitionId::new("t", 0)
}

fn token(holder: &str, epoch: u64) -> LeaseToken {
    LeaseToken {
        holder: holder.into(),
        epoch,
    }
}

async fn topics_and_lease_rows(meta: Meta) {
    meta.create_topic(&topic("clicks", 3)).await.unwrap();
    assert!(matches!(
        meta.create_topic(&topic("clicks", 1)).await,
        Err(cairn_agent::error::Error::TopicExists(_))
    ));
    assert_eq!(meta.topics().await.unwrap().len(), 1);
    let leases = meta.leases().await.unwrap();
    assert_eq!(leases.len(), 3, "one lease row per partition");
    assert!(leases.iter().all(|l| l.holder.is_none() && l.epoch == 0));
    assert!(meta.delete_topic("clicks").await.unwrap());
    assert!(meta.leases().await.unwrap().is_empty());
    assert!(!meta.delete_topic("clicks").await.unwrap());
}

async fn epoch_grows_only_when_the_holder_changes(meta: Meta) {
    meta.create_topic(&topic("t", 1)).await.unwrap();
    assert_eq!(
        meta.acquire("t", 0, "a", SHORT, false).await.unwrap().map(|l| l.epoch),
        Some(1)
    );
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, false).await.unwrap().map(|l| l.epoch),
        None,
        "held and not expired"
    );
    assert!(meta.renew(&id(), &token("a", 1), SHORT, (0, 7)).await.unwrap());
    assert_eq!(meta.leases().await.unwrap()[0].epoch, 1, "renewal keeps the epoch");
    assert_eq!(
        meta.acquire("t", 0, "a", SHORT, false).await.unwrap().map(|l| l.epoch),
        Some(1),
        "re-acquire by the holder keeps it"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, false).await.unwrap().map(|l| l.epoch),
        Some(2),
        "new holder, new epoch"
    );
    assert!(
        !meta.renew(&id(), &token("a", 1), LONG, (0, 99)).await.unwrap(),
        "the old holder can't renew"
    );
    assert!(
        !meta.mark_dirty(&id(), &token("a", 1)).await.unwrap(),
        "nor change anything under its old epoch"
    );
    assert_eq!(meta.leases().await.unwrap()[0].holder.as_deref(), Some("b"));
    assert_eq!(
        meta.leases().await.unwrap()[0].high_watermark,
        7,
        "a fenced renewal publishes nothing"
    );
}

async fn a_dirty_partition_is_not_taken_over(meta: Meta) {
    meta.create_topic(&topic("t", 1)).await.unwrap();
    assert_eq!(
        meta.acquire("t", 0, "a", SHORT, false).await.unwrap().map(|l| l.epoch),
        Some(1)
    );
    assert!(meta.mark_dirty(&id(), &token("a", 1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, false).await.unwrap().map(|l| l.epoch),
        None,
        "expired but dirty"
    );
    assert_eq!(
        meta.acquire("t", 0, "a", LONG, false).await.unwrap().map(|l| l.epoch),
        Some(1),
        "its holder reclaims it"
    );
    meta.release(&id(), &token("a", 1)).await.unwrap();
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, false).await.unwrap().map(|l| l.epoch),
        None,
        "a dirty lease is not released"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, true).await.unwrap().map(|l| l.epoch),
        None,
        "not expired: even unclean waits"
    );
}

async fn unclean_takeover_when_enabled(meta: Meta) {
    meta.create_topic(&topic("t", 1)).await.unwrap();
    meta.acquire("t", 0, "a", SHORT, false).await.unwrap().map(|l| l.epoch);
    meta.mark_dirty(&id(), &token("a", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, true).await.unwrap().map(|l| l.epoch),
        Some(2)
    );
}

async fn a_clean_release_hands_over_at_once(meta: Meta) {
    meta.create_topic(&topic("t", 1)).await.unwrap();
    meta.acquire("t", 0, "a", LONG, false).await.unwrap().map(|l| l.epoch);
    meta.release(&id(), &token("a", 1)).await.unwrap();
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, false).await.unwrap().map(|l| l.epoch),
        Some(2)
    );
}

async fn membership_and_producers(meta: Meta) {
    meta.heartbeat("a", "127.0.0.1:1").await.unwrap();
    meta.heartbeat("b", "127.0.0.1:2").await.unwrap();
    meta.heartbeat("a", "127.0.0.1:3").await.unwrap();
    let live = meta.live_agents(LONG).await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].address, "127.0.0.1:3");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(meta.live_agents(Duration::from_millis(10)).await.unwrap().is_empty());

    let (id, epoch) = meta.init_producer(Some("svc-1"), 1).await.unwrap();
    assert_eq!(epoch, 0);
    assert_eq!(
        meta.init_producer(Some("svc-1"), 2).await.unwrap(),
        (id, 1),
        "same name: same id, next epoch"
    );
    let (other, _) = meta.init_producer(None, 3).await.unwrap();
    assert_ne!(other, id);
    assert!(id > 0 && other > 0);
}

async fn the_database_clock_is_used(meta: Meta) {
    let db = meta.now().await.unwrap();
    let local = cairn_agent::partition::now_ms();
    assert!((db - local).abs() < 5_000, "db {db} local {local}");
}

async fn segment_commits_are_fenced_by_epoch_and_contiguous(meta: Meta) {
    use cairn_agent::{
        meta::SegmentRow,
        producers::{Appended, ProducerState},
    };
    meta.create_topic(&topic("t", 1)).await.unwrap();
    meta.acquire("t", 0, "a", SHORT, false).await.unwrap().map(|l| l.epoch);
    let seg = |base, next, epoch| SegmentRow {
        topic: "t".into(),
        partition: 0,
        base_offset: base,
        next_offset: next,
        epoch,
        object_key: format!("t/0/{base}-{next}-e{epoch}.seg"),
        size_bytes: 10,
        records: next - base,
        min_ts: base as i64,
        max_ts: next as i64 - 1,
        max_append_ms: 1_000 + next as i64,
        created_at: 0,
    };
    let state = |epoch| ProducerState {
        producer_id: 5,
        epoch,
        batches: vec![Appended {
            base_sequence: 0,
            count: 1,
            base_offset: 0,
            append_time_ms: 0,
        }],
    };
    assert!(meta.commit_segment(&seg(0, 10, 1), "a", &[state(0)]).await.unwrap());
    assert!(
        !meta.commit_segment(&seg(20, 30, 1), "a", &[]).await.unwrap(),
        "must start at the committed offset"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        meta.acquire("t", 0, "b", LONG, false).await.unwrap().map(|l| l.epoch),
        Some(2)
    );
    assert!(
        !meta.commit_segment(&seg(10, 20, 1), "a", &[state(9)]).await.unwrap(),
        "the old holder commits nothing"
    );
    let segments = meta.segments("t", 0).await.unwrap();
    assert_eq!(segments.len(), 1, "a refused commit writes no row");
    assert_eq!(meta.leases().await.unwrap()[0].committed_offset, 10);
    let states = meta.producer_states("t", 0).await.unwrap();
    assert_eq!(states, vec![state(0)], "nor its producer state");
    assert_eq!(
        meta.last_append_time("t", 0).await.unwrap(),
        1_010,
        "a new leader's clock starts here"
    );
    assert!(meta.commit_segment(&seg(10, 20, 2), "b", &[]).await.unwrap());
    assert_eq!(meta.segments("t", 0).await.unwrap().len(), 2);
    assert_eq!(meta.last_append_time("t", 0).await.unwrap(), 1_020);
    assert_eq!(meta.last_append_time("t", 1).await.unwrap(), 0, "no segments: no floor");
    let at = |ts| meta.segment_at_time("t", 0, ts);
    assert_eq!(at(5).await.unwrap().map(|s| s.base_offset), Some(0));
    assert_eq!(at(15).await.unwrap().map(|s| s.base_offset), Some(10));
    assert_eq!(at(20).await.unwrap(), None, "after the last record");
    let appended = |ms| meta.segment_at_append_time("t", 0, ms);
    assert_eq!(appended(1_010).await.unwrap().map(|s| s.base_offset), Some(0));
    assert_eq!(appended(1_011).await.unwrap().map(|s| s.base_offset), Some(10));
    assert_eq!(appended(1_021).await.unwrap(), None);
}

async fn on_sqlite(dir: &cairn_testkit::TempDir) -> Option<Meta> {
    Some(Meta::connect(&cairn_testkit::sqlite_url(dir.path()), 4).await.unwrap())
}

async fn on_postgres(_: &cairn_testkit::TempDir) -> Option<Meta> {
    Some(Meta::connect(&cairn_testkit::postgres_url().await?, 4).await.unwrap())
}

cairn_testkit::behaviour_suite! {
    backends { sqlite => on_sqlite, postgres => on_postgres }
    tests {
    topics_and_lease_rows,
    epoch_grows_only_when_the_holder_changes,
    a_dirty_partition_is_not_taken_over,
    unclean_takeover_when_enabled,
    a_clean_release_hands_over_at_once,
    membership_and_producers,
    the_database_clock_is_used,
    segment_commits_are_fenced_by_epoch_and_contiguous,
    }
}
