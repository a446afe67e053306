//! What a connection carried and how long it lived: the byte and sent-segment counters
//! (sampled as segments arrive, completed when it closes) and the close with its
//! lifetime, bytes, segments sent and retransmitted, RTT and which end closed first.
use tcptrace_common::{
    counters::{
        log2_bucket, CONN_CLOSED_BY, CONN_LIFETIME_BUCKET0, CONN_LIFETIME_SUM_NS,
        CONN_RECEIVED_BYTES, CONN_RTT_BUCKET0, CONN_RTT_SUM_US, CONN_SENT_BYTES,
        CONN_SENT_SEGMENTS, LIFETIME_BUCKETS, RTT_BUCKETS,
    },
    event::{ClosedBy, SockInfo, FLAG_FIN_RECEIVED_FIRST, FLAG_FIN_SENT_FIRST},
    Event, EventKind, Owner, TcpState,
};

use crate::{
    emit::{add_slot, base_event, submit, wanted},
    maps::CONNECTIONS,
    sock,
    tracepoint::Endpoints,
};

const CLOSE: u8 = TcpState::Close as u8;

/// Add to the byte counters what the socket's own counts grew by since they were last
/// added, and remember them; returns the counts read. A run the kernel skipped only
/// delays bytes to the next one.
#[inline(always)]
pub fn add_bytes(info: &mut SockInfo, sk: u64) -> Option<(u64, u64)> {
    let (acked, received) = sock::bytes(sk)?;
    add_slot(
        &CONNECTIONS,
        CONN_SENT_BYTES,
        acked.wrapping_sub(info.acked_seen),
    );
    add_slot(
        &CONNECTIONS,
        CONN_RECEIVED_BYTES,
        received.wrapping_sub(info.received_seen),
    );
    info.acked_seen = acked;
    info.received_seen = received;
    Some((acked, received))
}

/// `add_bytes` for the data segments sent (`tcp_sock.data_segs_out`), on its own: its
/// offset is resolved apart from the bytes'.
#[inline(always)]
pub fn add_segs_out(info: &mut SockInfo, sk: u64) -> Option<u32> {
    let segs_out = sock::data_segs_out(sk)?;
    add_slot(
        &CONNECTIONS,
        CONN_SENT_SEGMENTS,
        segs_out.wrapping_sub(info.segs_out_seen) as u64,
    );
    info.segs_out_seen = segs_out;
    Some(segs_out)
}

/// Start the byte and segment counts of a socket tracked from the middle of its life:
/// what it carried before tcptrace saw it is not counted.
#[inline(always)]
pub fn counted_from_here(info: &mut SockInfo, sk: u64) {
    if let Some((acked, received)) = sock::bytes(sk) {
        info.acked_seen = acked;
        info.received_seen = received;
    }
    if let Some(segs_out) = sock::data_segs_out(sk) {
        info.segs_out_seen = segs_out;
    }
}

/// Which end sent the first FIN, remembered on the way out of ESTABLISHED.
#[inline(always)]
pub fn note_first_fin(info: &mut SockInfo, new: u8) {
    if info.flags & (FLAG_FIN_SENT_FIRST | FLAG_FIN_RECEIVED_FIRST) != 0 {
        return;
    }
    if new == TcpState::FinWait1 as u8 {
        info.flags |= FLAG_FIN_SENT_FIRST;
    } else if new == TcpState::CloseWait as u8 {
        info.flags |= FLAG_FIN_RECEIVED_FIRST;
    }
}

/// A state a connection is synchronised in: leaving it for CLOSE ends a connection that
/// was established (a handshake that fails goes to CLOSE from SYN_SENT or SYN_RECV).
#[inline(always)]
pub fn synchronised(state: u8) -> bool {
    state == TcpState::Established as u8
        || state == TcpState::FinWait1 as u8
        || state == TcpState::FinWait2 as u8
        || state == TcpState::CloseWait as u8
        || state == TcpState::LastAck as u8
        || state == TcpState::Closing as u8
}

/// The connection closed (`old` -> CLOSE): add its last bytes and segments, count the
/// close with its lifetime and RTT, and report it. `info` is its tracking entry, if it
/// has one; an untracked socket (the fallback map was full) counts all it carried.
#[inline(always)]
pub fn closed(
    event: &mut Event,
    ep: &Endpoints,
    info: Option<&mut SockInfo>,
    owner: &Owner,
    flags: u8,
    old: u8,
    now: u64,
) {
    let sk = ep.skaddr;
    let (born, closed_by, bytes, segs_out) = match info {
        Some(info) => {
            let bytes = add_bytes(info, sk);
            let segs_out = add_segs_out(info, sk);
            (info.born_ns, closed_by(info.flags), bytes, segs_out)
        }
        None => {
            let mut untracked = crate::zero::zeroed::<SockInfo>();
            let bytes = add_bytes(&mut untracked, sk);
            let segs_out = add_segs_out(&mut untracked, sk);
            (0, ClosedBy::Neither, bytes, segs_out)
        }
    };
    add_slot(&CONNECTIONS, CONN_CLOSED_BY + closed_by as u32, 1);
    // A socket that predates tracking has no known start: counted as closed only.
    let lifetime = if born == 0 { 0 } else { now - born };
    if born != 0 {
        let bucket = log2_bucket(lifetime / 1_000_000, LIFETIME_BUCKETS);
        add_slot(&CONNECTIONS, CONN_LIFETIME_BUCKET0 + bucket, 1);
        add_slot(&CONNECTIONS, CONN_LIFETIME_SUM_NS, lifetime);
    }
    let rtt_us = sock::srtt_us(sk).unwrap_or(0);
    if rtt_us != 0 {
        let bucket = log2_bucket(rtt_us as u64, RTT_BUCKETS);
        add_slot(&CONNECTIONS, CONN_RTT_BUCKET0 + bucket, 1);
        add_slot(&CONNECTIONS, CONN_RTT_SUM_US, rtt_us as u64);
    }
    if !wanted(EventKind::Close) {
        return;
    }
    let event = base_event(event, ep, owner, now, flags);
    event.kind = EventKind::Close as u8;
    event.old_state = old;
    event.new_state = CLOSE;
    event.detail = closed_by as u8;
    event.duration_ns = lifetime;
    event.rtt_us = rtt_us;
    event.segs = sock::total_retrans(sk).unwrap_or(0);
    if let Some((sent, received)) = bytes {
        event.bytes_sent = sent;
        event.bytes_received = received;
    }
    event.segs_out = segs_out.unwrap_or(0);
    submit(event);
}

#[inline(always)]
fn closed_by(flags: u32) -> ClosedBy {
    if flags & FLAG_FIN_SENT_FIRST != 0 {
        ClosedBy::Local
    } else if flags & FLAG_FIN_RECEIVED_FIRST != 0 {
        ClosedBy::Remote
    } else {
        ClosedBy::Neither
    }
}
