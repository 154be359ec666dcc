//! [`Frontend`]: the embedded object loaded into the kernel and attached — `sock_ops` and
//! the first-bytes `cgroup_skb` to the proxy's own cgroup (links: they go when the process
//! does), the stream verdict to the `SOCKETS` sockhash — and the userspace handles on its
//! maps.
//!
//! Map handles sit behind mutexes because aya's update calls take `&mut`; each call is
//! one short syscall. Dropping the attachment ([`Frontend::detach`]) detaches both
//! programs and leaves the cgroup.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, SockHash};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SkSkb, SockOps};
use aya::{Ebpf, EbpfLoader};
use proxy_common::{
    Counter, SockKey, SockStats, Splice, SynLimit, Tally, COUNTERS_MAP, FIRST_BYTES_PROGRAM,
    PORTS_MAP, SOCKETS_MAP, SOCK_OPS_PROGRAM, SPLICE_MAP, STATS_MAP, STREAM_VERDICT_PROGRAM,
    SYN_LIMIT_MAP,
};

use super::cgroup::Cgroup;
use super::{EbpfError, OBJECT};

/// The loaded programs and the cgroup they watch; dropped in this order (detach, leave).
struct Attached {
    _ebpf: Ebpf,
    _cgroup: Cgroup,
}

/// The loaded and attached eBPF front end.
pub(crate) struct Frontend {
    sockets: Mutex<SockHash<MapData, SockKey>>,
    stats: Mutex<HashMap<MapData, SockKey, SockStats>>,
    splice: Mutex<HashMap<MapData, SockKey, Splice>>,
    ports: Mutex<HashMap<MapData, u32, u32>>,
    syn_limit: Mutex<Array<MapData, SynLimit>>,
    counters: PerCpuArray<MapData, Tally>,
    attached: Mutex<Option<Attached>>,
    live: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap(name))?;
    T::try_from(map).map_err(|e| EbpfError::Map(name, e))
}

