//! The producer against real agents while things go wrong: kill -9 and restart,
//! leadership moving between agents, connections cut mid-request, a second
//! instance of the same producer. A checker writes uniquely numbered records
//! with retries throughout, then reads every partition back and verifies that
//! every acknowledged record is there exactly once at its acknowledged offset,
//! that no record appears twice, that each partition keeps the order records
//! were sent in, and that offsets are dense.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_producer::{Acks, Fate, ProduceError, Producer, ProducerBuilder, ProducerRecord};
use cairn_proto::cairn::agent::v1 as pb;
use cairn_testkit::{
    cluster::{Cluster, agent, create_topic, read_all, read_values},
    free_port,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

const TOPIC: &str = "checked";

fn producer(bootstrap: &[&str]) -> ProducerBuilder {
    Producer::builder()
        .bootstrap(bootstrap.iter().copied())
        .linger(Duration::from_millis(2))
        .request_timeout(Duration::from_secs(3))
        .delivery_timeout(Duration::from_secs(90))
        .retry_backoff_base(Duration::from_millis(20))
        .retry_backoff_max(Duration::from_millis(500))
        .metadata_max_age(Duration::from_secs(1))
}

/// What the checker's writer saw: record number → (partition, offset).
#[derive(Default)]
struct Outcome {
    acked: BTreeMap<u64, (u32, u64)>,
    failed: Vec<(u64, ProduceError)>,
}

/// Writes records numbered 0, 1, 2, … keyed by their number until told to
/// stop, pacing itself, and collects every delivery.
struct Writer {
    stop: watch::Sender<bool>,
    task: JoinHandle<Outcome>,
}

impl Writer {
    fn start(producer: Producer) -> Writer {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let outcome = Arc::new(Mutex::new(Outcome::default()));
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, cairn_producer::Delivery)>();
            let collector = {
                let outcome = outcome.clone();
                tokio::spawn(async move {
                    while let Some((i, delivery)) = rx.recv().await {
                        let result = delivery.await;
                        let mut o = outcome.lock().unwrap();
                        match result {
                            Ok(m) => {
                                o.acked.insert(i, (m.partition, m.offset.unwrap()));
                            }
                            Err(e) => o.failed.push((i, e)),
                        }
                    }
                })
            };
            let mut i = 0u64;
            while !*stopped.borrow_and_update() {
                let record = ProducerRecord::new(TOPIC, format!("{i:012}")).key(i.to_string());
                match producer.send(record).await {
                    Ok(d) => tx.send((i, d)).unwrap(),
                    Err(e) => outcome.lock().unwrap().failed.push((i, e)),
                }
                i += 1;
                if i.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            producer.flush().await;
            drop(tx);
            collector.await.unwrap();
            producer.close().await;
            Arc::try_unwrap(outcome).ok().unwrap().into_inner().unwrap()
        });
        Writer { stop, task }
    }

    async fn finish(self) -> Outcome {
        self.stop.send_replace(true);
        self.task.await.unwrap()
    }
}

/// The current leader of each partition, asked of `any` agent.
async fn leaders(any: &str, partitions: u32) -> Vec<String> {
    cairn_testkit::eventually(
        Duration::from_secs(60),
        &format!("every partition of {TOPIC} has a leader"),
        || async move {
            let meta = agent(any)
                .await
                .get_metadata(pb::GetMetadataRequest {
                    topics: vec![TOPIC.into()],
                })
                .await
                .ok()?;
            let parts = &meta.into_inner().topics[0].partitions;
            (parts.len() == partitions as usize && parts.iter().all(|p| !p.leader_address.is_empty()))
                .then(|| parts.iter().map(|p| p.leader_address.clone()).collect())
        },
    )
    .await
}

