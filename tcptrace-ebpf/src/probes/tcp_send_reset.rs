//! `tcp:tcp_send_reset`: this host sent a RST (to a closed port, an aborted connection,
//! a bad segment). Counted always; for a socket tcptrace tracks, also reported with its
//! owner (the endpoints read from the socket where BTF gives the offsets).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{counters::RESET_SENT, EventKind};

use crate::{
    conf,
    emit::{add_slot, base_event, submit, wanted},
    maps::{RECORD, RESETS},
    sock, sockets,
    tracepoint::{bytes16, Endpoints, Record},
};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    add_slot(&RESETS, RESET_SENT, 1);
    if !wanted(EventKind::Reset) {
        return None;
    }
    let layout = &conf!(send_reset);
    let skaddr: u64 = Record::load(ctx, layout)?.get(layout.skaddr)?;
    if skaddr == 0 {
        return None;
    }
    let info = unsafe { *sockets::lookup(skaddr)? };
    // The record was consumed: its per-CPU buffer can hold the socket's fields now.
    let ep = sock::sock_endpoints_in(&RECORD, skaddr).unwrap_or_else(|| Endpoints {
        skaddr,
        family: 0,
        sport: 0,
        dport: 0,
        saddr: bytes16(0, 0),
        daddr: bytes16(0, 0),
    });
    let event = base_event(
        &ep,
        &info.owner,
        unsafe { bpf_ktime_get_ns() },
        info.flags as u8,
    )?;
    event.kind = EventKind::Reset as u8;
    event.detail = RESET_SENT as u8;
    event.old_state = info.state;
    submit(event);
    Some(())
}
