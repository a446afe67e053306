//! Keys of the lossless in-kernel counters behind the Prometheus metrics. Kernel and
//! agent share these functions, so both sides agree on what each slot means.

/// `TRANSITIONS` slots: every (from, to) pair of state values below 16. An array rather
/// than a hash: the state program runs on every transition, and an array slot is found
/// without hashing or locking.
pub const TRANSITION_SLOTS: u32 = crate::state::TCP_STATE_SLOTS * crate::state::TCP_STATE_SLOTS;

/// `TRANSITIONS` slot of a (from, to) state pair.
pub fn transition_index(old: u8, new: u8) -> u32 {
    (old as u32 % crate::state::TCP_STATE_SLOTS) * crate::state::TCP_STATE_SLOTS
        + new as u32 % crate::state::TCP_STATE_SLOTS
}

pub fn transition_from_index(index: u32) -> (u8, u8) {
    (
        (index / crate::state::TCP_STATE_SLOTS) as u8,
        (index % crate::state::TCP_STATE_SLOTS) as u8,
    )
}

/// `RETRANSMITS` key: (kind, state, family). Values are segments, as TcpRetransSegs.
pub fn retransmit_key(kind: u8, state: u8, ipv6: bool) -> u32 {
    ((kind as u32) << 16) | ((state as u32) << 8) | ipv6 as u32
}

pub fn retransmit_from_key(key: u32) -> (u8, u8, bool) {
    ((key >> 16) as u8, (key >> 8) as u8, key & 1 == 1)
}

/// Handshake latency histogram: bucket `b` holds durations below 2^b microseconds.
pub const HANDSHAKE_BUCKETS: u32 = 32;
/// Per side: the buckets, the sum of durations in nanoseconds, then the handshakes that
/// completed on sockets whose start was not seen (the fallback socket map was full):
/// counted, but with no duration to put in a bucket.
pub const HANDSHAKE_SLOTS_PER_SIDE: u32 = HANDSHAKE_BUCKETS + 2;
pub const HANDSHAKE_SLOTS: u32 = 2 * HANDSHAKE_SLOTS_PER_SIDE;

#[inline(always)]
pub fn handshake_bucket(duration_ns: u64) -> u32 {
    log2_bucket(duration_ns / 1000, HANDSHAKE_BUCKETS)
}

#[inline(always)]
pub fn handshake_bucket_index(side: u8, bucket: u32) -> u32 {
    (side as u32 & 1) * HANDSHAKE_SLOTS_PER_SIDE + bucket
}

#[inline(always)]
pub fn handshake_sum_index(side: u8) -> u32 {
    (side as u32 & 1) * HANDSHAKE_SLOTS_PER_SIDE + HANDSHAKE_BUCKETS
}

#[inline(always)]
pub fn handshake_untimed_index(side: u8) -> u32 {
    (side as u32 & 1) * HANDSHAKE_SLOTS_PER_SIDE + HANDSHAKE_BUCKETS + 1
}

/// Upper bound of bucket `b` in seconds (2^b microseconds).
pub fn handshake_bucket_upper_seconds(bucket: u32) -> f64 {
    (1u64 << bucket) as f64 / 1e6
}

