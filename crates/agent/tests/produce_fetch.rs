//! Produce and fetch against a real agent process: offsets, idempotence,
//! long-poll, limits and bad input.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cairn_log::batch::{BatchHeader, Compression, ProducerInfo};
use cairn_proto::cairn::agent::v1 as pb;
use cairn_service::status;
use common::*;
use tonic::Code;

fn produce(topic: &str, partition: u32, values: &[String]) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        records: records(values),
        ..Default::default()
    }
}

#[tokio::test]
async fn offsets_are_dense_and_records_read_back() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "clicks", 2).await;
    wait_leader(&a.addr, "clicks", 1).await;
    let mut client = agent(&a.addr).await;
    let mut expected = Vec::new();
    for round in 0..5 {
        let values: Vec<String> = (0..3).map(|i| format!("r{round}-{i}")).collect();
        let ack = client
            .produce(produce("clicks", 1, &values))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.base_offset, round * 3);
        assert_eq!(ack.count, 3);
        assert!(!ack.duplicate);
        expected.extend(values);
    }
    let got = read_all(&a.addr, "clicks", 1).await;
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(values, expected);
    assert!(got.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    assert!(
        read_all(&a.addr, "clicks", 0).await.is_empty(),
        "partitions are separate logs"
    );
}

#[tokio::test]
async fn a_retried_idempotent_batch_gets_its_original_offsets() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let init = client
        .init_producer(pb::InitProducerRequest { name: "p1".into() })
        .await
        .unwrap()
        .into_inner();
    let batch = |seq: u64, v: &str| pb::ProduceRequest {
        producer_id: init.producer_id,
        producer_epoch: init.producer_epoch,
        base_sequence: seq,
        ..produce("t", 0, &[v.to_owned(), format!("{v}'")])
    };
    let first = client.produce(batch(0, "a")).await.unwrap().into_inner();
    let second = client.produce(batch(2, "b")).await.unwrap().into_inner();
    let retry = client.produce(batch(0, "a")).await.unwrap().into_inner();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, first.base_offset);
    assert_eq!(second.base_offset, 2);

    let gap = client.produce(batch(7, "c")).await.unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition);
    assert!(gap.message().contains("expected sequence 4"), "{}", gap.message());

    // A new instance of the same producer fences the old one.
    let newer = client
        .init_producer(pb::InitProducerRequest { name: "p1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newer.producer_id, init.producer_id);
    let fresh = pb::ProduceRequest {
        producer_id: newer.producer_id,
        producer_epoch: newer.producer_epoch,
        base_sequence: 0,
        ..produce("t", 0, &["n".into()])
    };
    client.produce(fresh).await.unwrap();
    let fenced = client.produce(batch(4, "old")).await.unwrap_err();
    assert_eq!(fenced.code(), Code::FailedPrecondition);
    assert!(fenced.message().contains("fenced"));
    assert_eq!(
        read_all(&a.addr, "t", 0).await.len(),
        5,
        "nothing appended twice or after fencing"
    );
}

/// A producer's pipelined requests race inside the agent, so a later batch
/// often arrives before the one it follows. It waits for its predecessors
/// (`agent.sequence_hold`) instead of being refused, and the log keeps the
/// producer's order. One whose predecessor never comes is refused once the
/// hold runs out, as out of order, and appends nothing.
#[tokio::test]
async fn batches_ahead_of_their_sequence_wait_for_their_predecessors() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &["--set", "agent.sequence_hold=5s"]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let init = client
        .init_producer(pb::InitProducerRequest { name: "racer".into() })
        .await
        .unwrap()
        .into_inner();
    let batch = move |seq: u64| pb::ProduceRequest {
        producer_id: init.producer_id,
        producer_epoch: init.producer_epoch,
        base_sequence: seq,
        ..produce("t", 0, &[format!("s{seq}"), format!("s{seq}'")])
    };
    // Sequences 6, 4 and 2 arrive first, each on its own connection; 0 last.
    let mut ahead = Vec::new();
    for seq in [6, 4, 2] {
        let mut c = agent(&a.addr).await;
        let request = batch(seq);
        ahead.push(tokio::spawn(async move { c.produce(request).await }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ahead.iter().all(|h| !h.is_finished()),
        "batches ahead of their sequence are waiting, not refused"
    );
    let first = client.produce(batch(0)).await.unwrap().into_inner();
    assert_eq!(first.base_offset, 0);
    for (handle, seq) in ahead.into_iter().zip([6u64, 4, 2]) {
        let ack = handle.await.unwrap().unwrap().into_inner();
        assert_eq!(ack.base_offset, seq, "appended in the producer's order");
        assert!(!ack.duplicate);
    }
    let values: Vec<String> = read_all(&a.addr, "t", 0)
        .await
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    let expected: Vec<String> = [0, 2, 4, 6]
        .iter()
        .flat_map(|s| [format!("s{s}"), format!("s{s}'")])
        .collect();
    assert_eq!(values, expected);
    let metrics = a.scrape().await;
    assert!(
        metrics.contains(r#"cairn_agent_sequence_held_total{topic="t",partition="0"} 3"#),
        "three batches were held:\n{metrics}"
    );

    // A batch whose predecessor never comes: refused when the hold ends.
    let started = Instant::now();
    let gap = client.produce(batch(12)).await.unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition);
    assert!(gap.message().contains("expected sequence 8"), "{}", gap.message());
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for the hold first"
    );
    assert_eq!(
        read_all(&a.addr, "t", 0).await.len(),
        8,
        "the refused batch appended nothing"
    );
    // A caller whose deadline is shorter than the hold hears the refusal
    // before it gives up, not a deadline error.
    let started = Instant::now();
    let mut hurried = tonic::Request::new(batch(12));
    hurried.set_timeout(Duration::from_secs(1));
    let gap = client.produce(hurried).await.unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition, "{gap:?}");
    assert!(gap.message().contains("expected sequence 8"), "{}", gap.message());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "held for half the caller's deadline at most: {:?}",
        started.elapsed()
    );
    // The producer resends in turn and the log goes on.
    assert_eq!(client.produce(batch(8)).await.unwrap().into_inner().base_offset, 8);
}

