//! Types shared by the kernel programs (`proxy-ebpf`) and userspace (`proxy-user`).
//!
//! Everything stored in a map is `#[repr(C)]` and padding-free so that the same bytes mean
//! the same thing on both sides. The `user` feature implements `aya::Pod` for the map keys
//! and values; the kernel side never enables it. [`classify`] is the first-bytes classifier
//! the kernel runs (`cgroup_skb/ingress`), a pure function here so host tests feed it bytes.
#![no_std]

mod classify;
mod flow;
mod syn;

pub use classify::{classify, CLASSIFY_BYTES};
pub use flow::{FlowKey, AF_INET, AF_INET6, PENDING_CLASSES};
pub use syn::{SourceKey, SynLimit, SYN_LIMIT_MAP, SYN_SOURCES, SYN_SOURCES_MAP};

/// Name of the `SockHash` holding the sockets of spliced pairs.
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Name of the per-CPU array of [`Tally`] values indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the hash map [`SockKey`] → [`SockStats`] (written by the kernel only).
pub const STATS_MAP: &str = "SOCK_STATS";
/// Name of the hash map [`SockKey`] → [`Splice`] (written by userspace only).
pub const SPLICE_MAP: &str = "SPLICED";
/// Name of the hash map of the proxy's listening ports (host order `u32` → 1).
pub const PORTS_MAP: &str = "PORTS";
/// Name of the `sock_ops` program that fills [`SOCKETS_MAP`].
pub const SOCK_OPS_PROGRAM: &str = "switchyard_sock_ops";
/// Name of the `sk_skb` stream verdict program attached to [`SOCKETS_MAP`].
pub const STREAM_VERDICT_PROGRAM: &str = "switchyard_stream_verdict";
/// Name of the `cgroup_skb/ingress` program that classifies first bytes.
pub const FIRST_BYTES_PROGRAM: &str = "switchyard_first_bytes";

/// [`SockStats::role`] of a socket accepted on one of the [`PORTS_MAP`] ports.
pub const ROLE_ACCEPTED: u32 = 1;
/// [`SockStats::role`] of a socket the proxy connected (an upstream).
pub const ROLE_UPSTREAM: u32 = 2;

/// Key of every per-socket map: the kernel's socket cookie (`SO_COOKIE` in userspace,
/// `bpf_get_socket_cookie` in the programs), unique for the life of the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub cookie: u64,
}

/// What the stream verdict program saw on one socket. Created by `sock_ops` when the
/// socket is established, removed by `sock_ops` when it closes unless userspace still owns
/// a [`Splice`] for it (userspace then removes both).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStats {
    /// Bytes passed up to the socket's receive queue (read by userspace).
    pub passed: u64,
    /// Bytes redirected to the peer socket's egress.
    pub spliced: u64,
    /// [`ROLE_ACCEPTED`], [`ROLE_UPSTREAM`], or 0 when unknown.
    pub role: u32,
    /// 0 until the first bytes have been classified (accepted sockets only), then the
    /// [`Counter::index`] of their class plus one: userspace reads it by socket cookie at
    /// accept ([`SockStats::first_bytes`]).
    pub classified: u32,
    /// The TCP sequence number just past the last skb the stream verdict saw, valid once
    /// `seq_known` is 1: an skb that starts before it repeats bytes already delivered
    /// (see `Counter::OverlapTrimmed`).
    pub next_seq: u32,
    /// 0, then [`SEQ_KNOWN`] once `next_seq` holds a sequence number, or
    /// [`SEQ_UNTRIMMED`] once the verdict dropped an overlapping skb it could not trim.
    pub seq_known: u32,
}

/// [`SockStats::seq_known`]: `next_seq` is valid.
pub const SEQ_KNOWN: u32 = 1;
/// [`SockStats::seq_known`]: an overlapping skb was dropped; the pair's stream lost bytes.
pub const SEQ_UNTRIMMED: u32 = 2;

impl SockStats {
    /// The class of the socket's first bytes, once the kernel has seen them.
    pub fn first_bytes(&self) -> Option<Counter> {
        let index = self.classified.checked_sub(1)?;
        Counter::ALL
            .iter()
            .copied()
            .find(|c| c.index() == index && c.class().is_some())
    }
}

/// A socket that userspace marked spliced: where its bytes go, and how many of the bytes
/// passed to userspace it has already written to the peer.
///
/// The verdict program redirects an skb only when `forwarded == SockStats::passed`, i.e.
/// when nothing passed earlier is still waiting in userspace: that is what keeps the byte
/// stream in order across the switch from userspace copy to kernel redirect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Splice {
    pub peer: SockKey,
    pub forwarded: u64,
}

