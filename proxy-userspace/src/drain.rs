//! Graceful shutdown: a signal that tells listeners to stop accepting, and a deadline after
//! which open connections are closed.

use tokio::sync::watch;

/// Sends the drain signal.
#[derive(Clone)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Observes the drain signal.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

pub fn channel() -> (Drain, Watch) {
    let (tx, rx) = watch::channel(false);
    (Drain { tx }, Watch { rx })
}

impl Drain {
    pub fn start(&self) {
        let _ = self.tx.send(true);
    }
}

impl Watch {
    /// Resolves once draining has started (immediately if it already has).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, draining"),
        _ = int.recv() => tracing::info!("SIGINT received, draining"),
    }
}
