//! The per-source SYN rate (`proxy_common::SynLimit`), checked by the `cgroup_skb/ingress`
//! program ([`crate::first_bytes`]) on every packet before anything else: a TCP SYN
//! (without ACK) to one of the proxy's listening ports (`PORTS`: the single port and the
//! legacy listeners, not the diagnostics port) from a source over its rate is dropped,
//! everything else goes on.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
    programs::SkBuffContext,
};
use proxy_common::{SourceKey, SynLimit, SYN_SOURCES};

/// The limit (`proxy_common::SYN_LIMIT_MAP`), written by userspace; zero: off.
#[map]
static SYN_LIMIT: Array<SynLimit> = Array::with_max_entries(1, 0);

/// Each source's theoretical arrival time (`proxy_common::SYN_SOURCES_MAP`).
#[map]
static SYN_SOURCES_TAT: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(SYN_SOURCES, 0);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Whether the packet is a SYN from a source over its rate (and must be dropped).
#[inline(always)]
pub(crate) fn over_limit(ctx: &SkBuffContext) -> bool {
    let Some(limit) = SYN_LIMIT.get(0) else {
        return false;
    };
    if limit.interval_ns == 0 {
        return false;
    }
    let Some(key) = syn_source(ctx) else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is copied out at once; a concurrent update of the same source on
    // another CPU can only make the limit a little looser, never unsafe.
    let tat = unsafe { SYN_SOURCES_TAT.get(&key) }.copied().unwrap_or(0);
    match limit.admit(tat, now) {
        Some(next) => {
            let _ = SYN_SOURCES_TAT.insert(&key, &next, 0);
            false
        }
        None => true,
    }
}

/// The source of a TCP SYN without ACK to one of our ports, `None` for any other packet.
#[inline(always)]
fn syn_source(ctx: &SkBuffContext) -> Option<SourceKey> {
    let tcp = crate::packet::tcp_header(ctx)?;
    let flags = ctx.load::<u8>(tcp.ip_len + 13).ok()?;
    if flags & (SYN | ACK) != SYN {
        return None;
    }
    crate::packet::our_port(ctx, &tcp)?;
    Some(match tcp.version {
        4 => SourceKey::v4(ctx.load::<[u8; 4]>(12).ok()?),
        _ => SourceKey::v6_64(ctx.load::<[u8; 8]>(8).ok()?),
    })
}
