//! Wall-clock helpers shared by the capture stamps and the latency readout.
//!
//! Capture times are wall-clock (Unix epoch) rather than `Instant`s because they travel
//! to the other peer inside the picture (see [`super::pattern`]): two processes on the
//! same machine, or two machines with synced clocks, can then compute glass-to-glass
//! latency by comparing a received stamp with their own clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the system clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Wall-clock milliseconds truncated to 32 bits (wraps every ~49.7 days), the unit the
/// picture stamp carries. Compare two of these only with `wrapping_sub`.
pub fn now_ms_u32() -> u32 {
    ms_u32(now_us())
}

/// Truncates a microsecond timestamp to the stamp's wrapping 32-bit milliseconds.
pub fn ms_u32(us: u64) -> u32 {
    // Truncation is the point: the stamp keeps the low 32 bits of the millisecond count.
    (us / 1000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_truncates_and_wraps() {
        assert_eq!(ms_u32(1_999), 1);
        assert_eq!(ms_u32((u64::from(u32::MAX) + 5) * 1000), 4);
        assert!(now_us() > 1_600_000_000_000_000);
    }
}
