//! The kernel programs' own diagnostics (aya-log): what userspace cannot see — a
//! redirect the kernel refused (the skb passed up instead), a zero-length skb dropped, a
//! spliced socket that closed while in the sockhash, a SYN dropped by the per-source rate
//! — as `tracing` events at debug level under the target `switchyard::ebpf::kernel`.
//!
//! Off the hot path: the programs' `AYA_LOG_LEVEL` is set at load from whether that
//! target's debug events are enabled (`SWITCHYARD_LOG=switchyard::ebpf::kernel=debug`,
//! or `debug` for everything), so by default a log statement in the kernel is one global
//! load and compare, and nothing is written to the ring buffer. The counters of the same
//! events are always on (`switchyard_ebpf_*` in `/metrics`).

use aya::Ebpf;
use tokio::io::unix::AsyncFd;

/// The target of the kernel's events.
const TARGET: &str = "switchyard::ebpf::kernel";

/// `AYA_LOG_LEVEL` for the programs: debug when this target's debug events are on, else
/// off (aya-log-common's levels: 0 off … 4 debug, 5 trace).
pub(super) fn level() -> u8 {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        4
    } else {
        0
    }
}

/// Reads the programs' records into `tracing` on a task of the current runtime, when
/// they log at all. A failure costs only the diagnostics (logged once).
pub(super) fn start(ebpf: &mut Ebpf) {
    if level() == 0 {
        return;
    }
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, &TracingLog) {
        Ok(l) => l,
        Err(e) => return tracing::warn!("eBPF debug records unavailable: {e}"),
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return tracing::warn!("eBPF debug records unavailable: no runtime to read them on");
    };
    let _entered = runtime.enter();
    // SAFETY: the logger owns its ring buffer's descriptor for its whole life and always
    // returns that one; the `AsyncFd` owns the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return tracing::warn!("eBPF debug records unavailable: {e}"),
    };
    runtime.spawn(async move {
        while let Ok(mut ready) = fd.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

/// `log` records from aya-log, as `tracing` events of [`TARGET`].
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}
