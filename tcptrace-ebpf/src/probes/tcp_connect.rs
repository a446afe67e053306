//! `tcp_v4_connect` / `tcp_v6_connect` (fexit, or kprobe + kretprobe): the error these
//! functions return before a SYN is sent. Where neither attaches, `sys_exit_connect`
//! and the state tracepoint derive the same (see `connect_errors`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tcptrace_common::{config::Source, AF_INET, AF_INET6};

use crate::{
    connect_errors,
    frame::Scratch,
    maps::CONNECT_ARGS,
    tracepoint::{is_v4_mapped, Endpoints},
};

/// fexit arguments are followed by the return value: tcp_v4_connect(sk, uaddr, len).
#[fexit(function = "tcp_v4_connect")]
pub fn tcp_v4_connect_fexit(ctx: FExitContext) -> i32 {
    returned(ctx.arg(0), ctx.arg(1), ctx.arg::<i64>(3) as i32);
    0
}

#[fexit(function = "tcp_v6_connect")]
pub fn tcp_v6_connect_fexit(ctx: FExitContext) -> i32 {
    returned(ctx.arg(0), ctx.arg(1), ctx.arg::<i64>(3) as i32);
    0
}

/// Attached to both tcp_v4_connect and tcp_v6_connect: keep the arguments for the
/// kretprobe (they are gone by then).
#[kprobe]
pub fn tcp_connect_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = CONNECT_ARGS.insert(tid, [sk, uaddr], 0);
    }
    0
}

/// The inner tcp_v4_connect of a v4-mapped tcp_v6_connect returns first and takes the
/// thread's entry, so the outer return finds none: one report per call.
#[kretprobe]
pub fn tcp_connect_kretprobe(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some([sk, uaddr]) = unsafe { CONNECT_ARGS.get(tid) }.copied() {
        let _ = CONNECT_ARGS.remove(tid);
        let ret = ctx.ret::<i64>() as i32;
        if let (true, Some(dest)) = (ret < 0, destination(sk, uaddr)) {
            report(&dest, -ret);
        }
    }
    0
}

/// fexit: arguments and return value at once.
#[inline(always)]
fn returned(sk: u64, uaddr: u64, ret: i32) {
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
    report(&dest, -ret);
}

#[inline(always)]
fn report(dest: &Endpoints, errno: i32) -> Option<()> {
    let mut scratch = Scratch::enter()?;
    connect_errors::report(dest, errno, Source::Function, &mut scratch.frame().event);
    Some(())
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
