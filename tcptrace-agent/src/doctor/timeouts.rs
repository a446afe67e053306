//! What TCP's retry settings mean in seconds. The kernel's retransmission timer starts at
//! 1 s for a SYN (TCP_TIMEOUT_INIT) and at the measured RTO for data, at least 200 ms
//! (TCP_RTO_MIN), doubling after each retransmission up to 120 s (TCP_RTO_MAX). Since
//! Linux 6.5, the first `tcp_syn_linear_timeouts` SYN retransmissions do not double;
//! the kernel still gives up after the time the classic doubling would take (measured:
//! `tcp_syn_retries=2` with 4 linear timeouts sent 5 SYN retransmissions, 1 s apart, and
//! connect() failed after 7.1 s, as with 2 doubling retransmissions).
use std::time::Duration;

pub const SYN_INITIAL_RTO: Duration = Duration::from_secs(1);
pub const RTO_MIN: Duration = Duration::from_millis(200);
pub const RTO_MAX: Duration = Duration::from_secs(120);

/// The waits of a handshake that is never answered: before each of `retries`
/// retransmissions, then before giving up. The first `linear` retransmissions keep the
/// initial timeout; after them it doubles, capped at `RTO_MAX`.
pub fn backoff_schedule(initial: Duration, retries: u64, linear: u64) -> Vec<Duration> {
    let mut waits = Vec::new();
    let mut rto = initial;
    for sent in 0..=retries {
        waits.push(rto);
        if sent >= linear {
            rto = (rto * 2).min(RTO_MAX);
        }
    }
    waits
}

/// How long connect() blocks on a peer that never answers: the classic doubling
/// schedule of `tcp_syn_retries` (127 s for 6), whatever the linear phase.
pub fn connect_timeout(syn_retries: u64) -> Duration {
    backoff_schedule(SYN_INITIAL_RTO, syn_retries, 0)
        .iter()
        .sum()
}

/// SYN retransmissions sent before connect() gives up: the linear phase sends more of
/// them within the same time.
pub fn syn_retransmissions(syn_retries: u64, linear: u64) -> u64 {
    let limit = connect_timeout(syn_retries);
    let mut at = Duration::ZERO;
    let mut sent = 0;
    for wait in backoff_schedule(SYN_INITIAL_RTO, syn_retries + linear, linear) {
        at += wait;
        if at >= limit {
            break;
        }
        sent += 1;
    }
    sent
}

/// How long a server keeps a half-open connection whose final ACK never comes
/// (SYN-ACK retransmissions, no linear phase: 63 s for 5).
pub fn synack_timeout(synack_retries: u64) -> Duration {
    connect_timeout(synack_retries)
}

/// An application connect timeout that survives a lost SYN or two but gives up long
/// before the kernel: the slowest handshake measured (p99), plus the time the first two
/// SYN retransmissions take to be sent and answered (1 s and 2 more; with linear timeouts
/// 1 and 1). Never below 1 s.
pub fn recommended_connect_timeout(p99_handshake: Duration, linear: u64) -> Duration {
    let two_retries: Duration = backoff_schedule(SYN_INITIAL_RTO, 2, linear)
        .iter()
        .take(2)
        .sum();
    (p99_handshake + two_retries).max(Duration::from_secs(1))
}

/// How long an established connection retransmits before the kernel gives up on it
/// (ETIMEDOUT), for `tcp_retries2` (or, for `tcp_retries1`, before it asks for the route
/// to be rechecked). The kernel does not count retransmissions: `retransmits_timed_out()`
/// (net/ipv4/tcp_timer.c) turns the setting into a time with `tcp_model_timeout()`, the
/// time `retries` retransmissions would take if the RTO started at TCP_RTO_MIN and
/// doubled up to the RTO maximum, whatever this connection's RTO:
/// `linear_backoff_thresh = ilog2(rto_max / TCP_RTO_MIN)` (9 for 120 s), then
/// `((2 << retries) - 1) * TCP_RTO_MIN` up to the threshold, and each retry beyond it
/// `rto_max` more. 924.6 s for the default 15. `rto_max` is 120 s (TCP_RTO_MAX) unless
/// `net.ipv4.tcp_rto_max_ms` (Linux 6.15+) says otherwise.
pub fn retransmission_timeout(retries: u64, rto_max: Duration) -> Duration {
    let base = RTO_MIN.as_millis() as u64;
    let max = (rto_max.as_millis() as u64).max(1);
    let threshold = u64::from((max / base).max(1).ilog2());
    let ms = if retries <= threshold {
        ((2u64 << retries) - 1) * base
    } else {
        ((2u64 << threshold) - 1) * base + (retries - threshold).saturating_mul(max)
    };
    Duration::from_millis(ms)
}

