//! The engine in process, with a scripted worker on its channels: random
//! DAGs with random failures (every step runs only after all its parents
//! succeeded, and succeeds exactly once), capacity is never exceeded, and a
//! result for an attempt whose lease ended is refused.

#![allow(clippy::unwrap_used)]

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use cairn_orchestrator::{
    engine::{Command, CreateSpec, Engine, EngineConfig, EngineHandle, WorkerJoin},
    metrics::EngineMetrics,
    store::Store,
    template::Template,
};
use cairn_proto::cairn::orchestrator::v1::{self as wpb, connect_response};
use cairn_service::CancellationToken;
use cairn_testkit::{TempDir, sqlite_url};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn config(lease: Duration) -> EngineConfig {
    EngineConfig {
        lease,
        heartbeat_interval: lease / 4,
        max_batch: 256,
        max_ready_steps: 100_000,
        staleness: Duration::from_secs(3600),
        no_worker_timeout: Duration::from_secs(3600),
        sweep_interval: Duration::from_secs(1),
    }
}

async fn engine(dir: &TempDir, lease: Duration) -> (EngineHandle, Store, CancellationToken) {
    let store = Store::connect(&sqlite_url(dir.path()), 4).await.unwrap();
    let (engine, handle, rx) = Engine::start(store.clone(), config(lease), EngineMetrics::default())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(engine.run(rx, stop.clone()));
    (handle, store, stop)
}

/// A random DAG template: each step depends on a random set of earlier ones.
fn random_template(rng: &mut StdRng, i: usize) -> String {
    let n = rng.random_range(1..=8);
    let mut yaml = format!("namespace: prop\nname: dag_{i}\nversion: 1.0.0\nsteps:\n");
    for s in 0..n {
        let deps: Vec<String> = (0..s)
            .filter(|_| rng.random_bool(0.4))
            .map(|p| format!("s{p}"))
            .collect();
        yaml.push_str(&format!(
            "  - name: s{s}\n    handler: h\n    dependencies: [{}]\n    retry:\n      max_attempts: 3\n      backoff_base_ms: 1\n      max_backoff_ms: 4\n",
            deps.join(", ")
        ));
    }
    yaml
}

async fn join(
    handle: &EngineHandle,
    session: u64,
    capacity: usize,
) -> mpsc::Receiver<Result<wpb::ConnectResponse, tonic::Status>> {
    let (tx, rx) = mpsc::channel(capacity * 3 + 64);
    handle
        .commands
        .send(Command::Join(Box::new(WorkerJoin {
            session,
            worker_uuid: format!("00000000-0000-4000-8000-{session:012}"),
            name: format!("fake-{session}"),
            handlers: vec!["h".into()],
            capacity,
            outbound: tx,
        })))
        .await
        .unwrap();
    rx
}

fn spec(namespace: &str, name: &str, context: Value) -> CreateSpec {
    CreateSpec {
        namespace: namespace.into(),
        name: name.into(),
        version: "1.0.0".into(),
        context,
        initiator: "test".into(),
        source_system: "test".into(),
        reason: "test".into(),
        priority: None,
        tags: vec![],
        correlation_id: uuid::Uuid::new_v4().to_string(),
        parent_correlation_id: None,
        idempotency_key: None,
    }
}

fn result(id: &str, outcome: wpb::step_result::Outcome) -> wpb::StepResult {
    wpb::StepResult {
        assignment_id: id.into(),
        outcome: Some(outcome),
        execution_time_ms: 0,
    }
}

