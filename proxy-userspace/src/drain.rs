//! Graceful shutdown: a signal that tells listeners to stop accepting, and a deadline after
//! which open connections are closed.

use tokio_util::sync::CancellationToken;

/// Sends the drain signal.
#[derive(Clone)]
pub struct Drain {
    token: CancellationToken,
}

/// Observes the drain signal. Polling its future costs little, which matters to the many that
/// wait on it while they serve (every HTTP connection, each time it wakes).
#[derive(Clone)]
pub struct Watch {
    token: CancellationToken,
}

pub fn channel() -> (Drain, Watch) {
    let token = CancellationToken::new();
    (
        Drain {
            token: token.clone(),
        },
        Watch { token },
    )
}

impl Drain {
    pub fn start(&self) {
        self.token.cancel();
    }
}

impl Watch {
    /// Whether draining has started.
    pub fn draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once draining has started (at once if it already has).
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
