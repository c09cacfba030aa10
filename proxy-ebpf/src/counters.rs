//! Bumping the per-CPU event counters (no atomics needed: each CPU has its own slot).

use proxy_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
