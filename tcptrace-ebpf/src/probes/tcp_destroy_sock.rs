//! `tcp:tcp_destroy_sock`: the kernel frees a TCP socket. Drops its tracking entry even
//! when the socket never passed through CLOSE on the state tracepoint, so the socket map
//! cannot leak.
use aya_ebpf::programs::TracePointContext;

use crate::{conf, sockets, tracepoint::Record};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(destroy_sock);
    let skaddr: u64 = Record::load(ctx, layout)?.get(layout.skaddr)?;
    sockets::forget(skaddr);
    Some(())
}
