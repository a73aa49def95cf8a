//! The orchestrator's figures (`/metrics`): tasks and steps by state, the
//! ready queue, workers and their capacity, assignment and step latency,
//! retries, DLQ entries, and the group commit.

use cairn_service::{
    Metrics,
    metrics::prometheus_client::metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};

type Labels = Vec<(&'static str, String)>;

/// Updated by the engine as rounds commit.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Time from a step becoming ready to its assignment.
    pub assignment_seconds: Histogram,
    /// Time from assignment to the worker's result.
    pub step_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub commit_transitions: Histogram,
    pub retries: Counter,
    task_transitions: Family<Labels, Counter>,
    step_transitions: Family<Labels, Counter>,
    dlq_entries: Family<Labels, Counter>,
    tasks: Family<Labels, Gauge>,
    steps: Family<Labels, Gauge>,
    ready_steps: Gauge,
    workers: Gauge,
    worker_capacity: Gauge,
    assignments_in_flight: Gauge,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            // 100 µs to ~100 s.
            assignment_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            step_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            commit_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            commit_transitions: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            retries: Counter::default(),
            task_transitions: Family::default(),
            step_transitions: Family::default(),
            dlq_entries: Family::default(),
            tasks: Family::default(),
            steps: Family::default(),
            ready_steps: Gauge::default(),
            workers: Gauge::default(),
            worker_capacity: Gauge::default(),
            assignments_in_flight: Gauge::default(),
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EngineMetrics {
    /// Registers everything in `metrics`.
    pub fn register(&self, metrics: &Metrics) {
        let histograms = [
            (
                "cairn_orchestrator_assignment_seconds",
                "Time from a step becoming ready to its assignment to a worker",
                &self.assignment_seconds,
            ),
            (
                "cairn_orchestrator_step_seconds",
                "Time from a step's assignment to its worker's result",
                &self.step_seconds,
            ),
            (
                "cairn_orchestrator_commit_seconds",
                "Time of each group commit (one transaction per engine round)",
                &self.commit_seconds,
            ),
            (
                "cairn_orchestrator_commit_transitions",
                "Task and step transitions written per group commit",
                &self.commit_transitions,
            ),
        ];
        for (name, help, h) in histograms {
            metrics.register(name, help, h.clone());
        }
        metrics.register(
            "cairn_orchestrator_retries",
            "Step attempts scheduled for retry",
            self.retries.clone(),
        );
        let families = [
            (
                "cairn_orchestrator_task_transitions",
                "Task transitions committed, by the state entered",
                &self.task_transitions,
            ),
            (
                "cairn_orchestrator_step_transitions",
                "Step transitions committed, by the state entered",
                &self.step_transitions,
            ),
            (
                "cairn_orchestrator_dlq_entries",
                "DLQ entries created, by reason",
                &self.dlq_entries,
            ),
        ];
        for (name, help, f) in families {
            metrics.register(name, help, f.clone());
        }
        metrics.register(
            "cairn_orchestrator_tasks",
            "Unfinished tasks held by the engine, by state",
            self.tasks.clone(),
        );
        metrics.register(
            "cairn_orchestrator_steps",
            "Steps of unfinished tasks, by state",
            self.steps.clone(),
        );
        let gauges = [
            (
                "cairn_orchestrator_ready_steps",
                "Ready steps waiting for a worker with capacity (the ready queue)",
                &self.ready_steps,
            ),
            ("cairn_orchestrator_workers", "Connected workers", &self.workers),
            (
                "cairn_orchestrator_worker_capacity",
                "Steps the connected workers run at once, summed",
                &self.worker_capacity,
            ),
            (
                "cairn_orchestrator_assignments_in_flight",
                "Assignments held by workers (leases)",
                &self.assignments_in_flight,
            ),
        ];
        for (name, help, g) in gauges {
            metrics.register(name, help, g.clone());
        }
    }

    pub fn observe_commit(&self, took: std::time::Duration, transitions: usize) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_transitions.observe(transitions as f64);
    }

    pub fn task_transition(&self, to: &str) {
        self.task_transitions
            .get_or_create(&vec![("state", to.to_owned())])
            .inc();
    }

    pub fn step_transition(&self, to: &str) {
        self.step_transitions
            .get_or_create(&vec![("state", to.to_owned())])
            .inc();
    }

    pub fn dlq_entry(&self, reason: &str) {
        self.dlq_entries
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Sets the gauges from the engine's memory after a round.
    pub fn set_gauges<'a>(
        &self,
        ready: usize,
        workers: usize,
        capacity: usize,
        in_flight: usize,
        tasks: impl Iterator<Item = &'a str>,
        steps: impl Iterator<Item = &'a str>,
    ) {
        self.ready_steps.set(gauge_value(ready));
        self.workers.set(gauge_value(workers));
        self.worker_capacity.set(gauge_value(capacity));
        self.assignments_in_flight.set(gauge_value(in_flight));
        for (family, states, names) in [
            (
                &self.tasks,
                count(tasks),
                &crate::state::TASK_STATES.map(crate::state::task_name)[..],
            ),
            (
                &self.steps,
                count(steps),
                &crate::state::STEP_STATES.map(crate::state::step_name)[..],
            ),
        ] {
            for name in names {
                let n = states.get(name).copied().unwrap_or(0);
                family
                    .get_or_create(&vec![("state", (*name).to_owned())])
                    .set(gauge_value(n));
            }
        }
    }
}

fn count<'a>(states: impl Iterator<Item = &'a str>) -> std::collections::HashMap<&'a str, usize> {
    let mut out = std::collections::HashMap::new();
    for s in states {
        *out.entry(s).or_insert(0) += 1;
    }
    out
}
