//! `syscalls:sys_exit_connect`: connect()'s return code, for the tracepoint-derived
//! connect-error fallback (only attached where no function hook on
//! `tcp_v4_connect`/`tcp_v6_connect` is).
use aya_ebpf::programs::TracePointContext;

use crate::{conf, connect_errors, maps::SCRATCH, tracepoint::Record};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(sys_exit_connect);
    let ret: i64 = Record::load(ctx, layout)?.get(layout.err)?;
    connect_errors::syscall_returned(ret, &SCRATCH);
    Some(())
}
