//! A partition moving between agents and back while each keeps its old WAL:
//! the sequences that once lost a committed record (A → B → A under unclean
//! takeover) or wedged a partition (the dev loop's up/down cycles). Real
//! agent processes, kill -9 and SIGSTOP, on SQLite and on Postgres metadata.

#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use cairn_proto::cairn::agent::v1 as pb;
use cairn_testkit::Process;
use common::*;

const LEASE_LAPSE: Duration = Duration::from_millis(3_600);

fn unclean(name: &str) -> Vec<String> {
    vec![
        "--set".into(),
        "agent.unclean_takeover=true".into(),
        "--set".into(),
        format!("agent.id=agent-{name}"),
    ]
}

async fn start(cluster: &Cluster, name: &str) -> Process {
    let args = unclean(name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.start(name, &args).await
}

/// Produces one record with `ack`; its offset.
async fn produce_one(addr: &str, value: &str, ack: pb::AckMode) -> u64 {
    let request = pb::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        records: records(&[value.to_owned()]),
        ack_mode: ack as i32,
        ..Default::default()
    };
    agent(addr)
        .await
        .produce(request)
        .await
        .unwrap()
        .into_inner()
        .base_offset
}

/// What the test acknowledged: offset → value, by ack kind.
#[derive(Default)]
struct Acks {
    committed: BTreeMap<u64, String>,
    /// (offset, value, the committed offset when the next unclean takeover happened).
    durable: Vec<(u64, String)>,
}

impl Acks {
    async fn committed(&mut self, addr: &str, value: String) {
        let offset = produce_one(addr, &value, pb::AckMode::Committed).await;
        assert!(
            self.committed.insert(offset, value).is_none(),
            "offset {offset} acked twice"
        );
    }

    async fn durable(&mut self, addr: &str, prefix: &str, n: usize) {
        for i in 0..n {
            let value = format!("{prefix}-{i}");
            let offset = produce_one(addr, &value, pb::AckMode::Durable).await;
            self.durable.push((offset, value));
        }
    }

    /// Checks the partition as `addr` serves it: dense, every committed ack at
    /// its offset, and durable acks missing only above `floors` (the committed
    /// offset at each unclean takeover that could have dropped them).
    async fn verify(&self, addr: &str, floor_for: impl Fn(&str) -> u64, what: &str) -> usize {
        let log = read_all(addr, "t", 0).await;
        assert!(
            log.iter().enumerate().all(|(i, r)| r.offset == i as u64),
            "{what}: offsets dense"
        );
        let value_at = |o: u64| log.get(o as usize).map(|r| String::from_utf8(r.value.clone()).unwrap());
        for (offset, value) in &self.committed {
            assert_eq!(
                value_at(*offset).as_ref(),
                Some(value),
                "{what}: the record acknowledged as committed at {offset} is not there"
            );
        }
        let mut lost = 0;
        for (offset, value) in &self.durable {
            if value_at(*offset).as_ref() != Some(value) {
                let floor = floor_for(value);
                assert!(
                    *offset >= floor,
                    "{what}: durable record {value} at {offset} lost below the committed offset {floor}"
                );
                assert!(
                    !log.iter().any(|r| r.value == value.as_bytes()),
                    "{what}: {value} moved to another offset"
                );
                lost += 1;
            }
        }
        lost
    }
}

