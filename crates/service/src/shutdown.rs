//! Process signals: the first SIGTERM or SIGINT starts a graceful shutdown, a
//! second one exits at once.

use std::{future::Future, pin::Pin};

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// A future that resolves when the process should shut down.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Resolves on the first SIGTERM or SIGINT and arms a second signal to force exit.
pub fn on_signal() -> Shutdown {
    Box::pin(async {
        wait_for_signal().await;
        tracing::info!("shutdown requested; a second signal forces exit");
        tokio::spawn(async {
            wait_for_signal().await;
            tracing::warn!("second shutdown signal, exiting now");
            std::process::exit(130);
        });
    })
}

async fn wait_for_signal() {
    match unix_signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