/// How long after its first timeout retransmission a connection with this RTO gets
/// ETIMEDOUT. The kernel checks at each retransmission timeout whether the time since
/// that first retransmission (`retrans_stamp`; a tail loss probe before it does not
/// count) has reached `retransmission_timeout`; after it the timeouts come 2, 4, 8...
/// RTOs apart, capped at `rto_max`: the error comes at the first one past the limit.
/// Measured on 6.18 with tcp_retries2 = 3 (limit 3.0 s) and an RTO of 204 ms: the
/// fifth timeout, 6.12 s after the first retransmission (6.2-6.4 s with timer slack).
pub fn give_up_after(rto: Duration, retries: u64, rto_max: Duration) -> Duration {
    let limit = retransmission_timeout(retries, rto_max);
    let mut wait = rto.max(Duration::from_millis(1)).min(rto_max);
    let mut since_first = Duration::ZERO;
    while since_first < limit {
        wait = (wait * 2).min(rto_max);
        since_first += wait;
    }
    since_first
}

/// What an application request timeout must allow beyond the server's own time to
/// survive two lost transmissions of the same segment in a row: the first
/// retransmission leaves one RTO after the send, the second two RTOs after that (the
/// RTO doubles), and its answer takes one round trip: `3 x RTO + RTT`.
pub fn request_timeout_allowance(rto: Duration, rtt: Duration) -> Duration {
    rto * 3 + rtt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_exponential_backoff() {
        assert_eq!(connect_timeout(6), Duration::from_secs(127));
        assert_eq!(connect_timeout(2), Duration::from_secs(7));
        assert_eq!(syn_retransmissions(2, 0), 2);
        assert_eq!(syn_retransmissions(6, 0), 6);
        assert_eq!(synack_timeout(5), Duration::from_secs(63));
        let w = backoff_schedule(SYN_INITIAL_RTO, 3, 0);
        assert_eq!(w, [1, 2, 4, 8].map(Duration::from_secs));
    }

    #[test]
    fn linear_phase_sends_more_syns_in_the_same_time() {
        // Measured on 6.18: retries 2, linear 4 -> 5 retransmissions, failure at 7 s.
        assert_eq!(syn_retransmissions(2, 4), 5);
        assert_eq!(syn_retransmissions(6, 4), 10);
    }

    #[test]
    fn linear_phase_and_cap() {
        let w = backoff_schedule(SYN_INITIAL_RTO, 6, 4);
        assert_eq!(w, [1, 1, 1, 1, 1, 2, 4].map(Duration::from_secs));
        let capped = backoff_schedule(Duration::from_secs(100), 2, 0);
        assert_eq!(capped, [100, 120, 120].map(Duration::from_secs));
    }

    #[test]
    fn recommendation_allows_two_lost_syns() {
        let p99 = Duration::from_millis(50);
        assert_eq!(
            recommended_connect_timeout(p99, 0),
            Duration::from_millis(3050)
        );
        assert_eq!(
            recommended_connect_timeout(p99, 4),
            Duration::from_millis(2050)
        );
    }

    #[test]
    fn retries2_in_seconds_as_tcp_model_timeout_computes_it() {
        let at = |retries| retransmission_timeout(retries, RTO_MAX).as_millis();
        // Up to ilog2(120 s / 200 ms) = 9 the RTO doubles from 200 ms...
        assert_eq!(at(3), 3_000);
        assert_eq!(at(5), 12_600);
        assert_eq!(at(8), 102_200);
        assert_eq!(at(9), 204_600);
        // ...then each retry adds TCP_RTO_MAX: the default 15 is 15.4 minutes.
        assert_eq!(at(10), 324_600);
        assert_eq!(at(15), 924_600);
        // tcp_rto_max_ms = 60000: threshold ilog2(300) = 8, then 60 s per retry.
        let shorter = retransmission_timeout(15, Duration::from_secs(60));
        assert_eq!(shorter, Duration::from_millis(511 * 200 + 7 * 60_000));
        assert_eq!(retransmission_timeout(0, RTO_MAX), RTO_MIN);
    }

    #[test]
    fn the_error_comes_at_the_first_retransmission_timeout_past_the_limit() {
        let rto = Duration::from_millis(204);
        // 2r + 4r + 8r = 2.856 s < 3.0 s; + 16r = 6.12 s.
        assert_eq!(give_up_after(rto, 3, RTO_MAX), Duration::from_millis(6120));
        // 2r..512r = 208.488 s, then 120 s steps past 924.6 s.
        assert_eq!(
            give_up_after(rto, 15, RTO_MAX),
            Duration::from_millis(928_488)
        );
        // With an RTO of exactly TCP_RTO_MIN the sixth 120 s step falls 0.2 s short.
        assert_eq!(
            give_up_after(RTO_MIN, 15, RTO_MAX),
            Duration::from_millis(1_044_400)
        );
    }

    #[test]
    fn request_allowance_covers_two_lost_transmissions() {
        let rto = Duration::from_millis(210);
        let rtt = Duration::from_millis(10);
        assert_eq!(
            request_timeout_allowance(rto, rtt),
            Duration::from_millis(640)
        );
    }
}
