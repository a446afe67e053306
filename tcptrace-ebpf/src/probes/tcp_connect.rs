//! `tcp_v4_connect` / `tcp_v6_connect` (fexit, or kprobe + kretprobe): the error these
//! functions return before a SYN is sent. Where neither attaches, `sys_exit_connect`
//! and the state tracepoint derive the same (see `connect_errors`).
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel};
use tcptrace_common::{config::Source, AF_INET, AF_INET6};

use crate::{
    connect_errors,
    maps::{CONNECT_ARGS, FN_SCRATCH},
    tracepoint::{is_v4_mapped, Endpoints},
};

/// fexit: arguments and return value at once.
#[inline(always)]
pub fn returned(sk: u64, uaddr: u64, ret: i32) {
    if ret >= 0 {
        return;
    }
    let Some(dest) = destination(sk, uaddr) else {
        return;
    };
    // tcp_v6_connect hands v4-mapped destinations to tcp_v4_connect, whose own hook
    // reports the error: count it once.
    if dest.family == AF_INET6 && is_v4_mapped(&dest.daddr) {
        return;
    }
    connect_errors::report(&dest, -ret, Source::Function, &FN_SCRATCH);
}

/// kprobe: keep the sockaddr for the kretprobe.
#[inline(always)]
pub fn entered(uaddr: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = CONNECT_ARGS.insert(tid, uaddr, 0);
}

/// kretprobe. The inner tcp_v4_connect of a v4-mapped tcp_v6_connect returns first and
/// takes the thread's entry, so the outer return finds none: one report per call.
#[inline(always)]
pub fn kretprobe_returned(ret: i32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(uaddr) = (unsafe { CONNECT_ARGS.get(tid) }).copied() else {
        return;
    };
    let _ = CONNECT_ARGS.remove(tid);
    if ret >= 0 {
        return;
    }
    if let Some(dest) = destination(0, uaddr) {
        connect_errors::report(&dest, -ret, Source::Function, &FN_SCRATCH);
    }
}

/// The address connect() was given (a kernel copy of the caller's sockaddr): the
/// socket's own fields are reset on failure.
#[inline(always)]
fn destination(sk: u64, uaddr: u64) -> Option<Endpoints> {
    // sockaddr_in: family, port, addr[4]; sockaddr_in6: family, port, flowinfo, addr[16].
    let raw: [u8; 24] = unsafe { bpf_probe_read_kernel(uaddr as *const [u8; 24]) }.ok()?;
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        daddr[..4].copy_from_slice(&raw[4..8]);
    } else if family == AF_INET6 {
        daddr.copy_from_slice(&raw[8..24]);
    } else {
        return None;
    }
    Some(Endpoints {
        skaddr: sk,
        family,
        sport: 0,
        dport: u16::from_be_bytes([raw[2], raw[3]]),
        saddr: [0; 16],
        daddr,
    })
}