#[tokio::test]
async fn random_dags_run_every_step_after_its_parents_and_once() {
    let dir = TempDir::new("engine-prop");
    let (handle, store, stop) = engine(&dir, Duration::from_secs(30)).await;
    let mut rng = StdRng::seed_from_u64(0x0c0ffee);
    let sources: Vec<String> = (0..40).map(|i| random_template(&mut rng, i)).collect();
    let templates: Vec<Template> = sources.iter().map(|s| Template::from_yaml(s).unwrap()).collect();
    let parents: HashMap<String, Vec<Vec<String>>> = templates
        .iter()
        .map(|t| {
            let names = t
                .steps
                .iter()
                .map(|s| s.parents.iter().map(|&p| t.steps[p].name.clone()).collect())
                .collect();
            (t.name.clone(), names)
        })
        .collect();
    handle
        .ask(|reply| Command::Register {
            templates: templates.clone(),
            reply,
        })
        .await
        .unwrap();
    let capacity = 4;
    let mut outbound = join(&handle, 1, capacity).await;
    let mut tasks = HashMap::new();
    for (i, t) in templates.iter().enumerate() {
        for copy in 0..3 {
            let s = handle
                .ask(|reply| Command::Create(Box::new(spec("prop", &t.name, json!({"i": i, "copy": copy}))), reply))
                .await
                .unwrap();
            tasks.insert(s.task.task_uuid.clone(), t.name.clone());
        }
    }
    // (task, step) → the value its success returned; successes per step.
    let mut values: HashMap<(String, String), Value> = HashMap::new();
    let mut succeeded: HashMap<(String, String), usize> = HashMap::new();
    let mut held: HashSet<String> = HashSet::new();
    let mut permanently_failed: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the tasks did not finish");
        let message = match tokio::time::timeout(Duration::from_millis(200), outbound.recv()).await {
            Ok(Some(m)) => m.unwrap(),
            Ok(None) => panic!("the engine let the worker go"),
            Err(_) => {
                // Quiet: done when every task has ended.
                let mut all = true;
                for uuid in tasks.keys() {
                    let state = store.task(uuid).await.unwrap().unwrap().state;
                    all &= matches!(state.as_str(), "complete" | "blocked_by_failures");
                }
                if all {
                    break;
                }
                continue;
            }
        };
        match message.kind {
            Some(connect_response::Kind::Assignment(a)) => {
                assert!(held.insert(a.assignment_id.clone()));
                assert!(held.len() <= capacity, "never more in flight than the worker declared");
                let name = &tasks[&a.task_uuid];
                let index: usize = a.step_name[1..].parse().unwrap();
                let input: Value = serde_json::from_str(&a.input_json).unwrap();
                for p in &parents[name][index] {
                    let expected = &values[&(a.task_uuid.clone(), p.clone())];
                    assert_eq!(
                        &input["parents"][p], expected,
                        "{} ran before its parent {p} finished",
                        a.step_name
                    );
                }
                let outcome = match rng.random_range(0..10) {
                    0..=2 => wpb::step_result::Outcome::Failure(wpb::Failure {
                        retryable: true,
                        message: "flaky".into(),
                        error_type: "flaky".into(),
                        backoff_ms: None,
                    }),
                    3 if rng.random_bool(0.1) => {
                        permanently_failed.insert(a.task_uuid.clone());
                        wpb::step_result::Outcome::Failure(wpb::Failure {
                            retryable: false,
                            message: "broken".into(),
                            error_type: "broken".into(),
                            backoff_ms: None,
                        })
                    }
                    _ => {
                        let value = json!({"result": format!("{}:{}:{}", a.task_uuid, a.step_name, a.attempt)});
                        values.insert((a.task_uuid.clone(), a.step_name.clone()), value.clone());
                        *succeeded.entry((a.task_uuid.clone(), a.step_name.clone())).or_default() += 1;
                        wpb::step_result::Outcome::Success(wpb::Success {
                            result_json: value.to_string(),
                        })
                    }
                };
                handle
                    .commands
                    .send(Command::Started {
                        session: 1,
                        assignment: a.assignment_id.clone(),
                    })
                    .await
                    .unwrap();
                handle
                    .commands
                    .send(Command::Result {
                        session: 1,
                        result: result(&a.assignment_id, outcome),
                    })
                    .await
                    .unwrap();
            }
            Some(connect_response::Kind::Ack(ack)) => {
                assert!(ack.accepted, "{ack:?}");
                held.remove(&ack.assignment_id);
            }
            _ => {}
        }
    }
    assert!(succeeded.values().all(|&n| n == 1), "no step succeeded twice");
    let mut complete = 0;
    for (uuid, name) in &tasks {
        let row = store.task(uuid).await.unwrap().unwrap();
        let steps = store.steps(uuid).await.unwrap();
        if row.state == "complete" {
            complete += 1;
            for s in &steps {
                assert_eq!(s.state, "complete");
                assert_eq!(
                    succeeded.get(&(uuid.clone(), s.name.clone())),
                    Some(&1),
                    "{name}/{}",
                    s.name
                );
                assert!(s.attempts >= 1 && s.attempts <= 3);
            }
        } else {
            // Given up: some step failed for good (no retry, or 3 attempts).
            let failed = steps.iter().find(|s| s.state == "error").unwrap();
            assert!(failed.attempts == 3 || permanently_failed.contains(uuid), "{failed:?}");
        }
    }
    assert!(
        complete > tasks.len() / 2,
        "most tasks complete ({complete} of {})",
        tasks.len()
    );
    stop.cancel();
}

#[tokio::test]
async fn a_result_after_the_lease_ended_is_refused_and_the_step_retried() {
    let dir = TempDir::new("engine-lease");
    let (handle, store, stop) = engine(&dir, Duration::from_millis(300)).await;
    let yaml = "namespace: t\nname: one\nversion: 1.0.0\nsteps:\n  - name: only\n    handler: h\n";
    handle
        .ask(|reply| Command::Register {
            templates: vec![Template::from_yaml(yaml).unwrap()],
            reply,
        })
        .await
        .unwrap();
    let mut outbound = join(&handle, 7, 1).await;
    let task = handle
        .ask(|reply| Command::Create(Box::new(spec("t", "one", json!({}))), reply))
        .await
        .unwrap();
    let connect_response::Kind::Assignment(first) = next(&mut outbound).await else {
        panic!("expected an assignment")
    };
    // No heartbeat: the lease ends and the attempt is cancelled.
    let connect_response::Kind::Cancel(cancel) = next(&mut outbound).await else {
        panic!("expected a cancel")
    };
    assert_eq!(cancel.assignment_id, first.assignment_id);
    handle
        .commands
        .send(Command::Result {
            session: 7,
            result: result(
                &first.assignment_id,
                wpb::step_result::Outcome::Success(wpb::Success {
                    result_json: "{\"late\": true}".into(),
                }),
            ),
        })
        .await
        .unwrap();
    // A worker whose lease expired is suspect until it speaks again; the
    // refusal is what it hears next.
    let connect_response::Kind::Ack(ack) = next(&mut outbound).await else {
        panic!("expected an ack")
    };
    assert!(!ack.accepted, "a late result is refused");
    let connect_response::Kind::Assignment(second) = next(&mut outbound).await else {
        panic!("expected the retry")
    };
    assert_eq!(second.attempt, 2);
    assert_ne!(second.assignment_id, first.assignment_id);
    let steps = store.steps(&task.task.task_uuid).await.unwrap();
    assert!(steps[0].results.is_none(), "nothing of the late result was kept");
    stop.cancel();
}

type Outbound = mpsc::Receiver<Result<wpb::ConnectResponse, tonic::Status>>;

async fn next(outbound: &mut Outbound) -> connect_response::Kind {
    tokio::time::timeout(Duration::from_secs(10), outbound.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .kind
        .unwrap()
}