#[tokio::test]
async fn fetch_at_the_end_waits_for_new_records() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let addr = a.addr.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let page = agent(&addr)
            .await
            .fetch(pb::FetchRequest {
                frames: false,
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
                max_wait_ms: 5_000,
            })
            .await
            .unwrap()
            .into_inner();
        (page, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent(&a.addr)
        .await
        .produce(produce("t", 0, &["late".into()]))
        .await
        .unwrap();
    let (page, waited) = waiter.await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let past = agent(&a.addr)
        .await
        .fetch(pb::FetchRequest {
            frames: false,
            topic: "t".into(),
            partition: 0,
            offset: 99,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange);
}

#[tokio::test]
async fn bad_input_is_refused_precisely_and_appends_nothing() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &["--set", "limits.max_record_bytes=1000"]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    client.produce(produce("t", 0, &["ok".into()])).await.unwrap();

    let big = "x".repeat(2000);
    let cases: Vec<(pb::ProduceRequest, Code, &str)> = vec![
        (
            produce("t", 0, &["fine".into(), big.clone()]),
            Code::InvalidArgument,
            "records[1]",
        ),
        (produce("t", 0, &[]), Code::InvalidArgument, "records"),
        (produce("no/such", 0, &["x".into()]), Code::InvalidArgument, "topic"),
        (produce("", 0, &["x".into()]), Code::InvalidArgument, "topic"),
        (
            pb::ProduceRequest {
                ack_mode: 99,
                ..produce("t", 0, &["x".into()])
            },
            Code::InvalidArgument,
            "ack_mode",
        ),
    ];
    for (request, code, field) in cases {
        let error = client.produce(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{error:?}");
        assert_eq!(status::field_violations(&error)[0].0, field);
    }
    assert_eq!(
        client
            .produce(produce("nope", 0, &["x".into()]))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client.produce(produce("t", 5, &["x".into()])).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        read_all(&a.addr, "t", 0).await.len(),
        1,
        "no bad request appended anything"
    );

    let mut admin = topics(&a.addr).await;
    for (name, partitions, field) in [
        ("..", 1, "name"),
        ("ok", 0, "config.partitions"),
        ("ok", 100_000, "config.partitions"),
    ] {
        let error = admin
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                config: Some(pb::TopicConfig {
                    partitions,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(status::field_violations(&error)[0].0, field);
    }
    let dup = admin
        .create_topic(pb::CreateTopicRequest {
            name: "t".into(),
            config: Some(pb::TopicConfig {
                partitions: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert_eq!(
        admin
            .list_topics(pb::ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner()
            .topics
            .len(),
        1
    );
}

/// One record as a reader sees it, whichever form wrote it and however it was read.
type Seen = (u64, Option<Vec<u8>>, Vec<u8>, i64, Vec<(String, Vec<u8>)>, i64);

fn seen_from_records(records: Vec<pb::StoredRecord>) -> Vec<Seen> {
    records
        .into_iter()
        .map(|r| {
            let headers = r.headers.into_iter().map(|h| (h.key, h.value)).collect();
            (r.offset, r.key, r.value, r.timestamp_ms, headers, r.append_time_ms)
        })
        .collect()
}

/// The whole partition read with Fetch `frames`, decoded as a client would.
async fn read_all_frames(addr: &str, topic: &str, partition: u32) -> Vec<Seen> {
    let mut client = agent(addr).await;
    let mut out: Vec<Seen> = Vec::new();
    loop {
        let page = client
            .fetch(pb::FetchRequest {
                topic: topic.into(),
                partition,
                offset: out.len() as u64,
                max_bytes: 300,
                frames: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.records.is_empty(), "from the WAL the agent answers with frames");
        if page.frames.is_empty() {
            assert_eq!(page.high_watermark, out.len() as u64);
            return out;
        }
        let stored = cairn_log::batch::stored_from_frames(&page.frames, out.len() as u64).unwrap();
        out.extend(stored.into_iter().map(|s| {
            let r = s.record;
            (s.offset, r.key, r.value, r.timestamp_ms, r.headers, s.append_time_ms)
        }));
    }
}

fn frame_of(records: &[pb::Record], producer: ProducerInfo, compression: Compression) -> Vec<u8> {
    cairn_agent::convert::records_frame(records, producer, compression)
}

/// Three records of every shape: keyed or not, headers, own timestamp or none.
fn varied(tag: &str) -> Vec<pb::Record> {
    vec![
        pb::Record {
            key: Some(format!("k-{tag}").into_bytes()),
            value: format!("{tag}: {}", "compressible ".repeat(20)).into_bytes(),
            timestamp_ms: 1_700_000_000_000,
            headers: vec![pb::Header {
                key: "h".into(),
                value: tag.as_bytes().to_vec(),
            }],
        },
        pb::Record {
            key: None,
            value: format!("{tag}-2").into_bytes(),
            timestamp_ms: 0,
            headers: vec![],
        },
        pb::Record {
            key: Some(vec![]),
            value: vec![],
            timestamp_ms: -7,
            headers: vec![
                pb::Header {
                    key: String::new(),
                    value: vec![],
                },
                pb::Header {
                    key: "ü".into(),
                    value: vec![0, 1, 2],
                },
            ],
        },
    ]
}

#[tokio::test]
async fn records_and_frame_clients_share_a_partition_exactly_once_in_order() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "mixed", 1).await;
    wait_leader(&a.addr, "mixed", 0).await;
    let mut client = agent(&a.addr).await;
    let identity = |name: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .init_producer(pb::InitProducerRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let old = identity("records-client").await;
    let new = identity("frame-client").await;
    let mut expected: Vec<pb::Record> = Vec::new();
    let codecs = [Compression::None, Compression::Lz4, Compression::Zstd];
    for round in 0..12u64 {
        let records = varied(&format!("old{round}"));
        let ack = client
            .produce(pb::ProduceRequest {
                topic: "mixed".into(),
                records: records.clone(),
                producer_id: old.producer_id,
                producer_epoch: old.producer_epoch,
                base_sequence: round * 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.base_offset, expected.len() as u64);
        expected.extend(records);

        let records = varied(&format!("new{round}"));
        let producer = ProducerInfo {
            producer_id: new.producer_id,
            epoch: new.producer_epoch,
            base_sequence: round * 3,
        };
        let request = pb::ProduceRequest {
            topic: "mixed".into(),
            frame: frame_of(&records, producer, codecs[round as usize % 3]).into(),
            ..Default::default()
        };
        let ack = client.produce(request.clone()).await.unwrap().into_inner();
        assert_eq!(
            (ack.base_offset, ack.count, ack.duplicate),
            (expected.len() as u64, 3, false)
        );
        // A retry of the same frame is a duplicate with the original offsets.
        let again = client.produce(request).await.unwrap().into_inner();
        assert!(again.duplicate);
        assert_eq!(again.base_offset, ack.base_offset);
        expected.extend(records);

        // A non-idempotent frame client too.
        let records = varied(&format!("plain{round}"));
        client
            .produce(pb::ProduceRequest {
                topic: "mixed".into(),
                frame: frame_of(&records, ProducerInfo::default(), codecs[(round as usize + 1) % 3]).into(),
                ..Default::default()
            })
            .await
            .unwrap();
        expected.extend(records);
    }

    let by_records = seen_from_records(read_all(&a.addr, "mixed", 0).await);
    assert_eq!(
        by_records.len(),
        expected.len(),
        "every record once, duplicates not appended"
    );
    for (i, (seen, want)) in by_records.iter().zip(&expected).enumerate() {
        let (offset, key, value, ts, headers, append) = seen;
        assert_eq!(*offset, i as u64, "dense and in order");
        assert_eq!((key, value), (&want.key, &want.value), "record {i}");
        let want_headers: Vec<(String, Vec<u8>)> =
            want.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
        assert_eq!(headers, &want_headers, "record {i}");
        let want_ts = if want.timestamp_ms == 0 {
            *append
        } else {
            want.timestamp_ms
        };
        assert_eq!(*ts, want_ts, "record {i}: a timestamp of 0 reads as the append time");
    }
    assert!(
        by_records.windows(2).all(|w| w[0].5 <= w[1].5),
        "append times never go back"
    );
    let by_frames = read_all_frames(&a.addr, "mixed", 0).await;
    assert_eq!(
        by_frames, by_records,
        "both read forms give the same records, field for field"
    );
}

#[tokio::test]
async fn bad_frames_are_refused_precisely_and_append_nothing() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &["--set", "limits.max_record_bytes=1000"]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut client = agent(&a.addr).await;
    let good = frame_of(&varied("x"), ProducerInfo::default(), Compression::Lz4);
    client
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            frame: good.clone().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let with = |frame: Vec<u8>| pb::ProduceRequest {
        topic: "t".into(),
        frame: frame.into(),
        ..Default::default()
    };
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut v1 = Vec::new();
    cairn_log::batch::encode_v1(
        &BatchHeader {
            base_offset: 0,
            count: 1,
            producer: ProducerInfo::default(),
            append_time_ms: 0,
        },
        &[cairn_log::batch::Record::default()],
        &mut v1,
    );
    let big = frame_of(
        &[pb::Record {
            value: vec![1; 2000],
            ..Default::default()
        }],
        ProducerInfo::default(),
        Compression::Zstd,
    );
    let cases: Vec<(pb::ProduceRequest, &str, &str)> = vec![
        (with(flipped), "frame", "checksum"),
        (with(good[..good.len() - 3].to_vec()), "frame", "truncated"),
        (with(v1), "frame", "version 1"),
        (with(big), "frame", "larger than the 1000 byte limit"),
        (with(b"not a frame at all".to_vec()), "frame", "magic"),
        (
            pb::ProduceRequest {
                records: records(&["x".into()]),
                ..with(good.clone())
            },
            "frame",
            "not both",
        ),
        (
            pb::ProduceRequest {
                producer_id: 99,
                ..with(good)
            },
            "producer_id",
            "differs",
        ),
    ];
    for (request, field, words) in cases {
        let error = client.produce(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        let violations = status::field_violations(&error);
        assert_eq!(violations[0].0, field, "{error:?}");
        assert!(
            violations[0].1.contains(words),
            "{:?} does not say {words:?}",
            violations[0].1
        );
    }
    assert_eq!(
        read_all(&a.addr, "t", 0).await.len(),
        3,
        "no bad frame appended anything"
    );
}

#[tokio::test]
async fn the_agent_exposes_its_figures_on_the_metrics_listener() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "m", 1).await;
    wait_leader(&a.addr, "m", 0).await;
    for i in 0..3 {
        let values: Vec<String> = (0..10).map(|j| format!("{i}-{j}")).collect();
        agent(&a.addr)
            .await
            .produce(pb::ProduceRequest {
                topic: "m".into(),
                partition: 0,
                records: records(&values),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let text = a.scrape().await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let value =
        |series: &str| cairn_testkit::metric(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
    assert_eq!(value(r#"cairn_agent_wal_records_total{topic="m",partition="0"}"#), 30.0);
    assert_eq!(value(r#"cairn_agent_wal_appends_total{topic="m",partition="0"}"#), 3.0);
    assert_eq!(value(r#"cairn_agent_high_watermark{topic="m",partition="0"}"#), 30.0);
    assert_eq!(
        value(r#"cairn_agent_upload_lag_records{topic="m",partition="0"}"#),
        30.0,
        "nothing rolled yet"
    );
    assert_eq!(value("cairn_agent_partitions_led"), 1.0);
    assert_eq!(value("cairn_agent_partitions_unrecoverable"), 0.0);
    assert!(value("cairn_agent_leases_acquired_total") >= 1.0);
    assert!(value("cairn_agent_wal_fsync_seconds_count") >= 3.0);
    // Every produce's queue wait is recorded; a write per round.
    assert_eq!(value("cairn_agent_wal_queue_seconds_count"), 3.0);
    assert!(value("cairn_agent_wal_write_seconds_count") >= 3.0);
    assert!(value("cairn_agent_wal_write_seconds_sum") > 0.0);
    // The upkeep after each round that wrote is timed too.
    assert_eq!(
        value("cairn_agent_wal_tidy_seconds_count"),
        value("cairn_agent_wal_fsync_seconds_count")
    );
    assert_eq!(
        value(r#"cairn_rpc_server_requests_total{service="cairn.agent.v1.AgentService",method="Produce",code="OK"}"#),
        3.0
    );
}
