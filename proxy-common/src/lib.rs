//! Types shared by the kernel programs (`proxy-ebpf`) and userspace (`proxy-user`).
//!
//! Everything here is `#[repr(C)]` and padding-free so that the same bytes mean the same
//! thing on both sides of a BPF map. The `user` feature implements `aya::Pod` for the map
//! keys and values; the kernel side never enables it.
#![no_std]

/// Name of the `SockHash` holding the proxy's accepted and upstream sockets.
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Name of the per-CPU array of [`Tally`] values indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the `sock_ops` program that fills [`SOCKETS_MAP`].
pub const SOCK_OPS_PROGRAM: &str = "switchyard_sock_ops";
/// Name of the `sk_skb` stream verdict program attached to [`SOCKETS_MAP`].
pub const STREAM_VERDICT_PROGRAM: &str = "switchyard_stream_verdict";

/// Key of [`SOCKETS_MAP`]: one TCP socket as seen from the proxy's side.
///
/// Addresses are in network byte order exactly as the kernel context gives them (IPv4 in
/// `local_ip[0]`/`remote_ip[0]`, the rest zero); ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    /// The proxy's own address.
    pub local_ip: [u32; 4],
    /// The peer's address.
    pub remote_ip: [u32; 4],
    /// The proxy's own port.
    pub local_port: u32,
    /// The peer's port.
    pub remote_port: u32,
}

/// Slot of [`COUNTERS_MAP`]; [`Counter::index`] is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `sock_ops` callbacks seen.
    SockOps = 0,
    /// Skbs seen by the stream verdict program, with their bytes.
    Verdicts = 1,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 2] = [Counter::SockOps, Counter::Verdicts];
    /// Number of slots in [`COUNTERS_MAP`].
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Index of this counter in [`COUNTERS_MAP`].
    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Value of one [`COUNTERS_MAP`] slot on one CPU; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events (callbacks or skbs).
    pub events: u64,
    /// Payload bytes, where the event carries any.
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, only integer fields, no padding (checked in the tests below).
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Tally {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(size_of::<SockKey>(), 4 + 16 + 16 + 4 + 4);
        assert_eq!(size_of::<Tally>(), 8 + 8);
    }

    #[test]
    fn counter_indices_are_dense() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index() as usize, i);
        }
        assert_eq!(Counter::COUNT as usize, Counter::ALL.len());
    }
}
