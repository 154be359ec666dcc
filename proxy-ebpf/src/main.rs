//! Switchyard's kernel programs (DESIGN.md §6), built for the bpf target by
//! `proxy-user/build.rs` and embedded in the `switchyard` binary.
//!
//! Owns the maps shared with userspace (types in `proxy-common`) and the program entry
//! points. Entry points stay thin: `match try_x(ctx) { Ok(r) | Err(r) => r }`. Today both
//! programs only count and pass; classification and splicing arrive with the loader.
//! On a non-bpf target this is an empty binary so host builds of the workspace succeed.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::sk_action,
    macros::{map, sock_ops, stream_verdict},
    maps::{PerCpuArray, SockHash},
    programs::{SkBuffContext, SockOpsContext},
};
use proxy_common::{Counter, SockKey, Tally};

/// `sock_ops` return value: the callback was handled.
const SOCK_OPS_OK: u32 = 1;
/// Capacity of `SOCKETS`: two sockets per spliced connection.
const MAX_SOCKETS: u32 = 65_536;

/// The proxy's accepted and upstream sockets (`proxy_common::SOCKETS_MAP`).
#[map]
static SOCKETS: SockHash<SockKey> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// Per-CPU tallies indexed by `Counter` (`proxy_common::COUNTERS_MAP`).
#[map]
static COUNTERS: PerCpuArray<Tally> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Adds one event (and `bytes`) to `counter` on this CPU.
#[inline(always)]
fn bump(counter: Counter, bytes: u64) {
    if let Some(tally) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot returned by the kernel, valid for this program run; no other
        // program touches this CPU's slot concurrently.
        unsafe {
            (*tally).events += 1;
            (*tally).bytes += bytes;
        }
    }
}

/// Watches the proxy's TCP sockets (attached to the proxy's own cgroup v2).
#[sock_ops]
pub fn switchyard_sock_ops(ctx: SockOpsContext) -> u32 {
    match try_sock_ops(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sock_ops(_ctx: &SockOpsContext) -> Result<u32, u32> {
    bump(Counter::SockOps, 0);
    Ok(SOCK_OPS_OK)
}

/// Decides the fate of each skb arriving on a socket in `SOCKETS`; anything not
/// redirected, including a failed redirect, is passed to userspace, never dropped.
#[stream_verdict]
pub fn switchyard_stream_verdict(ctx: SkBuffContext) -> u32 {
    match try_stream_verdict(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_stream_verdict(ctx: &SkBuffContext) -> Result<u32, u32> {
    bump(Counter::Verdicts, u64::from(ctx.len()));
    Ok(sk_action::SK_PASS)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel's license string for this object. None of the helpers used here (maps, sockmap
/// update and redirect) is GPL-only; one that is would need a GPL-compatible string.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
