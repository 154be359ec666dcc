//! The per-source SYN rate of the kernel front end: `limits.classes.unclassified.
//! per_source_rate`, enforced on the SYNs that reach the proxy's listening sockets, so a
//! flooding address is held back before a handshake completes, an accept, or a task.
//!
//! Each source has one value in [`SYN_SOURCES_MAP`] (an LRU hash, so a spread-out flood
//! evicts the quietest sources rather than failing): its theoretical arrival time, the
//! generic cell rate algorithm's (GCRA) single number in place of a token bucket's two.
//! A SYN at `now` is within the limit when `max(tat, now) - now <= tolerance`; it then
//! moves `tat` on by one `interval`. With `tolerance = (burst - 1) × interval` a quiet
//! source gets `burst` SYNs at once, then one per `interval`. A SYN over the limit is
//! dropped: the client's TCP retransmits it (after 1 s, then 2 s, … on Linux), which is
//! what holds a flood back without any work here.

/// Name of the one-entry array holding the [`SynLimit`] (written by userspace).
pub const SYN_LIMIT_MAP: &str = "SYN_LIMIT";
/// Name of the LRU hash [`SourceKey`] → theoretical arrival time (ns, `bpf_ktime_get_ns`).
pub const SYN_SOURCES_MAP: &str = "SYN_SOURCES_TAT";
/// Sources [`SYN_SOURCES_MAP`] tracks at once.
pub const SYN_SOURCES: u32 = 65_536;

/// The limit: one SYN per `interval_ns` on average, `tolerance_ns` of burst. An
/// `interval_ns` of 0 turns the limit off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynLimit {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

impl SynLimit {
    /// No limit.
    pub const OFF: SynLimit = SynLimit {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `rate` SYNs per second from one source, `burst` of them at once (both above 0).
    /// Userspace only: the BPF target has no floating point.
    #[cfg(not(target_arch = "bpf"))]
    pub fn new(rate: f64, burst: f64) -> SynLimit {
        let interval = (1e9 / rate) as u64;
        let interval_ns = if interval == 0 { 1 } else { interval };
        let extra = if burst > 1.0 { burst - 1.0 } else { 0.0 };
        SynLimit {
            interval_ns,
            tolerance_ns: (extra * interval_ns as f64) as u64,
        }
    }

    /// The source's new arrival time when a SYN at `now` is within the limit (`tat` is
    /// the stored one, 0 for a new source); `None` when it is over.
    pub fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let tat = if tat > now { tat } else { now };
        if tat - now > self.tolerance_ns {
            return None;
        }
        Some(tat.saturating_add(self.interval_ns))
    }
}

/// A source: an IPv4 address (bytes 0–3, byte 15 set to 4) or an IPv6 /64 (bytes 0–7),
/// the same grouping as the userspace budgets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

impl SourceKey {
    pub fn v4(a: [u8; 4]) -> SourceKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        addr[15] = 4;
        SourceKey { addr }
    }

    pub fn v6_64(prefix: [u8; 8]) -> SourceKey {
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&prefix);
        SourceKey { addr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_quiet_source_gets_its_burst_then_the_rate() {
        let limit = SynLimit::new(10.0, 3.0);
        assert_eq!(limit.interval_ns, S / 10);
        let now = 50 * S;
        let mut tat = 0;
        for _ in 0..3 {
            tat = limit.admit(tat, now).expect("within the burst");
        }
        assert_eq!(limit.admit(tat, now), None);
        // One interval later: one more, not two.
        let later = now + S / 10;
        tat = limit.admit(tat, later).unwrap();
        assert_eq!(limit.admit(tat, later), None);
        // Long quiet: the burst again, never more.
        let much_later = later + 3600 * S;
        for _ in 0..3 {
            tat = limit.admit(tat, much_later).unwrap();
        }
        assert_eq!(limit.admit(tat, much_later), None);
    }

    #[test]
    fn a_burst_of_one_is_the_rate_alone_and_odd_rates_stay_sane() {
        let limit = SynLimit::new(2.0, 1.0);
        let tat = limit.admit(0, S).unwrap();
        assert_eq!(limit.admit(tat, S), None);
        assert!(limit.admit(tat, S + S / 2).is_some());
        // A rate above a billion a second still moves time on.
        assert_eq!(SynLimit::new(1e12, 1.0).interval_ns, 1);
    }

    #[test]
    fn sources_are_grouped_as_userspace_groups_them() {
        assert_ne!(SourceKey::v4([10, 0, 0, 1]), SourceKey::v4([10, 0, 0, 2]));
        // An IPv4 address never equals an IPv6 /64 that starts with the same bytes.
        assert_ne!(
            SourceKey::v4([32, 1, 13, 184]),
            SourceKey::v6_64([32, 1, 13, 184, 0, 0, 0, 0])
        );
    }
}
