//! Repeated bytes at the head of an skb, trimmed before the verdict acts on it.
//!
//! With only a stream verdict attached (no parser), the kernel hands each skb of the
//! receive queue to the verdict whole (`tcp_read_skb`), assuming that it starts where the
//! last one ended. TCP does not promise that: a retransmitted segment that overlaps data
//! already received (`seq < rcv_nxt < end_seq`, common on loopback, where the sender's
//! segments cross CPUs out of order and a spurious fast retransmit follows) is queued
//! untrimmed, and readers are expected to skip the old part by its offset. The verdict
//! would redirect the old part a second time: seen here as exactly one MSS (65,483 bytes
//! on `lo`) repeated in about one 200 MiB transfer in fifty.
//!
//! So the verdict keeps, per socket, the sequence number just past the last skb it saw
//! (`SockStats::next_seq`), reads each skb's own `seq` from `TCP_SKB_CB(skb)` and pops the
//! repeated head with `bpf_skb_adjust_room` (at most 4,095 bytes per call, hence the loop)
//! before redirecting or passing what is new.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::SkBuffContext, EbpfContext as _};

/// Offset of `cb` in the kernel's `struct sk_buff`: 24 bytes of `next`/`prev`/`dev`
/// union, `sk`, `tstamp` (the same on every 64-bit kernel this runs on; 320 bits in this
/// machine's BTF). TCP keeps `seq` and `end_seq` at its start. Checked on every skb
/// against the skb's length, so a kernel where it differs only loses the trimming.
const SKB_CB_OFFSET: usize = 40;
/// The most `bpf_skb_adjust_room` pops from an `sk_skb` in one call.
const POP_MAX: u32 = 0xfff;
/// Calls per skb: 32 × 4,095 bytes covers a 64 KiB GSO segment twice over.
const POPS: u32 = 32;

/// What to do with an skb whose sequence the verdict has checked.
pub(crate) enum Head {
    /// Nothing repeated (or the sequence could not be read): `len` new bytes.
    New,
    /// `trimmed` repeated bytes were popped; the rest is new.
    Trimmed(u32),
    /// Wholly repeated, or the repeat could not be popped: must not be delivered.
    Unusable,
}

/// The skb's `(seq, end_seq)`, when `TCP_SKB_CB` reads back consistent with `len` (an skb
/// carrying FIN ends one past its data).
fn tcp_seq(ctx: &SkBuffContext, len: u32) -> Option<u32> {
    let cb = (ctx.as_ptr() as *const u8).wrapping_add(SKB_CB_OFFSET) as *const [u32; 2];
    // SAFETY: a read of kernel memory through the checked helper; a wrong offset gives
    // values that fail the check below, never a fault.
    let [seq, end] = unsafe { bpf_probe_read_kernel(cb) }.ok()?;
    let span = end.wrapping_sub(seq);
    (span == len || span == len.wrapping_add(1)).then_some(seq)
}

/// Checks the skb of `len > 0` bytes against `next` (the sequence just past the
/// previous skb, when `known`), trims a repeated head, and returns the new `next`.
pub(crate) fn check(ctx: &SkBuffContext, len: u32, next: u32, known: bool) -> (Head, Option<u32>) {
    let Some(seq) = tcp_seq(ctx, len) else {
        return (Head::New, None);
    };
    let end = seq.wrapping_add(len);
    let repeated = next.wrapping_sub(seq) as i32;
    if !known || repeated <= 0 {
        return (Head::New, Some(end));
    }
    let repeated = repeated as u32;
    if repeated >= len {
        return (Head::Unusable, Some(next));
    }
    let mut left = repeated;
    for _ in 0..POPS {
        if left == 0 {
            break;
        }
        let step = if left < POP_MAX { left } else { POP_MAX };
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            return (Head::Unusable, Some(end));
        }
        left -= step;
    }
    if left != 0 {
        return (Head::Unusable, Some(end));
    }
    (Head::Trimmed(repeated), Some(end))
}
