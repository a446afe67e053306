//! Every map of the object. Sizes here are defaults; the agent overrides them at load
//! time (`--ring-bytes`, `--max-sockets`), so they stay bounded and configurable.
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_CLONE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tcptrace_common::{
    config::SOURCE_SLOTS,
    counters::{
        CONNECTION_SLOTS, CONNECT_ERROR_SLOTS, DROP_SLOTS, HANDSHAKE_SLOTS, LISTEN_OVERFLOW_SLOTS,
        RESET_SLOTS, SEGMENT_SLOTS, TRANSITION_SLOTS,
    },
    event::{ListenKey, Listener, SockInfo},
    stats::STAT_SLOTS,
    Config,
};

/// Load-time configuration (tracepoint layouts, kernel offsets, trace filters).
/// Read-only for the programs; the agent fills it before loading.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::DEFAULT;

/// Detail events for `tcptrace trace` and the agent's aggregations.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Self-observability counters, indexed by `tcptrace_common::Stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// The fallback socket store (`sockets::HashStore`), where socket-local storage is not
/// available: tracking state of every socket seen since attach, keyed by kernel socket
/// address. Entries go when their socket closes or is destroyed. A plain hash, not an
/// LRU: when it is full, new sockets go untracked and that is counted, where an LRU
/// would evict live entries silently. The only way an entry outlives its socket is the
/// kernel skipping both cleanups (recursion protection), which it counts as missed.
#[map]
pub static SOCKETS: HashMap<u64, SockInfo> = HashMap::with_max_entries(65536, 0);

/// The main socket store (`sockets::SkStore`): socket-local storage, one `SockInfo`
/// per socket, freed with the socket, copied from a listener to its children. A BTF-defined map (aya's own `SkStorage`
/// has no `BPF_F_CLONE` and takes only a sock_addr context).
#[repr(C)]
pub struct SockStorageMap {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockInfo,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; never dereferenced.
unsafe impl Sync for SockStorageMap {}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SOCK_STORAGE")]
pub static SOCK_STORAGE: SockStorageMap = SockStorageMap {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
};

/// Every listening socket opened since tcptrace attached, by address, port and network
/// namespace: its owner, which accepted children inherit in the fallback store (socket
/// storage copies it into each child), and its socket, whose accept queue tells whether
/// a SYN to it overflowed. A full table is counted (`listener_map_full`), and SYNs to a
/// listener not in it are counted as not judged.
#[map]
pub static LISTENERS: HashMap<ListenKey, Listener> = HashMap::with_max_entries(4096, 0);

/// Lossless counters behind the Prometheus metrics, independent of the ring buffer.
/// Keys: `tcptrace_common::counters`. The sparse ones are hashes sized to their whole
/// key space, so they cannot fill up.
#[map]
pub static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);
#[map]
pub static RETRANSMITS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(128, 0);
#[map]
pub static HANDSHAKES: PerCpuArray<u64> = PerCpuArray::with_max_entries(HANDSHAKE_SLOTS, 0);
#[map]
pub static FAILURES: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
pub static RESETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RESET_SLOTS, 0);
/// TCP packets dropped, by (reason, socket state) (`counters::drop_index`): a hash the
/// size of the whole key space, so only the few pairs that happen are read.
#[map]
pub static DROPS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(DROP_SLOTS, 0);
/// Listen-queue overflows (`counters::LISTEN_OVERFLOW_SLOTS`).
#[map]
pub static LISTEN_OVERFLOWS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(LISTEN_OVERFLOW_SLOTS, 0);
/// Connection bytes, lifetimes, RTTs and closes (`counters::CONN_*`).
#[map]
pub static CONNECTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CONNECTION_SLOTS, 0);

/// connect() errors by errno, and segments arriving in handshake states.
#[map]
pub static CONNECT_ERRORS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(CONNECT_ERROR_SLOTS, 0);
/// Errors the kernel reported on TCP sockets (`inet_sk_error_report`), by errno.
#[map]
pub static SOCKET_ERRORS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(CONNECT_ERROR_SLOTS, 0);
#[map]
pub static SEGMENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SEGMENT_SLOTS, 0);

/// Which attach method provides connect() errors and segment flags on this kernel
/// (`tcptrace_common::config::Source`, slots `SOURCE_*`), written by the agent after
/// attaching so the tracepoint-derived fallback only runs where it is needed.
#[map]
pub static SOURCES: Array<u32> = Array::with_max_entries(SOURCE_SLOTS, 0);

/// connect() calls in flight, by thread id, for the tracepoint-derived fallback: set at
/// connect() calls that failed before a SYN left, per thread: written when the socket
/// falls back to CLOSE without a local port, read at `sys_exit_connect`. Only failures
/// are written (an insert and a delete for every connect was 0.8 us of each connection
/// under churn). An LRU because a connect that never returns through the syscall
/// (kernel sockets, io_uring) would otherwise leak its entry.
#[map]
pub static CONNECTING: LruHashMap<u32, PendingConnect> = LruHashMap::with_max_entries(16384, 0);

/// kprobe fallback: the socket and sockaddr each thread passed to tcp_v4/v6_connect,
/// read back at the kretprobe (the arguments are gone by then).
#[map]
pub static CONNECT_ARGS: LruHashMap<u32, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// A connect() whose socket went back to CLOSE before it had a local port: the kernel
/// found no free port (inet_hash_connect failed), and connect() returns that error.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConnect {
    pub skaddr: u64,
    /// When the socket fell back to CLOSE (`bpf_ktime_get_ns`).
    pub failed_ns: u64,
    pub family: u16,
    pub dport: u16,
    pub daddr: [u8; 16],
}
/// Which method provides the information of `SOURCES` slot `slot`.
#[inline(always)]
pub fn source(slot: u32) -> u32 {
    SOURCES.get(slot).copied().unwrap_or(0)
}

/// `CONFIG`, behind a pointer the compiler cannot see through: the agent writes the
/// real values at load time, so the defaults compiled in must not be constant-folded.
/// Fields are then loaded where they are used. (A volatile copy of a whole tracepoint
/// layout kept a dozen values alive and spilled them: the state program reached 480
/// bytes of stack, and 5.10's verifier refused it with its handshake subprogram.)
#[inline(always)]
pub fn config() -> &'static Config {
    let p: *const Config = &CONFIG;
    // SAFETY: `p` points to CONFIG; the volatile read only hides that from the optimizer.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// One field of `CONFIG` (see `config`).
#[macro_export]
macro_rules! conf {
    ($($field:tt).+) => {
        $crate::maps::config().$($field).+
    };
}
