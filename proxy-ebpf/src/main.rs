//! Switchyard's kernel programs (`docs/ebpf.md`), built for the bpf target by
//! `proxy-user/build.rs` and embedded in the `switchyard` binary.
//!
//! Owns the maps shared with userspace (types in `proxy-common`) and the program entry
//! points; entry points stay thin: `match try_x(ctx) { Ok(r) | Err(r) => r }`.
//!
//! - `sock_ops` (attached to the proxy's own cgroup v2): every socket the proxy accepts on
//!   one of its listening ports (`PORTS`) or connects (an upstream) gets a `SOCK_STATS`
//!   entry keyed by its cookie and its role (and, for an accepted socket, the class its
//!   first segment was given on the listener); both sockets of a pair join `SOCKETS` at the
//!   splice, from userspace, once their receive queues are empty; when a socket closes, its
//!   entry goes unless userspace still owns a splice for it.
//! - `stream_verdict` (attached to `SOCKETS`): redirects each skb of a socket userspace
//!   marked spliced to the peer's egress once userspace has forwarded everything passed to
//!   it before. Anything else, a failed redirect included, is passed up: never dropped.
//! - `cgroup_skb/ingress` ([`first_bytes`]): classifies the first payload of each accepted
//!   connection into per-class counters; it drops nothing but the SYNs of a source over
//!   its rate ([`syn_limit`]).
//!
//! Events userspace cannot see (a refused redirect, a dropped empty skb, a spliced socket
//! that closed, a dropped SYN) are counted in `COUNTERS` and logged with aya-log at debug
//! level, into the proxy's `tracing` (target `switchyard::ebpf::kernel`); the proxy sets
//! `AYA_LOG_LEVEL` at load, so with debug off for that target a log statement costs one
//! global load and compare.
//!
//! On a non-bpf target this is an empty binary so host builds of the workspace succeed.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::{
        sk_action, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::bpf_get_socket_cookie,
    macros::{map, sock_ops, stream_verdict},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::{SkBuffContext, SockOpsContext},
    EbpfContext as _,
};
use aya_log_ebpf::debug;
use proxy_common::{
    Counter, FlowKey, SockKey, SockStats, Splice, Tally, AF_INET6, ROLE_ACCEPTED, ROLE_UPSTREAM,
    SEQ_KNOWN, SEQ_UNTRIMMED,
};

mod first_bytes;
mod overlap;
mod packet;
mod syn_limit;

/// `sock_ops` return value: the callback was handled.
const SOCK_OPS_OK: u32 = 1;
/// Capacity of the per-socket maps: two sockets per spliced connection.
const MAX_SOCKETS: u32 = 65_536;
/// `TCP_CLOSE` from the kernel's TCP state enum (the new state in `args[1]`).
const TCP_CLOSE: u32 = 7;

/// The sockets of spliced pairs (`proxy_common::SOCKETS_MAP`), inserted by userspace.
#[map]
static SOCKETS: SockHash<SockKey> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// Per-socket counters (`proxy_common::STATS_MAP`). Each field has one writer in the
/// kernel: `passed` and `spliced` the stream verdict, `classified` the first-bytes program
/// ([`first_bytes`]); `sock_ops` creates and removes entries, and userspace replaces an
/// entry whole when it registers a socket for the splice (before any verdict runs on it).
/// The programs write fields through raw pointers, never through a `&mut` to the whole
/// value, since two programs hold pointers to the same entry.
#[map]
pub(crate) static SOCK_STATS: HashMap<SockKey, SockStats> =
    HashMap::with_max_entries(MAX_SOCKETS, 0);

/// Spliced sockets → peer (`proxy_common::SPLICE_MAP`), written by userspace only.
#[map]
static SPLICED: HashMap<SockKey, Splice> = HashMap::with_max_entries(MAX_SOCKETS, 0);

