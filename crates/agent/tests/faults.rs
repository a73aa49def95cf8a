//! Fault tests with real agent processes: kill -9 during produce, a holder
//! frozen past its lease, two agents sharing partitions.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_proto::cairn::agent::v1 as pb;
use common::*;
use tonic::Code;

/// How many kill -9 rounds CI runs; `CAIRN_SOAK_ROUNDS` runs more (the soak).
fn rounds() -> u32 {
    cairn_testkit::env_or("CAIRN_SOAK_ROUNDS", 20)
}

#[tokio::test]
async fn kill_9_during_produce_loses_nothing_acknowledged() {
    kill_9_rounds(Cluster::new(), rounds()).await;
}

#[tokio::test]
async fn kill_9_with_postgres_metadata_loses_nothing_acknowledged() {
    let Some(cluster) = Cluster::on_postgres().await else {
        return;
    };
    kill_9_rounds(cluster, 5).await;
}

async fn kill_9_rounds(cluster: Cluster, rounds: u32) {
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut sent = 0u64;
    for round in 0..rounds {
        let mut a = cluster.start("a", &[]).await;
        if round == 0 {
            create_topic(&a.addr, "t", 1).await;
        }
        wait_leader(&a.addr, "t", 0).await;
        // Everything acknowledged so far is there, once, at its offset.
        let log = read_all(&a.addr, "t", 0).await;
        for (offset, value) in &acked {
            let record = log
                .get(*offset as usize)
                .unwrap_or_else(|| panic!("round {round}: offset {offset} lost"));
            assert_eq!(
                &String::from_utf8(record.value.clone()).unwrap(),
                value,
                "round {round}: offset {offset} changed"
            );
        }
        assert!(
            log.iter().enumerate().all(|(i, r)| r.offset == i as u64),
            "offsets dense"
        );

        // Four concurrent producers until a kill -9 at a random moment.
        let round_acks = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for w in 0..4 {
            let addr = a.addr.clone();
            let round_acks = round_acks.clone();
            let base = sent + w * 1_000_000;
            writers.push(tokio::spawn(async move {
                let mut client = agent(&addr).await;
                for i in 0.. {
                    let values: Vec<String> = (0..5).map(|j| format!("{}", base + i * 5 + j)).collect();
                    let request = pb::ProduceRequest {
                        topic: "t".into(),
                        partition: 0,
                        records: records(&values),
                        ..Default::default()
                    };
                    match client.produce(request).await {
                        Ok(ack) => {
                            let ack = ack.into_inner();
                            let mut acks = round_acks.lock().unwrap();
                            for (j, v) in values.into_iter().enumerate() {
                                acks.push((ack.base_offset + j as u64, v));
                            }
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        let delay = 50 + rand_below(400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        a.kill();
        for w in writers {
            let _ = w.await;
        }
        sent += 10_000_000;
        for (offset, value) in round_acks.lock().unwrap().drain(..) {
            assert!(acked.insert(offset, value).is_none(), "offset {offset} assigned twice");
        }
    }
    let a = cluster.start("a", &[]).await;
    wait_leader(&a.addr, "t", 0).await;
    let log = read_all(&a.addr, "t", 0).await;
    for (offset, value) in &acked {
        assert_eq!(String::from_utf8(log[*offset as usize].value.clone()).unwrap(), *value);
    }
    eprintln!(
        "{rounds} kill -9 rounds: {} acknowledged records, {} in the log, none lost",
        acked.len(),
        log.len()
    );
    assert!(acked.len() > 100, "the test produced too little to mean anything");
}

fn rand_below(n: u64) -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (nanos ^ (nanos >> 7).wrapping_mul(0x9e37_79b9)) % n
}

#[tokio::test]
async fn a_holder_frozen_past_its_lease_writes_nothing_after_it_wakes() {
    frozen_holder(Cluster::new()).await;
}

#[tokio::test]
async fn a_holder_frozen_past_its_lease_writes_nothing_after_it_wakes_on_postgres() {
    let Some(cluster) = Cluster::on_postgres().await else {
        return;
    };
    frozen_holder(cluster).await;
}

async fn frozen_holder(cluster: Cluster) {
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    // Nothing acknowledged yet, so the partition is clean and may move.
    a.pause();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let b = cluster.start("b", &[]).await;
    wait_leader(&b.addr, "t", 0).await;
    let mut to_b = agent(&b.addr).await;
    let ack = to_b
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            records: records(&["from-b".into()]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.base_offset, 0);

    // A produce sent to the frozen holder is handled only after it wakes,
    // by which time its own clock says its lease is gone.
    let addr = a.addr.clone();
    let late = tokio::spawn(async move {
        agent(&addr)
            .await
            .produce(pb::ProduceRequest {
                topic: "t".into(),
                partition: 0,
                records: records(&["from-a".into()]),
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.resume();
    let refused = late.await.unwrap().unwrap_err();
    assert!(
        matches!(refused.code(), Code::FailedPrecondition | Code::Unavailable),
        "the woken holder must refuse: {refused:?}"
    );
    let log = read_all(&b.addr, "t", 0).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].value, b"from-b");
    drop(a);
}

#[tokio::test]
async fn two_agents_split_partitions_and_point_at_each_other() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let b = cluster.start("b", &[]).await;
    create_topic(&a.addr, "t", 4).await;
    // Both agents take their share within a few lease rounds.
    let count = |l: &[String], addr: &str| l.iter().filter(|x| *x == addr).count();
    let leaders = leaders_when(&a.addr, "t", |l| count(l, &a.addr) == 2 && count(l, &b.addr) == 2).await;
    assert_eq!(leaders.iter().filter(|l| **l == a.addr).count(), 2, "{leaders:?}");
    let on_b = leaders.iter().position(|l| *l == b.addr).unwrap() as u32;
    let wrong = agent(&a.addr)
        .await
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: on_b,
            records: records(&["x".into()]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    let details = tonic_types::StatusExt::get_details_error_info(&wrong).unwrap();
    assert_eq!(details.reason, "NOT_LEADER");
    assert_eq!(
        details.metadata.get("leader_address"),
        Some(&b.addr),
        "tells the client where to go"
    );

    // B's high watermark reaches A's metadata answers through the lease row.
    let to_b = pb::ProduceRequest {
        topic: "t".into(),
        partition: on_b,
        records: records(&["1".into(), "2".into()]),
        ..Default::default()
    };
    agent(&b.addr).await.produce(to_b).await.unwrap();
    let mut seen = 0;
    for _ in 0..50 {
        let mut client = agent(&a.addr).await;
        let meta = client
            .get_metadata(pb::GetMetadataRequest {
                topics: vec!["t".into()],
            })
            .await
            .unwrap();
        seen = meta.into_inner().topics[0].partitions[on_b as usize].high_watermark;
        if seen == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 2, "A reports the high watermark B published");
}

/// Produces numbered records to every partition, following leadership changes,
/// and returns what was acknowledged where.
async fn write_through_changes(
    addrs: Vec<String>,
    partitions: u32,
    until: std::time::Instant,
    writer: u64,
) -> Vec<(u32, u64, String)> {
    let mut acked = Vec::new();
    let mut i = 0u64;
    while std::time::Instant::now() < until {
        let partition = (i % u64::from(partitions)) as u32;
        let value = format!("w{writer}-{i}");
        i += 1;
        // Ask any agent who leads the partition; try that one.
        let mut done = false;
        for addr in &addrs {
            let Ok(mut client) = cairn_service::client::endpoint(addr, &Default::default())
                .unwrap()
                .connect()
                .await
                .map(pb::agent_service_client::AgentServiceClient::new)
            else {
                continue;
            };
            let Ok(meta) = client
                .get_metadata(pb::GetMetadataRequest {
                    topics: vec!["t".into()],
                })
                .await
            else {
                continue;
            };
            let leader = meta.into_inner().topics[0].partitions[partition as usize]
                .leader_address
                .clone();
            if leader.is_empty() {
                break;
            }
            let request = pb::ProduceRequest {
                topic: "t".into(),
                partition,
                records: records(std::slice::from_ref(&value)),
                ..Default::default()
            };
            if let Ok(ack) = agent(&leader).await.produce(request).await {
                acked.push((partition, ack.into_inner().base_offset, value.clone()));
                done = true;
            }
            break;
        }
        if !done {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    acked
}

#[tokio::test]
async fn agents_rebalance_while_producers_write_and_no_offset_is_assigned_twice() {
    rebalance_while_writing(Cluster::new()).await;
}

#[tokio::test]
async fn agents_rebalance_while_producers_write_and_no_offset_is_assigned_twice_on_postgres() {
    let Some(cluster) = Cluster::on_postgres().await else {
        return;
    };
    rebalance_while_writing(cluster).await;
}

async fn rebalance_while_writing(cluster: Cluster) {
    let (_, url) = cluster.objects();
    let a = cluster.start("a", &["--set", &url]).await;
    let b = cluster.start("b", &["--set", &url]).await;
    create_topic(&a.addr, "t", 6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let addrs = vec![a.addr.clone(), b.addr.clone()];
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(write_through_changes(addrs.clone(), 6, until, w)))
        .collect();
    // A third agent joins while the writers run: partitions move to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.start("c", &["--set", &url]).await;
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let meta = agent(&a.addr)
        .await
        .get_metadata(pb::GetMetadataRequest {
            topics: vec!["t".into()],
        })
        .await
        .unwrap();
    let leaders: Vec<String> = meta.into_inner().topics[0]
        .partitions
        .iter()
        .map(|p| p.leader_address.clone())
        .collect();
    assert!(leaders.contains(&c.addr), "the new agent got partitions: {leaders:?}");

    let mut seen = std::collections::HashSet::new();
    for (partition, offset, _) in &acked {
        assert!(
            seen.insert((*partition, *offset)),
            "offset {offset} of partition {partition} acknowledged twice"
        );
    }
    for partition in 0..6u32 {
        let leader = &leaders[partition as usize];
        wait_leader(leader, "t", partition).await;
        let log = read_all(leader, "t", partition).await;
        assert!(
            log.iter().enumerate().all(|(i, r)| r.offset == i as u64),
            "partition {partition}: offsets dense"
        );
        for (p, offset, value) in acked.iter().filter(|(p, ..)| *p == partition) {
            let got = String::from_utf8(log[*offset as usize].value.clone()).unwrap();
            assert_eq!(&got, value, "partition {p} offset {offset}");
        }
    }
    assert!(acked.len() > 100, "only {} records acknowledged", acked.len());
}
