//! AuthorizationPolicy DENY at connect time: a managed workload's connect to a destination that
//! an identity-only DENY refuses fails with EPERM before a byte flows. meshd fills the map with
//! the (source workload, destination address) pairs whose denial depends on nothing else.

use proxy_common::{DenyKey, Endpoint, PolicyCounter};

use crate::maps::{CONNECT_DENY, POLICY_COUNTERS};

/// Makes connect() fail with EPERM.
const DENY: i32 = 0;

/// `Err(DENY)` when the workload may not connect to `dst`.
#[inline(always)]
pub fn check(workload_id: u32, dst: &Endpoint) -> Result<(), i32> {
    let key = DenyKey {
        workload_id,
        _pad: 0,
        dst: *dst,
    };
    // SAFETY: read-only lookup.
    if unsafe { CONNECT_DENY.get(key) }.is_none() {
        return Ok(());
    }
    if let Some(slot) = POLICY_COUNTERS.get_ptr_mut(PolicyCounter::ConnectDenied as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
    Err(DENY)
}
