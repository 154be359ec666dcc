//! The key by which a first segment classified on the *listener* finds its new socket.
//!
//! With `TCP_DEFER_ACCEPT` the segment that completes a connection's handshake carries its
//! first bytes, and the kernel filters it against the listening socket: the
//! `cgroup_skb/ingress` program sees the listener, not the connection's own socket, which
//! does not exist yet. It classifies the payload there and stores the class under the
//! connection's [`FlowKey`] in [`PENDING_CLASSES`]-many LRU entries; `sock_ops`, which
//! runs for the new socket moments later while the kernel processes the same segment
//! (`PASSIVE_ESTABLISHED`), builds the same key from the socket and moves the class into
//! the socket's `SockStats`. Both sides build the key here, so they cannot disagree.

/// Entries of the LRU hash [`FlowKey`] → class (held only between the two programs).
pub const PENDING_CLASSES: u32 = 8_192;

/// `AF_INET` and `AF_INET6`, as `sock_ops` reports a socket's family.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// A connection as the listener sees it: the client's address and port, the local port.
/// An IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) has the IPv4 key, as its
/// packets do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The client's address as the kernel stores it (network byte order, read as `u32`s);
    /// IPv4 in `addr[0]`, the rest zero.
    pub addr: [u32; 4],
    /// 4 or 6.
    pub family: u32,
    /// The client's port in the high 16 bits, the local port in the low, host order.
    pub ports: u32,
}

impl FlowKey {
    /// An IPv4 client.
    pub const fn v4(addr: u32, remote_port: u16, local_port: u16) -> FlowKey {
        FlowKey {
            addr: [addr, 0, 0, 0],
            family: 4,
            ports: ports(remote_port, local_port),
        }
    }

    /// An IPv6 client, or an IPv4 one in its mapped form.
    pub const fn v6(addr: [u32; 4], remote_port: u16, local_port: u16) -> FlowKey {
        if addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff) {
            return FlowKey::v4(addr[3], remote_port, local_port);
        }
        FlowKey {
            addr,
            family: 6,
            ports: ports(remote_port, local_port),
        }
    }

    /// The key of a socket as `sock_ops` describes it: `family` ([`AF_INET`] or
    /// [`AF_INET6`]), the remote addresses, `remote_port` as the context holds it (the
    /// network-order port in the upper 16 bits of a little-endian word) and `local_port`
    /// in host order. `None` for another family.
    pub const fn from_sock_ops(
        family: u32,
        remote_ip4: u32,
        remote_ip6: [u32; 4],
        remote_port: u32,
        local_port: u32,
    ) -> Option<FlowKey> {
        let remote = u32::from_be(remote_port) as u16;
        let local = local_port as u16;
        match family {
            AF_INET => Some(FlowKey::v4(remote_ip4, remote, local)),
            AF_INET6 => Some(FlowKey::v6(remote_ip6, remote, local)),
            _ => None,
        }
    }
}

const fn ports(remote: u16, local: u16) -> u32 {
    ((remote as u32) << 16) | local as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 192.0.2.7 as the kernel stores it: the bytes in order, read as a native `u32`.
    const ADDR: u32 = u32::from_ne_bytes([192, 0, 2, 7]);

    #[test]
    fn the_packet_side_and_the_socket_side_agree() {
        // The packet: source 192.0.2.7:40000, destination port 3080.
        let packet = FlowKey::v4(ADDR, 40000, 3080);
        // sock_ops: the network-order port loaded as a little-endian u16, shifted up.
        let raw_port = u32::from(u16::from_ne_bytes(40000u16.to_be_bytes())) << 16;
        let socket = FlowKey::from_sock_ops(AF_INET, ADDR, [0; 4], raw_port, 3080);
        assert_eq!(socket, Some(packet));
    }

    #[test]
    fn a_mapped_ipv4_client_has_the_ipv4_key() {
        let mapped = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ADDR];
        assert_eq!(FlowKey::v6(mapped, 1, 2), FlowKey::v4(ADDR, 1, 2));
        let raw_port = u32::from(u16::from_ne_bytes(1u16.to_be_bytes())) << 16;
        assert_eq!(
            FlowKey::from_sock_ops(AF_INET6, 0, mapped, raw_port, 2),
            Some(FlowKey::v4(ADDR, 1, 2))
        );
    }

    #[test]
    fn families_ports_and_addresses_keep_keys_apart() {
        let v6 = [u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]), 0, 0, ADDR];
        let keys = [
            FlowKey::v4(ADDR, 1, 2),
            FlowKey::v4(ADDR, 2, 1),
            FlowKey::v4(ADDR.wrapping_add(1), 1, 2),
            FlowKey::v6(v6, 1, 2),
            FlowKey::v6([ADDR, 0, 0, 0], 1, 2),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(FlowKey::from_sock_ops(1, ADDR, [0; 4], 0, 0), None);
        assert_eq!(core::mem::size_of::<FlowKey>(), 24);
    }
}
