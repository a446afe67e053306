//! `tcp:tcp_receive_reset`: a RST arrived for a full socket. Counted, and the socket
//! marked so a failed handshake can be classified as refused/reset even without BTF.
//! Reported as a `Reset` event with the socket's owner; where no hook on
//! `tcp_rcv_state_process` attached, a RST arriving in a handshake state is also counted
//! and reported as a handshake-state segment from here.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{
    config::{Source, SOURCE_SEGMENTS},
    counters::{self, RESET_RECEIVED, TCP_RST},
    event::{FLAG_OWNER_UNKNOWN, FLAG_RST_RECEIVED},
    stats::Guarded,
    EventKind,
};

use crate::{
    btf_programs, conf,
    emit::{add_slot, base_event, submit, wanted},
    frame::{Frame, Scratch},
    maps::{source, RESETS, SEGMENTS},
    raw_programs, sock,
    sockets::{self, HashStore, SkStore, Store},
    tracepoint::{endpoints, Endpoints, Record},
};

btf_programs!(
    Guarded::ReceiveReset,
    "tcp_receive_reset",
    tcp_receive_reset_btf,
    tcp_receive_reset_btf_backup,
    1,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        from_socket(&SkStore { sk }, sk);
    }
);

raw_programs!(
    Guarded::ReceiveReset,
    "tcp_receive_reset",
    tcp_receive_reset_raw,
    tcp_receive_reset_raw_backup,
    1,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        from_socket(&HashStore { skaddr: sk }, sk);
    }
);

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    from_record(&ctx);
    0
}

#[inline(always)]
fn from_socket(store: &impl Store, sk: u64) -> Option<()> {
    add_slot(&RESETS, RESET_RECEIVED, 1);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = sock::full_endpoints(&mut frame.sock, sk)?;
    received(store, frame, &ep);
    Some(())
}

#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    add_slot(&RESETS, RESET_RECEIVED, 1);
    let layout = &conf!(receive_reset);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = endpoints(&Record::load(&mut frame.record, ctx, layout)?, layout)?;
    received(&HashStore { skaddr: ep.skaddr }, frame, &ep);
    Some(())
}

#[inline(always)]
fn received(store: &impl Store, frame: &mut Frame, ep: &Endpoints) -> Option<()> {
    // The tracked state where there is one (it is what the socket was in when the RST
    // came), else the socket's own.
    let (owner, flags, state) = match store.entry() {
        Some(info) => {
            info.flags |= FLAG_RST_RECEIVED as u32;
            (info.owner, info.flags as u8, info.state)
        }
        None => (
            sockets::unknown_owner(),
            FLAG_OWNER_UNKNOWN,
            sock::state(ep.skaddr)?,
        ),
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if wanted(EventKind::Reset) {
        let event = base_event(&mut frame.event, ep, &owner, now, flags);
        event.kind = EventKind::Reset as u8;
        event.detail = RESET_RECEIVED as u8;
        event.old_state = state;
        submit(event);
    }
    if source(SOURCE_SEGMENTS) != Source::Tracepoint as u32 {
        return Some(());
    }
    add_slot(&SEGMENTS, counters::segment_index(state, TCP_RST)?, 1);
    if wanted(EventKind::Segment) {
        let event = base_event(&mut frame.event, ep, &owner, now, flags);
        event.kind = EventKind::Segment as u8;
        event.old_state = state;
        event.detail = TCP_RST;
        submit(event);
    }
    Some(())
}