/// The proxy's listening ports, host order (`proxy_common::PORTS_MAP`).
#[map]
pub(crate) static PORTS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Per-CPU tallies indexed by `Counter` (`proxy_common::COUNTERS_MAP`).
#[map]
static COUNTERS: PerCpuArray<Tally> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Adds one event (and `bytes`) to `counter` on this CPU.
#[inline(always)]
pub(crate) fn bump(counter: Counter, bytes: u64) {
    bump_at(counter.index(), bytes)
}

/// Adds one event (and `bytes`) to the counter of index `index` (a class stored as its
/// index).
#[inline(always)]
fn bump_at(index: u32, bytes: u64) {
    if let Some(tally) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot returned by the kernel, valid for this program run; no other
        // program touches this CPU's slot concurrently.
        unsafe {
            (*tally).events += 1;
            (*tally).bytes += bytes;
        }
    }
}

/// Watches the proxy's TCP sockets.
#[sock_ops]
pub fn switchyard_sock_ops(ctx: SockOpsContext) -> u32 {
    match try_sock_ops(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<u32, u32> {
    bump(Counter::SockOps, 0);
    // SAFETY: the context pointer is the program's own argument.
    let key = SockKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    let role = match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // SAFETY: plain map lookup; the value is not dereferenced.
            if unsafe { PORTS.get(ctx.local_port()) }.is_none() {
                return Ok(SOCK_OPS_OK);
            }
            ROLE_ACCEPTED
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => ROLE_UPSTREAM,
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == TCP_CLOSE {
                // SAFETY: plain map lookup; the value is not dereferenced.
                if unsafe { SPLICED.get(key) }.is_none() {
                    let _ = SOCK_STATS.remove(key);
                } else {
                    // The kernel takes a closed socket out of the sockhash by itself.
                    bump(Counter::SplicedClosed, 0);
                    debug!(
                        ctx,
                        "spliced socket {} closed: it left the sockhash", key.cookie
                    );
                }
            }
            return Ok(SOCK_OPS_OK);
        }
        _ => return Ok(SOCK_OPS_OK),
    };
    // A first segment that completed the handshake was classified on the listener.
    let classified = if role == ROLE_ACCEPTED {
        let family = ctx.family();
        let ip6 = if family == AF_INET6 {
            ctx.remote_ip6()
        } else {
            [0; 4]
        };
        FlowKey::from_sock_ops(
            family,
            ctx.remote_ip4(),
            ip6,
            ctx.remote_port(),
            ctx.local_port(),
        )
        .and_then(|flow| first_bytes::handed_over(&flow))
        .unwrap_or(0)
    } else {
        0
    };
    SOCK_STATS
        .insert(
            key,
            SockStats {
                role,
                classified,
                ..SockStats::default()
            },
            0,
        )
        .map_err(|_| SOCK_OPS_OK)?;
    if let Some(class) = classified.checked_sub(1) {
        bump_at(class, 0);
        bump(Counter::ClassHandedOver, 0);
    }
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    // Both sockets of a pair join SOCKETS at the splice, from userspace, once their
    // receive queues are empty: see `ebpf::splice::join` in proxy-user.
    bump(Counter::Registered, 0);
    Ok(SOCK_OPS_OK)
}

