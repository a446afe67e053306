//! The connection families: what connections carried (bytes, sampled as segments
//! arrive and completed at close), how long they lived, their round-trip times and which end
//! closed them. METRICS.md, "Connections", says how each is counted.
use tcptrace_common::event::ClosedBy;

use super::exposition::{counter, histogram, Family, HistogramSeries};
use crate::kernel::counters::Connections;

/// Exported lifetime buckets: 2^b ms for even b up to 30: 1 ms, 4 ms, ... 12.4 days.
const LIFETIME_EXPORTED: std::ops::RangeInclusive<u32> = 0..=30;
/// Exported RTT buckets: 2^b us for even b from 4 to 24: 16 us, 64 us, ... 16.8 s.
const RTT_EXPORTED: std::ops::RangeInclusive<u32> = 4..=24;

pub fn families(c: &Connections) -> Vec<Family> {
    let timed: u64 = c.lifetimes.iter().sum();
    vec![
        counter(
            "tcptrace_connection_sent_bytes_total",
            "Bytes of TCP connections acknowledged by their peers (tcp_sock.bytes_acked; SYN and FIN count one each): open connections as segments arrive (up to the last one received), the rest at close.",
            &[],
            vec![(vec![], c.sent_bytes as f64)],
        ),
        counter(
            "tcptrace_connection_received_bytes_total",
            "Bytes TCP connections received (tcp_sock.bytes_received; the FIN counts one), counted like the sent bytes.",
            &[],
            vec![(vec![], c.received_bytes as f64)],
        ),
        counter(
            "tcptrace_connection_sent_segments_total",
            "Data segments TCP connections sent, retransmitted ones included (tcp_sock.data_segs_out; no SYN, pure ACK or bare FIN), counted like the sent bytes.",
            &[],
            vec![(vec![], c.sent_segments as f64)],
        ),
        counter(
            "tcptrace_connections_closed_total",
            "Established connections that closed, by which end sent the first FIN (local, remote, or neither: a reset, timeout or abort).",
            &["closed_by"],
            ClosedBy::ALL
                .iter()
                .map(|by| (vec![by.name()], c.closed_by[*by as usize] as f64))
                .collect(),
        ),
        histogram(
            "tcptrace_connection_duration_seconds",
            "Lifetime of closed connections, from connect() or the SYN their listener answered to CLOSE (connections that predate tcptrace are not in it).",
            &[],
            vec![log2_series(&c.lifetimes, LIFETIME_EXPORTED, 1e-3, timed, c.lifetime_sum_ns as f64 / 1e9)],
        ),
        histogram(
            "tcptrace_rtt_seconds",
            "Smoothed round-trip time (tcp_sock.srtt_us) of each connection as it closed.",
            &[],
            vec![log2_series(&c.rtts, RTT_EXPORTED, 1e-6, c.rtts.iter().sum(), c.rtt_sum_us as f64 / 1e6)],
        ),
    ]
}

/// A histogram series from log2 buckets (`counts[b]`: values below 2^b units, not
/// cumulative), exporting every other bucket of `exported` as `le` = 2^b * `unit`.
fn log2_series(
    counts: &[u64],
    exported: std::ops::RangeInclusive<u32>,
    unit: f64,
    count: u64,
    sum: f64,
) -> HistogramSeries<'static> {
    let mut cumulative = 0;
    let mut buckets = Vec::new();
    for (b, n) in counts.iter().enumerate() {
        cumulative += n;
        let b = b as u32;
        if exported.contains(&b) && (b - exported.start()).is_multiple_of(2) {
            buckets.push(((1u64 << b) as f64 * unit, cumulative));
        }
    }
    HistogramSeries {
        labels: vec![],
        buckets,
        count,
        sum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::exposition;

    #[test]
    fn buckets_are_cumulative_and_everything_is_in_the_count() {
        let mut c = Connections {
            lifetimes: vec![0; 32],
            rtts: vec![0; 32],
            ..Connections::default()
        };
        c.lifetimes[0] = 1; // < 1 ms
        c.lifetimes[11] = 2; // < 2.048 s
        c.lifetimes[31] = 1; // beyond the last exported bucket: only in +Inf
        c.rtts[6] = 3; // < 64 us
        c.closed_by = [4, 0, 0];
        let text = exposition::encode(families(&c));
        for line in [
            "tcptrace_connection_duration_seconds_bucket{le=\"0.001\"} 1",
            "tcptrace_connection_duration_seconds_bucket{le=\"1.024\"} 1",
            "tcptrace_connection_duration_seconds_bucket{le=\"4.096\"} 3",
            "tcptrace_connection_duration_seconds_bucket{le=\"+Inf\"} 4",
            "tcptrace_connection_duration_seconds_count 4",
            "tcptrace_rtt_seconds_bucket{le=\"0.000016\"} 0",
            "tcptrace_rtt_seconds_bucket{le=\"0.000064\"} 3",
            "tcptrace_connections_closed_total{closed_by=\"local\"} 4",
            "tcptrace_connections_closed_total{closed_by=\"neither\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