/// Slot of [`COUNTERS_MAP`]; [`Counter::index`] is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `sock_ops` callbacks seen.
    SockOps = 0,
    /// Sockets `sock_ops` registered (a [`SockStats`] entry with a role).
    Registered = 1,
    /// First bytes of accepted connections, by class.
    ClassTls = 2,
    ClassSsh = 3,
    ClassHttp = 4,
    ClassPostgres = 5,
    ClassProxy = 6,
    ClassUnknown = 7,
    /// Skbs (and bytes) passed up to userspace.
    Passed = 8,
    /// Skbs (and bytes) redirected to the peer socket.
    Spliced = 9,
    /// Redirects the kernel refused (the skb was passed instead).
    RedirectFailed = 10,
    /// SYNs dropped by the per-source rate ([`SynLimit`]).
    SynDropped = 11,
    /// Zero-length skbs (a pure FIN or ACK) the verdict dropped on a spliced socket.
    EmptyDropped = 12,
    /// Spliced sockets that closed while still in the splice (left the sockhash).
    SplicedClosed = 13,
    /// Skbs (and the repeated bytes trimmed off them) that began before the end of the
    /// socket's previous skb: a retransmission that partly overlapped received data, which
    /// the kernel's `tcp_read_skb` hands to the verdict whole (`docs/ebpf.md`).
    OverlapTrimmed = 14,
    /// Overlapping skbs the verdict could not trim (the pair is then cut: see the verdict).
    OverlapUntrimmed = 15,
    /// First bytes that completed a deferred handshake: classified on the listener and
    /// handed to the new socket by `sock_ops` ([`FlowKey`]).
    ClassHandedOver = 16,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 17] = [
        Counter::SockOps,
        Counter::Registered,
        Counter::ClassTls,
        Counter::ClassSsh,
        Counter::ClassHttp,
        Counter::ClassPostgres,
        Counter::ClassProxy,
        Counter::ClassUnknown,
        Counter::Passed,
        Counter::Spliced,
        Counter::RedirectFailed,
        Counter::SynDropped,
        Counter::EmptyDropped,
        Counter::SplicedClosed,
        Counter::OverlapTrimmed,
        Counter::OverlapUntrimmed,
        Counter::ClassHandedOver,
    ];
    /// Number of slots in [`COUNTERS_MAP`].
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Index of this counter in [`COUNTERS_MAP`].
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The `class` label of a first-bytes counter, `None` for the others.
    pub const fn class(self) -> Option<&'static str> {
        Some(match self {
            Counter::ClassTls => "tls",
            Counter::ClassSsh => "ssh",
            Counter::ClassHttp => "http",
            Counter::ClassPostgres => "postgres",
            Counter::ClassProxy => "proxy",
            Counter::ClassUnknown => "unknown",
            _ => return None,
        })
    }
}

/// Value of one [`COUNTERS_MAP`] slot on one CPU; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events (callbacks, connections or skbs).
    pub events: u64,
    /// Payload bytes, where the event carries any.
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, only integer fields, no padding (checked in the tests below).
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Splice {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Tally {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SynLimit {}
    // SAFETY: as above (a byte array).
    unsafe impl aya::Pod for super::SourceKey {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(size_of::<SockKey>(), 8);
        assert_eq!(size_of::<SockStats>(), 8 + 8 + 4 + 4 + 4 + 4);
        assert_eq!(size_of::<Splice>(), 8 + 8);
        assert_eq!(size_of::<Tally>(), 8 + 8);
        assert_eq!(size_of::<SynLimit>(), 8 + 8);
        assert_eq!(size_of::<SourceKey>(), 16);
        assert_eq!(size_of::<FlowKey>(), 16 + 4 + 4);
    }

    #[test]
    fn counter_indices_are_dense() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index() as usize, i);
        }
        assert_eq!(Counter::COUNT as usize, Counter::ALL.len());
    }

    #[test]
    fn the_first_bytes_class_is_read_back_from_its_stored_value() {
        let unseen = SockStats::default();
        assert_eq!(unseen.first_bytes(), None);
        for class in Counter::ALL.iter().filter(|c| c.class().is_some()) {
            let seen = SockStats {
                classified: class.index() + 1,
                ..SockStats::default()
            };
            assert_eq!(seen.first_bytes(), Some(*class));
        }
        // A value that names no class (a counter that is not one, or out of range).
        for bogus in [Counter::Passed.index() + 1, 1000] {
            let odd = SockStats {
                classified: bogus,
                ..SockStats::default()
            };
            assert_eq!(odd.first_bytes(), None);
        }
    }
}
