//! A rate limit for log lines: a flood of bad clients must not become a flood of log
//! lines. [`RateLimit::allow`] says whether one more line may be written, and how many were
//! suppressed before it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `burst` events per `window`; reports how many were suppressed since the last allowed.
pub(crate) struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

/// The current window: when it started, events allowed in it, events suppressed since the
/// last allowed one.
struct Window {
    start: Instant,
    allowed: u32,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new(Window {
                start: Instant::now(),
                allowed: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(suppressed_before)` when this event may be logged, `None` when it is suppressed.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`RateLimit::allow`] for an event at `now`.
    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(w.start) >= self.window {
            w.start = now;
            w.allowed = 0;
        }
        if w.allowed < self.burst {
            w.allowed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_suppresses_and_reports() {
        let r = RateLimit::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow_at(t0 + Duration::from_secs(9)), None);
        // A new window: allowed again, with the count of what was suppressed.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(r.allow_at(t1), Some(2));
        assert_eq!(r.allow_at(t1), Some(0));
        assert_eq!(r.allow_at(t1), None);
    }
}
