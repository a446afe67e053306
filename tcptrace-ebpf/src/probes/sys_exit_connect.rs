//! `syscalls:sys_exit_connect`: connect()'s return code, for the tracepoint-derived
//! connect-error fallback (only attached where no function hook on
//! `tcp_v4_connect`/`tcp_v6_connect` is).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{conf, connect_errors, frame::Scratch, tracepoint::Record};

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    returned(&ctx);
    0
}

#[inline(always)]
fn returned(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(sys_exit_connect);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ret: i64 = Record::load(&mut frame.record, ctx, layout)?.get(layout.err)?;
    connect_errors::syscall_returned(ret, &mut frame.event);
    Some(())
}
