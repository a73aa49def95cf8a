//! The producer against an agent that checks keys through a real cairn-auth:
//! a key with the topic's produce scope delivers; a key without it fails with
//! PERMISSION_DENIED and writes nothing; a bad key fails fast.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_producer::{Fate, ProduceError, Producer, ProducerRecord};
use cairn_proto::cairn::agent::v1::{self as pb, topic_service_client::TopicServiceClient};
use cairn_testkit::cluster::{Cluster, channel, create_key, start_auth, with_key};
use tonic::Code;

fn assert_rejected(err: &ProduceError, expected: Code) {
    assert!(
        matches!(err, ProduceError::Rejected { code, .. } if *code == expected),
        "expected {expected:?}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_needs_the_topics_produce_scope() {
    let cluster = Cluster::new();
    let (auth, admin) = start_auth(&cluster).await;
    let auth_address = format!("auth.address={}", auth.addr);
    let a = cluster
        .start("a", &["--set", "auth.enabled=true", "--set", &auth_address])
        .await;
    let create = pb::CreateTopicRequest {
        name: "orders".into(),
        config: Some(pb::TopicConfig {
            partitions: 1,
            ..Default::default()
        }),
    };
    let admin_key = create_key(&auth.addr, &admin, &["topics:admin"]).await;
    TopicServiceClient::new(channel(&a.addr).await)
        .create_topic(with_key(create, &admin_key))
        .await
        .unwrap();

    let allowed = create_key(&auth.addr, &admin, &["topics:produce:orders"]).await;
    let producer = |key: &str| {
        Producer::builder()
            .bootstrap([a.addr.clone()])
            .api_key(key)
            .delivery_timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    // The agent may still be opening the partition: the producer retries that.
    let m = producer(&allowed)
        .send_and_wait(ProducerRecord::new("orders", "ok"))
        .await
        .unwrap();
    assert_eq!(m.offset, Some(0));

    let other = create_key(&auth.addr, &admin, &["topics:produce:payments"]).await;
    let err = producer(&other)
        .send_and_wait(ProducerRecord::new("orders", "denied"))
        .await
        .unwrap_err();
    assert_rejected(&err, Code::PermissionDenied);
    assert_eq!(err.fate(), Fate::NotWritten);

    let started = std::time::Instant::now();
    let err = producer("cairn_not_a_real_key")
        .send(ProducerRecord::new("orders", "nope"))
        .await
        .unwrap_err();
    assert_rejected(&err, Code::Unauthenticated);
    assert!(started.elapsed() < Duration::from_secs(10), "a bad key is not retried");

    let consume = create_key(&auth.addr, &admin, &["topics:consume:orders"]).await;
    let fetch = pb::FetchRequest {
        frames: false,
        topic: "orders".into(),
        partition: 0,
        offset: 0,
        max_bytes: 0,
        max_wait_ms: 0,
    };
    let log = cairn_proto::cairn::agent::v1::agent_service_client::AgentServiceClient::new(channel(&a.addr).await)
        .fetch(with_key(fetch, &consume))
        .await
        .unwrap()
        .into_inner()
        .records;
    let values: Vec<Vec<u8>> = log.into_iter().map(|r| r.value).collect();
    assert_eq!(values, [b"ok".to_vec()], "only the allowed record was written");
}