/// `CONNECTIONS` slots: what synchronised connections carried, how long they lived,
/// their round-trip times, and who closed them.
///
/// Bytes are `tcp_sock.bytes_acked` (sent) and `bytes_received`, added as deltas each
/// time a segment arrives on an established socket (`tcp:tcp_probe`, which fires before
/// the segment is processed) and when it closes: an open connection's bytes count up to
/// the last segment it received, that one's at the next segment or the close. Sent
/// segments (`CONN_SENT_SEGMENTS`) are `tcp_sock.data_segs_out`, added the same way.
pub const CONN_SENT_BYTES: u32 = 0;
pub const CONN_RECEIVED_BYTES: u32 = 1;
pub const CONN_LIFETIME_SUM_NS: u32 = 2;
pub const CONN_RTT_SUM_US: u32 = 3;
/// Closes by [`crate::event::ClosedBy`]: slot `CONN_CLOSED_BY + closed_by`.
pub const CONN_CLOSED_BY: u32 = 4;
/// Data segments sent, retransmits included (`tcp_sock.data_segs_out`): in the slot
/// after the `ClosedBy` ones, which the histograms follow.
pub const CONN_SENT_SEGMENTS: u32 = 7;
/// Lifetime histogram of the connections whose start tcptrace saw: bucket `b` holds
/// lifetimes below 2^b milliseconds (the last one also everything longer: 2^31 ms is
/// 24.8 days).
pub const LIFETIME_BUCKETS: u32 = 32;
pub const CONN_LIFETIME_BUCKET0: u32 = 8;
/// RTT histogram: bucket `b` holds smoothed RTTs below 2^b microseconds.
pub const RTT_BUCKETS: u32 = 32;
pub const CONN_RTT_BUCKET0: u32 = CONN_LIFETIME_BUCKET0 + LIFETIME_BUCKETS;
pub const CONNECTION_SLOTS: u32 = CONN_RTT_BUCKET0 + RTT_BUCKETS;
const _: () = assert!(
    CONN_CLOSED_BY + 3 <= CONN_SENT_SEGMENTS && CONN_SENT_SEGMENTS < CONN_LIFETIME_BUCKET0,
    "connection slots overlap"
);

/// Bucket of `value` in a log2 histogram of `buckets` buckets: bucket `b` holds values
/// below 2^b, the last one everything above too.
#[inline(always)]
pub fn log2_bucket(value: u64, buckets: u32) -> u32 {
    let bits = 64 - value.leading_zeros();
    if bits >= buckets {
        buckets - 1
    } else {
        bits
    }
}

/// `DROPS` slots: TCP packets the kernel dropped, by (drop reason, socket state). The
/// core reasons are numbered below 256 (128 of them on Linux 6.18); a subsystem's
/// reasons (high bits set) and anything larger share the last row. State 0: the packet
/// had no socket (dropped before the socket lookup, or no socket wanted it). A hash of
/// this many keys: it holds every pair.
pub const DROP_REASON_ROWS: u32 = 256;
pub const DROP_SLOTS: u32 = DROP_REASON_ROWS * crate::state::TCP_STATE_SLOTS;

#[inline(always)]
pub fn drop_index(reason: u32, state: u8) -> u32 {
    let row = if reason < DROP_REASON_ROWS {
        reason
    } else {
        DROP_REASON_ROWS - 1
    };
    row * crate::state::TCP_STATE_SLOTS + (state as u32 % crate::state::TCP_STATE_SLOTS)
}

pub fn drop_from_index(index: u32) -> (u32, u8) {
    (
        index / crate::state::TCP_STATE_SLOTS,
        (index % crate::state::TCP_STATE_SLOTS) as u8,
    )
}

/// `LISTEN_OVERFLOWS` slots: overflows by [`crate::event::OverflowAt`], then the SYNs
/// that reached a listener tcptrace does not know (it was listening before tcptrace
/// started, or the listener table was full), whose overflow it cannot judge.
pub const OVERFLOW_SYN_UNJUDGED: u32 = 2;
pub const LISTEN_OVERFLOW_SLOTS: u32 = 3;

/// `FAILURES` key: what the kernel knew when a handshake failed. The agent turns it
/// into a reason with the same function that labels `tcptrace trace` output.
pub fn failure_key(side: u8, flags: u8, err: i32) -> u32 {
    ((side as u32) << 24) | ((flags as u32) << 16) | (err as u32 & 0xffff)
}

pub fn failure_from_key(key: u32) -> (u8, u8, i32) {
    ((key >> 24) as u8, (key >> 16) as u8, (key & 0xffff) as i32)
}

/// `RESETS` slots.
pub const RESET_SENT: u32 = 0;
pub const RESET_RECEIVED: u32 = 1;
pub const RESET_SLOTS: u32 = 2;

/// `CONNECT_ERRORS` keys: errno values (all Linux errnos are below 256), so the hash
/// can hold every key and never fills.
pub const CONNECT_ERROR_SLOTS: u32 = 256;

/// `SEGMENTS`: segments arriving in a handshake state, by (state, flags class).
pub const SEGMENT_STATES: [u8; 3] = [
    crate::TcpState::Listen as u8,
    crate::TcpState::SynSent as u8,
    crate::TcpState::SynRecv as u8,
];
pub const SEGMENT_FLAGS: [&str; 5] = ["syn", "synack", "rst", "ack", "other"];
pub const SEGMENT_SLOTS: u32 = (SEGMENT_STATES.len() * SEGMENT_FLAGS.len()) as u32;

