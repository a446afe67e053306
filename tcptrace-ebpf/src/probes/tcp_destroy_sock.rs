//! `tcp:tcp_destroy_sock`: the kernel frees a TCP socket. Drops its entry in the fallback
//! socket map even when the socket never passed through CLOSE on the state tracepoint,
//! so the map cannot leak. (Socket-local storage is freed with the socket: nothing to
//! do there.)
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    conf,
    frame::Scratch,
    sockets::{HashStore, Store},
    tracepoint::Record,
};

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    HashStore { skaddr: ctx.arg(0) }.forget();
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    from_record(&ctx);
    0
}

#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(destroy_sock);
    let mut scratch = Scratch::enter()?;
    let skaddr: u64 = Record::load(&mut scratch.frame().record, ctx, layout)?.get(layout.skaddr)?;
    HashStore { skaddr }.forget();
    Some(())
}
