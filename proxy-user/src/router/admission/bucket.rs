//! Token buckets: a class's `rate` (one bucket for every source) and its
//! `per_source_rate` (one bucket per source, so that one client's flood spends its own
//! tokens and nobody else's).
//!
//! The per-source buckets live in a map bounded at [`MAX_SOURCES`]: when it is full, the
//! buckets that have refilled (their source has been quiet for a burst's worth of time)
//! are dropped — a refilled bucket is the same as no bucket. A source that still finds
//! the map full of busy sources is admitted untracked rather than refused: a spread-out
//! flood must not lock out clients that have sent nothing (the class's `rate`,
//! `max_connections` and `per_source` still hold).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Sources tracked at once per class (about 40 bytes each).
pub(crate) const MAX_SOURCES: usize = 65_536;

/// One bucket: tokens left and when it was last filled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    filled: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub(crate) fn full(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            filled: now,
        }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token if there is one.
    pub(crate) fn take(&mut self, (rate, burst): (f64, f64), now: Instant) -> bool {
        self.refill((rate, burst), now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, (rate, burst): (f64, f64), now: Instant) {
        let elapsed = now.saturating_duration_since(self.filled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.filled = now;
    }

    /// Whether the bucket is back to `burst` by `now`.
    fn is_full(&self, (rate, burst): (f64, f64), now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.filled).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

/// The per-source buckets of one class.
#[derive(Debug, Default)]
pub(crate) struct SourceBuckets {
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl SourceBuckets {
    /// Takes a token from `source`'s bucket (a new source starts full).
    pub(crate) fn take(&mut self, source: IpAddr, limit: (f64, f64), now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            self.buckets.retain(|_, b| !b.is_full(limit, now));
            if self.buckets.len() >= MAX_SOURCES {
                return true; // untracked: see the module's docs
            }
        }
        self.buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::full(limit.1, now))
            .take(limit, now)
    }

    /// Forgets every bucket (a reload changed the limit).
    pub(crate) fn clear(&mut self) {
        self.buckets.clear();
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        let limit = (10.0, 3.0);
        assert!((0..3).all(|_| b.take(limit, t0)));
        assert!(!b.take(limit, t0));
        // 100 ms at 10/s: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(limit, t1));
        assert!(!b.take(limit, t1));
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(limit, t2)));
        assert!(!b.take(limit, t2));
    }

    #[test]
    fn each_source_spends_its_own_tokens() {
        let now = Instant::now();
        let mut s = SourceBuckets::default();
        let (flood, other): (IpAddr, IpAddr) =
            ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let limit = (1.0, 2.0);
        assert!(s.take(flood, limit, now) && s.take(flood, limit, now));
        assert!(!s.take(flood, limit, now));
        assert!(
            s.take(other, limit, now),
            "another source has its own bucket"
        );
    }

    #[test]
    fn the_map_is_bounded_and_drops_refilled_buckets_first() {
        let t0 = Instant::now();
        let mut s = SourceBuckets::default();
        let limit = (1.0, 1.0);
        for i in 0..MAX_SOURCES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            assert!(s.take(ip, limit, t0));
        }
        assert_eq!(s.tracked(), MAX_SOURCES);
        // Every bucket is empty now: a new source is admitted untracked.
        let new = IpAddr::from(std::net::Ipv4Addr::from(u32::MAX));
        assert!(s.take(new, limit, t0));
        assert_eq!(s.tracked(), MAX_SOURCES);
        // A second later they have refilled: they go, and the new source is tracked.
        let t1 = t0 + Duration::from_secs(1);
        assert!(s.take(new, limit, t1));
        assert_eq!(s.tracked(), 1);
        assert!(!s.take(new, limit, t1));
    }
}
