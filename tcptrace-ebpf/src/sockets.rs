//! Per-socket tracking: who owns a socket, since when it is in its state, what of it
//! was already counted.
//!
//! Most TCP state changes run in softirq context, where the current task is whatever
//! the CPU happened to interrupt. The owner is therefore captured only where a process
//! really acts on the socket (connect -> SYN_SENT, listen -> LISTEN), inherited by the
//! children of a listener, and kept with the socket until it goes away.
//!
//! Two stores keep it. Socket-local storage (`SkStore`, BTF-typed tracepoints on Linux
//! 5.11+) lives and dies with the socket: no capacity, no cleanup, and a listener's
//! entry is copied into each child it accepts (`BPF_F_CLONE`), which is exactly the
//! inheritance wanted. The fallback (`HashStore`) is a hash keyed by socket address,
//! bounded by `--max-sockets`; children find their listener's owner in the listener
//! table (kept for both stores), keyed by address, port *and* network namespace; what
//! either cannot hold is counted.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_comm, bpf_sk_storage_get},
    },
    EbpfContext,
};
use tcptrace_common::{
    event::{ListenKey, Listener, SockInfo, RETRANS_SEEN_UNKNOWN},
    Owner, Stat, AF_INET6,
};

use crate::{
    emit::bump,
    maps::{SockStorageMap, LISTENERS, SOCKETS, SOCK_STORAGE},
    tracepoint::{bytes16, Endpoints},
    zero,
};

/// Where a program finds the tracking entry of the socket it handles.
pub trait Store {
    /// The socket's entry, if it has one.
    fn entry(&self) -> Option<&'static mut SockInfo>;
    /// Start tracking the socket: its entry, replacing what it had, zeroed then set by
    /// `fill`. A full fallback map is counted (and logged) and the socket stays
    /// untracked.
    fn start<C: EbpfContext>(&self, ctx: &C, fill: impl FnOnce(&mut SockInfo));
    /// The socket is gone or starts over: drop its entry (socket storage drops itself).
    fn forget(&self);
    /// The owner of the listener whose child this socket (just created, in SYN_RECV) is.
    fn listener_owner(&self, ep: &Endpoints, netns: u32) -> Option<Owner>;
}

/// What `HashStore::start` inserts: a map value the helper can copy from, off the stack.
// SAFETY: `SockInfo` is integers and arrays of them, valid all-zero.
static ZEROED_ENTRY: SockInfo = unsafe { core::mem::zeroed() };

/// The fallback: `SOCKETS` keyed by socket address, `LISTENERS` by endpoint and netns.
pub struct HashStore {
    pub skaddr: u64,
}

impl Store for HashStore {
    #[inline(always)]
    fn entry(&self) -> Option<&'static mut SockInfo> {
        SOCKETS.get_ptr_mut(self.skaddr).map(|p| unsafe { &mut *p })
    }

    /// Inserted zeroed and filled in place, as `SkStore` does: a `SockInfo` built on
    /// the stack put the state program at 544 bytes of stack with its callee, over the
    /// 512 that Linux 5.10 and 6.1 allow (6.18 counts only the slots a path uses).
    #[inline(always)]
    fn start<C: EbpfContext>(&self, ctx: &C, fill: impl FnOnce(&mut SockInfo)) {
        if SOCKETS.insert(self.skaddr, &ZEROED_ENTRY, 0).is_err() {
            untracked(ctx);
            return;
        }
        match self.entry() {
            Some(entry) => fill(entry),
            // Gone again before it was filled: counted like a full map.
            None => untracked(ctx),
        }
    }

    #[inline(always)]
    fn forget(&self) {
        let _ = SOCKETS.remove(self.skaddr);
    }

    #[inline(always)]
    fn listener_owner(&self, ep: &Endpoints, netns: u32) -> Option<Owner> {
        listener(ep.family, &ep.saddr, ep.sport, netns).map(|l| l.owner)
    }
}

/// The listener a connection to `addr`:`port` in namespace `netns` reaches: one bound to
/// exactly that address first, then a wildcard one of the same family, then an IPv6
/// wildcard (dual-stack listeners accept IPv4 connections).
#[inline(always)]
pub fn listener(family: u16, addr: &[u8; 16], port: u16, netns: u32) -> Option<Listener> {
    let exact = listen_key(family, port, addr, netns);
    if let Some(l) = unsafe { LISTENERS.get(&exact) } {
        return Some(*l);
    }
    let any = listen_key(family, port, &bytes16(0, 0), netns);
    if let Some(l) = unsafe { LISTENERS.get(&any) } {
        return Some(*l);
    }
    let any6 = listen_key(AF_INET6, port, &bytes16(0, 0), netns);
    unsafe { LISTENERS.get(&any6) }.copied()
}

