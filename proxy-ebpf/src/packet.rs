//! Where a packet's TCP parts are, for the `cgroup_skb` programs: its layout
//! ([`tcp_header`]) and whether it is bound for one of the proxy's listening ports
//! ([`our_port`]). Shared by the first-bytes classifier ([`crate::first_bytes`]) and the
//! per-source SYN rate ([`crate::syn_limit`]), which both parse every packet.

use aya_ebpf::programs::SkBuffContext;

use crate::PORTS;

const IPPROTO_TCP: u8 = 6;

/// Where a TCP packet's parts are, in a packet that starts with its IP header.
pub(crate) struct Tcp {
    /// 4 or 6.
    pub(crate) version: u8,
    /// Length of the IP header: where the TCP header starts.
    pub(crate) ip_len: usize,
    /// Where the payload starts.
    pub(crate) payload: usize,
}

/// The TCP packet's layout, `None` for anything else (IPv6 extension headers included).
#[inline(always)]
pub(crate) fn tcp_header(ctx: &SkBuffContext) -> Option<Tcp> {
    let first = ctx.load::<u8>(0).ok()?;
    let version = first >> 4;
    let (ip_len, proto) = match version {
        4 => (usize::from(first & 0x0f) * 4, ctx.load::<u8>(9).ok()?),
        6 => (40, ctx.load::<u8>(6).ok()?),
        _ => return None,
    };
    if proto != IPPROTO_TCP || ip_len < 20 {
        return None;
    }
    let data_offset = ctx.load::<u8>(ip_len + 12).ok()?;
    Some(Tcp {
        version,
        ip_len,
        payload: ip_len + usize::from(data_offset >> 4) * 4,
    })
}

/// The packet's destination port when it is one of the proxy's listening ports (`PORTS`).
#[inline(always)]
pub(crate) fn our_port(ctx: &SkBuffContext, tcp: &Tcp) -> Option<u16> {
    let port = u16::from_be_bytes(ctx.load::<[u8; 2]>(tcp.ip_len + 2).ok()?);
    // SAFETY: the value is only tested for presence.
    unsafe { PORTS.get(&u32::from(port)) }?;
    Some(port)
}
