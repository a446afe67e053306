//! connect() errors raised before a SYN leaves: no free local port (EADDRNOTAVAIL, the
//! mark of ephemeral-port exhaustion), no route (ENETUNREACH), bad arguments.
//!
//! Two sources, the agent picks one per family (`SOURCES`): a hook on
//! `tcp_v4_connect`/`tcp_v6_connect` sees its return value directly; without one, the
//! state tracepoint notices a socket that left SYN_SENT before getting a local port and
//! `sys_exit_connect` supplies connect()'s return code. Errors raised before the socket
//! enters SYN_SENT (routing) are visible only to the function hook.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tcptrace_common::{
    config::{Source, SOURCE_CONNECT_V4, SOURCE_CONNECT_V6},
    counters::CONNECT_ERROR_SLOTS,
    Event, EventKind, AF_INET6,
};

use crate::{
    emit::{add_key, base_event, submit},
    maps::{source, PendingConnect, CONNECTING, CONNECT_ERRORS},
    sockets::current_owner,
    tracepoint::{bytes16, Endpoints},
};

/// Does the tracepoint-derived fallback handle connects of this family?
#[inline(always)]
pub fn derived_for(family: u16) -> bool {
    let slot = if family == AF_INET6 {
        SOURCE_CONNECT_V6
    } else {
        SOURCE_CONNECT_V4
    };
    source(slot) == Source::Tracepoint as u32
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// SYN_SENT -> CLOSE. Without a local port it happened inside connect() itself: the
/// kernel found no usable port and connect() is about to return the error.
#[inline(always)]
pub fn note_close(ep: &Endpoints, now: u64) {
    if ep.sport != 0 {
        return;
    }
    let pending = PendingConnect {
        skaddr: ep.skaddr,
        failed_ns: now,
        family: ep.family,
        dport: ep.dport,
        daddr: ep.daddr,
    };
    let _ = CONNECTING.insert(current_tid(), pending, 0);
}

/// How long after the failure connect() returns it, at most: the same call returns
/// within microseconds. Bounds what an entry whose call never returned through the
/// syscall could claim of a later call on the same thread.
const RETURNS_WITHIN_NS: u64 = 100_000_000;

/// `sys_exit_connect`: report the return code of a call that failed early.
#[inline(always)]
pub fn syscall_returned(ret: i64, event: &mut Event) {
    let tid = current_tid();
    let Some(pending) = (unsafe { CONNECTING.get(tid) }).copied() else {
        return;
    };
    let _ = CONNECTING.remove(tid);
    let now = unsafe { bpf_ktime_get_ns() };
    if ret >= 0 || now.wrapping_sub(pending.failed_ns) > RETURNS_WITHIN_NS {
        return;
    }
    let dest = Endpoints {
        skaddr: pending.skaddr,
        family: pending.family,
        sport: 0,
        dport: pending.dport,
        saddr: bytes16(0, 0),
        daddr: pending.daddr,
    };
    report(&dest, (-ret) as i32, Source::Tracepoint, event);
}

/// Count the error and emit a `ConnectError` event owned by the calling process, built
/// in `event` (the run's frame).
#[inline(always)]
pub fn report(dest: &Endpoints, errno: i32, source: Source, event: &mut Event) {
    if errno <= 0 || errno as u32 >= CONNECT_ERROR_SLOTS {
        return;
    }
    add_key(&CONNECT_ERRORS, errno as u32, 1);
    let owner = current_owner();
    let now = unsafe { bpf_ktime_get_ns() };
    let event = base_event(event, dest, &owner, now, 0);
    event.kind = EventKind::ConnectError as u8;
    event.err = errno;
    event.detail = source as u8;
    submit(event);
}
