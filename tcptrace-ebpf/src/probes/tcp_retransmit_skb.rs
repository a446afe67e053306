//! `tcp:tcp_retransmit_skb`: a data segment, or the client's SYN, was retransmitted.
//! One event per retransmitted skb; under GSO one skb carries several segments, so the
//! event also carries the skb's segment count (the unit of the kernel's TcpRetransSegs).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{counters, EventKind, RetransmitKind, TcpState, AF_INET6};

use crate::{
    conf,
    emit::{add_key, base_event, owner_of, submit},
    maps::RETRANSMITS,
    sock,
    tracepoint::{endpoints, Record},
};

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(retransmit_skb);
    let rec = Record::load(ctx, layout)?;
    let ep = endpoints(&rec, layout)?;
    let state: i32 = rec.get(layout.oldstate)?;
    // Kernels up to 6.12 at least have no `err`: there the tracepoint fires only for
    // retransmits that were sent.
    let err: i32 = rec.get(layout.err).unwrap_or(0);
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
    event.segs = segments(rec.get(layout.skbaddr).unwrap_or(0));
    if counted_by_kernel(err) {
        let key = counters::retransmit_key(kind as u8, state as u8, ep.family == AF_INET6);
        add_key(&RETRANSMITS, key, event.segs.max(1) as u64);
    }
    submit(event);
    Some(())
}

/// Did the kernel add this retransmit to TcpRetransSegs? It does so just before handing
/// the skb to the IP layer, so a retransmit that failed there (-ENOBUFS, -EPERM from a
/// netfilter OUTPUT drop, ...) counts, while the early exits of __tcp_retransmit_skb
/// do not: -EBUSY (the previous copy still in a host queue), -EAGAIN (no window),
/// -ENOMEM (no memory to fragment), -EHOSTUNREACH (no route to rebuild the header).
/// Kernels without `err` fire the tracepoint only for retransmits that were sent.
fn counted_by_kernel(err: i32) -> bool {
    const EAGAIN: i32 = 11;
    const ENOMEM: i32 = 12;
    const EBUSY: i32 = 16;
    const EHOSTUNREACH: i32 = 113;
    !matches!(-err, EAGAIN | ENOMEM | EBUSY | EHOSTUNREACH)
}

/// `tcp_skb_pcount(skb)`: what the kernel just added to TcpRetransSegs.
fn segments(skbaddr: u64) -> u16 {
    sock::read_at::<u16>(skbaddr, conf!(skb_segs_offset)).unwrap_or(0)
}
