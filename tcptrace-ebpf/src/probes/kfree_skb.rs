//! `skb:kfree_skb`: the kernel freed a packet as dropped, with its reason (Linux 5.17+;
//! packets freed normally go to `consume_skb`, so this fires only for drops). Counts
//! TCP drops by reason and socket state, reports each as a `drop` event, and a final
//! ACK a full accept queue turned away (`TCP_LISTEN_OVERFLOW`) as a listen overflow.
//!
//! Every protocol's drops come here: a packet that is not TCP is rejected after the
//! reason, one socket read or the IP header's protocol byte.
//!
//! Entry points as for the other counting probes: BTF-typed, raw (each a main program
//! and its backup), classic.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{
    counters, event::OverflowAt, stats::Guarded, EventKind, TcpState, IPPROTO_TCP,
};

use crate::{
    btf_programs, conf,
    emit::{add_key, add_slot, submit, tracked_event, wanted},
    frame::{Frame, Scratch},
    maps::{DROPS, LISTEN_OVERFLOWS},
    packet, raw_programs, sock,
    sockets::{HashStore, SkStore, Store},
    tracepoint::{arg, Endpoints, Record},
};

/// `SKB_NOT_DROPPED_YET`. (`SKB_CONSUMED`, 1 since 6.2, goes to `consume_skb`; on 6.1,
/// 1 is `NOT_SPECIFIED`, a drop.)
const SKB_NOT_DROPPED_YET: u32 = 0;

btf_programs!(
    Guarded::KfreeSkb,
    "kfree_skb",
    kfree_skb_btf,
    kfree_skb_btf_backup,
    3,
    |ctx| {
        let skb: u64 = ctx.arg(0);
        let reason: u64 = ctx.arg(2);
        // `rx_sk` is the tracepoint's own `struct sock *`, which socket storage takes
        // (null: no owner); the verifier drops the branch where the kernel does not
        // pass it. A socket found through the skb is a plain number to the verifier:
        // its owner stays unknown.
        let mut rx_sk: u64 = 0;
        if conf!(kfree_skb_args) >= 4 {
            rx_sk = arg(&ctx, 3);
        }
        let sk = if rx_sk != 0 {
            rx_sk
        } else {
            packet::socket(skb)
        };
        dropped(&SkStore { sk: rx_sk }, sk, skb, reason as u32);
    }
);

raw_programs!(
    Guarded::KfreeSkb,
    "kfree_skb",
    kfree_skb_raw,
    kfree_skb_raw_backup,
    3,
    |ctx| {
        let skb: u64 = ctx.arg(0);
        let reason: u64 = ctx.arg(2);
        let mut sk = 0;
        if conf!(kfree_skb_args) >= 4 {
            sk = arg(&ctx, 3);
        }
        if sk == 0 {
            sk = packet::socket(skb);
        }
        dropped(&HashStore { skaddr: sk }, sk, skb, reason as u32);
    }
);

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let layout = &conf!(kfree_skb);
    let Some(mut scratch) = Scratch::enter() else {
        return 0;
    };
    let frame = scratch.frame();
    let Some(rec) = Record::load(&mut frame.record, &ctx, layout) else {
        return 0;
    };
    let (Some(skb), Some(reason)) = (rec.get::<u64>(layout.skbaddr), rec.get::<i32>(layout.err))
    else {
        return 0;
    };
    let mut sk: u64 = rec.get(layout.skaddr).unwrap_or(0);
    drop(scratch);
    if sk == 0 {
        sk = packet::socket(skb);
    }
    dropped(&HashStore { skaddr: sk }, sk, skb, reason as u32);
    0
}

/// A packet dropped for `reason`; `sk` is its socket (0: none).
#[inline(always)]
fn dropped(store: &impl Store, sk: u64, skb: u64, reason: u32) -> Option<()> {
    if reason == SKB_NOT_DROPPED_YET {
        return None;
    }
    let state = if sk != 0 { tcp_state(sk)? } else { 0 };
    let overflow =
        sk != 0 && reason == conf!(listen_overflow_reason) && state == TcpState::Listen as u8;
    // The packet's own headers: without a socket, to tell TCP (and its endpoints); for
    // an overflow, the client.
    let pkt = if sk == 0 || overflow {
        packet::tcp(skb)
    } else {
        None
    };
    if sk == 0 && pkt.is_none() {
        return None;
    }
    add_key(&DROPS, counters::drop_index(reason, state), 1);
    let kind = if overflow {
        add_slot(&LISTEN_OVERFLOWS, OverflowAt::Ack as u32, 1);
        EventKind::ListenOverflow
    } else {
        EventKind::Drop
    };
    if !wanted(kind) {
        return Some(());
    }
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = if sk == 0 {
        pkt?.ep
    } else {
        let mut ep = sock::endpoints(&mut frame.sock, sk)?;
        // The listener's own address may be a wildcard: the client is the packet's.
        if let Some(p) = pkt {
            ep.daddr = p.ep.saddr;
            ep.dport = p.ep.sport;
        }
        ep
    };
    let detail = if overflow { OverflowAt::Ack as u8 } else { 0 };
    report(store, frame, &ep, skb, kind, state, detail, reason);
    Some(())
}

/// The state of the packet's socket, or `None` when the socket is not TCP. Request and
/// TIME_WAIT sockets (a `sock_common` only, no protocol field) are TCP's own.
#[inline(always)]
fn tcp_state(sk: u64) -> Option<u8> {
    let state = sock::state(sk)?;
    let minisock = state == TcpState::NewSynRecv as u8 || state == TcpState::TimeWait as u8;
    if !minisock && sock::protocol(sk)? != IPPROTO_TCP {
        return None;
    }
    Some(state)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn report(
    store: &impl Store,
    frame: &mut Frame,
    ep: &Endpoints,
    skb: u64,
    kind: EventKind,
    state: u8,
    detail: u8,
    reason: u32,
) {
    let event = tracked_event(&mut frame.event, ep, store);
    if ep.skaddr == 0 {
        event.netns = packet::netns(skb);
    }
    event.kind = kind as u8;
    event.old_state = state;
    event.detail = detail;
    event.err = reason as i32;
    submit(event);
}
