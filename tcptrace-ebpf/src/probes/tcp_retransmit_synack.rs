//! `tcp:tcp_retransmit_synack`: the server re-sent a SYN-ACK for a pending request.
//! `skaddr` is the listener, so the event carries the listener's owner.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{counters, EventKind, RetransmitKind, TcpState, AF_INET6};

use crate::{
    conf,
    emit::{add_key, base_event, owner_of, submit},
    maps::RETRANSMITS,
    tracepoint::{endpoints, Record},
};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(retransmit_synack);
    let ep = endpoints(&Record::load(ctx, layout)?, layout)?;
    let (owner, flags) = owner_of(ep.skaddr);
    let event = base_event(&ep, &owner, unsafe { bpf_ktime_get_ns() }, flags)?;
    event.kind = EventKind::Retransmit as u8;
    event.detail = RetransmitKind::SynAck as u8;
    // The request socket is in NEW_SYN_RECV; users know the handshake state as SYN_RECV.
    event.old_state = TcpState::SynRecv as u8;
    event.segs = 1;
    let key = counters::retransmit_key(
        RetransmitKind::SynAck as u8,
        event.old_state,
        ep.family == AF_INET6,
    );
    add_key(&RETRANSMITS, key, 1);
    submit(event);
    Some(())
}
