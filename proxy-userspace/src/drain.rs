//! Graceful shutdown: a signal that tells listeners to stop accepting, and a deadline after
//! which open connections are closed.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Sends the drain signal.
#[derive(Clone)]
pub struct Drain {
    tx: watch::Sender<bool>,
    token: CancellationToken,
}

/// Observes the drain signal.
#[derive(Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    /// The same signal, for the many that wait on it while they serve (every HTTP
    /// connection): polling its future costs little, where the watch's costs hundreds of
    /// instructions each time the connection wakes (callgrind, bench http).
    token: CancellationToken,
}

pub fn channel() -> (Drain, Watch) {
    let (tx, rx) = watch::channel(false);
    let token = CancellationToken::new();
    (
        Drain {
            tx,
            token: token.clone(),
        },
        Watch { rx, token },
    )
}

impl Drain {
    pub fn start(&self) {
        let _ = self.tx.send(true);
        self.token.cancel();
    }
}

impl Watch {
    /// Resolves once draining has started (immediately if it already has).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    /// Whether draining has started.
    pub fn draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once draining has started; cheap to poll often.
    pub fn started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// SIGTERM and SIGINT, listened for from before meshd starts: one that arrives during the
/// start is kept, and meshd drains as soon as it is up, instead of dying with its cgroups left
/// behind.
pub struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    pub fn listen() -> Termination {
        use tokio::signal::unix::{SignalKind, signal};
        Termination {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// Resolves on SIGTERM or SIGINT (at once if one came already).
    pub async fn received(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received, draining"),
            _ = self.int.recv() => tracing::info!("SIGINT received, draining"),
        }
    }
}
