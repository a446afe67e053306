//! `sock:inet_sock_set_state`: every TCP state transition. Drives socket tracking,
//! state-change events and handshake timing and counting.
//!
//! Three entry points, in the agent's order of preference: the BTF-typed tracepoint
//! (the socket's own storage, a recursion guard of its own), the raw tracepoint (the
//! fallback socket map, a guard of its own), the classic tracepoint (the fallback map,
//! the guard every classic tracepoint and kprobe on a CPU shares).
use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext, EbpfContext,
};
use tcptrace_common::{
    config::{Source, SOURCE_DESTROY},
    counters,
    event::{
        SockInfo, FLAG_OWNER_UNKNOWN, FLAG_SK_ERR_READ, OUTCOME_ESTABLISHED, OUTCOME_FAILED,
        RETRANS_SEEN_UNKNOWN,
    },
    stats::Guarded,
    Event, EventKind, HandshakeSide, Owner, TcpState, IPPROTO_TCP,
};

use crate::{
    btf_programs, conf, connect_errors,
    emit::{add_key, add_slot, base_event, submit, wanted},
    frame::{Frame, Scratch},
    lifetime,
    maps::{source, FAILURES, HANDSHAKES, TRANSITIONS},
    raw_programs, sock,
    sockets::{self, HashStore, SkStore, Store},
    tracepoint::{endpoints, Endpoints, Record},
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;

btf_programs!(
    Guarded::SetState,
    "inet_sock_set_state",
    inet_sock_set_state_btf,
    inet_sock_set_state_btf_backup,
    3,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        let (old, new): (u64, u64) = (ctx.arg(1), ctx.arg(2));
        from_socket(&ctx, &SkStore { sk }, sk, old as u8, new as u8);
    }
);

raw_programs!(
    Guarded::SetState,
    "inet_sock_set_state",
    inet_sock_set_state_raw,
    inet_sock_set_state_raw_backup,
    3,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        let (old, new): (u64, u64) = (ctx.arg(1), ctx.arg(2));
        from_socket(&ctx, &HashStore { skaddr: sk }, sk, old as u8, new as u8);
    }
);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    from_record(&ctx);
    0
}

/// Raw and BTF-typed tracepoints pass (sk, oldstate, newstate); the socket's fields are
/// read at offsets from BTF.
#[inline(always)]
fn from_socket<C: EbpfContext>(ctx: &C, store: &impl Store, sk: u64, old: u8, new: u8) {
    if sock::protocol(sk) != Some(IPPROTO_TCP) {
        return;
    }
    let Some(mut scratch) = Scratch::enter() else {
        return;
    };
    let frame = scratch.frame();
    if let Some(ep) = sock::full_endpoints(&mut frame.sock, sk) {
        transition(ctx, store, frame, &ep, old, new);
    }
}

/// The classic tracepoint: everything comes from the record.
#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(set_state);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let rec = Record::load_tcp(&mut frame.record, ctx, layout)?;
    let old: i32 = rec.get(layout.oldstate)?;
    let new: i32 = rec.get(layout.newstate)?;
    let ep = endpoints(&rec, layout)?;
    transition(
        ctx,
        &HashStore { skaddr: ep.skaddr },
        frame,
        &ep,
        old as u8,
        new as u8,
    );
    Some(())
}