/// TCP header flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Index into `SEGMENT_FLAGS` for a TCP flags byte: a RST wins over everything.
#[inline(always)]
pub fn segment_flags_class(flags: u8) -> u32 {
    if flags & TCP_RST != 0 {
        2
    } else if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 {
            1
        } else {
            0
        }
    } else if flags & TCP_ACK != 0 {
        3
    } else {
        4
    }
}

/// `SEGMENTS` slot for a segment with these flags arriving in `state`; `None` outside
/// the handshake states.
#[inline(always)]
pub fn segment_index(state: u8, flags: u8) -> Option<u32> {
    let row = if state == SEGMENT_STATES[0] {
        0
    } else if state == SEGMENT_STATES[1] {
        1
    } else if state == SEGMENT_STATES[2] {
        2
    } else {
        return None;
    };
    Some(row * SEGMENT_FLAGS.len() as u32 + segment_flags_class(flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(transition_from_index(transition_index(2, 1)), (2, 1));
        assert!(transition_index(15, 15) < TRANSITION_SLOTS);
        assert_eq!(
            retransmit_from_key(retransmit_key(2, 3, true)),
            (2, 3, true)
        );
        assert_eq!(
            retransmit_from_key(retransmit_key(0, 1, false)),
            (0, 1, false)
        );
        assert_eq!(failure_from_key(failure_key(1, 5, 111)), (1, 5, 111));
        assert_eq!(drop_from_index(drop_index(12, 0)), (12, 0));
        assert_eq!(drop_from_index(drop_index(40, 10)), (40, 10));
        assert_eq!(drop_from_index(drop_index(0x10005, 1)), (255, 1));
        assert!(drop_index(u32::MAX, 15) < DROP_SLOTS);
    }

    #[test]
    fn segment_slots_cover_every_state_and_class() {
        use crate::TcpState;
        assert_eq!(segment_index(TcpState::Listen as u8, TCP_SYN), Some(0));
        let syn_sent = TcpState::SynSent as u8;
        assert_eq!(segment_index(syn_sent, TCP_SYN | TCP_ACK), Some(6));
        assert_eq!(segment_index(syn_sent, TCP_RST | TCP_ACK), Some(7));
        assert_eq!(
            segment_index(TcpState::SynRecv as u8, TCP_ACK | TCP_FIN),
            Some(13)
        );
        assert_eq!(
            segment_index(TcpState::SynRecv as u8, 0),
            Some(SEGMENT_SLOTS - 1)
        );
        assert_eq!(segment_index(TcpState::Established as u8, TCP_ACK), None);
    }

    #[test]
    fn buckets_are_log2_microseconds() {
        assert_eq!(handshake_bucket(0), 0);
        assert_eq!(handshake_bucket(999), 0, "under 1 us");
        assert_eq!(handshake_bucket(1_000), 1, "1 us < 2^1");
        assert_eq!(handshake_bucket(50_000), 6, "50 us < 64");
        assert_eq!(handshake_bucket(63_999), 6);
        assert_eq!(handshake_bucket(64_000), 7);
        // 127 s, the SYN-retry limit, lands below 2^27 us (134 s).
        assert_eq!(handshake_bucket(127_000_000_000), 27);
        assert_eq!(handshake_bucket(u64::MAX), HANDSHAKE_BUCKETS - 1);
        for ns in [1_000u64, 7_777, 64_000, 3_000_000_000] {
            let b = handshake_bucket(ns);
            assert!((ns as f64 / 1e9) < handshake_bucket_upper_seconds(b));
        }
        assert_eq!(handshake_sum_index(1), HANDSHAKE_SLOTS - 2);
        assert_eq!(log2_bucket(1_500, LIFETIME_BUCKETS), 11, "1.5 s < 2048 ms");
        assert_eq!(log2_bucket(u64::MAX, RTT_BUCKETS), RTT_BUCKETS - 1);
        assert_eq!(handshake_untimed_index(1), HANDSHAKE_SLOTS - 1);
    }
}
