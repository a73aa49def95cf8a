//! Segments in object storage: committed acks, what lands in the store, and
//! an object store that is down for a while.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_agent::{meta::Meta, segment};
use cairn_object_store::{LocalStore, ObjectStore};
use cairn_proto::cairn::agent::v1 as pb;
use common::*;
use tonic::Code;

fn produce(values: &[String], ack: pb::AckMode) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        records: records(values),
        ack_mode: ack as i32,
        ..Default::default()
    }
}

/// Every record in the partition's committed segments, read from the store alone.
async fn records_in_store(store: &dyn ObjectStore) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for object in store.list("t/0/").await.unwrap() {
        let bytes = store.get(&object.key).await.unwrap();
        let footer = segment::read_footer(&bytes).unwrap();
        let range = segment::index_range(&footer, bytes.len() as u64).unwrap();
        let index = segment::read_index(&footer, &bytes[range.start as usize..range.end as usize]).unwrap();
        for entry in &index {
            let block = &bytes[entry.range().start as usize..entry.range().end as usize];
            out.extend(
                segment::read_block(entry, block)
                    .unwrap()
                    .into_iter()
                    .map(|s| (s.offset, s.record.value)),
            );
        }
    }
    out
}

#[tokio::test]
async fn a_committed_ack_means_the_records_are_in_a_committed_segment() {
    let cluster = Cluster::new();
    let (objects, url) = cluster.objects();
    let a = cluster.start("a", &["--set", &url]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let mut all = Vec::new();
    for i in 0..3 {
        let values = vec![format!("durable-{i}")];
        client.produce(produce(&values, pb::AckMode::Durable)).await.unwrap();
        all.extend(values);
    }
    let values = vec!["committed-0".to_owned(), "committed-1".to_owned()];
    let ack = client
        .produce(produce(&values, pb::AckMode::Committed))
        .await
        .unwrap()
        .into_inner();
    all.extend(values);
    assert_eq!(ack.base_offset, 3);

    let store = LocalStore::new(&objects).unwrap();
    let stored = records_in_store(&store).await;
    let expected: Vec<(u64, Vec<u8>)> = all
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.clone().into_bytes()))
        .collect();
    assert_eq!(
        stored, expected,
        "the segment holds every record up to the acknowledged one, in order"
    );

    let meta = Meta::connect(&cluster.meta_url, 1).await.unwrap();
    let segments = meta.segments("t", 0).await.unwrap();
    assert_eq!(segments.len(), 1);
    assert_eq!((segments[0].base_offset, segments[0].next_offset), (0, 5));
    assert!(
        segments[0]
            .object_key
            .ends_with(&format!("-e{}.seg", segments[0].epoch)),
        "the key carries the epoch"
    );
    assert_eq!(meta.leases().await.unwrap()[0].committed_offset, 5);

    // Another committed ack continues from there: segments are contiguous.
    client
        .produce(produce(&["later".into()], pb::AckMode::Committed))
        .await
        .unwrap();
    let segments = meta.segments("t", 0).await.unwrap();
    assert_eq!((segments[1].base_offset, segments[1].next_offset), (5, 6));

    // Readers list segments through any agent and read them from the store.
    let list = |from| {
        let mut client = client.clone();
        async move {
            client
                .list_segments(pb::ListSegmentsRequest {
                    topic: "t".into(),
                    partition: 0,
                    from,
                    limit: 0,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    use pb::list_segments_request::From;
    let listed = list(None).await.unwrap();
    assert_eq!(listed.committed_offset, 6);
    assert_eq!(
        listed
            .segments
            .iter()
            .map(|s| (s.base_offset, s.next_offset))
            .collect::<Vec<_>>(),
        vec![(0, 5), (5, 6)]
    );
    assert_eq!(listed.segments[0].object_key, segments[0].object_key);
    let last_append = listed.segments[1].max_append_time_ms;
    assert!(
        last_append >= listed.segments[0].max_append_time_ms && last_append > 0,
        "segments carry their append times"
    );
    let from_4 = list(Some(From::Offset(4))).await.unwrap();
    assert_eq!(from_4.segments[0].base_offset, 0, "from the segment holding offset 4");
    let from_5 = list(Some(From::Offset(5))).await.unwrap();
    assert_eq!(from_5.segments.len(), 1);
    let later = list(Some(From::TimestampMs(listed.segments[1].max_timestamp_ms + 1)))
        .await
        .unwrap();
    assert!(later.segments.is_empty(), "no record at or after that time");
    let first = list(Some(From::TimestampMs(0))).await.unwrap();
    assert_eq!(first.segments.len(), 2);
    let by_append = list(Some(From::AppendTimeMs(listed.segments[0].max_append_time_ms + 1)))
        .await
        .unwrap();
    assert_eq!(by_append.segments.len(), 1, "only the segment appended after that time");
    assert_eq!(by_append.segments[0].base_offset, 5);
    let unknown = client
        .list_segments(pb::ListSegmentsRequest {
            topic: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Append times never go back along the partition, and the floor the
    // leader reports covers everything appended.
    let fetched = client
        .fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let times: Vec<i64> = fetched.records.iter().map(|r| r.append_time_ms).collect();
    assert_eq!(times.len(), 6);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(fetched.time_floor_ms >= *times.last().unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let idle = client
        .fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 6,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        idle.time_floor_ms > fetched.time_floor_ms,
        "an idle partition's floor advances with the clock"
    );
}

#[tokio::test]
async fn durable_acks_continue_while_the_object_store_is_down_and_segments_follow_when_it_returns() {
    let Some(mut s3) = cairn_testkit::S3Server::start().await else {
        return;
    };
    // Down from the start: the agent's first uploads fail.
    s3.stop();
    let cluster = Cluster::new();
    let mut args = s3_store_args("cairn-down-test", &s3.endpoint);
    for set in [
        "object_store.s3.request_timeout=1s",
        "object_store.upload_backoff.max=500ms",
        "limits.max_commit_wait=1500ms",
    ] {
        args.extend(["--set".to_owned(), set.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = cluster.start("a", &args).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    for i in 0..20 {
        client
            .produce(produce(&[format!("d{i}")], pb::AckMode::Durable))
            .await
            .unwrap();
    }
    let refused = client
        .produce(produce(&["c0".into()], pb::AckMode::Committed))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unavailable,
        "committed acks fail retryably while the store is down"
    );
    assert!(cairn_service::status::retry_after(&refused).is_some());
    client
        .produce(produce(&["d20".into()], pb::AckMode::Durable))
        .await
        .unwrap();

    // The store comes back.
    s3.restart().await;
    let store = s3.create_bucket("cairn-down-test").await;
    let ack = client.produce(produce(&["c1".into()], pb::AckMode::Committed)).await;
    let ack = match ack {
        Ok(ack) => ack,
        // The uploader may still be backing off; a retry is what a client does.
        Err(_) => client
            .produce(produce(&["c1b".into()], pb::AckMode::Committed))
            .await
            .unwrap(),
    };
    let end = ack.into_inner().base_offset + 1;
    let stored = records_in_store(&store).await;
    assert_eq!(
        stored.len() as u64,
        end,
        "every durable record, including those acked during the outage, is in segments"
    );
    assert!(stored.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
}

#[tokio::test]
async fn committed_records_survive_losing_the_agents_disk() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let args = ["--set", &url, "--set", "agent.id=agent-a"];
    let mut a = cluster.start("a", &args).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let mut committed = Vec::new();
    for i in 0..5 {
        let values: Vec<String> = (0..10).map(|j| format!("r{i}-{j}")).collect();
        client.produce(produce(&values, pb::AckMode::Committed)).await.unwrap();
        committed.extend(values);
    }
    a.kill();
    std::fs::remove_dir_all(cluster.data_dir("a")).unwrap();

    let a = cluster.start("a", &args).await;
    wait_leader(&a.addr, "t", 0).await;
    let log = read_all(&a.addr, "t", 0).await;
    let values: Vec<String> = log
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(
        values, committed,
        "every committed record, read back from segments alone"
    );
    assert!(log.iter().enumerate().all(|(i, r)| r.offset == i as u64));

    // Writing continues after the committed offset, never reusing one.
    let ack = agent(&a.addr)
        .await
        .produce(produce(&["after".into()], pb::AckMode::Durable))
        .await
        .unwrap();
    assert_eq!(ack.into_inner().base_offset, committed.len() as u64);
    let log = read_all(&a.addr, "t", 0).await;
    assert_eq!(log.len(), committed.len() + 1);
    assert_eq!(log.last().unwrap().value, b"after");
}

#[tokio::test]
async fn the_wal_is_truncated_once_segments_cover_it() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let args = ["--set", &url, "--set", "agent.wal_file_bytes=4096"];
    let mut a = cluster.start("a", &args).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let mut all = Vec::new();
    for i in 0..40 {
        let values: Vec<String> = (0..10).map(|j| format!("{i:03}-{j}-{}", "x".repeat(40))).collect();
        client.produce(produce(&values, pb::AckMode::Committed)).await.unwrap();
        all.extend(values);
    }
    let wal_dir = cluster.data_dir("a").join("wal/t/0");
    // Committed files are recycled as spares (two at most) or deleted on a
    // helper thread, just after the ack.
    let named = |suffix: &'static str| {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(suffix))
            .count()
    };
    cairn_testkit::eventually(Duration::from_secs(5), "committed WAL files gone", || {
        let files = named(".wal");
        async move { (files <= 2).then_some(()) }
    })
    .await;
    assert!(named(".prealloc") <= 2, "at most two spares");

    let check = |log: Vec<pb::StoredRecord>| {
        let values: Vec<String> = log
            .iter()
            .map(|r| String::from_utf8(r.value.clone()).unwrap())
            .collect();
        assert_eq!(values, all, "segments and WAL together hold every record");
    };
    check(read_all(&a.addr, "t", 0).await);
    a.kill();
    let a = cluster.start("a", &args).await;
    wait_leader(&a.addr, "t", 0).await;
    check(read_all(&a.addr, "t", 0).await);
}

/// Spares are disk a partition holds only while it writes: once it has not
/// appended for `agent.wal_spare_idle`, they are deleted, and writing again
/// works as before.
#[tokio::test]
async fn an_idle_partition_gives_back_its_wal_spares() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let args = [
        "--set",
        &url,
        "--set",
        "agent.wal_file_bytes=4096",
        "--set",
        "agent.wal_spare_idle=1s",
    ];
    let a = cluster.start("a", &args).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let wal_dir = cluster.data_dir("a").join("wal/t/0");
    let spares = || {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".prealloc"))
            .count()
    };
    // Write until the partition holds a spare, then stop.
    let mut all = Vec::new();
    let mut i = 0;
    while i < 10 || spares() == 0 {
        assert!(i < 500, "a writing partition keeps spares");
        let values: Vec<String> = (0..10).map(|j| format!("{i:03}-{j}-{}", "x".repeat(40))).collect();
        client.produce(produce(&values, pb::AckMode::Committed)).await.unwrap();
        all.extend(values);
        i += 1;
    }
    cairn_testkit::eventually(Duration::from_secs(10), "idle spares deleted", || {
        let left = spares();
        async move { (left == 0).then_some(()) }
    })
    .await;
    // Writing again: files rotate, spares come back, nothing is lost.
    for i in i..i + 20 {
        let values: Vec<String> = (0..10).map(|j| format!("{i:03}-{j}-{}", "x".repeat(40))).collect();
        client.produce(produce(&values, pb::AckMode::Committed)).await.unwrap();
        all.extend(values);
    }
    let values: Vec<String> = read_all(&a.addr, "t", 0)
        .await
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(values, all);
}

#[tokio::test]
async fn sigterm_hands_partitions_off_clean_and_the_next_agent_continues() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let mut a = cluster.start("a", &["--set", &url]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let init = client
        .init_producer(pb::InitProducerRequest { name: "handoff".into() })
        .await
        .unwrap()
        .into_inner();
    let batch = |seq: u64, v: &str| pb::ProduceRequest {
        producer_id: init.producer_id,
        producer_epoch: init.producer_epoch,
        base_sequence: seq,
        ..produce(&[v.to_owned()], pb::AckMode::Durable)
    };
    for i in 0..10 {
        client.produce(batch(i, &format!("v{i}"))).await.unwrap();
    }
    // Durable, not committed: without a handoff no other agent could take it.
    assert_eq!(a.terminate(Duration::from_secs(30)).await, Some(0), "{}", a.log_text());
    assert!(a.log_text().contains("handed off clean"), "{}", a.log_text());
    let meta = Meta::connect(&cluster.meta_url, 1).await.unwrap();
    let live = meta.live_agents(Duration::from_secs(60)).await.unwrap();
    assert!(
        live.iter().all(|agent| agent.address != a.addr),
        "a stopped agent leaves the membership at once"
    );

    let b = cluster.start("b", &["--set", &url]).await;
    wait_leader(&b.addr, "t", 0).await;
    let log = read_all(&b.addr, "t", 0).await;
    let values: Vec<String> = log
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(values, (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>());

    // The producer's sequence carries over: the next batch is accepted, a retry of
    // the last one is recognised with its original offset.
    let mut to_b = agent(&b.addr).await;
    assert_eq!(
        to_b.produce(batch(10, "v10")).await.unwrap().into_inner().base_offset,
        10
    );
    let retry = to_b.produce(batch(9, "v9")).await.unwrap().into_inner();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, 9);
    assert_eq!(read_all(&b.addr, "t", 0).await.len(), 11);
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_and_orphaned_objects() {
    let cluster = Cluster::new();
    let (objects, url) = cluster.objects();
    let a = cluster
        .start("a", &["--set", &url, "--set", "agent.retention_interval=200ms"])
        .await;
    create_topic_with(
        &a.addr,
        "t",
        pb::TopicConfig {
            partitions: 1,
            retention_bytes: 6_000,
            ..Default::default()
        },
    )
    .await;
    wait_leader(&a.addr, "t", 0).await;
    let store = LocalStore::new(&objects).unwrap();
    // An object no metadata row refers to, as a fenced holder (epoch 0) would leave.
    let orphan = "t/0/00000000000000000900-00000000000000000901-e0.seg";
    store
        .put_if_absent(orphan, bytes::Bytes::from_static(b"stale"))
        .await
        .unwrap();

    let mut client = agent(&a.addr).await;
    let mut seed = 12345u64;
    for i in 0..10 {
        // Incompressible values, so each segment is about 2 KB.
        let value: String = (0..2000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect();
        client
            .produce(produce(&[format!("{i}:{value}")], pb::AckMode::Committed))
            .await
            .unwrap();
    }
    let meta = Meta::connect(&cluster.meta_url, 1).await.unwrap();
    let mut segments = meta.segments("t", 0).await.unwrap();
    for _ in 0..50 {
        if segments.iter().map(|s| s.size_bytes).sum::<u64>() <= 6_000 && store.get(orphan).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        segments = meta.segments("t", 0).await.unwrap();
    }
    let kept: u64 = segments.iter().map(|s| s.size_bytes).sum();
    assert!(
        kept <= 6_000 && !segments.is_empty(),
        "kept {kept} bytes in {} segments",
        segments.len()
    );
    assert_eq!(segments.last().unwrap().next_offset, 10, "the newest segments stay");
    let start = segments[0].base_offset;
    assert!(start > 0, "old segments went");

    // Objects: exactly the rows' keys remain, and the orphan is gone.
    let mut listed: Vec<String> = store.list("t/0/").await.unwrap().into_iter().map(|o| o.key).collect();
    listed.sort();
    let mut keys: Vec<String> = segments.iter().map(|s| s.object_key.clone()).collect();
    keys.sort();
    assert_eq!(listed, keys);

    // Reads: below the log start is out of range; from it, records are there.
    let below = client
        .fetch(pb::FetchRequest {
            frames: false,
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange);
    let page = client
        .fetch(pb::FetchRequest {
            frames: false,
            topic: "t".into(),
            partition: 0,
            offset: start,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records[0].offset, start);
    assert_eq!(page.log_start_offset, start);
}

#[tokio::test]
async fn retention_by_time_drops_segments_whose_records_are_all_too_old() {
    let cluster = Cluster::new();
    let (objects, url) = cluster.objects();
    let a = cluster
        .start("a", &["--set", &url, "--set", "agent.retention_interval=200ms"])
        .await;
    create_topic_with(
        &a.addr,
        "t",
        pb::TopicConfig {
            partitions: 1,
            retention_ms: 60_000,
            ..Default::default()
        },
    )
    .await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let now = cairn_agent::partition::now_ms();
    // Two old records (by their own timestamps), then a fresh one.
    for ts in [now - 3_600_000, now - 3_500_000, now] {
        let record = pb::Record {
            value: ts.to_string().into_bytes(),
            timestamp_ms: ts,
            ..Default::default()
        };
        let request = pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            records: vec![record],
            ack_mode: pb::AckMode::Committed as i32,
            ..Default::default()
        };
        client.produce(request).await.unwrap();
    }
    let meta = Meta::connect(&cluster.meta_url, 1).await.unwrap();
    let mut segments = meta.segments("t", 0).await.unwrap();
    for _ in 0..50 {
        if segments.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        segments = meta.segments("t", 0).await.unwrap();
    }
    assert_eq!(segments.len(), 1, "only the segment with a recent record stays");
    assert_eq!((segments[0].base_offset, segments[0].next_offset), (2, 3));
    let store = LocalStore::new(&objects).unwrap();
    assert_eq!(store.list("t/0/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_partition_handed_back_and_forth_continues_on_each_agent() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let mut expected: Vec<String> = Vec::new();
    // a leads, hands off; b leads, hands off; a leads again with its old WAL on disk.
    for (round, name) in ["a", "b", "a"].into_iter().enumerate() {
        let mut agent_process = cluster
            .start(name, &["--set", &url, "--set", &format!("agent.id=agent-{name}")])
            .await;
        if round == 0 {
            create_topic(&agent_process.addr, "t", 1).await;
        }
        wait_leader(&agent_process.addr, "t", 0).await;
        let values: Vec<String> = (round * 5..round * 5 + 5).map(|i| format!("v{i}")).collect();
        let mut client = agent(&agent_process.addr).await;
        for v in &values {
            client
                .produce(produce(std::slice::from_ref(v), pb::AckMode::Durable))
                .await
                .unwrap();
        }
        expected.extend(values);
        let log = read_all(&agent_process.addr, "t", 0).await;
        let values: Vec<String> = log
            .iter()
            .map(|r| String::from_utf8(r.value.clone()).unwrap())
            .collect();
        assert_eq!(values, expected, "round {round} on {name}");
        assert_eq!(agent_process.terminate(Duration::from_secs(30)).await, Some(0));
    }
}

#[tokio::test]
async fn committed_acks_arriving_within_a_window_share_one_segment() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let a = cluster
        .start("a", &["--set", &url, "--set", "agent.commit_linger=50ms"])
        .await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let addr = a.addr.clone();
            tokio::spawn(async move {
                let mut client = agent(&addr).await;
                let mut acked = 0u64;
                while std::time::Instant::now() < until {
                    client
                        .produce(produce(&[format!("w{w}-{acked}")], pb::AckMode::Committed))
                        .await
                        .unwrap();
                    acked += 1;
                }
                acked
            })
        })
        .collect();
    let mut requests = 0;
    for w in writers {
        requests += w.await.unwrap();
    }
    let meta = Meta::connect(&cluster.meta_url, 1).await.unwrap();
    let segments = meta.segments("t", 0).await.unwrap();
    let log = read_all(&a.addr, "t", 0).await;
    assert_eq!(log.len() as u64, requests, "every committed ack is in the log");
    assert_eq!(segments.last().unwrap().next_offset, requests, "and in segments");
    // One segment per 50 ms window at most, whatever the request rate.
    assert!(
        segments.len() <= 2_000 / 50 + 4,
        "{} segments for {requests} committed acks in 2 s",
        segments.len()
    );
    assert!(
        requests >= 3 * segments.len() as u64,
        "{requests} requests made {} segments: they did not share",
        segments.len()
    );
}

#[tokio::test]
async fn a_fetch_below_the_wal_fills_max_bytes_across_segments() {
    let cluster = Cluster::new();
    let (_, url) = cluster.objects();
    let args = ["--set", &url, "--set", "agent.commit_linger=0"];
    let mut a = cluster.start("a", &args).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    for i in 0..30 {
        client
            .produce(produce(&[format!("v{i}")], pb::AckMode::Committed))
            .await
            .unwrap();
    }
    // Handed off clean: the WAL is deleted and everything is read from segments.
    assert_eq!(a.terminate(Duration::from_secs(30)).await, Some(0));
    let a = cluster.start("a", &args).await;
    wait_leader(&a.addr, "t", 0).await;
    let meta = Meta::connect(&cluster.meta_url, 1).await.unwrap();
    assert_eq!(
        meta.segments("t", 0).await.unwrap().len(),
        30,
        "one segment per committed ack"
    );
    let page = agent(&a.addr)
        .await
        .fetch(pb::FetchRequest {
            frames: false,
            topic: "t".into(),
            partition: 0,
            offset: 3,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<String> = page
        .records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(
        values,
        (3..30).map(|i| format!("v{i}")).collect::<Vec<_>>(),
        "one fetch, 27 segments"
    );
    let small = agent(&a.addr)
        .await
        .fetch(pb::FetchRequest {
            frames: false,
            topic: "t".into(),
            partition: 0,
            offset: 3,
            max_bytes: 1,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        small.records.len(),
        1,
        "at least one record, and no more than max_bytes allows"
    );
}
