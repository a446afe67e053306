//! `tcp:tcp_retransmit_skb`: a data segment, or the client's SYN, was retransmitted.
//! One event per retransmitted skb; under GSO/TSO one skb can carry several segments
//! (the kernel's TcpRetransSegs counts segments).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{EventKind, RetransmitKind, TcpState};

use crate::{
    conf,
    emit::{base_event, owner_of, submit},
    tracepoint::{endpoints, read},
};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = conf!(retransmit_skb);
    let ep = endpoints(ctx, &layout)?;
    let state: i32 = read(ctx, layout.oldstate)?;
    // Kernels before 5.16 have no `err`: there the tracepoint fires only on success.
    let err: i32 = read(ctx, layout.err).unwrap_or(0);
    let kind = if state as u8 == TcpState::SynSent as u8 {
        RetransmitKind::Syn
    } else {
        RetransmitKind::Data
    };
    let (owner, flags) = owner_of(ep.skaddr);
    let event = base_event(&ep, &owner, unsafe { bpf_ktime_get_ns() }, flags)?;
    event.kind = EventKind::Retransmit as u8;
    event.detail = kind as u8;
    event.old_state = state as u8;
    event.err = err;
    submit(event);
    Some(())
}
