//! `sock:inet_sock_set_state`: every TCP state transition. Drives socket tracking,
//! state-change events and handshake timing.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    maps::PerCpuArray,
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tcptrace_common::{
    config::{Source, SOURCE_DESTROY},
    counters,
    event::{SockInfo, FLAG_OWNER_UNKNOWN, FLAG_SK_ERR_READ, OUTCOME_ESTABLISHED, OUTCOME_FAILED},
    Event, EventKind, HandshakeSide, Owner, TcpState, IPPROTO_TCP,
};

use crate::{
    conf, connect_errors,
    emit::{add_key, add_slot, base_event_in, submit, wanted},
    maps::{source, FAILURES, HANDSHAKES, RAW_RECORD, RAW_SCRATCH, SCRATCH, TRANSITIONS},
    sock, sockets,
    tracepoint::{endpoints, Endpoints, Record},
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;

/// The classic tracepoint: everything comes from the record.
pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(set_state);
    let rec = Record::load(ctx, layout)?;
    let protocol: u16 = rec.get(layout.protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = rec.get(layout.oldstate)?;
    let new: i32 = rec.get(layout.newstate)?;
    let ep = endpoints(&rec, layout)?;
    transition(ctx, &ep, old as u8, new as u8, &SCRATCH)
}

/// The raw tracepoint: the kernel passes (sk, oldstate, newstate) without building a
/// record; the socket's fields are read at offsets from BTF.
pub fn handle_raw(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    if sock::protocol(sk)? != IPPROTO_TCP {
        return None;
    }
    let ep = sock::sock_endpoints_in(&RAW_RECORD, sk)?;
    let (old, new): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    transition(ctx, &ep, old as u8, new as u8, &RAW_SCRATCH)
}

fn transition<C: EbpfContext>(
    ctx: &C,
    ep: &Endpoints,
    old: u8,
    new: u8,
    scratch: &PerCpuArray<Event>,
) -> Option<()> {
    let ep = *ep;
    let now = unsafe { bpf_ktime_get_ns() };
    add_slot(&TRANSITIONS, counters::transition_index(old, new), 1);

    // One lookup serves the whole event: it gives the state before this transition and
    // is updated in place afterwards. A socket leaving CLOSE starts afresh (connect or
    // listen again): an entry left from its previous life does not count.
    let existing = if old == CLOSE {
        None
    } else {
        sockets::lookup(ep.skaddr)
    };
    let previous = match existing {
        Some(info) => Some(unsafe { *info }),
        None => begin_tracking(ctx, &ep, old, new, now),
    };
    let (owner, since, handshake_start, flags) = match previous {
        Some(info) => (
            info.owner,
            info.state_since_ns,
            info.handshake_start_ns,
            info.flags as u8,
        ),
        None => (Owner::default(), 0, 0, FLAG_OWNER_UNKNOWN),
    };

    // The event is built only when someone reads it: a state change the reader asked
    // for, or the end of a handshake (whose counters are computed from the event).
    let report_state = wanted(EventKind::StateChange);
    if report_state || handshake_start != 0 {
        let event = base_event_in(scratch, &ep, &owner, now, flags)?;
        event.kind = EventKind::StateChange as u8;
        event.old_state = old;
        event.new_state = new;
        event.duration_ns = if since == 0 { 0 } else { now - since };
        if report_state {
            submit(event);
        }
        if handshake_start != 0 {
            finish_handshake(event, old, new, now - handshake_start);
        }
    }
    end_tracking(&ep, existing, old, new, now);
    follow_connect(&ep, old, new);
    Some(())
}

/// Feed the tracepoint-derived connect-error fallback, where it is the source.
fn follow_connect(ep: &Endpoints, old: u8, new: u8) {
    match (old, new) {
        (CLOSE, SYN_SENT) if connect_errors::derived_for(ep.family) => connect_errors::remember(ep),
        (SYN_SENT, CLOSE) if connect_errors::derived_for(ep.family) => {
            connect_errors::note_close(ep)
        }
        _ => {}
    }
}

/// Start tracking a socket seen for the first time: record the owner where the
/// transition runs in process context (connect, listen) or can be inherited (a
/// listener's child). Returns its tracking state as it was before this transition.
fn begin_tracking<C: EbpfContext>(
    ctx: &C,
    ep: &Endpoints,
    old: u8,
    new: u8,
    now: u64,
) -> Option<SockInfo> {
    let (owner, flags) = match (old, new) {
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) => (sockets::current_owner(), 0),
        // A listener that predates tcptrace has no known owner; its children are still
        // tracked so their handshakes are timed.
        (LISTEN, SYN_RECV) => match sockets::listener_owner(ep.family, ep.sport, &ep.saddr) {
            Some(owner) => (owner, 0),
            None => (Owner::default(), FLAG_OWNER_UNKNOWN as u32),
        },
        _ => {
            // A socket that existed before tcptrace attached: track it from here on so
            // later transitions know how long it stayed, with its owner unknown.
            if new != CLOSE {
                let mut info = sockets::new_info(Owner::default(), new, now, 0);
                info.flags = FLAG_OWNER_UNKNOWN as u32;
                sockets::track(ctx, ep.skaddr, &info);
            }
            return None;
        }
    };
    if new == LISTEN {
        sockets::add_listener(
            ctx,
            &sockets::listen_key(ep.family, ep.sport, &ep.saddr),
            &owner,
        );
    }
    let handshake_start = if new == LISTEN { 0 } else { now };
    let mut info = sockets::new_info(owner, new, now, handshake_start);
    info.flags = flags;
    sockets::track(ctx, ep.skaddr, &info);
    // The socket was not tracked before this transition: no time in the old state.
    info.state_since_ns = 0;
    Some(info)
}

