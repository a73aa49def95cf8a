//! Produce and fetch against a real agent process: offsets, idempotence,
//! long-poll, limits and bad input.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

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
    assert_eq!(
        value(r#"cairn_rpc_server_requests_total{service="cairn.agent.v1.AgentService",method="Produce",code="OK"}"#),
        3.0
    );
}