impl Frontend {
    /// Joins a cgroup of our own, loads the object and attaches both programs.
    pub(crate) fn load() -> Result<Frontend, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotEmbedded);
        }
        let cgroup = Cgroup::join()?;
        let level = super::kernel_log::level();
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(OBJECT)?;
        super::kernel_log::start(&mut ebpf);
        let sockets: SockHash<MapData, SockKey> = map(&mut ebpf, SOCKETS_MAP)?;
        let program = |e| EbpfError::Program(STREAM_VERDICT_PROGRAM, e);
        let verdict: &mut SkSkb = ebpf
            .program_mut(STREAM_VERDICT_PROGRAM)
            .ok_or(EbpfError::MissingProgram(STREAM_VERDICT_PROGRAM))?
            .try_into()
            .map_err(program)?;
        verdict.load().map_err(program)?;
        verdict.attach(sockets.fd()).map_err(program)?;
        let program = |e| EbpfError::Program(SOCK_OPS_PROGRAM, e);
        let ops: &mut SockOps = ebpf
            .program_mut(SOCK_OPS_PROGRAM)
            .ok_or(EbpfError::MissingProgram(SOCK_OPS_PROGRAM))?
            .try_into()
            .map_err(program)?;
        ops.load().map_err(program)?;
        ops.attach(cgroup.handle(), CgroupAttachMode::Single)
            .map_err(program)?;
        let program = |e| EbpfError::Program(FIRST_BYTES_PROGRAM, e);
        let first: &mut CgroupSkb = ebpf
            .program_mut(FIRST_BYTES_PROGRAM)
            .ok_or(EbpfError::MissingProgram(FIRST_BYTES_PROGRAM))?
            .try_into()
            .map_err(program)?;
        first.load().map_err(program)?;
        first
            .attach(
                cgroup.handle(),
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single,
            )
            .map_err(program)?;
        tracing::debug!(cgroup = %cgroup.path().display(), "eBPF programs attached");
        Ok(Frontend {
            sockets: Mutex::new(sockets),
            stats: Mutex::new(map(&mut ebpf, STATS_MAP)?),
            splice: Mutex::new(map(&mut ebpf, SPLICE_MAP)?),
            ports: Mutex::new(map(&mut ebpf, PORTS_MAP)?),
            syn_limit: Mutex::new(map(&mut ebpf, SYN_LIMIT_MAP)?),
            counters: map(&mut ebpf, COUNTERS_MAP)?,
            attached: Mutex::new(Some(Attached {
                _ebpf: ebpf,
                _cgroup: cgroup,
            })),
            live: AtomicBool::new(true),
        })
    }

    /// Whether the programs are attached (until [`Frontend::detach`]).
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Detaches both programs and leaves the cgroup; spliced pairs stop being spliced.
    pub(crate) fn detach(&self) {
        self.live.store(false, Ordering::Release);
        lock(&self.attached).take();
    }

    /// Sets the per-source SYN rate (`limits.classes.unclassified.per_source_rate`);
    /// [`SynLimit::OFF`] turns it off.
    pub(crate) fn set_syn_limit(&self, limit: SynLimit) -> Result<(), MapError> {
        lock(&self.syn_limit).set(0, limit, 0)
    }

    /// Registers sockets accepted on `port` (one of the proxy's listeners).
    pub(crate) fn watch_port(&self, port: u16) -> Result<(), MapError> {
        lock(&self.ports).insert(u32::from(port), 1, 0)
    }

    /// The kernel's counters for a socket `sock_ops` registered, if it did.
    pub(crate) fn stats(&self, key: SockKey) -> Option<SockStats> {
        lock(&self.stats).get(&key, 0).ok()
    }

    /// Marks `key` spliced towards `splice.peer`, or updates its forwarded count.
    pub(crate) fn mark(&self, key: SockKey, splice: Splice) -> Result<(), MapError> {
        lock(&self.splice).insert(key, splice, 0)
    }

    /// Adds a socket to `SOCKETS`, its counters starting with `passed` bytes already read
    /// (inserted first: no verdict runs on it before it is in the map).
    pub(crate) fn register(
        &self,
        key: SockKey,
        socket: &impl AsRawFd,
        passed: u64,
        role: u32,
    ) -> Result<(), MapError> {
        let mut map = lock(&self.stats);
        let stats = SockStats {
            passed,
            spliced: 0,
            role,
            // Keep what `first_bytes` recorded: the first payload came long before.
            classified: map.get(&key, 0).map_or(0, |s| s.classified),
            // The verdict learns the sequence from the first skb it sees.
            next_seq: 0,
            seq_known: 0,
        };
        map.insert(key, stats, 0)?;
        drop(map);
        lock(&self.sockets).insert(key, socket.as_raw_fd(), 0)
    }

    /// Removes the splice mark and the counters of `key`, returning the final counters.
    pub(crate) fn release(&self, key: SockKey) -> Option<SockStats> {
        let _ = lock(&self.splice).remove(&key);
        let mut stats = lock(&self.stats);
        let last = stats.get(&key, 0).ok();
        let _ = stats.remove(&key);
        last
    }

    /// Entries in `SOCKETS` (sockets registered) and in `SPLICED` (sockets spliced).
    pub(crate) fn entries(&self) -> (u64, u64) {
        let sockets = lock(&self.sockets).keys().filter(Result::is_ok).count();
        let spliced = lock(&self.splice).keys().filter(Result::is_ok).count();
        (sockets as u64, spliced as u64)
    }

    /// Every counter summed over the CPUs, in [`Counter::ALL`] order.
    pub(crate) fn counters(&self) -> Vec<(Counter, Tally)> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let sum = self
                    .counters
                    .get(&c.index(), 0)
                    .map(|per_cpu| {
                        per_cpu.iter().fold(Tally::default(), |a, t| Tally {
                            events: a.events + t.events,
                            bytes: a.bytes + t.bytes,
                        })
                    })
                    .unwrap_or_default();
                (c, sum)
            })
            .collect()
    }
}
