//! Workflow templates: tasker's YAML shape, checked once at registration.
//!
//! A template is a namespace, a name and a semver version (immutable once
//! registered), an optional JSON Schema for the task's input context, and
//! steps that form a DAG through their `dependencies`. Registration refuses
//! unknown dependencies, duplicate step names and cycles, so everything that
//! runs later may assume a valid DAG.
//!
//! YAML is read with `yaml_serde`, the YAML organisation's maintained
//! continuation of the archived `serde_yaml` (same data model and serde
//! integration, so templates written for tasker parse the same way).

use std::{collections::HashMap, time::Duration};

use serde::Deserialize;

/// Attempts of a step, counting the first run, unless it says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// First retry delay of the exponential backoff.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Largest retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a template was refused; `field` names where, for INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {field}: {reason}")]
pub struct TemplateError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> TemplateError {
    TemplateError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A step's handler: a bare name, or tasker's `{callable, initialization}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum HandlerSpec {
    Name(String),
    Callable {
        callable: String,
        #[serde(default)]
        initialization: serde_json::Value,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    retryable: Option<bool>,
    max_attempts: Option<u32>,
    backoff_base_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    /// tasker writes the backoff kind; only exponential is served.
    backoff: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: String,
    description: Option<String>,
    handler: HandlerSpec,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    retry: RetrySpec,
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSpec {
    name: String,
    #[serde(alias = "namespace_name")]
    namespace: String,
    version: String,
    description: Option<String>,
    input_schema: Option<serde_json::Value>,
    identity_strategy: Option<String>,
    steps: Vec<StepSpec>,
}

/// How CreateTask tells a duplicate (tasker's identity strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Identity {
    /// The same template and context is the same task (the default).
    #[default]
    Strict,
    /// Only the caller's idempotency key (`idempotency-key` metadata) identifies
    /// a task; without one every request creates a task.
    CallerProvided,
    /// Every request creates a task.
    AlwaysUnique,
}

/// How a step is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub retryable: bool,
    /// Attempts in all, the first run included (≥ 1).
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Retry {
    /// The delay before attempt `attempt + 1` after attempt `attempt`
    /// (1-based) failed: base × 2^(attempt − 1), capped; a delay the step
    /// asked for wins, still capped.
    pub fn delay(&self, attempt: u32, requested: Option<Duration>) -> Duration {
        if let Some(requested) = requested {
            return requested.min(self.backoff_max);
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff_base.saturating_mul(factor).min(self.backoff_max)
    }
}

/// One step of a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub description: Option<String>,
    pub handler: String,
    pub handler_config: serde_json::Value,
    /// Indexes into [`Template::steps`] of the steps this one waits for.
    pub parents: Vec<usize>,
    pub retry: Retry,
    pub timeout: Option<Duration>,
}

/// A registered template: a valid DAG of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub namespace: String,
    pub name: String,
    pub version: semver::Version,
    pub description: Option<String>,
    pub input_schema: Option<serde_json::Value>,
    pub identity: Identity,
    pub steps: Vec<Step>,
    /// The text it was registered from: a version's body never changes.
    pub source: String,
}

fn name_rule(field: &str, value: &str) -> Result<(), TemplateError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            format!("{value:?} must be 1-128 characters of letters, digits, '_', '-' and '.'"),
        ))
    }
}

impl Template {
    /// Parses and checks a template written in YAML.
    pub fn from_yaml(source: &str) -> Result<Template, TemplateError> {
        let spec: TemplateSpec = yaml_serde::from_str(source).map_err(|e| refuse("yaml", e.to_string()))?;
        name_rule("namespace", &spec.namespace)?;
        name_rule("name", &spec.name)?;
        let version = semver::Version::parse(&spec.version)
            .map_err(|e| refuse("version", format!("{:?} is not a semver version: {e}", spec.version)))?;
        if let Some(schema) = &spec.input_schema {
            crate::schema::check_schema(schema, "input_schema").map_err(|v| refuse(v.path, v.reason))?;
        }
        let identity = match spec.identity_strategy.as_deref() {
            None | Some("strict") => Identity::Strict,
            Some("caller_provided") => Identity::CallerProvided,
            Some("always_unique") => Identity::AlwaysUnique,
            Some(other) => {
                return Err(refuse(
                    "identity_strategy",
                    format!("{other:?}: expected strict, caller_provided or always_unique"),
                ));
            }
        };
        if spec.steps.is_empty() {
            return Err(refuse("steps", "a template needs at least one step"));
        }
        let mut index = HashMap::new();
        for (i, step) in spec.steps.iter().enumerate() {
            name_rule(&format!("steps[{i}].name"), &step.name)?;
            if index.insert(step.name.as_str(), i).is_some() {
                return Err(refuse(
                    format!("steps[{i}].name"),
                    format!("{:?} appears twice", step.name),
                ));
            }
        }
        let mut steps = Vec::with_capacity(spec.steps.len());
        for (i, step) in spec.steps.iter().enumerate() {
            let mut parents = Vec::new();
            for dependency in &step.dependencies {
                let Some(&p) = index.get(dependency.as_str()) else {
                    return Err(refuse(
                        format!("steps[{i}].dependencies"),
                        format!(
                            "{:?} depends on {dependency:?}, which is not a step of this template",
                            step.name
                        ),
                    ));
                };
                if !parents.contains(&p) {
                    parents.push(p);
                }
            }
            let (handler, handler_config) = match &step.handler {
                HandlerSpec::Name(name) => (name.clone(), serde_json::Value::Null),
                HandlerSpec::Callable {
                    callable,
                    initialization,
                } => (callable.clone(), initialization.clone()),
            };
            name_rule(&format!("steps[{i}].handler"), &handler)?;
            steps.push(Step {
                name: step.name.clone(),
                description: step.description.clone(),
                handler,
                handler_config,
                parents,
                retry: retry(i, &step.retry)?,
                timeout: step.timeout_seconds.map(Duration::from_secs),
            });
        }
        let template = Template {
            namespace: spec.namespace,
            name: spec.name,
            version,
            description: spec.description,
            input_schema: spec.input_schema,
            identity,
            steps,
            source: source.to_owned(),
        };
        if let Some(cycle) = template.cycle() {
            return Err(refuse("steps", format!("dependencies form a cycle through {cycle:?}")));
        }
        Ok(template)
    }

    /// A step on a dependency cycle, if there is one (Kahn's algorithm:
    /// what is never freed of parents is on or behind a cycle).
    fn cycle(&self) -> Option<String> {
        let order = self.order();
        (order.len() < self.steps.len()).then(|| {
            let placed: std::collections::HashSet<usize> = order.into_iter().collect();
            (0..self.steps.len())
                .find(|i| !placed.contains(i))
                .map(|i| self.steps[i].name.clone())
                .unwrap_or_default()
        })
    }

    /// Steps in an order where every step comes after its parents (ties in
    /// template order); shorter than `steps` only for a cyclic template.
    pub fn order(&self) -> Vec<usize> {
        let mut waiting: Vec<usize> = self.steps.iter().map(|s| s.parents.len()).collect();
        let mut out = Vec::with_capacity(self.steps.len());
        let mut ready: std::collections::BTreeSet<usize> = (0..self.steps.len()).filter(|&i| waiting[i] == 0).collect();
        while let Some(i) = ready.pop_first() {
            out.push(i);
            for (child, step) in self.steps.iter().enumerate() {
                if step.parents.contains(&i) {
                    waiting[child] -= 1;
                    if waiting[child] == 0 {
                        ready.insert(child);
                    }
                }
            }
        }
        out
    }

    /// Steps not yet `done` whose parents all are: what may run now.
    pub fn ready(&self, done: &[bool]) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&i| !done[i] && self.steps[i].parents.iter().all(|&p| done[p]))
            .collect()
    }
}

fn retry(i: usize, spec: &RetrySpec) -> Result<Retry, TemplateError> {
    let field = |f: &str| format!("steps[{i}].retry.{f}");
    if let Some(kind) = &spec.backoff
        && kind != "exponential"
    {
        return Err(refuse(
            field("backoff"),
            format!("{kind:?}: only exponential is supported"),
        ));
    }
    let max_attempts = spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        return Err(refuse(field("max_attempts"), "counts the first run, so at least 1"));
    }
    let backoff_base = spec.backoff_base_ms.map_or(DEFAULT_BACKOFF_BASE, Duration::from_millis);
    let backoff_max = spec.max_backoff_ms.map_or(DEFAULT_BACKOFF_MAX, Duration::from_millis);
    if backoff_base > backoff_max {
        return Err(refuse(field("backoff_base_ms"), "is above max_backoff_ms"));
    }
    Ok(Retry {
        retryable: spec.retryable.unwrap_or(true),
        max_attempts,
        backoff_base,
        backoff_max,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DIAMOND: &str = r#"
name: diamond_workflow
namespace_name: demo
version: 1.0.0
description: start squares n, two branches square that, the end multiplies them
input_schema:
  type: object
  required: [even_number]
  properties:
    even_number: {type: integer}
steps:
  - name: start
    handler: {callable: square}
  - name: left
    handler: square
    dependencies: [start]
  - name: right
    handler: square
    dependencies: [start]
    retry: {max_attempts: 5, backoff_base_ms: 200, max_backoff_ms: 2000}
    timeout_seconds: 30
  - name: end
    handler: multiply
    dependencies: [left, right]
"#;

    #[test]
    fn a_diamond_parses_with_tasker_defaults_and_runs_in_dag_order() {
        let t = Template::from_yaml(DIAMOND).unwrap();
        assert_eq!((t.namespace.as_str(), t.name.as_str()), ("demo", "diamond_workflow"));
        assert_eq!(t.version, semver::Version::new(1, 0, 0));
        assert_eq!(t.steps[0].handler, "square");
        assert_eq!(t.steps[3].parents, [1, 2]);
        assert_eq!(
            t.steps[0].retry,
            Retry {
                retryable: true,
                max_attempts: 3,
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(30)
            }
        );
        assert_eq!(t.steps[2].retry.max_attempts, 5);
        assert_eq!(t.steps[2].timeout, Some(Duration::from_secs(30)));
        assert_eq!(t.order(), [0, 1, 2, 3]);
        assert_eq!(t.ready(&[false; 4]), [0]);
        assert_eq!(t.ready(&[true, false, false, false]), [1, 2]);
        assert_eq!(t.ready(&[true, true, false, false]), [2], "end waits for both branches");
        assert_eq!(t.ready(&[true, true, true, false]), [3]);
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap_and_a_requested_delay_wins() {
        let r = Template::from_yaml(DIAMOND).unwrap().steps[0].retry;
        let delays: Vec<u64> = (1..=7).map(|a| r.delay(a, None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(r.delay(1, Some(Duration::from_secs(5))), Duration::from_secs(5));
        assert_eq!(r.delay(1, Some(Duration::from_secs(500))), Duration::from_secs(30));
        assert_eq!(r.delay(u32::MAX, None), Duration::from_secs(30), "no overflow");
    }

    fn refused(yaml: &str) -> TemplateError {
        Template::from_yaml(yaml).unwrap_err()
    }

    #[test]
    fn bad_templates_are_refused_naming_the_field() {
        let base = "name: t\nnamespace: demo\nversion: 1.0.0\nsteps:\n";
        let cycle = refused(&format!(
            "{base}  - {{name: a, handler: h, dependencies: [c]}}\n  - {{name: b, handler: h, dependencies: [a]}}\n  - {{name: c, handler: h, dependencies: [b]}}\n"
        ));
        assert_eq!(cycle.field, "steps");
        assert!(cycle.reason.contains("cycle"), "{cycle}");
        let self_loop = refused(&format!("{base}  - {{name: a, handler: h, dependencies: [a]}}\n"));
        assert!(self_loop.reason.contains("cycle"), "{self_loop}");
        let unknown = refused(&format!("{base}  - {{name: a, handler: h, dependencies: [ghost]}}\n"));
        assert_eq!(unknown.field, "steps[0].dependencies");
        assert!(unknown.reason.contains("ghost"));
        let twice = refused(&format!(
            "{base}  - {{name: a, handler: h}}\n  - {{name: a, handler: h}}\n"
        ));
        assert_eq!(twice.field, "steps[1].name");
        assert_eq!(
            refused("name: t\nnamespace: demo\nversion: one\nsteps:\n  - {name: a, handler: h}\n").field,
            "version"
        );
        assert_eq!(refused(&base.replace("steps:\n", "steps: []\n")).field, "steps");
        assert_eq!(
            refused(&format!(
                "{base}  - {{name: a, handler: h, retry: {{max_attempts: 0}}}}\n"
            ))
            .field,
            "steps[0].retry.max_attempts"
        );
        assert_eq!(
            refused(&format!(
                "{base}  - {{name: a, handler: h, retry: {{backoff: linear}}}}\n"
            ))
            .field,
            "steps[0].retry.backoff"
        );
        assert_eq!(
            refused(&format!("{base}  - {{name: 'a b', handler: h}}\n")).field,
            "steps[0].name"
        );
        let typo = refused(&format!("{base}  - {{name: a, handler: h, dependncies: [x]}}\n"));
        assert_eq!(typo.field, "yaml", "an unknown key is a mistake, not ignored: {typo}");
        assert!(typo.reason.contains("dependncies"), "{typo}");
    }

    /// A small deterministic generator (no extra crate): random DAGs by
    /// letting each step depend on earlier ones only.
    fn random_dag(seed: u64, n: usize) -> String {
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut yaml = String::from("name: r\nnamespace: demo\nversion: 0.1.0\nsteps:\n");
        // Template order shuffled relative to the DAG so order() must sort.
        let mut names: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            names.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        for &step in &names {
            let deps: Vec<String> = (0..step).filter(|_| next() % 3 == 0).map(|d| format!("s{d}")).collect();
            yaml.push_str(&format!(
                "  - {{name: s{step}, handler: h, dependencies: [{}]}}\n",
                deps.join(", ")
            ));
        }
        yaml
    }

    #[test]
    fn on_random_dags_every_step_is_ordered_and_made_ready_after_all_its_parents_exactly_once() {
        for seed in 1..200u64 {
            let n = 1 + (seed as usize % 12);
            let t = Template::from_yaml(&random_dag(seed, n)).unwrap();
            let order = t.order();
            assert_eq!(order.len(), n);
            let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &s)| (s, p)).collect();
            for (i, step) in t.steps.iter().enumerate() {
                assert!(step.parents.iter().all(|p| position[p] < position[&i]), "seed {seed}");
            }
            // Run it: each round completes everything ready.
            let mut done = vec![false; n];
            let mut ran = vec![0; n];
            while done.iter().any(|d| !d) {
                let ready = t.ready(&done);
                assert!(!ready.is_empty(), "seed {seed}: stuck");
                for i in ready {
                    assert!(t.steps[i].parents.iter().all(|&p| done[p]));
                    ran[i] += 1;
                    done[i] = true;
                }
            }
            assert!(ran.iter().all(|&r| r == 1), "seed {seed}: {ran:?}");
        }
    }
}
