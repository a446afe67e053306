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
}
