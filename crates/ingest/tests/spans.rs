//! Junjo's ReadSpans against real agents and a real ingest process: every
//! span exactly once in key order, across a kill -9 of ingest, a leader
//! change, a partition that does not answer, and spans that live only in
//! segments.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;

const TOPIC_ARGS: [&str; 2] = ["--set", "ingest.client.request_timeout=2s"];

#[tokio::test]
async fn a_poller_reads_every_span_exactly_once_in_key_order() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &TOPIC_ARGS).await;
    export(ingest.address("otlp"), 0, 1_000, 50).await;

    let first = page(&ingest.addr, &[], 0).await.unwrap();
    assert_eq!(first.len(), 100, "batch_size 0 means 100");
    assert_eq!(first[0].remaining_count, 999, "retained spans after the first key");
    let bad = page(&ingest.addr, &[1, 2, 3], 10).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    let mut poller = Poller::default();
    poller.poll(&ingest.addr, 37, 1_000).await;
    poller.assert_exactly(1_000);
    let last = page(&ingest.addr, &[], 10_000).await.unwrap();
    assert_eq!(last.len(), 1_000);
    assert_eq!(last.last().unwrap().remaining_count, 0);
    assert!(
        page(&ingest.addr, &poller.key, 10).await.unwrap().is_empty(),
        "nothing after the last key, and the page ends at once"
    );
    // A start below the retained range starts at the oldest span.
    let below = page(&ingest.addr, &[0; 16], 5).await.unwrap();
    assert_eq!(below[0].key_ulid, last[0].key_ulid);
}

#[tokio::test]
async fn a_reader_resumed_after_kill_9_of_ingest_skips_and_repeats_nothing() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let mut ingest = cluster.start_ingest("ingest", &[&a.addr], &TOPIC_ARGS).await;
    export(ingest.address("otlp"), 0, 600, 40).await;
    let mut poller = Poller::default();
    poller.poll(&ingest.addr, 50, 6).await;
    assert_eq!(poller.names.len(), 300);

    ingest.kill();
    // The restarted ingest has no cursor cache: it finds each partition's
    // position from the key alone.
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &TOPIC_ARGS).await;
    export(ingest.address("otlp"), 600, 800, 40).await;
    poller.poll(&ingest.addr, 50, 1_000).await;
    poller.assert_exactly(800);
}

#[tokio::test]
async fn a_leader_change_while_reading_skips_and_repeats_nothing() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let mut b = cluster.start("b", &[]).await;
    let ingest = cluster.start_ingest("ingest", &[&a.addr, &b.addr], &TOPIC_ARGS).await;
    leaders_when(&a.addr, "otel.spans", |leaders| {
        leaders.iter().all(|l| !l.is_empty()) && leaders.iter().any(|l| *l != leaders[0])
    })
    .await;
    export(ingest.address("otlp"), 0, 400, 40).await;
    let mut poller = Poller::default();
    poller.poll(&ingest.addr, 50, 4).await;
    assert_eq!(poller.names.len(), 200);

    // b hands its partitions to a; the new leader continues the log.
    assert_eq!(b.terminate(Duration::from_secs(30)).await, Some(0));
    leaders_when(&a.addr, "otel.spans", |leaders| leaders.iter().all(|l| *l == a.addr)).await;
    // The producer inside ingest finds the new leader at once (a departed
    // agent's refusals make it look again).
    export(ingest.address("otlp"), 400, 600, 40).await;
    poller.poll_until(&ingest.addr, 50, 600, Duration::from_secs(30)).await;
    poller.assert_exactly(600);
}

#[tokio::test]
async fn a_partition_that_does_not_answer_holds_readers_back_instead_of_being_skipped() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let b = cluster.start("b", &[]).await;
    let ingest = cluster.start_ingest("ingest", &[&a.addr, &b.addr], &TOPIC_ARGS).await;
    leaders_when(&a.addr, "otel.spans", |leaders| {
        leaders.iter().all(|l| !l.is_empty()) && leaders.iter().any(|l| *l != leaders[0])
    })
    .await;
    export(ingest.address("otlp"), 0, 200, 20).await;
    let mut poller = Poller::default();
    poller.poll(&ingest.addr, 100, 100).await;
    poller.assert_exactly(200);

    // b stops answering. Spans keep arriving for a's partitions (one per
    // request, so those acknowledged by a are not held up by b's).
    b.pause();
    let otlp_addr = ingest.address("otlp").to_owned();
    let sends: Vec<_> = (200..260)
        .map(|n| {
            let addr = otlp_addr.clone();
            tokio::spawn(async move {
                let mut client = otlp(&addr).await;
                client.export(request("svc", vec![span(n)])).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    let during = page(&ingest.addr, &poller.key, 100).await.unwrap();
    assert!(
        during.iter().all(|m| m.span_bytes.is_empty()),
        "no span is served past a partition that could still append below it: {} served",
        during.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the page ends though a partition does not answer"
    );

    b.resume();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    poller.poll_until(&ingest.addr, 100, 260, Duration::from_secs(30)).await;
    poller.assert_exactly(260);
}

#[tokio::test]
async fn spans_that_live_only_in_segments_are_served_after_the_agents_disk_is_lost() {
    let cluster = Cluster::new();
    let mut a = cluster.start("a", &[]).await;
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &TOPIC_ARGS).await;
    export(ingest.address("otlp"), 0, 300, 30).await;
    // A clean hand-off rolls everything into committed segments; then the
    // agent's disk is lost.
    let port: u16 = a.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(a.terminate(Duration::from_secs(30)).await, Some(0));
    std::fs::remove_dir_all(cluster.data_dir("a")).unwrap();
    let a = cluster.start_on(port, "a", &[]).await;
    wait_leader(&a.addr, "otel.spans", 0).await;

    let mut poller = Poller::default();
    poller.poll_until(&ingest.addr, 64, 300, Duration::from_secs(30)).await;
    poller.assert_exactly(300);
    let scrape = ingest.scrape().await;
    let from_segments = cairn_testkit::metric(&scrape, "cairn_ingest_reader_records_from_segments_total").unwrap();
    assert!(from_segments >= 300.0, "read from the object store: {from_segments}");
}
