//! `cgroup_skb/ingress`: the first payload bytes of each connection the proxy accepted,
//! classified with `proxy_common::classify` into the per-class counters. It sees every
//! packet the proxy's sockets receive (IPv4 or IPv6, then TCP), looks only at sockets
//! `sock_ops` marked accepted and not yet classified, and lets the packet through — except
//! a SYN over its source's rate ([`crate::syn_limit`]), which it drops.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_skb, programs::SkBuffContext, EbpfContext as _,
};
use proxy_common::{classify, Counter, SockKey, CLASSIFY_BYTES, ROLE_ACCEPTED};

use crate::{bump, SOCK_STATS};

/// `cgroup_skb` verdicts: let the packet through, or drop it.
const ALLOW: i32 = 1;
const DROP: i32 = 0;
const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(ingress)]
pub fn switchyard_first_bytes(ctx: SkBuffContext) -> i32 {
    match try_first_bytes(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_first_bytes(ctx: &SkBuffContext) -> Result<i32, i32> {
    if crate::syn_limit::over_limit(ctx) {
        bump(Counter::SynDropped, 0);
        aya_log_ebpf::debug!(ctx, "SYN dropped: its source is over the per-source rate");
        return Ok(DROP);
    }
    // SAFETY: the context pointer is the program's own argument.
    let key = SockKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    let stats = SOCK_STATS.get_ptr_mut(key).ok_or(ALLOW)?;
    // SAFETY (for both accesses below): a pointer to a live map value, valid for this
    // program run. Fields are accessed one at a time through the raw pointer, never as a
    // `&mut SockStats`: this program writes only `classified`, while the stream verdict
    // writes `passed` and `spliced` of the same value (see `SOCK_STATS`).
    let classified = unsafe { &raw mut (*stats).classified };
    let role = unsafe { (&raw const (*stats).role).read() };
    // SAFETY: see above.
    if role != ROLE_ACCEPTED || unsafe { classified.read() } != 0 {
        return Ok(ALLOW);
    }
    let payload = payload_offset(ctx).ok_or(ALLOW)?;
    let len = (ctx.len() as usize).saturating_sub(payload);
    if len == 0 {
        return Ok(ALLOW);
    }
    let mut b = [0u8; CLASSIFY_BYTES];
    let n = if len >= CLASSIFY_BYTES {
        b = ctx
            .load::<[u8; CLASSIFY_BYTES]>(payload)
            .map_err(|_| ALLOW)?;
        CLASSIFY_BYTES
    } else if len >= 4 {
        let head = ctx.load::<[u8; 4]>(payload).map_err(|_| ALLOW)?;
        b[..4].copy_from_slice(&head);
        4
    } else {
        b[0] = ctx.load::<u8>(payload).map_err(|_| ALLOW)?;
        1
    };
    let class = classify(&b, n);
    // SAFETY: see above. The class, plus one: userspace looks it up by cookie at accept.
    unsafe { classified.write(class.index() + 1) };
    bump(class, 0);
    Ok(ALLOW)
}

/// Offset of the TCP payload in a packet that starts with its IP header.
#[inline(always)]
fn payload_offset(ctx: &SkBuffContext) -> Option<usize> {
    let first = ctx.load::<u8>(0).ok()?;
    let (ip_len, proto) = match first >> 4 {
        4 => (usize::from(first & 0x0f) * 4, ctx.load::<u8>(9).ok()?),
        6 => (40, ctx.load::<u8>(6).ok()?),
        _ => return None,
    };
    if proto != IPPROTO_TCP || ip_len < 20 {
        return None;
    }
    let data_offset = ctx.load::<u8>(ip_len + 12).ok()?;
    Some(ip_len + usize::from(data_offset >> 4) * 4)
}
