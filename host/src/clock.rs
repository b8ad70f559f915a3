//! Time arithmetic that never panics. `Instant + Duration` panics on overflow, and a
//! duration can come from a manifest or a plugin: every point in time the host computes
//! from one goes through here and saturates at a far future instead.

use std::time::{Duration, Instant, SystemTime};

/// How far "never" is: a century, far beyond any limit a manifest may set, and far
/// inside what the platform's clocks can represent.
pub const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, or at most [`FAR`] after `at`.
pub fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FAR))
        .or_else(|| at.checked_add(Duration::from_secs(3600)))
        .unwrap_or(at)
}

/// `at + d` for tokio's clock, or at most [`FAR`] after `at`.
pub fn after_tokio(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(after(at.into_std(), d))
}

/// `at + d` on the wall clock, or at most [`FAR`] after `at`.
pub fn after_wall(at: SystemTime, d: Duration) -> SystemTime {
    at.checked_add(d.min(FAR)).unwrap_or(at)
}

/// `d` in whole milliseconds, saturating (a policy's times are milliseconds).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, millis)
}

/// [`after`] from now.
pub fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        let huge = Duration::from_secs(u64::MAX);
        assert!(after(now, huge) >= after(now, FAR));
        assert!(after(now, huge) > now + Duration::from_secs(3600));
        assert_eq!(
            after(now, Duration::from_secs(2)),
            now + Duration::from_secs(2)
        );
        let wall = SystemTime::now();
        assert!(after_wall(wall, huge) > wall);
        let t = tokio::time::Instant::now();
        assert!(after_tokio(t, huge) > t);
    }
}
