//! Wall-clock time in the protocol's unit.

use std::time::{SystemTime, UNIX_EPOCH};

use promhub_core::frames::Millis;

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
