//! Background loops a service runs beside its server and stops on shutdown.

use std::future::Future;

use tokio::{sync::oneshot, task::JoinHandle};

use crate::shutdown::Shutdown;

/// A spawned loop that runs until [`Background::stop`].
pub struct Background {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl Background {
    /// Spawns `run(stop)`, where `stop` resolves when [`Background::stop`] is called.
    pub fn spawn<F, Fut>(run: F) -> Background
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Background { stop, handle }
    }

    /// Asks the loop to stop and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_the_loop_to_finish() {
        let (done_tx, done_rx) = oneshot::channel();
        let task = Background::spawn(|stop| async move {
            stop.await;
            let _ = done_tx.send("cleaned up");
        });
        task.stop().await;
        assert_eq!(done_rx.await.ok(), Some("cleaned up"));
    }
}
