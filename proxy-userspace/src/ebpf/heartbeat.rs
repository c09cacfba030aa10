//! The heartbeat: meshd stamps CLOCK_MONOTONIC into a map; connect4/6 stop redirecting (fail
//! open) or refuse connects (fail closed) once the stamp is older than the timeout.

use std::{sync::Arc, time::Duration};

use super::DatapathMaps;

/// CLOCK_MONOTONIC in nanoseconds, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Beats four times per timeout, on the runtime that serves traffic: if the runtime hangs,
/// the beat stops and the kernel side notices.
pub fn spawn_heartbeat(maps: Arc<DatapathMaps>, timeout: Duration) -> tokio::task::JoinHandle<()> {
    let period = (timeout / 4).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            maps.beat();
        }
    })
}