/// Emit the handshake event when a SYN_SENT/SYN_RECV socket leaves that state.
fn finish_handshake(event: &mut Event, old: u8, new: u8, duration_ns: u64) {
    let side = match old {
        SYN_SENT => HandshakeSide::Client,
        SYN_RECV => HandshakeSide::Server,
        _ => return,
    };
    event.kind = EventKind::Handshake as u8;
    event.detail = side as u8;
    event.duration_ns = duration_ns;
    if new == ESTABLISHED {
        event.outcome = OUTCOME_ESTABLISHED;
        if side == HandshakeSide::Server {
            event.duration_ns += synack_rtt_ns(event.skaddr);
        }
        let side = side as u8;
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
        read_socket_error(event);
        add_key(
            &FAILURES,
            counters::failure_key(side as u8, event.flags, event.err),
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
fn synack_rtt_ns(skaddr: u64) -> u64 {
    sock::read_at::<u32>(skaddr, conf!(srtt_offset))
        .map_or(0, |srtt_us_x8| (srtt_us_x8 as u64 >> 3) * 1000)
}

/// The socket's pending error (ECONNREFUSED, ETIMEDOUT, ...) tells why a handshake
/// failed; the kernel sets it before moving the socket to CLOSE.
fn read_socket_error(event: &mut Event) {
    if let Some(err) = sock::read_at::<i32>(event.skaddr, conf!(sk_err_offset)) {
        event.err = err;
        event.flags |= FLAG_SK_ERR_READ;
    }
}

/// Update or drop the tracking state after the transition.
/// `existing` is the entry the socket had before this transition; an entry created by
/// this transition already holds its start time.
fn end_tracking(ep: &Endpoints, existing: Option<*mut SockInfo>, old: u8, new: u8, now: u64) {
    if new == CLOSE {
        if old == LISTEN {
            sockets::remove_listener(&sockets::listen_key(ep.family, ep.sport, &ep.saddr));
        }
        // With tcp_destroy_sock attached the entry stays until the socket is freed: an
        // aborting close sends its RST after this transition, and is reported with the
        // owner. Without it, nothing else would ever drop the entry.
        if source(SOURCE_DESTROY) == Source::None as u32 {
            sockets::forget(ep.skaddr);
            return;
        }
    }
    if let Some(info) = existing {
        unsafe {
            (*info).state_since_ns = now;
            (*info).state = new;
            if old == SYN_SENT || old == SYN_RECV {
                (*info).handshake_start_ns = 0;
            }
        }
    }
}
