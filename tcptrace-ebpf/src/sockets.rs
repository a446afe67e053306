//! Per-socket tracking: who owns a socket and since when it is in its state.
//!
//! Most TCP state changes run in softirq context, where the current task is whatever
//! the CPU happened to interrupt. The owner is therefore captured only where a process
//! really acts on the socket (connect -> SYN_SENT, listen -> LISTEN), inherited by the
//! children of a listener, and carried in `SOCKETS` until the socket goes away.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    EbpfContext,
};
use tcptrace_common::{
    event::{ListenKey, SockInfo},
    Owner, Stat, AF_INET6,
};

use crate::{
    emit::bump,
    maps::{LISTENERS, SOCKETS},
    tracepoint::bytes16,
};

/// The process running right now. Only meaningful in process context.
#[inline(always)]
pub fn current_owner() -> Owner {
    Owner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_else(|_| bytes16(0, 0)),
    }
}

#[inline(always)]
pub fn lookup(skaddr: u64) -> Option<*mut SockInfo> {
    SOCKETS.get_ptr_mut(skaddr)
}

/// Start tracking a socket. A full map is counted and reported (rate-limited).
#[inline(always)]
pub fn track<C: EbpfContext>(ctx: &C, skaddr: u64, info: &SockInfo) {
    if SOCKETS.insert(skaddr, info, 0).is_err() {
        let n = bump(Stat::SocketMapFull);
        if n.is_power_of_two() {
            aya_log_ebpf::warn!(
                ctx,
                "tcptrace: socket map full, {} sockets untracked on this CPU",
                n
            );
        }
    }
}

#[inline(always)]
pub fn forget(skaddr: u64) {
    let _ = SOCKETS.remove(skaddr);
}

#[inline(always)]
pub fn listen_key(family: u16, port: u16, addr: &[u8; 16]) -> ListenKey {
    ListenKey {
        addr: *addr,
        family,
        port,
        _pad: 0,
    }
}

#[inline(always)]
pub fn add_listener<C: EbpfContext>(ctx: &C, key: &ListenKey, owner: &Owner) {
    if LISTENERS.insert(key, owner, 0).is_err() {
        let n = bump(Stat::ListenerMapFull);
        if n.is_power_of_two() {
            aya_log_ebpf::warn!(
                ctx,
                "tcptrace: listener map full, {} listeners untracked on this CPU",
                n
            );
        }
    }
}

#[inline(always)]
pub fn remove_listener(key: &ListenKey) {
    let _ = LISTENERS.remove(key);
}

/// The owner of the listener that accepted a child with this local endpoint: a listener
/// bound to exactly this address first, then a wildcard one of the same family, then an
/// IPv6 wildcard (dual-stack listeners accept IPv4 children).
#[inline(always)]
pub fn listener_owner(family: u16, port: u16, local: &[u8; 16]) -> Option<Owner> {
    let exact = listen_key(family, port, local);
    if let Some(o) = unsafe { LISTENERS.get(&exact) } {
        return Some(*o);
    }
    let any = listen_key(family, port, &bytes16(0, 0));
    if let Some(o) = unsafe { LISTENERS.get(&any) } {
        return Some(*o);
    }
    let any6 = listen_key(AF_INET6, port, &bytes16(0, 0));
    unsafe { LISTENERS.get(&any6) }.copied()
}

#[inline(always)]
pub fn new_info(owner: Owner, state: u8, now: u64, handshake_start_ns: u64) -> SockInfo {
    SockInfo {
        owner,
        state_since_ns: now,
        handshake_start_ns,
        flags: 0,
        state,
        _pad: [0; 3],
    }
}
