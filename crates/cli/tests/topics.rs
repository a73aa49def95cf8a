//! `cairn topics` against real agents.

#![allow(clippy::unwrap_used)]

use cairn_proto::cairn::agent::v1 as pb;
use cairn_testkit::cluster::{Cluster, agent, create_topic, leaders_when, records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_every_partitions_high_watermark_as_its_leader_knows_it() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let b = cluster.start("b", &[]).await;
    create_topic(&a.addr, "t", 4).await;
    // Wait for both agents to lead two partitions each.
    let leaders = leaders_when(&a.addr, "t", |l| {
        l.iter().filter(|x| **x == b.addr).count() == 2 && l.iter().all(|x| !x.is_empty())
    })
    .await;
    for (p, leader) in leaders.iter().enumerate() {
        let values: Vec<String> = (0..=p).map(|i| format!("{p}-{i}")).collect();
        let request = pb::ProduceRequest {
            topic: "t".into(),
            partition: p as u32,
            records: records(&values),
            ..Default::default()
        };
        agent(leader).await.produce(request).await.unwrap();
    }
    // Right away, before any lease renewal publishes b's figures.
    let out = std::process::Command::new(cairn_testkit::binary("cairn"))
        .args(["topics", "--addr", &a.addr, "describe", "t"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let high: Vec<u64> = text
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    assert_eq!(high, vec![1, 2, 3, 4], "{text}");
}
