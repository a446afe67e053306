//! `skb:consume_skb`, only where `tcp_rcv_state_process` consumes a SYN a listener
//! handled: `tcp_conn_request` either answered it or, its accept queue full, counted a
//! ListenOverflow and sent nothing, and the SYN is consumed either way (no drop
//! reason). The listener's queue, read right after, tells which.
//!
//! Every packet the kernel frees normally passes here, so the programs leave on the
//! caller's address first: two loads and two compares for every other packet. One
//! program per method, no backup: a run the kernel skips (this program already running
//! on the CPU, interrupted within those few instructions) is counted as missed.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tcptrace_common::{
    counters::{OVERFLOW_SYN_UNJUDGED, TCP_ACK, TCP_RST, TCP_SYN},
    event::OverflowAt,
    EventKind,
};

use crate::{
    conf,
    emit::{add_slot, base_event, submit, wanted},
    frame::Scratch,
    maps::LISTEN_OVERFLOWS,
    packet, sock, sockets,
};

#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let location: u64 = ctx.arg(1);
    if in_rcv_state_process(location) {
        syn_consumed(ctx.arg(0));
    }
    0
}

#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn consume_skb_raw(ctx: RawTracePointContext) -> i32 {
    let location: u64 = ctx.arg(1);
    if in_rcv_state_process(location) {
        syn_consumed(ctx.arg(0));
    }
    0
}

#[inline(always)]
fn in_rcv_state_process(location: u64) -> bool {
    location >= conf!(rcv_state_process_start) && location < conf!(rcv_state_process_end)
}

/// A SYN consumed by its listener: count it as an overflow if the listener's accept
/// queue is full (`sk_acceptq_is_full`, the test `tcp_conn_request` made just before).
#[inline(always)]
fn syn_consumed(skb: u64) -> Option<()> {
    let pkt = packet::tcp(skb)?;
    if pkt.flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return None;
    }
    let netns = packet::netns(skb);
    let Some(listener) = sockets::listener(pkt.ep.family, &pkt.ep.daddr, pkt.ep.dport, netns)
    else {
        add_slot(&LISTEN_OVERFLOWS, OVERFLOW_SYN_UNJUDGED, 1);
        return None;
    };
    let queued: u32 = sock::read_at(listener.skaddr, conf!(sk_ack_backlog_offset))?;
    let limit: u32 = sock::read_at(listener.skaddr, conf!(sk_max_ack_backlog_offset))?;
    if queued <= limit {
        return None;
    }
    add_slot(&LISTEN_OVERFLOWS, OverflowAt::Syn as u32, 1);
    if !wanted(EventKind::ListenOverflow) {
        return Some(());
    }
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let mut ep = sock::endpoints(&mut frame.sock, listener.skaddr)?;
    ep.daddr = pkt.ep.saddr;
    ep.dport = pkt.ep.sport;
    let event = base_event(
        &mut frame.event,
        &ep,
        &listener.owner,
        unsafe { bpf_ktime_get_ns() },
        0,
    );
    event.kind = EventKind::ListenOverflow as u8;
    event.old_state = tcptrace_common::TcpState::Listen as u8;
    event.detail = OverflowAt::Syn as u8;
    submit(event);
    Some(())
}
