//! Where identity reads the wall clock, so rotation can run under tokio's paused test time.

use std::{fmt, time::SystemTime};

use tokio::time::Instant;

/// A source of wall-clock time. Certificate validity is wall-clock time, so production uses
/// [`SystemClock`]; tests use [`TokioClock`], which moves with `tokio::time::advance`.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> SystemTime;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The wall-clock time at creation plus the tokio time elapsed since: under
/// `tokio::time::pause()` it advances exactly as far as tokio's clock does.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    wall: SystemTime,
    start: Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            wall: SystemTime::now(),
            start: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + self.start.elapsed()
    }
}
