//! `tcp:tcp_receive_reset`: a RST arrived for a full socket. Counted, and the socket
//! marked so a failed handshake can be classified as refused/reset even without BTF.
//! Reported as a `Reset` event with the socket's owner; where no hook on
//! `tcp_rcv_state_process` attached, a RST arriving in a handshake state is also counted
//! and reported as a handshake-state segment from here.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{
    config::{Source, SOURCE_SEGMENTS},
    counters::{self, RESET_RECEIVED, TCP_RST},
    event::FLAG_RST_RECEIVED,
    EventKind,
};

use crate::{
    conf,
    emit::{add_slot, base_event, submit, wanted},
    maps::{source, RESETS, SEGMENTS},
    sockets,
    tracepoint::{endpoints, Record},
};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    add_slot(&RESETS, RESET_RECEIVED, 1);
    let layout = &conf!(receive_reset);
    let rec = Record::load(ctx, layout)?;
    let skaddr: u64 = rec.get(layout.skaddr)?;
    let info = unsafe { &mut *sockets::lookup(skaddr)? };
    info.flags |= FLAG_RST_RECEIVED as u32;
    let (owner, flags, state) = (info.owner, info.flags as u8, info.state);
    let now = unsafe { bpf_ktime_get_ns() };
    if wanted(EventKind::Reset) {
        let ep = endpoints(&rec, layout)?;
        let event = base_event(&ep, &owner, now, flags)?;
        event.kind = EventKind::Reset as u8;
        event.detail = RESET_RECEIVED as u8;
        event.old_state = state;
        submit(event);
    }
    if source(SOURCE_SEGMENTS) != Source::Tracepoint as u32 {
        return Some(());
    }
    let index = counters::segment_index(state, TCP_RST)?;
    add_slot(&SEGMENTS, index, 1);
    if !wanted(EventKind::Segment) {
        return Some(());
    }
    let ep = endpoints(&rec, layout)?;
    let event = base_event(&ep, &owner, now, flags)?;
    event.kind = EventKind::Segment as u8;
    event.old_state = state;
    event.detail = TCP_RST;
    submit(event);
    Some(())
}
