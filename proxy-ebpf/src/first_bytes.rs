//! `cgroup_skb/ingress`: the first payload bytes of each connection the proxy accepted,
//! classified with `proxy_common::classify` into the per-class counters. It sees every
//! packet the proxy's sockets receive (IPv4 or IPv6, then TCP), looks only at sockets
//! `sock_ops` marked accepted and not yet classified, and lets the packet through — except
//! a SYN over its source's rate ([`crate::syn_limit`]), which it drops.
//!
//! A first segment that completes the handshake (always so with `TCP_DEFER_ACCEPT`, which
//! the single port sets) is filtered against the *listener*: the connection's socket does
//! not exist yet. Such a payload is classified here and left in [`PENDING`] under its
//! `proxy_common::FlowKey`, where `sock_ops` finds it for the new socket ([`handed_over`]),
//! moments later while the kernel processes the same segment.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_skb, map},
    maps::LruHashMap,
    programs::SkBuffContext,
    EbpfContext as _,
};
use proxy_common::{
    classify, Counter, FlowKey, SockKey, CLASSIFY_BYTES, PENDING_CLASSES, ROLE_ACCEPTED,
};

use crate::packet::{our_port, tcp_header};
use crate::{bump, SOCK_STATS};

/// `cgroup_skb` verdicts: let the packet through, or drop it.
const ALLOW: i32 = 1;
const DROP: i32 = 0;
/// `TCP_LISTEN` from the kernel's TCP state enum.
const TCP_LISTEN: u32 = 10;

/// Classes of first segments seen on a listener, by connection, until `sock_ops` takes
/// them for the connection's new socket (value: the class's `Counter::index` plus one).
/// An LRU hash: a segment whose socket never came (the accept queue was full) is evicted.
#[map]
static PENDING: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(PENDING_CLASSES, 0);

/// The class a listener saw in the first segment of the connection `flow`, taken out of
/// [`PENDING`] (for `sock_ops`, when the socket is established).
#[inline(always)]
pub(crate) fn handed_over(flow: &FlowKey) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    let class = unsafe { PENDING.get(flow) }.copied()?;
    let _ = PENDING.remove(flow);
    Some(class)
}

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
    let Some(stats) = SOCK_STATS.get_ptr_mut(key) else {
        let _ = on_listener(ctx);
        return Ok(ALLOW);
    };
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
    let tcp = tcp_header(ctx).ok_or(ALLOW)?;
    let class = classify_payload(ctx, tcp.payload).ok_or(ALLOW)?;
    // SAFETY: see above. The class, plus one: userspace looks it up by cookie at accept.
    unsafe { classified.write(class.index() + 1) };
    bump(class, 0);
    Ok(ALLOW)
}

/// A packet on a socket without `SOCK_STATS`: when it is a listener's on one of `PORTS`
/// and carries payload, the first segment of a connection whose socket is being created,
/// its class goes to [`PENDING`] for `sock_ops`.
#[inline(always)]
fn on_listener(ctx: &SkBuffContext) -> Option<()> {
    // SAFETY: `sk` of the context, checked for null; the kernel lets this program type
    // read a socket's `state`.
    let state = unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        core::ptr::read_volatile(&raw const (*sk).state)
    };
    if state != TCP_LISTEN {
        return None;
    }
    let tcp = tcp_header(ctx)?;
    let local = our_port(ctx, &tcp)?;
    let class = classify_payload(ctx, tcp.payload)?;
    let remote = u16::from_be_bytes(ctx.load::<[u8; 2]>(tcp.ip_len).ok()?);
    let flow = if tcp.version == 6 {
        FlowKey::v6(ctx.load::<[u32; 4]>(8).ok()?, remote, local)
    } else {
        FlowKey::v4(ctx.load::<u32>(12).ok()?, remote, local)
    };
    PENDING.insert(&flow, &(class.index() + 1), 0).ok()
}

/// The class of the payload at `payload`, `None` when the packet has none.
#[inline(always)]
fn classify_payload(ctx: &SkBuffContext, payload: usize) -> Option<Counter> {
    let len = (ctx.len() as usize).saturating_sub(payload);
    if len == 0 {
        return None;
    }
    let mut b = [0u8; CLASSIFY_BYTES];
    let n = if len >= CLASSIFY_BYTES {
        b = ctx.load::<[u8; CLASSIFY_BYTES]>(payload).ok()?;
        CLASSIFY_BYTES
    } else if len >= 4 {
        let head = ctx.load::<[u8; 4]>(payload).ok()?;
        b[..4].copy_from_slice(&head);
        4
    } else {
        b[0] = ctx.load::<u8>(payload).ok()?;
        1
    };
    Some(classify(&b, n))
}