/// Decides the fate of each skb arriving on a socket in `SOCKETS`.
#[stream_verdict]
pub fn switchyard_stream_verdict(ctx: SkBuffContext) -> u32 {
    match try_stream_verdict(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_stream_verdict(ctx: &SkBuffContext) -> Result<u32, u32> {
    let mut len = u64::from(ctx.len());
    // SAFETY: the context pointer is the program's own argument.
    let key = SockKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    if SOCK_STATS.get_ptr_mut(key).is_none() {
        let _ = SOCK_STATS.insert(key, SockStats::default(), u64::from(BPF_NOEXIST));
    }
    let stats = SOCK_STATS.get_ptr_mut(key).ok_or(sk_action::SK_PASS)?;
    // SAFETY (for every access to `*stats` below): a pointer to a live map value, valid for
    // this program run (map values are freed after an RCU grace period). Fields are read
    // and written one at a time through the raw pointer: `passed` and `spliced` are written
    // by this program only, which the kernel runs for one socket at a time (under the
    // socket's lock), while `first_bytes` writes `classified` of the same value — so no
    // `&mut SockStats` is ever formed.
    let passed = unsafe { &raw mut (*stats).passed };
    let spliced = unsafe { &raw mut (*stats).spliced };
    if len == 0 {
        // A pure FIN (or ACK-only) skb: TCP has already processed it (the socket has
        // RCV_SHUTDOWN set), and userspace passes the half-close on. Redirected, it would
        // reach the peer's psock backlog, whose send of 0 bytes counts as a hard error:
        // EPIPE set on the *peer* socket and its transmit disabled (seen on 6.18 as
        // `reading the upstream: Broken pipe` after the client's FIN). Passed up, it would
        // queue an empty message. Dropping it loses nothing.
        bump(Counter::EmptyDropped, 0);
        debug!(ctx, "socket {}: a zero-length skb dropped", key.cookie);
        return Ok(sk_action::SK_DROP);
    }
    // SAFETY: see `stats` above.
    let (next, known) = unsafe { (&raw mut (*stats).next_seq, &raw mut (*stats).seq_known) };
    // SAFETY: see `stats` above.
    let (head, now) = unsafe { overlap::check(ctx, len as u32, next.read(), known.read() != 0) };
    if let Some(now) = now {
        // SAFETY: see `stats` above.
        unsafe {
            next.write(now);
            if known.read() == 0 {
                known.write(SEQ_KNOWN);
            }
        }
    }
    match head {
        overlap::Head::New => {}
        overlap::Head::Trimmed(repeated) => {
            bump(Counter::OverlapTrimmed, u64::from(repeated));
            debug!(
                ctx,
                "socket {}: {} repeated bytes trimmed off an skb of {}", key.cookie, repeated, len
            );
            len -= u64::from(repeated);
        }
        overlap::Head::Unusable => {
            // Delivering it would repeat bytes; dropping it may lose some. Userspace reports
            // the relay as failed when it sees `SEQ_UNTRIMMED` (`relay::kernel`).
            bump(Counter::OverlapUntrimmed, len);
            debug!(
                ctx,
                "socket {}: an overlapping skb of {} bytes could not be trimmed: dropped",
                key.cookie,
                len
            );
            // SAFETY: see `stats` above.
            unsafe { known.write(SEQ_UNTRIMMED) };
            return Ok(sk_action::SK_DROP);
        }
    }
    // SAFETY: read-only copy of a value userspace replaces whole.
    if let Some(splice) = unsafe { SPLICED.get(key) }.copied() {
        // SAFETY: see `stats` above.
        if splice.forwarded == unsafe { passed.read() } {
            let mut peer = splice.peer;
            if SOCKETS.redirect_skb(ctx, &mut peer, 0) == i64::from(sk_action::SK_PASS) {
                // SAFETY: see `stats` above.
                unsafe { spliced.write(spliced.read() + len) };
                bump(Counter::Spliced, len);
                return Ok(sk_action::SK_PASS);
            }
            bump(Counter::RedirectFailed, len);
            debug!(
                ctx,
                "socket {}: redirect to {} refused, {} bytes passed up instead",
                key.cookie,
                peer.cookie,
                len
            );
        }
    }
    // SAFETY: see `stats` above.
    unsafe { passed.write(passed.read() + len) };
    bump(Counter::Passed, len);
    Ok(sk_action::SK_PASS)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel's license string for this object (the crate's `MIT OR GPL-2.0-only`):
/// `bpf_probe_read_kernel` ([`overlap`]) is GPL-only, the other helpers used here are not.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
