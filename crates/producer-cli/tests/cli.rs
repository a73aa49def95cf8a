//! The `cairn-producer` binary against a real agent: `produce` from stdin (lines
//! and length-prefixed records) reports what it delivered, and `perf --json`
//! reports what it measured.

#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    process::{Command, Stdio},
};

use cairn_testkit::{
    binary,
    cluster::{Cluster, create_topic, read_all, wait_leader},
};

fn run(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(binary("cairn-producer"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_reads_stdin_and_reports_each_record() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "lines", 1).await;
    wait_leader(&a.addr, "lines", 0).await;

    let (ok, stdout, stderr) = run(
        &[
            "produce",
            "--bootstrap",
            &a.addr,
            "--topic",
            "lines",
            "--key-separator",
            "=",
            "--verbose",
        ],
        b"k1=first\nsecond\r\nk3=third\n",
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout, "1\t0\t0\n2\t0\t1\n3\t0\t2\n",
        "record number, partition, offset"
    );
    assert!(stderr.contains("delivered 3 records to lines; 0 failed"), "{stderr}");
    let log = read_all(&a.addr, "lines", 0).await;
    let got: Vec<(Option<Vec<u8>>, Vec<u8>)> = log.into_iter().map(|r| (r.key, r.value)).collect();
    assert_eq!(
        got,
        [
            (Some(b"k1".to_vec()), b"first".to_vec()),
            (None, b"second".to_vec()),
            (Some(b"k3".to_vec()), b"third".to_vec()),
        ]
    );

    // Length-prefixed records may hold newlines and any bytes.
    let framed_args = [
        "produce",
        "--bootstrap",
        &a.addr,
        "--topic",
        "lines",
        "--format",
        "length-prefixed",
    ];
    let mut framed = Vec::new();
    for record in [&b"a\nb"[..], &[0u8, 255, 10][..]] {
        framed.extend_from_slice(&(record.len() as u32).to_be_bytes());
        framed.extend_from_slice(record);
    }
    let (ok, _, stderr) = run(&framed_args, &framed);
    assert!(ok, "{stderr}");
    let log = read_all(&a.addr, "lines", 0).await;
    assert_eq!(log[3].value, b"a\nb");
    assert_eq!(log[4].value, [0u8, 255, 10]);

    // A record cut short is an error, not a silent truncation.
    let (ok, _, stderr) = run(&framed_args, &[0, 0, 0, 9, b'x']);
    assert!(!ok);
    assert!(stderr.contains("shorter than its length prefix"), "{stderr}");
    assert_eq!(read_all(&a.addr, "lines", 0).await.len(), 5);

    // An unknown topic fails every record, and the exit code says so.
    let (ok, _, stderr) = run(&["produce", "--bootstrap", &a.addr, "--topic", "nope"], b"x\n");
    assert!(!ok);
    assert!(stderr.contains("unknown topic nope"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_reports_what_it_measured_as_json() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let (ok, stdout, stderr) = run(
        &[
            "perf",
            "--bootstrap",
            &a.addr,
            "--topic",
            "perf",
            "--partitions",
            "2",
            "--records",
            "20000",
            "--record-size",
            "64",
            "--keys",
            "100",
            "--json",
        ],
        b"",
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["acked"], 20000);
    assert_eq!(report["failed"], 0);
    assert!(report["records_per_s"].as_f64().unwrap() > 0.0);
    let l = &report["latency_ms"];
    assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
    assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
    let total = read_all(&a.addr, "perf", 0).await.len() + read_all(&a.addr, "perf", 1).await.len();
    assert_eq!(report["warmup_records"], 2, "one per partition, before the clock");
    assert_eq!(total, 20002, "every acknowledged record is in the log, once");
}
