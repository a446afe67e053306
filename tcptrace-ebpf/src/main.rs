//! tcptrace's eBPF object. Each kernel hook has its own file under `probes/`, with its
//! entry points (one per attach method) beside the handler they share; what several
//! hooks share lives in `maps.rs`, `frame.rs` (per-run scratch space),
//! `tracepoint.rs` (reading records through the runtime layout), `sock.rs` (reading
//! kernel structs at BTF offsets), `sockets.rs` (per-socket tracking), `lifetime.rs`
//! (what a connection carried), `packet.rs` (a packet's own headers), `zero.rs` (zeroing without a byte loop) and
//! `emit.rs` (filters, ring buffer, counters).
#![no_std]
#![no_main]
// `asm!` for BPF: the atomic add of `emit::add_to`.
#![feature(asm_experimental_arch)]

mod connect_errors;
mod emit;
mod frame;
mod guard;
mod lifetime;
mod maps;
mod packet;
mod probes;
mod sock;
mod sockets;
mod tracepoint;
mod zero;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and the ring buffer helpers require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
