//! ReadRecords: starts (earliest, latest, offset, timestamp through the
//! segments' time index), ends, follow, and refusals.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::cairn::{
    agent::v1 as pb,
    ingest::v1::{
        ReadRecordsRequest, ReadRecordsResponse, StartPosition, read_service_client::ReadServiceClient,
        start_position::Position,
    },
};
use common::*;
use tonic::Code;

async fn produce(addr: &str, partition: u32, values: &[&str], timestamp_ms: i64, ack: pb::AckMode) {
    agent(addr)
        .await
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition,
            records: values
                .iter()
                .map(|v| pb::Record {
                    value: v.as_bytes().to_vec(),
                    timestamp_ms,
                    ..Default::default()
                })
                .collect(),
            ack_mode: ack as i32,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn read(addr: &str, request: ReadRecordsRequest) -> Result<Vec<ReadRecordsResponse>, tonic::Status> {
    let mut stream = ReadServiceClient::new(channel(addr).await)
        .read_records(request)
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

fn values(messages: &[ReadRecordsResponse]) -> Vec<(u32, u64, String)> {
    let mut out: Vec<_> = messages
        .iter()
        .flat_map(|m| m.records.iter())
        .map(|r| (r.partition, r.offset, String::from_utf8(r.value.clone()).unwrap()))
        .collect();
    out.sort();
    out
}

fn start(position: Position) -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(position),
    })
}

#[tokio::test]
async fn reads_start_where_asked_end_where_asked_and_follow_new_records() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 2).await;
    wait_leader(&a.addr, "t", 0).await;
    wait_leader(&a.addr, "t", 1).await;
    // Committed segments with known record timestamps on partition 0, and a
    // durable tail above them.
    produce(&a.addr, 0, &["a0", "a1"], 1_000, pb::AckMode::Committed).await;
    produce(&a.addr, 0, &["b2", "b3"], 2_000, pb::AckMode::Committed).await;
    produce(&a.addr, 0, &["c4"], 3_000, pb::AckMode::Durable).await;
    produce(&a.addr, 1, &["p1-0"], 1_500, pb::AckMode::Durable).await;
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &[]).await;

    let all = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        values(&all),
        [
            (0, 0, "a0".into()),
            (0, 1, "a1".into()),
            (0, 2, "b2".into()),
            (0, 3, "b3".into()),
            (0, 4, "c4".into()),
            (1, 0, "p1-0".into())
        ]
    );
    let records: Vec<_> = all.iter().flat_map(|m| m.records.iter()).collect();
    assert!(records.iter().all(|r| r.append_time_ms > 0));
    let last_cursor = all.iter().rev().find_map(|m| m.cursor.get(&0)).unwrap();
    assert_eq!(*last_cursor, 5, "the cursor resumes after the last record");

    let by_time = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            partitions: vec![0],
            start: start(Position::TimestampMs(1_500)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        values(&by_time).first().map(|v| v.1),
        Some(2),
        "the first record at or after the timestamp"
    );
    let from_offset = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            partitions: vec![0],
            start: start(Position::Offset(3)),
            end_offset: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        values(&from_offset),
        [(0, 3, "b3".into())],
        "offset 3 up to the end offset"
    );
    let cursors = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            start_offsets: [(0, 4)].into(),
            start: start(Position::Latest(true)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        values(&cursors),
        [(0, 4, "c4".into())],
        "partition 1 from latest: nothing"
    );

    // Following: records appended after the call arrive.
    let mut stream = ReadServiceClient::new(channel(&ingest.addr).await)
        .read_records(ReadRecordsRequest {
            topic: "t".into(),
            partitions: vec![1],
            start: start(Position::Latest(true)),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&a.addr, 1, &["p1-1"], 0, pb::AckMode::Durable).await;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = stream.message().await.unwrap().unwrap();
            if let Some(r) = m.records.first() {
                return (r.offset, String::from_utf8(r.value.clone()).unwrap());
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, (1, "p1-1".into()));

    let unknown = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "nope".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let partition = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            partitions: vec![7],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(partition.code(), Code::InvalidArgument);
    let name = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "bad topic".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(name.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_read_ends_at_the_leaders_high_watermark_not_what_another_agent_last_heard() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let b = cluster.start("b", &[]).await;
    create_topic(&a.addr, "t", 4).await;
    let leaders = leaders_when(&a.addr, "t", |l| {
        l.iter().all(|l| !l.is_empty()) && l.contains(&a.addr) && l.contains(&b.addr)
    })
    .await;
    // The ingest knows only agent a; a partition that b leads.
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &[]).await;
    let p = leaders.iter().position(|l| *l == b.addr).unwrap() as u32;
    produce(&b.addr, p, &["x0", "x1", "x2"], 0, pb::AckMode::Durable).await;
    let got = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            partitions: vec![p],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        values(&got),
        [(p, 0, "x0".into()), (p, 1, "x1".into()), (p, 2, "x2".into())],
        "every durable record, read right after its write"
    );
    let latest = read(
        &ingest.addr,
        ReadRecordsRequest {
            topic: "t".into(),
            partitions: vec![p],
            start: start(Position::Latest(true)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        values(&latest).is_empty(),
        "latest is after the last durable record: {latest:?}"
    );
}

#[tokio::test]
async fn a_reader_behind_the_high_watermark_shows_as_lag_until_it_goes() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    // Twenty batches of ten (a fetch returns whole batches).
    for b in 0..20 {
        let values: Vec<String> = (0..10).map(|i| format!("{b:02}{i:02}{}", "v".repeat(96))).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        produce(&a.addr, 0, &refs, 0, pb::AckMode::Durable).await;
    }
    // Small reads, and a client that takes one message and stops reading:
    // the stream's reader stays behind.
    let ingest = cluster
        .start_ingest(
            "ingest",
            &[&a.addr],
            &[
                "--set",
                "reader.fetch_bytes=1KiB",
                "--set",
                "metrics.listen=127.0.0.1:0",
            ],
        )
        .await;
    let mut stream = ReadServiceClient::new(channel(&ingest.addr).await)
        .read_records(ReadRecordsRequest {
            topic: "t".into(),
            follow: true,
            max_records: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let lag = cairn_testkit::eventually(Duration::from_secs(10), "a lagging reader", || async {
        let scrape = ingest.scrape().await;
        let read = cairn_testkit::metric(&scrape, "cairn_ingest_reader_partitions_read")?;
        let lag = cairn_testkit::metric(&scrape, "cairn_ingest_reader_lag_records")?;
        (read == 1.0 && lag > 0.0).then_some(lag)
    })
    .await;
    assert!(lag < 200.0, "some records were read: {lag}");
    drop(stream);
    cairn_testkit::eventually(Duration::from_secs(10), "no reader once the stream is gone", || async {
        let scrape = ingest.scrape().await;
        let read = cairn_testkit::metric(&scrape, "cairn_ingest_reader_partitions_read")?;
        let lag = cairn_testkit::metric(&scrape, "cairn_ingest_reader_lag_records")?;
        (read == 0.0 && lag == 0.0).then_some(())
    })
    .await;
}
