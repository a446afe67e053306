//! tcptrace's eBPF object: the maps and the program table. Each kernel hook has its own
//! file under `probes/`; what several hooks share lives in `tracepoint.rs` (reading
//! fields through the runtime layout), `sockets.rs` (per-socket tracking) and `emit.rs`
//! (filters, ring buffer, counters).
#![no_std]
#![no_main]

mod connect_errors;
mod emit;
mod maps;
mod probes;
mod sock;
mod sockets;
mod tracepoint;

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    probes::inet_sock_set_state::handle(&ctx);
    0
}

/// The same with a raw tracepoint: no record is built for it.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    probes::inet_sock_set_state::handle_raw(&ctx);
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    probes::tcp_retransmit_skb::handle(&ctx);
    0
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    probes::tcp_retransmit_synack::handle(&ctx);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    probes::tcp_receive_reset::handle(&ctx);
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    probes::tcp_send_reset::handle(&ctx);
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    probes::tcp_destroy_sock::handle(&ctx);
    0
}

#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    probes::inet_sk_error_report::handle(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    probes::sys_exit_connect::handle(&ctx);
    0
}

// Function hooks. Each has an fentry/fexit program (cheapest, needs BTF and a kernel
// that allows it) and a kprobe program (needs kprobes); the agent tries them in that
// order and falls back to the tracepoints above.

/// fexit arguments are followed by the return value: tcp_v4_connect(sk, uaddr, len).
#[fexit(function = "tcp_v4_connect")]
pub fn tcp_v4_connect_fexit(ctx: FExitContext) -> i32 {
    probes::tcp_connect::returned(ctx.arg(0), ctx.arg(1), ctx.arg::<i64>(3) as i32);
    0
}

#[fexit(function = "tcp_v6_connect")]
pub fn tcp_v6_connect_fexit(ctx: FExitContext) -> i32 {
    probes::tcp_connect::returned(ctx.arg(0), ctx.arg(1), ctx.arg::<i64>(3) as i32);
    0
}

/// Attached to both tcp_v4_connect and tcp_v6_connect.
#[kprobe]
pub fn tcp_connect_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(uaddr) = ctx.arg::<u64>(1) {
        probes::tcp_connect::entered(uaddr);
    }
    0
}

#[kretprobe]
pub fn tcp_connect_kretprobe(ctx: RetProbeContext) -> u32 {
    probes::tcp_connect::kretprobe_returned(ctx.ret::<i64>() as i32);
    0
}

#[fentry(function = "tcp_rcv_state_process")]
pub fn tcp_rcv_state_process_fentry(ctx: FEntryContext) -> i32 {
    probes::tcp_rcv_state_process::handle(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe]
pub fn tcp_rcv_state_process_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg(0), ctx.arg(1)) {
        probes::tcp_rcv_state_process::handle(sk, skb);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and the ring buffer helpers require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