#[inline(always)]
fn transition<C: EbpfContext>(
    ctx: &C,
    store: &impl Store,
    frame: &mut Frame,
    ep: &Endpoints,
    old: u8,
    new: u8,
) {
    let now = unsafe { bpf_ktime_get_ns() };
    add_slot(&TRANSITIONS, counters::transition_index(old, new), 1);

    // The entry as it was before this transition, updated in place afterwards. A socket
    // leaving CLOSE starts afresh (connect or listen again), and a listener's child
    // starts with its own entry: what the store holds for them does not count.
    let starts = old == CLOSE || (old == LISTEN && new == SYN_RECV);
    let mut existing = if starts { None } else { store.entry() };
    let before = match &existing {
        Some(info) => Some(Before {
            owner: info.owner,
            since: info.state_since_ns,
            handshake_start: info.handshake_start_ns,
            flags: info.flags as u8,
        }),
        None => begin_tracking(ctx, store, ep, old, new, now),
    };
    let Before {
        owner,
        since,
        handshake_start,
        flags,
    } = before.unwrap_or_else(|| Before {
        owner: sockets::unknown_owner(),
        since: 0,
        handshake_start: 0,
        flags: FLAG_OWNER_UNKNOWN,
    });

    // The event is built only when someone reads it: a state change the reader asked
    // for, or the end of a handshake (whose counters are computed from the event).
    let handshake_side = match old {
        SYN_SENT => Some(HandshakeSide::Client),
        SYN_RECV => Some(HandshakeSide::Server),
        _ => None,
    };
    let report_state = wanted(EventKind::StateChange);
    if report_state || handshake_side.is_some() {
        let event = base_event(&mut frame.event, ep, &owner, now, flags);
        event.kind = EventKind::StateChange as u8;
        event.old_state = old;
        event.new_state = new;
        event.duration_ns = if since == 0 { 0 } else { now - since };
        if report_state {
            submit(event);
        }
        if let Some(side) = handshake_side {
            // A handshake whose start was not seen (the fallback map was full, or it
            // began before tcptrace attached) still counts, with no duration.
            let took = if handshake_start == 0 {
                None
            } else {
                Some(now - handshake_start)
            };
            finish_handshake(event, side, new, took);
        }
    }
    if old == LISTEN && new == CLOSE {
        sockets::set_listener(ep, sock::netns(ep.skaddr), None);
    }
    if new == CLOSE && lifetime::synchronised(old) {
        let info = existing.as_deref_mut();
        lifetime::closed(&mut frame.event, ep, info, &owner, flags, old, now);
    }
    match existing {
        Some(info) => end_tracking(store, info, ep.skaddr, old, new, now),
        None if new == CLOSE => store.forget(),
        None => {}
    }
    if old == SYN_SENT && new == CLOSE && connect_errors::derived_for(ep.family) {
        // Feed the tracepoint-derived connect-error fallback, where it is the source.
        connect_errors::note_close(ep, now);
    }
}

/// What a transition needs of the socket's tracking state as it was before it.
struct Before {
    owner: Owner,
    /// When the socket entered the old state (0: not known).
    since: u64,
    handshake_start: u64,
    flags: u8,
}

/// Start tracking a socket seen for the first time (or starting over): record the owner
/// where the transition runs in process context (connect, listen) or can be inherited
/// (a listener's child). Returns its tracking state as it was before this transition.
#[inline(always)]
fn begin_tracking<C: EbpfContext>(
    ctx: &C,
    store: &impl Store,
    ep: &Endpoints,
    old: u8,
    new: u8,
    now: u64,
) -> Option<Before> {
    let (owner, flags) = match (old, new) {
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) => (sockets::current_owner(), 0),
        // A listener that predates tcptrace has no known owner; its children are still
        // tracked so their handshakes are timed.
        (LISTEN, SYN_RECV) => match store.listener_owner(ep, sock::netns(ep.skaddr)) {
            Some(owner) => (owner, 0),
            None => (sockets::unknown_owner(), FLAG_OWNER_UNKNOWN),
        },
        _ => {
            // A socket that existed before tcptrace attached: track it from here on so
            // later transitions know how long it stayed, with its owner unknown.
            if new != CLOSE {
                store.start(ctx, |info| {
                    sockets::set_new(info, &sockets::unknown_owner(), new, now, 0);
                    info.flags = FLAG_OWNER_UNKNOWN as u32;
                    lifetime::counted_from_here(info, ep.skaddr);
                });
            }
            return None;
        }
    };
    if new == LISTEN {
        sockets::set_listener(ep, sock::netns(ep.skaddr), Some(&owner));
    }
    let handshake_start = if new == LISTEN { 0 } else { now };
    store.start(ctx, |info| {
        sockets::set_new(info, &owner, new, now, handshake_start);
        info.flags = flags as u32;
        if new == SYN_SENT {
            // What the socket retransmitted so far is not ours to count.
            info.retrans_seen = sock::total_retrans(ep.skaddr).unwrap_or(RETRANS_SEEN_UNKNOWN);
        }
    });
    // The socket was not tracked before this transition: no time in the old state.
    Some(Before {
        owner,
        since: 0,
        handshake_start,
        flags,
    })
}