/// Reads every partition back and checks the outcome against it.
async fn verify(any: &str, partitions: u32, outcome: &Outcome, what: &str) {
    let mut seen: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let mut total = 0;
    for p in 0..partitions {
        // Leadership may still be settling after a move: ask again until a whole read succeeds.
        let mut log = None;
        for _ in 0..300 {
            let leader = leaders(any, partitions).await[p as usize].clone();
            if let Ok(records) = try_read_all(&leader, p).await {
                log = Some(records);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = log.unwrap_or_else(|| panic!("{what}: partition {p} never readable"));
        let mut last: Option<u64> = None;
        for (index, record) in log.iter().enumerate() {
            assert_eq!(
                record.offset, index as u64,
                "{what}: offsets of partition {p} are dense"
            );
            let n: u64 = String::from_utf8(record.value.clone()).unwrap().parse().unwrap();
            assert!(
                last.is_none_or(|l| n > l),
                "{what}: partition {p} has record {n} after {last:?}: order changed"
            );
            last = Some(n);
            if let Some(earlier) = seen.insert(n, (p, record.offset)) {
                panic!(
                    "{what}: record {n} appears twice: at {earlier:?} and at ({p}, {})",
                    record.offset
                );
            }
        }
        total += log.len();
    }
    for (n, at) in &outcome.acked {
        assert_eq!(
            seen.get(n),
            Some(at),
            "{what}: acknowledged record {n} is not where its ack said"
        );
    }
    // Not delivered for sure means not in the log.
    for (n, e) in &outcome.failed {
        if e.fate() == Fate::NotWritten {
            assert!(
                !seen.contains_key(n),
                "{what}: record {n} failed as not written ({e}) but is in the log"
            );
        }
    }
    eprintln!(
        "{what}: {} acknowledged, {} failed, {total} in the log; none lost, none duplicated, order kept",
        outcome.acked.len(),
        outcome.failed.len()
    );
}

/// Every record of partition `p` from its leader, or the error that stopped the read.
async fn try_read_all(leader: &str, p: u32) -> Result<Vec<pb::StoredRecord>, tonic::Status> {
    let mut client = agent(leader).await;
    let mut out = Vec::new();
    loop {
        let page = client
            .fetch(pb::FetchRequest {
                frames: false,
                topic: TOPIC.into(),
                partition: p,
                offset: out.len() as u64,
                max_bytes: 0,
                max_wait_ms: 0,
            })
            .await?
            .into_inner();
        if page.records.is_empty() {
            assert_eq!(page.high_watermark, out.len() as u64, "read up to the high watermark");
            return Ok(out);
        }
        out.extend(page.records);
    }
}

fn rand_ms(low: u64, high: u64) -> Duration {
    Duration::from_millis(rand::random_range(low..high))
}

fn kill_rounds() -> u32 {
    cairn_testkit::env_or("CAIRN_PRODUCER_KILL_ROUNDS", 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_of_the_agent_loses_and_duplicates_nothing() {
    let cluster = Cluster::new();
    let port = free_port();
    let mut a = cluster.start_on(port, "a", &[]).await;
    create_topic(&a.addr, TOPIC, 4).await;
    let addr = a.addr.clone();
    leaders(&addr, 4).await;
    let writer = Writer::start(producer(&[&addr]).build().unwrap());
    let rounds = kill_rounds();
    for _ in 0..rounds {
        tokio::time::sleep(rand_ms(200, 900)).await;
        a.kill();
        tokio::time::sleep(rand_ms(0, 300)).await;
        a = cluster.start_on(port, "a", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = writer.finish().await;
    assert!(
        outcome.failed.is_empty(),
        "records failed: {:?}",
        &outcome.failed[..outcome.failed.len().min(5)]
    );
    assert!(outcome.acked.len() > 1000, "too little was produced to mean anything");
    verify(&addr, 4, &outcome, &format!("{rounds} kill -9 rounds")).await;
}

fn retake_rounds() -> u32 {
    cairn_testkit::env_or("CAIRN_PRODUCER_RETAKE_ROUNDS", 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_acks_survive_kill_9_retakes_between_two_agents_under_unclean_takeover() {
    // A → B → A → …: the leader is killed with durable records not yet in a
    // segment, the other agent takes over uncleanly, and the killed one comes
    // back on its old WAL and takes partitions back. With committed acks
    // nothing acknowledged may be lost or duplicated through any of it.
    let cluster = Cluster::new();
    let (pa, pb) = (free_port(), free_port());
    // Small WAL files: committed acks roll segments often, so files rotate,
    // are recycled as spares and overwritten in place while agents die.
    let args = |name: &str| {
        vec![
            "--set".to_owned(),
            "agent.unclean_takeover=true".to_owned(),
            "--set".to_owned(),
            format!("agent.id=agent-{name}"),
            "--set".to_owned(),
            "agent.wal_file_bytes=64KiB".to_owned(),
        ]
    };
    let start = |port: u16, name: &'static str| {
        let args = args(name);
        let cluster = &cluster;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.start_on(port, name, &args).await
        }
    };
    let mut a = start(pa, "a").await;
    create_topic(&a.addr, TOPIC, 2).await;
    let (addr_a, addr_b) = (a.addr.clone(), format!("127.0.0.1:{pb}"));
    leaders(&addr_a, 2).await;
    let mut b = start(pb, "b").await;
    wait_for_leaders_of(&addr_a, 2, |l| l.contains(&addr_a) && l.contains(&addr_b)).await;
    let writer = Writer::start(
        producer(&[&addr_a, &addr_b])
            .acks(Acks::Committed)
            .request_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let rounds = retake_rounds();
    for round in 0..rounds {
        tokio::time::sleep(rand_ms(300, 900)).await;
        // Kill one holder; the other takes its partitions once the lease lapses.
        let (victim, port, name, survivor) = if round % 2 == 0 {
            (&mut a, pa, "a", addr_b.clone())
        } else {
            (&mut b, pb, "b", addr_a.clone())
        };
        victim.kill();
        wait_for_leaders_of(&survivor, 2, |l| l.iter().all(|x| *x == survivor)).await;
        tokio::time::sleep(rand_ms(200, 600)).await;
        // It comes back on its old WAL and takes its share back.
        *victim = start(port, name).await;
        let back = victim.addr.clone();
        wait_for_leaders_of(&survivor, 2, |l| l.contains(&back)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = writer.finish().await;
    assert!(
        outcome.failed.is_empty(),
        "records failed: {:?}",
        &outcome.failed[..outcome.failed.len().min(5)]
    );
    assert!(outcome.acked.len() > 200, "too little was produced to mean anything");
    verify(
        &addr_a,
        2,
        &outcome,
        &format!("{rounds} kill -9 retakes, committed acks"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_by_handoff_and_after_a_crash_without_loss_or_duplicates() {
    let cluster = Cluster::new();
    let (pa, pb) = (free_port(), free_port());
    let mut a = cluster.start_on(pa, "a", &[]).await;
    create_topic(&a.addr, TOPIC, 4).await;
    let (addr_a, addr_b) = (a.addr.clone(), format!("127.0.0.1:{pb}"));
    leaders(&addr_a, 4).await;
    let writer = Writer::start(producer(&[&addr_a, &addr_b]).build().unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // b joins: a hands it a fair share.
    let mut b = cluster.start_on(pb, "b", &[]).await;
    wait_for_leaders(&addr_a, |l| l.contains(&addr_b)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a leaves gracefully: b takes everything.
    assert_eq!(a.terminate(Duration::from_secs(30)).await, Some(0));
    wait_for_leaders(&addr_b, |l| l.iter().all(|x| *x == addr_b)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a comes back and gets its share again.
    a = cluster.start_on(pa, "a", &[]).await;
    wait_for_leaders(&addr_b, |l| l.contains(&addr_a)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // b crashes; its partitions come back with it.
    b.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _b = cluster.start_on(pb, "b", &[]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let outcome = writer.finish().await;
    assert!(
        outcome.failed.is_empty(),
        "records failed: {:?}",
        &outcome.failed[..outcome.failed.len().min(5)]
    );
    assert!(outcome.acked.len() > 500, "too little was produced to mean anything");
    verify(&addr_a, 4, &outcome, "leadership moves").await;
    drop(a);
}

async fn wait_for_leaders(any: &str, done: impl Fn(&[String]) -> bool) {
    wait_for_leaders_of(any, 4, done).await;
}

async fn wait_for_leaders_of(any: &str, partitions: u32, done: impl Fn(&[String]) -> bool) {
    let done = &done;
    cairn_testkit::eventually(Duration::from_secs(60), "leadership moved as expected", || async move {
        let l = leaders(any, partitions).await;
        done(&l).then_some(())
    })
    .await;
}

/// A TCP proxy whose connections can all be dropped at once.
struct Proxy {
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    /// Bytes clients sent upstream over connections that have ended.
    upstream_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(port: u16, upstream: String) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let upstream_bytes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let accept = {
            let connections = connections.clone();
            let upstream_bytes = upstream_bytes.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    let upstream = upstream.clone();
                    let upstream_bytes = upstream_bytes.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            if let Ok((up, _)) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                                upstream_bytes.fetch_add(up, std::sync::atomic::Ordering::SeqCst);
                            }
                            let _ = client.shutdown().await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            connections,
            accept,
            upstream_bytes,
        }
    }

    /// Waits until every connection the proxy carried has closed.
    async fn wait_idle(&self) {
        for _ in 0..200 {
            if self.connections.lock().unwrap().iter().all(|c| c.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the proxy's connections never closed");
    }

    /// Drops every open connection, whatever is in flight on it.
    fn cut(&self) -> usize {
        let mut connections = self.connections.lock().unwrap();
        let open = connections.iter().filter(|c| !c.is_finished()).count();
        for c in connections.drain(..) {
            c.abort();
        }
        open
    }
}

/// An agent that advertises a proxy in front of it as its address (so the
/// producer's traffic goes through the proxy), with `TOPIC` of `partitions`.
async fn proxied_agent(cluster: &Cluster, partitions: u32) -> (cairn_testkit::Process, Proxy, String) {
    let proxy_port = free_port();
    let proxied = format!("127.0.0.1:{proxy_port}");
    let advertised = format!("agent.advertised_address={proxied}");
    let a = cluster.start("a", &["--set", &advertised]).await;
    let proxy = Proxy::start(proxy_port, a.addr.clone()).await;
    create_topic(&a.addr, TOPIC, partitions).await;
    leaders(&a.addr, partitions).await;
    (a, proxy, proxied)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_request_are_retried_without_duplicates() {
    let cluster = Cluster::new();
    let (a, proxy, proxied) = proxied_agent(&cluster, 2).await;
    let p = producer(&[&proxied]).connections_per_agent(1).build().unwrap();
    let stats = p.clone();
    let writer = Writer::start(p);
    let mut cut = 0;
    for _ in 0..30 {
        tokio::time::sleep(rand_ms(50, 250)).await;
        cut += proxy.cut();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcome = writer.finish().await;
    let s = stats.stats();
    eprintln!(
        "{cut} connections cut; {} requests, {} errors, {} recognised duplicates",
        s.requests, s.errors, s.duplicates
    );
    assert!(cut >= 10, "the proxy carried the traffic and was cut");
    assert!(s.errors > 0, "cuts surfaced as errors that were retried");
    assert!(
        outcome.failed.is_empty(),
        "records failed: {:?}",
        &outcome.failed[..outcome.failed.len().min(5)]
    );
    verify(&a.addr, 2, &outcome, "30 connection cuts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_name_fences_the_first() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, TOPIC, 1).await;
    leaders(&a.addr, 1).await;
    let first = producer(&[&a.addr]).name("billing").build().unwrap();
    let m = first.send_and_wait(ProducerRecord::new(TOPIC, "1")).await.unwrap();
    assert_eq!(m.offset, Some(0));
    let second = producer(&[&a.addr]).name("billing").build().unwrap();
    second.send_and_wait(ProducerRecord::new(TOPIC, "2")).await.unwrap();
    let (id1, epoch1) = first.identity().unwrap();
    let (id2, epoch2) = second.identity().unwrap();
    assert_eq!(id1, id2, "one name, one producer id");
    assert!(epoch2 > epoch1);

    let err = first.send_and_wait(ProducerRecord::new(TOPIC, "3")).await.unwrap_err();
    assert!(matches!(err, ProduceError::Fenced(_)), "{err}");
    assert_eq!(err.fate(), Fate::NotWritten);
    let err = first.send(ProducerRecord::new(TOPIC, "4")).await.unwrap_err();
    assert!(
        matches!(err, ProduceError::Fenced(_)),
        "a fenced producer refuses new records: {err}"
    );
    second.send_and_wait(ProducerRecord::new(TOPIC, "5")).await.unwrap();
    let values: Vec<String> = read_values(&a.addr, TOPIC, 0).await;
    assert_eq!(values, ["1", "2", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_fail_precisely_and_leave_no_gap_in_the_sequence() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, TOPIC, 2).await;
    leaders(&a.addr, 2).await;
    let p = producer(&[&a.addr]).buffer_bytes(16 << 20).build().unwrap();

    let err = p.send(ProducerRecord::new("no-such-topic", "x")).await.unwrap_err();
    assert!(
        matches!(err, ProduceError::UnknownTopic(ref t) if t == "no-such-topic"),
        "{err}"
    );
    let err = p.send(ProducerRecord::new(TOPIC, "x").partition(7)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProduceError::UnknownPartition {
                partition: 7,
                partitions: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = p
        .send(ProducerRecord::new(TOPIC, vec![0u8; 9 << 20]))
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::RecordTooLarge { .. }), "{err}");

    // Larger than the agent's 1 MiB record limit: the agent refuses the batch;
    // the records around it, in the same partition, are delivered in order.
    let before = p.send(ProducerRecord::new(TOPIC, "before").partition(0)).await.unwrap();
    before.await.unwrap();
    let big = p
        .send(ProducerRecord::new(TOPIC, vec![1u8; 2 << 20]).partition(0))
        .await
        .unwrap();
    let after = p.send(ProducerRecord::new(TOPIC, "after").partition(0)).await.unwrap();
    let err = big.await.unwrap_err();
    assert!(
        matches!(
            err,
            ProduceError::Rejected {
                code: tonic::Code::InvalidArgument,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.fate(), Fate::NotWritten);
    assert_eq!(after.await.unwrap().offset, Some(1), "the refused batch left no gap");
    let values: Vec<Vec<u8>> = read_all(&a.addr, TOPIC, 0).await.into_iter().map(|r| r.value).collect();
    assert_eq!(values, [b"before".to_vec(), b"after".to_vec()]);
    p.close().await;
    let err = p.send(ProducerRecord::new(TOPIC, "late")).await.unwrap_err();
    assert!(matches!(err, ProduceError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_agent_fills_the_buffer_and_sends_fail_within_bounds() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, TOPIC, 1).await;
    leaders(&a.addr, 1).await;
    let p = producer(&[&a.addr])
        .buffer_bytes(256 * 1024)
        .batch_bytes(64 * 1024)
        .max_block(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(500))
        .delivery_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    p.send_and_wait(ProducerRecord::new(TOPIC, "warm")).await.unwrap();
    a.pause();
    let mut deliveries = Vec::new();
    let started = std::time::Instant::now();
    let full = loop {
        let value = format!("{:0>1000}", deliveries.len());
        match p.send(ProducerRecord::new(TOPIC, value)).await {
            Ok(d) => deliveries.push(d),
            Err(e) => break e,
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the buffer never filled");
    };
    assert!(matches!(full, ProduceError::BufferFull(_)), "{full}");
    assert!(deliveries.len() < 300, "bounded by buffer memory: {}", deliveries.len());
    for d in deliveries {
        let err = d.await.unwrap_err();
        assert!(matches!(err, ProduceError::TimedOut { .. }), "{err}");
    }
    assert_eq!(p.available_memory(), 256 * 1024, "every byte is returned");
    a.resume();
    p.send_and_wait(ProducerRecord::new(TOPIC, "after")).await.unwrap();
    let log: Vec<Vec<u8>> = read_all(&a.addr, TOPIC, 0).await.into_iter().map(|r| r.value).collect();
    assert_eq!(log[0], b"warm");
    // Timed-out batches may or may not have landed (even after "after": a request
    // can linger in the stalled agent), but nothing landed twice.
    let distinct: std::collections::HashSet<&Vec<u8>> = log.iter().collect();
    assert_eq!(distinct.len(), log.len(), "no record appended twice");
    assert_eq!(log.iter().filter(|v| v.as_slice() == b"after").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_and_committed_deliver() {
    let cluster = Cluster::new();
    let (_, objects) = cluster.objects();
    let a = cluster.start("a", &["--set", &objects]).await;
    create_topic(&a.addr, TOPIC, 1).await;
    leaders(&a.addr, 1).await;
    let none = producer(&[&a.addr])
        .acks(Acks::None)
        .idempotence(false)
        .build()
        .unwrap();
    let m = none.send_and_wait(ProducerRecord::new(TOPIC, "fire")).await.unwrap();
    assert_eq!(m.offset, None, "no offset without acks");
    none.close().await;
    let committed = producer(&[&a.addr]).acks(Acks::Committed).build().unwrap();
    let m = committed
        .send_and_wait(ProducerRecord::new(TOPIC, "kept").timestamp_ms(1_700_000_000_000))
        .await
        .unwrap();
    assert_eq!(m.timestamp_ms, 1_700_000_000_000);
    let log = read_all(&a.addr, TOPIC, 0).await;
    assert_eq!(log[m.offset.unwrap() as usize].value, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_batches_arrive_intact_and_smaller() {
    let cluster = Cluster::new();
    let (a, proxy, proxied) = proxied_agent(&cluster, 1).await;
    let values: Vec<String> = (0..2000)
        .map(|i| format!("record {i} {}", "abc".repeat(i % 50)))
        .collect();
    let mut sent_bytes = Vec::new();
    for compression in [cairn_producer::Compression::None, cairn_producer::Compression::Gzip] {
        let before = proxy.upstream_bytes.load(std::sync::atomic::Ordering::SeqCst);
        let p = producer(&[&proxied]).compression(compression).build().unwrap();
        let mut deliveries = Vec::new();
        for v in &values {
            deliveries.push(p.send(ProducerRecord::new(TOPIC, v.clone()).key("k")).await.unwrap());
        }
        for d in deliveries {
            d.await.unwrap();
        }
        p.close().await;
        drop(p);
        // The proxy counts a connection's bytes when it closes: wait for all of them.
        proxy.wait_idle().await;
        let after = proxy.upstream_bytes.load(std::sync::atomic::Ordering::SeqCst);
        sent_bytes.push(after - before);
    }
    eprintln!("bytes sent upstream: plain {}, gzip {}", sent_bytes[0], sent_bytes[1]);
    assert!(
        sent_bytes[1] * 3 < sent_bytes[0],
        "gzip requests are much smaller on the wire: {sent_bytes:?}"
    );
    let log: Vec<String> = read_values(&a.addr, TOPIC, 0).await;
    assert_eq!(log.len(), values.len() * 2);
    assert_eq!(log[..values.len()], values[..]);
    assert_eq!(
        log[values.len()..],
        values[..],
        "the compressed copy is byte for byte the same"
    );
}

/// Holds one of the agent's call slots with a Fetch long-polling at the end
/// of partition 0 (`at`, its high watermark) until aborted.
async fn occupy_a_slot(addr: &str, at: u64) -> JoinHandle<()> {
    let mut client = agent(addr).await;
    let task = tokio::spawn(async move {
        let _ = client
            .fetch(pb::FetchRequest {
                frames: false,
                topic: TOPIC.into(),
                partition: 0,
                offset: at,
                max_bytes: 1,
                max_wait_ms: 60_000,
            })
            .await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_produce_is_retried_with_its_sequence_and_never_reported_as_maybe_written() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &["--set", "grpc.max_concurrent_requests=2"]).await;
    create_topic(&a.addr, TOPIC, 1).await;
    leaders(&a.addr, 1).await;
    let p = producer(&[&a.addr])
        .delivery_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    p.send_and_wait(ProducerRecord::new(TOPIC, "first")).await.unwrap();
    let identity = p.identity();
    let requests_before = p.stats().requests;

    // Both slots are taken by long polls: every Produce is shed (RESOURCE_EXHAUSTED,
    // OVERLOADED) until one ends, and the producer keeps retrying the same batch.
    let holds = [occupy_a_slot(&a.addr, 1).await, occupy_a_slot(&a.addr, 1).await];
    let delivery = p.send(ProducerRecord::new(TOPIC, "shed-then-written")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for hold in holds {
        hold.abort();
    }
    let landed = delivery.await.unwrap();
    assert_eq!(landed.offset, Some(1));
    assert!(p.stats().requests > requests_before + 1, "the shed batch was retried");
    assert_eq!(
        p.identity(),
        identity,
        "same producer id: the sequence was not abandoned"
    );

    // Shed until its delivery timeout: reported as not written, and not in the log.
    let short = producer(&[&a.addr])
        .delivery_timeout(Duration::from_millis(1500))
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    short.send_and_wait(ProducerRecord::new(TOPIC, "warm")).await.unwrap();
    let holds = [occupy_a_slot(&a.addr, 3).await, occupy_a_slot(&a.addr, 3).await];
    let err = short
        .send_and_wait(ProducerRecord::new(TOPIC, "never"))
        .await
        .unwrap_err();
    for hold in holds {
        hold.abort();
    }
    assert_eq!(err.fate(), Fate::NotWritten, "shed means not written: {err}");
    // The aborted long polls hold their slots until the agent sees their
    // streams reset; read once it sheds no more.
    cairn_testkit::eventually(Duration::from_secs(10), "the agent's slots free again", || async {
        cairn_testkit::cluster::agent(&a.addr)
            .await
            .get_metadata(pb::GetMetadataRequest::default())
            .await
            .ok()
    })
    .await;
    let values: Vec<String> = read_values(&a.addr, TOPIC, 0).await;
    assert_eq!(values, ["first", "shed-then-written", "warm"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_reports_into_the_applications_registry() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, TOPIC, 1).await;
    leaders(&a.addr, 1).await;
    let metrics = cairn_client::Metrics::new();
    let p = producer(&[&a.addr]).metrics(&metrics).build().unwrap();
    for i in 0..10 {
        p.send_and_wait(ProducerRecord::new(TOPIC, format!("{i}")))
            .await
            .unwrap();
    }
    let text = metrics.encode();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{text}"))
    };
    let requests = p.stats().requests as f64;
    assert!(requests >= 1.0);
    assert_eq!(value("cairn_producer_requests_total{producer="), requests);
    assert_eq!(value("cairn_producer_errors_total{producer="), 0.0);
    assert_eq!(
        value(r#"cairn_rpc_client_requests_total{service="cairn.agent.v1.AgentService",method="Produce",code="OK"}"#),
        requests,
        "every Produce call counted by the client layer"
    );
    assert_eq!(
        value("cairn_producer_buffer_used_bytes{producer="),
        0.0,
        "all acknowledged"
    );
}
