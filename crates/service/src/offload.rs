//! Heavy work that is not on any request's path (building a segment,
//! preparing a file), run on its own OS thread at a lower CPU priority.
//!
//! On a machine with few cores such work competes with the threads that
//! answer requests: a segment build of 64 MiB takes a core for a hundred
//! milliseconds or more, and every durable ack queued behind the stolen core
//! waits that long. Niced, the scheduler gives the request threads the CPU
//! first and the background work takes what is left; it still finishes
//! (nice lowers the share, it never starves a runnable thread outright).
//!
//! Each call gets a fresh thread, so the priority is set once and never has
//! to be raised back (raising it needs a privilege services do not have);
//! Tokio's blocking pool is left at normal priority for the reads requests
//! wait on.

/// How much lower than normal (the nice increment, 0..=19).
pub const NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`NICE`] (Linux: per thread).
/// Best effort: where the platform refuses, the thread keeps its priority.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        if let Err(error) = rustix::process::setpriority_process(Some(tid), (current + NICE).min(19)) {
            tracing::debug!(%error, "could not lower a background thread's priority");
        }
    }
}

/// The priority the calling thread runs at (its nice value; 0 where unknown).
pub fn this_thread_priority() -> i32 {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// The work panicked, or its thread could not be started.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("could not start the {0} thread: {1}")]
    Spawn(&'static str, std::io::Error),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// Runs `work` on a new thread named `name` at lowered priority and waits for
/// its result without blocking the async workers.
pub async fn run_low_priority<T, F>(name: &'static str, work: F) -> Result<T, OffloadError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_thread();
            let _ = tx.send(work());
        })
        .map_err(|e| OffloadError::Spawn(name, e))?;
    rx.await.map_err(|_| OffloadError::Panicked(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn work_runs_niced_on_its_own_thread_and_the_caller_keeps_its_priority() {
        let before = this_thread_priority();
        let (priority, name) = run_low_priority("cairn-test-offload", || {
            (this_thread_priority(), std::thread::current().name().map(str::to_owned))
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("cairn-test-offload"));
        if cfg!(target_os = "linux") {
            assert_eq!(priority, (before + NICE).min(19), "the work ran niced");
        }
        assert_eq!(this_thread_priority(), before, "the caller's thread is untouched");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error_not_a_hang() {
        let result = run_low_priority("cairn-test-panic", || -> u32 { panic!("boom") }).await;
        assert!(matches!(result, Err(OffloadError::Panicked("cairn-test-panic"))));
    }
}
