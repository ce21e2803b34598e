//! Time arithmetic that cannot panic, for code that handles network input
//! (its durations may come from a peer: an RTT, a delay in an order).
//! A deadline that would overflow the clock is "now": it fails closed.

use std::time::Duration;

pub trait Later: Sized + Copy {
    /// `self + d`, or `self` if that is past the clock's end.
    fn later(self, d: Duration) -> Self;
}

impl Later for std::time::Instant {
    fn later(self, d: Duration) -> Self {
        self.checked_add(d).unwrap_or(self)
    }
}

impl Later for tokio::time::Instant {
    fn later(self, d: Duration) -> Self {
        self.checked_add(d).unwrap_or(self)
    }
}

/// Drops the times (oldest first) that are `window` or more before `now`:
/// the sliding windows that rate limits count in. True when none are left.
pub fn expire_window(
    times: &mut std::collections::VecDeque<std::time::Instant>,
    now: std::time::Instant,
    window: Duration,
) -> bool {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
    times.is_empty()
}

/// Seconds since the Unix epoch: record lifetimes, address-book times and
/// `version` timestamps. A clock before 1970 reads as 0 rather than failing.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Takes a lock even when another thread panicked holding it: the tables
/// behind these locks stay consistent between statements, and a daemon that
/// stopped serving everyone because one task panicked would be worse.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds as a `u32` for the wire, saturating.
pub fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = std::time::Instant::now();
        assert_eq!(
            now.later(Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(now.later(Duration::MAX), now);
        let t = tokio::time::Instant::now();
        assert_eq!(t.later(Duration::MAX), t);
        assert_eq!(millis_u32(Duration::MAX), u32::MAX);
    }
}

/// Retrying a third party (a coordinator, a relay): 1 s, doubling to a
/// minute, each wait jittered to 0.5–1.5 × so that the nodes of one that
/// restarts do not all come back in the same second; back to 1 s once it
/// answers.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(60);

    /// The wait before the next try, unjittered (for logs).
    pub fn next(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// Waits (jittered), then doubles the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next.mul_f64(rand::random::<f64>() + 0.5)).await;
        self.next = self.next.saturating_mul(2).min(Backoff::MOST);
    }
}