/// A → B → A → B: each holder frozen or killed while it has durable records
/// not yet committed, the next one taking over uncleanly and committing.
async fn retakes(cluster: Cluster) {
    let mut acks = Acks::default();
    // A leads: a committed record, then durable ones only A's WAL holds.
    let a = start(&cluster, "a").await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    acks.committed(&a.addr, "a-committed".into()).await;
    acks.durable(&a.addr, "a1", 40).await;

    // A freezes past its lease; B takes over uncleanly and commits offset 1.
    a.pause();
    tokio::time::sleep(LEASE_LAPSE).await;
    let mut b = start(&cluster, "b").await;
    wait_leader(&b.addr, "t", 0).await;
    acks.committed(&b.addr, "b-committed".into()).await;
    acks.durable(&b.addr, "b1", 20).await;

    // B dies with durable records of its own; A wakes and takes the partition
    // back: its old WAL diverges from B's segment and must not be served.
    b.kill();
    a.resume();
    wait_leader(&a.addr, "t", 0).await;
    let lost = acks
        .verify(&a.addr, |v| if v.starts_with("a1") { 1 } else { 2 }, "A → B → A")
        .await;
    assert_eq!(
        lost, 60,
        "every durable record above the committed offsets was dropped, nothing else"
    );
    acks.committed(&a.addr, "a-committed-again".into()).await;
    acks.durable(&a.addr, "a2", 10).await;

    // A freezes again; B restarts on its own old WAL and takes over.
    a.pause();
    tokio::time::sleep(LEASE_LAPSE).await;
    let b = start(&cluster, "b").await;
    wait_leader(&b.addr, "t", 0).await;
    acks.committed(&b.addr, "b-committed-again".into()).await;
    a.resume();
    let floor = |v: &str| match v.split('-').next().unwrap() {
        "a1" => 1,
        "b1" => 2,
        _ => 3,
    };
    let lost = acks.verify(&b.addr, floor, "A → B → A → B").await;
    assert_eq!(lost, 70);
    // Nothing stays unavailable: B keeps serving and A, told its lease is gone, refuses.
    acks.committed(&b.addr, "last".into()).await;
    acks.verify(&b.addr, floor, "after the last fault").await;
    assert_eq!(acks.committed.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    eprintln!(
        "{} committed acks read back at their offsets; 70 durable acks lost to unclean takeovers, all above the committed offset",
        acks.committed.len()
    );
    drop(a);
}

#[tokio::test]
async fn a_committed_record_survives_a_to_b_to_a_to_b_on_sqlite() {
    retakes(Cluster::new()).await;
}

#[tokio::test]
async fn a_committed_record_survives_a_to_b_to_a_to_b_on_postgres() {
    let Some(cluster) = Cluster::on_postgres().await else {
        return;
    };
    retakes(cluster).await;
}

/// Leader of each partition of `t`, once every partition has one that serves
/// and two agents share them evenly.
async fn serving_leaders(any: &str, partitions: u32) -> Vec<String> {
    for _ in 0..300 {
        let meta = agent(any)
            .await
            .get_metadata(pb::GetMetadataRequest {
                topics: vec!["t".into()],
            })
            .await;
        if let Ok(meta) = meta {
            let leaders: Vec<String> = meta.into_inner().topics[0]
                .partitions
                .iter()
                .map(|p| p.leader_address.clone())
                .collect();
            let mut all = !leaders.iter().any(String::is_empty);
            for (p, leader) in leaders.iter().enumerate() {
                if !all {
                    break;
                }
                let probe = pb::FetchRequest {
                    frames: false,
                    topic: "t".into(),
                    partition: p as u32,
                    offset: 0,
                    max_bytes: 1,
                    max_wait_ms: 0,
                };
                all = agent(leader).await.fetch(probe).await.is_ok();
            }
            // Settled: every live agent has its share (the second to start
            // takes partitions over one lease round at a time).
            let balanced = |l: &str| leaders.iter().filter(|x| *x == l).count() == partitions as usize / 2;
            if all && leaders.len() == partitions as usize && leaders.iter().all(|l| balanced(l)) {
                return leaders;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not every partition of t is served");
}

#[tokio::test]
async fn twenty_up_write_sigterm_rounds_with_alternating_leaders_keep_every_partition_serving() {
    // The dev loop: two agents come up, records go to every partition, both
    // get SIGTERM; the next round starts them in the other order.
    let cluster = Cluster::new();
    let partitions = 4u32;
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); partitions as usize];
    let rounds = 20;
    for round in 0..rounds {
        let names = if round % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
        let first = cluster.start(names[0], &[]).await;
        if round == 0 {
            create_topic(&first.addr, "t", partitions).await;
        }
        let second = cluster.start(names[1], &[]).await;
        let leaders = serving_leaders(&first.addr, partitions).await;
        for (p, leader) in leaders.iter().enumerate() {
            let values: Vec<String> = (0..25).map(|i| format!("r{round}-p{p}-{i}")).collect();
            let request = pb::ProduceRequest {
                topic: "t".into(),
                partition: p as u32,
                records: records(&values),
                ..Default::default()
            };
            let ack = agent(leader).await.produce(request).await.unwrap().into_inner();
            assert_eq!(ack.base_offset, expected[p].len() as u64, "round {round} partition {p}");
            expected[p].extend(values);
        }
        let leaders = serving_leaders(&first.addr, partitions).await;
        for (p, leader) in leaders.iter().enumerate() {
            let log: Vec<String> = read_values(leader, "t", p as u32).await;
            assert_eq!(log, expected[p], "round {round}: partition {p} as {leader} serves it");
        }
        // SIGTERM both, as `scripts/dev down` does, one after the other.
        for mut agent in [first, second] {
            assert_eq!(agent.terminate(Duration::from_secs(30)).await, Some(0), "round {round}");
        }
    }
}

#[tokio::test]
async fn a_partition_that_passed_through_an_agent_without_writes_comes_back_to_it_and_serves() {
    // The dev loop's wedge: an agent takes a partition and hands it on before
    // writing anything; others write; it takes the partition back (its old,
    // empty file is named by an offset others have since written past), and
    // later once more.
    let cluster = Cluster::new();
    let mut written: Vec<String> = Vec::new();
    let mut a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let mut b = cluster.start("b", &[]).await;
    for round in 0..4 {
        // The current holder leaves (SIGTERM hands the partition to the other,
        // which is running), writes go to the new holder, and the one that
        // left comes back to take over at the next hand-off.
        let (leaving, staying) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(leaving.terminate(Duration::from_secs(30)).await, Some(0));
        wait_leader(&staying.addr, "t", 0).await;
        let values: Vec<String> = (0..10).map(|i| format!("r{round}-{i}")).collect();
        let request = pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            records: records(&values),
            ..Default::default()
        };
        agent(&staying.addr).await.produce(request).await.unwrap();
        written.extend(values);
        let log: Vec<String> = read_values(&staying.addr, "t", 0).await;
        assert_eq!(log, written, "round {round}");
        let name = if round % 2 == 0 { "a" } else { "b" };
        *leaving = cluster.start(name, &[]).await;
    }
}

#[tokio::test]
async fn sigterm_exits_within_its_bound_when_partitions_cannot_hand_off() {
    // An "object store" that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let cluster = Cluster::new();
    let mut args = s3_store_args("silent", &endpoint);
    for set in ["object_store.s3.request_timeout=120s", "agent.handoff_timeout=2s"] {
        args.extend(["--set".to_owned(), set.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a = cluster.start("a", &args).await;
    create_topic(&a.addr, "t", 4).await;
    for p in 0..4 {
        wait_leader(&a.addr, "t", p).await;
        let request = pb::ProduceRequest {
            topic: "t".into(),
            partition: p,
            records: records(&["pending".into()]),
            ..Default::default()
        };
        agent(&a.addr).await.produce(request).await.unwrap();
    }
    let started = std::time::Instant::now();
    let code = a.terminate(Duration::from_secs(90)).await;
    let took = started.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(12),
        "SIGTERM took {took:?} with agent.handoff_timeout = 2s and four partitions that cannot hand off"
    );
    let log = a.log_text();
    assert!(
        log.contains("hand-off did not finish in time") || log.contains("clean=0"),
        "no partition handed off, and the agent says so: {log}"
    );
    held.abort();
}

#[tokio::test]
async fn a_partition_whose_wal_cannot_be_recovered_says_so_and_serves_once_an_operator_moves_the_wal() {
    let cluster = Cluster::new();
    let mut a = cluster.start("a", &["--set", "agent.id=agent-a"]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    for batch in 0..2 {
        let values: Vec<String> = (0..5).map(|i| format!("{batch}-{i}")).collect();
        let request = pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            records: records(&values),
            ..Default::default()
        };
        agent(&a.addr).await.produce(request).await.unwrap();
    }
    a.kill();
    // Damage the first batch (a valid one follows it: corruption, not a torn tail).
    let wal = cluster.data_dir("a").join("wal").join("t").join("0");
    let file = wal.join(format!("{:020}.wal", 0));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[30] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let a = cluster.start("a", &["--set", "agent.id=agent-a"]).await;
    let produce = || pb::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        records: records(&["after".into()]),
        ..Default::default()
    };
    let refused = agent(&a.addr).await.produce(produce()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        cairn_service::status::reason_of(&refused),
        Some(cairn_service::ErrorReason::PartitionUnavailable)
    );
    assert!(refused.message().contains("WAL corrupt"), "{refused:?}");
    assert_eq!(
        cairn_testkit::metric(&a.scrape().await, "cairn_agent_partitions_unrecoverable"),
        Some(1.0)
    );
    assert!(
        a.log_text().contains("move the WAL directory out of the way"),
        "{}",
        a.log_text()
    );

    // The operator gives the unrecoverable records up: the partition comes
    // back from its (empty) committed log on the next retry.
    std::fs::rename(&wal, cluster.dir.path().join("wal-moved-aside")).unwrap();
    let mut served = None;
    for _ in 0..100 {
        if let Ok(ack) = agent(&a.addr).await.produce(produce()).await {
            served = Some(ack.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served.expect("served again").base_offset,
        0,
        "the log continues at the committed offset"
    );
    assert_eq!(
        cairn_testkit::metric(&a.scrape().await, "cairn_agent_partitions_unrecoverable"),
        Some(0.0)
    );
}
