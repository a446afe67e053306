//! tcptrace's eBPF object: the maps and the program table. Each kernel hook has its own
//! file under `probes/`; what several hooks share lives in `tracepoint.rs` (reading
//! fields through the runtime layout), `sockets.rs` (per-socket tracking) and `emit.rs`
//! (filters, ring buffer, counters).
#![no_std]
#![no_main]

mod emit;
mod maps;
mod probes;
mod sockets;
mod tracepoint;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    probes::inet_sock_set_state::handle(&ctx);
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
pub fn tcp_send_reset(_ctx: TracePointContext) -> u32 {
    probes::tcp_send_reset::handle();
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    probes::tcp_destroy_sock::handle(&ctx);
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