/// A listener opened (`Some(owner)`) or closed (`None`). Kept whichever store tracks
/// sockets: children look up their owner here where socket storage is missing, and a
/// SYN's overflow is judged by the queue of the listener found here.
#[inline(always)]
pub fn set_listener(ep: &Endpoints, netns: u32, owner: Option<&Owner>) {
    let key = listen_key(ep.family, ep.sport, &ep.saddr, netns);
    match owner {
        Some(owner) => {
            let listener = Listener {
                owner: *owner,
                skaddr: ep.skaddr,
            };
            if LISTENERS.insert(&key, &listener, 0).is_err() {
                bump(Stat::ListenerMapFull);
            }
        }
        None => {
            let _ = LISTENERS.remove(&key);
        }
    }
}

#[inline(always)]
fn listen_key(family: u16, port: u16, addr: &[u8; 16], netns: u32) -> ListenKey {
    ListenKey {
        addr: *addr,
        family,
        port,
        netns,
    }
}

const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;

/// Socket-local storage, for programs on BTF-typed tracepoints: `sk` must be the
/// tracepoint's own `struct sock *` argument, which the verifier knows the type of.
pub struct SkStore {
    pub sk: u64,
}

impl SkStore {
    #[inline(always)]
    fn get(&self, init: *mut SockInfo, flags: u64) -> Option<&'static mut SockInfo> {
        // A null socket has no storage (a drop without a receiving socket), and 6.1's
        // verifier refuses the helper a null it can see.
        if self.sk == 0 {
            return None;
        }
        let map = &SOCK_STORAGE as *const SockStorageMap as *mut core::ffi::c_void;
        // SAFETY: the helper checks its arguments; it returns null or a value pointer.
        let p = unsafe { bpf_sk_storage_get(map, self.sk as *mut _, init.cast(), flags) };
        if p.is_null() {
            None
        } else {
            Some(unsafe { &mut *(p as *mut SockInfo) })
        }
    }
}

impl Store for SkStore {
    #[inline(always)]
    fn entry(&self) -> Option<&'static mut SockInfo> {
        self.get(core::ptr::null_mut(), 0)
    }

    #[inline(always)]
    fn start<C: EbpfContext>(&self, ctx: &C, fill: impl FnOnce(&mut SockInfo)) {
        // Created zeroed, or an existing entry (a previous life, a listener's copy)
        // zeroed here, then filled in place: a `SockInfo` built on the stack and copied
        // in cost byte-at-a-time `memset` loops for its padding. It fails only when
        // the kernel cannot allocate the storage.
        match self.get(core::ptr::null_mut(), BPF_SK_STORAGE_GET_F_CREATE) {
            Some(entry) => {
                zero::zero_words(entry);
                fill(entry);
            }
            None => untracked(ctx),
        }
    }

    #[inline(always)]
    fn forget(&self) {}

    /// The child's storage is a copy of its listener's, made by the kernel when it
    /// cloned the listener (`BPF_F_CLONE`), before this state change.
    #[inline(always)]
    fn listener_owner(&self, _ep: &Endpoints, _netns: u32) -> Option<Owner> {
        self.entry().map(|e| e.owner)
    }
}

/// A socket whose tracking entry could not be stored: counted, and logged at powers of
/// two so the agent's log says it without flooding.
#[inline(always)]
fn untracked<C: EbpfContext>(ctx: &C) {
    let n = bump(Stat::SocketMapFull);
    if n.is_power_of_two() {
        aya_log_ebpf::warn!(
            ctx,
            "tcptrace: socket map full, {} sockets untracked on this CPU",
            n
        );
    }
}

/// The process running right now. Only meaningful in process context.
#[inline(always)]
pub fn current_owner() -> Owner {
    let mut owner: Owner = zero::zeroed();
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    owner.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Straight into the zeroed name (aya's wrapper zeroes a copy a byte at a time); on
    // failure the helper leaves it zero, an empty name.
    let comm = owner.comm.as_mut_ptr().cast();
    // SAFETY: the helper writes at most the 16 bytes it is given.
    let _ = unsafe { bpf_get_current_comm(comm, owner.comm.len() as u32) };
    owner
}

/// An owner not known (the socket predates tracking, or its listener's does).
#[inline(always)]
pub fn unknown_owner() -> Owner {
    zero::zeroed()
}

/// A new entry (zeroed by `Store::start`): owned by `owner`, in `state` since `now`.
#[inline(always)]
pub fn set_new(info: &mut SockInfo, owner: &Owner, state: u8, now: u64, handshake_start_ns: u64) {
    zero::copy_words(&mut info.owner, owner);
    info.state_since_ns = now;
    info.handshake_start_ns = handshake_start_ns;
    info.retrans_seen = RETRANS_SEEN_UNKNOWN;
    info.state = state;
    info.born_ns = handshake_start_ns;
}
