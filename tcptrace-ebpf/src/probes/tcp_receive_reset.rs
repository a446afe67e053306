//! `tcp:tcp_receive_reset`: a RST arrived for a full socket. Counted, and the socket
//! marked so a failed handshake can be classified as refused/reset even without BTF.
use aya_ebpf::programs::TracePointContext;
use tcptrace_common::{counters::RESET_RECEIVED, event::FLAG_RST_RECEIVED};

use crate::{conf, emit::add_slot, maps::RESETS, sockets, tracepoint::Record};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    add_slot(&RESETS, RESET_RECEIVED, 1);
    let layout = conf!(receive_reset);
    let skaddr: u64 = Record::load(ctx, &layout)?.get(layout.skaddr)?;
    let info = sockets::lookup(skaddr)?;
    unsafe { (*info).flags |= FLAG_RST_RECEIVED as u32 };
    Some(())
}
