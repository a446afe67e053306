//! `tcp:tcp_receive_reset`: a RST arrived for a full socket. Marks the socket so a
//! failed handshake can be classified as refused/reset even without BTF.
use aya_ebpf::programs::TracePointContext;
use tcptrace_common::event::FLAG_RST_RECEIVED;

use crate::{conf, sockets, tracepoint::read};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let skaddr: u64 = read(ctx, conf!(receive_reset.skaddr))?;
    let info = sockets::lookup(skaddr)?;
    unsafe { (*info).flags |= FLAG_RST_RECEIVED as u32 };
    Some(())
}