/// Count a handshake that ended (the socket left SYN_SENT or SYN_RECV) and report it.
#[inline(always)]
fn finish_handshake(event: &mut Event, side: HandshakeSide, new: u8, took: Option<u64>) {
    event.kind = EventKind::Handshake as u8;
    event.detail = side as u8;
    let side = side as u8;
    if new == ESTABLISHED {
        event.outcome = OUTCOME_ESTABLISHED;
        let Some(took) = took else {
            add_slot(&HANDSHAKES, counters::handshake_untimed_index(side), 1);
            event.duration_ns = 0;
            submit(event);
            return;
        };
        event.duration_ns = took;
        if side == HandshakeSide::Server as u8 {
            event.duration_ns += synack_rtt_ns(event.skaddr);
        }
        add_slot(
            &HANDSHAKES,
            counters::handshake_bucket_index(side, counters::handshake_bucket(event.duration_ns)),
            1,
        );
        add_slot(
            &HANDSHAKES,
            counters::handshake_sum_index(side),
            event.duration_ns,
        );
    } else if new == CLOSE {
        event.outcome = OUTCOME_FAILED;
        event.duration_ns = took.unwrap_or(0);
        if let Some(err) = sock::error(event.skaddr) {
            event.err = err;
            event.flags |= FLAG_SK_ERR_READ;
        }
        add_key(
            &FAILURES,
            counters::failure_key(side, event.flags, event.err),
            1,
        );
    } else {
        return;
    }
    submit(event);
}

/// The server's child socket only exists from the final ACK on, so SYN_RECV lasts
/// microseconds. What the server waited for is the SYN-ACK's round trip, which the kernel
/// has just stored as the first RTT sample (`srtt_us`, scaled by 8) before ESTABLISHED.
#[inline(always)]
fn synack_rtt_ns(skaddr: u64) -> u64 {
    sock::read_at::<u32>(skaddr, conf!(srtt_offset))
        .map_or(0, |srtt_us_x8| (srtt_us_x8 as u64 >> 3) * 1000)
}

/// Update or drop the tracking state after the transition. `info` is the entry the
/// socket had before it; an entry created by this transition already holds its start.
#[inline(always)]
fn end_tracking(store: &impl Store, info: &mut SockInfo, skaddr: u64, old: u8, new: u8, now: u64) {
    if new == CLOSE {
        // With tcp_destroy_sock attached the entry stays until the socket is freed: an
        // aborting close sends its RST after this transition, and is reported with the
        // owner. Without it, nothing else would ever drop the entry.
        if source(SOURCE_DESTROY) == Source::None as u32 {
            store.forget();
            return;
        }
    }
    info.state_since_ns = now;
    info.state = new;
    lifetime::note_first_fin(info, new);
    if old == SYN_SENT || old == SYN_RECV {
        info.handshake_start_ns = 0;
    }
    if old == SYN_RECV && new == ESTABLISHED {
        // The child's count starts here: the kernel has just set it to the SYN-ACKs the
        // request socket retransmitted, which tcp_retransmit_synack counted already.
        info.retrans_seen = sock::total_retrans(skaddr).unwrap_or(RETRANS_SEEN_UNKNOWN);
    }
}
