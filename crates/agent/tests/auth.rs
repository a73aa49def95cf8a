//! The agent checks per-topic scopes through a real cairn-auth process.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::cairn::agent::v1 as pb;
use common::*;
use tonic::{Code, Request};

async fn key(auth: &str, admin: &str, scopes: &[&str]) -> String {
    create_key(auth, admin, scopes).await
}

fn with<T>(message: T, key: &str) -> Request<T> {
    with_key(message, key)
}

#[tokio::test]
async fn produce_fetch_and_topic_admin_need_their_scopes() {
    let cluster = Cluster::new();
    let (auth, admin) = start_auth(&cluster).await;
    let a = cluster
        .start(
            "a",
            &[
                "--set",
                "auth.enabled=true",
                "--set",
                &format!("auth.address={}", auth.addr),
            ],
        )
        .await;
    let ops = key(&auth.addr, &admin, &["topics:admin"]).await;
    let writer = key(&auth.addr, &admin, &["topics:produce:clicks"]).await;
    let reader = key(&auth.addr, &admin, &["topics:consume:clicks*"]).await;

    let create = pb::CreateTopicRequest {
        name: "clicks".into(),
        config: Some(pb::TopicConfig {
            partitions: 1,
            ..Default::default()
        }),
    };
    let denied = topics(&a.addr)
        .await
        .create_topic(with(create.clone(), &writer))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let none = topics(&a.addr).await.create_topic(create.clone()).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    topics(&a.addr).await.create_topic(with(create, &ops)).await.unwrap();
    wait_leader_with(&a.addr, &reader).await;

    let produce = |t: &str| pb::ProduceRequest {
        topic: t.into(),
        partition: 0,
        records: records(&["v".into()]),
        ..Default::default()
    };
    agent(&a.addr)
        .await
        .produce(with(produce("clicks"), &writer))
        .await
        .unwrap();
    let wrong = agent(&a.addr)
        .await
        .produce(with(produce("clicks"), &reader))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);
    assert!(wrong.message().contains("topics:produce:clicks"));

    let fetch = pb::FetchRequest {
        frames: false,
        topic: "clicks".into(),
        partition: 0,
        offset: 0,
        max_bytes: 0,
        max_wait_ms: 0,
    };
    let page = agent(&a.addr)
        .await
        .fetch(with(fetch.clone(), &reader))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 1);
    assert_eq!(
        agent(&a.addr)
            .await
            .fetch(with(fetch, &writer))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // InitProducer (which can fence a named producer) needs topics:produce on some topic.
    let init = || pb::InitProducerRequest { name: "billing".into() };
    let fenced_by_reader = agent(&a.addr)
        .await
        .init_producer(with(init(), &reader))
        .await
        .unwrap_err();
    assert_eq!(fenced_by_reader.code(), Code::PermissionDenied, "{fenced_by_reader:?}");
    assert!(fenced_by_reader.message().contains("topics:produce"));
    agent(&a.addr).await.init_producer(with(init(), &writer)).await.unwrap();
}

#[test]
fn every_rpc_the_agent_hosts_declares_its_access() {
    use cairn_proto::cairn::agent::v1::{
        agent_service_server::AgentServiceServer, topic_service_server::TopicServiceServer,
    };
    use tonic::server::NamedService;
    let hosted = [
        <AgentServiceServer<cairn_agent::api::Api> as NamedService>::NAME,
        <TopicServiceServer<cairn_agent::api::Api> as NamedService>::NAME,
    ];
    let methods = cairn_service::auth::methods(&[cairn_proto::FILE_DESCRIPTOR_SET], &hosted);
    assert!(
        methods.len() >= 8,
        "the descriptor set lists the agent's methods: {methods:?}"
    );
    let missing = cairn_agent::policy().undeclared(&[cairn_proto::FILE_DESCRIPTOR_SET], &hosted);
    assert!(missing.is_empty(), "RPCs without an access rule: {missing:?}");
}

/// Waits until `addr` leads and serves clicks/0 (probing with a fetch as `reader`).
async fn wait_leader_with(addr: &str, reader: &str) {
    for _ in 0..200 {
        let meta = agent(addr)
            .await
            .get_metadata(with(
                pb::GetMetadataRequest {
                    topics: vec!["clicks".into()],
                },
                reader,
            ))
            .await;
        let leads = meta.is_ok_and(|m| m.into_inner().topics[0].partitions[0].leader_address == addr);
        let probe = pb::FetchRequest {
            frames: false,
            topic: "clicks".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1,
            max_wait_ms: 0,
        };
        if leads && agent(addr).await.fetch(with(probe, reader)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader");
}
