//! `tcp:tcp_retransmit_synack`: the server re-sent a SYN-ACK for a pending request.
//! The socket is the listener (or, with TCP Fast Open, the child), so the event carries
//! the listener's owner; the endpoints are the request's. The kernel fires it only for
//! a SYN-ACK it sent and counted in TcpRetransSegs: one segment each.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{
    counters, event::RETRANS_SEEN_UNKNOWN, stats::Guarded, EventKind, RetransmitKind, TcpState,
    AF_INET6,
};

use crate::{
    btf_programs, conf,
    emit::{add_key, submit, tracked_event, wanted},
    frame::{Frame, Scratch},
    maps::RETRANSMITS,
    raw_programs, sock,
    sockets::{HashStore, SkStore, Store},
    tracepoint::{endpoints, Endpoints, Record},
};

btf_programs!(
    Guarded::RetransmitSynack,
    "tcp_retransmit_synack",
    tcp_retransmit_synack_btf,
    tcp_retransmit_synack_btf_backup,
    2,
    |ctx| {
        let (sk, req): (u64, u64) = (ctx.arg(0), ctx.arg(1));
        from_socket(&SkStore { sk }, sk, req);
    }
);

raw_programs!(
    Guarded::RetransmitSynack,
    "tcp_retransmit_synack",
    tcp_retransmit_synack_raw,
    tcp_retransmit_synack_raw_backup,
    2,
    |ctx| {
        let (sk, req): (u64, u64) = (ctx.arg(0), ctx.arg(1));
        from_socket(&HashStore { skaddr: sk }, sk, req);
    }
);

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    from_record(&ctx);
    0
}

/// The request socket starts with the same `sock_common` as a full one.
#[inline(always)]
fn from_socket(store: &impl Store, sk: u64, req: u64) -> Option<()> {
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let mut ep = sock::endpoints(&mut frame.sock, req)?;
    ep.skaddr = sk;
    retransmitted(store, frame, &ep);
    Some(())
}

#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(retransmit_synack);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = endpoints(&Record::load(&mut frame.record, ctx, layout)?, layout)?;
    retransmitted(&HashStore { skaddr: ep.skaddr }, frame, &ep);
    Some(())
}

#[inline(always)]
fn retransmitted(store: &impl Store, frame: &mut Frame, ep: &Endpoints) {
    // The request socket is in NEW_SYN_RECV; users know the handshake state as SYN_RECV.
    let state = TcpState::SynRecv as u8;
    let key = counters::retransmit_key(RetransmitKind::SynAck as u8, state, ep.family == AF_INET6);
    add_key(&RETRANSMITS, key, 1);
    // A Fast Open child adds this SYN-ACK to its own total_retrans too: counted here, so
    // not again by its next data retransmit.
    if let Some(info) = store.entry() {
        if info.retrans_seen != RETRANS_SEEN_UNKNOWN {
            info.retrans_seen = info.retrans_seen.wrapping_add(1);
        }
    }
    if !wanted(EventKind::Retransmit) {
        return;
    }
    let event = tracked_event(&mut frame.event, ep, store);
    event.kind = EventKind::Retransmit as u8;
    event.detail = RetransmitKind::SynAck as u8;
    event.old_state = state;
    event.segs = 1;
    submit(event);
}
