//! Reading the eBPF programs' per-CPU counters: the lossless metric counters and the
//! programs' own bookkeeping (events submitted, lost, filtered, maps full).
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use tcptrace_common::{counters, stats::GUARDED_SLOTS, Stat};

pub struct KernelCounters {
    stats: PerCpuArray<MapData, u64>,
    transitions: PerCpuArray<MapData, u64>,
    retransmits: PerCpuHashMap<MapData, u32, u64>,
    handshakes: PerCpuArray<MapData, u64>,
    failures: PerCpuHashMap<MapData, u32, u64>,
    resets: PerCpuArray<MapData, u64>,
    connections: PerCpuArray<MapData, u64>,
    connect_errors: PerCpuHashMap<MapData, u32, u64>,
    socket_errors: PerCpuHashMap<MapData, u32, u64>,
    segments: PerCpuArray<MapData, u64>,
    recovered: PerCpuArray<MapData, u64>,
    drops: PerCpuHashMap<MapData, u32, u64>,
    listen_overflows: PerCpuArray<MapData, u64>,
}

/// Latency histogram of one handshake side, straight from the kernel's log2 buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `buckets[b]`: handshakes that took less than 2^b microseconds (not cumulative).
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
    /// Handshakes completed on sockets whose start was not seen: no duration.
    pub untimed: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Closed connections and what connections carried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Connections {
    /// Bytes acknowledged by peers and bytes received, of closed connections and (to
    /// within a second of sampling) open ones.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Data segments sent, retransmits included (`tcp_sock.data_segs_out`), counted
    /// like the bytes.
    pub sent_segments: u64,
    /// `lifetimes[b]`: closed connections that lived less than 2^b ms (not cumulative);
    /// those whose start tcptrace did not see are only in `closed_by`.
    pub lifetimes: Vec<u64>,
    pub lifetime_sum_ns: u64,
    /// `rtts[b]`: closed connections whose smoothed RTT was below 2^b us.
    pub rtts: Vec<u64>,
    pub rtt_sum_us: u64,
    /// Closes by `ClosedBy` value.
    pub closed_by: [u64; 3],
}

/// Every metric counter at one instant, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (from, to) -> transitions.
    pub transitions: BTreeMap<(u8, u8), u64>,
    /// (kind, state, ipv6) -> retransmitted segments.
    pub retransmits: BTreeMap<(u8, u8, bool), u64>,
    /// [client, server].
    pub handshakes: [Histogram; 2],
    /// (side, flags, err) -> failed handshakes.
    pub failures: BTreeMap<(u8, u8, i32), u64>,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub connections: Connections,
    /// errno -> connect() calls that failed with it before a SYN was sent.
    pub connect_errors: BTreeMap<i32, u64>,
    /// errno -> errors the kernel reported on TCP sockets (0: out of range).
    pub socket_errors: BTreeMap<i32, u64>,
    /// Segments received in handshake states, by `counters::segment_index` slot.
    pub segments: Vec<u64>,
    /// (drop reason, socket state or 0) -> TCP packets dropped.
    pub drops: BTreeMap<(u32, u8), u64>,
    /// Listen-queue overflows by `OverflowAt`: [SYN, final ACK].
    pub listen_overflows: [u64; 2],
    /// SYNs to listeners tcptrace does not know, whose overflow it could not judge.
    pub syns_unjudged: u64,
}

fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("{name} map missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("{name} map has an unexpected type"))
}

fn sum_hash(map: &PerCpuHashMap<MapData, u32, u64>) -> BTreeMap<u32, u64> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
        .collect()
}

fn sum_slot(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

impl KernelCounters {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelCounters> {
        Ok(KernelCounters {
            stats: take_map(ebpf, "STATS")?,
            transitions: take_map(ebpf, "TRANSITIONS")?,
            retransmits: take_map(ebpf, "RETRANSMITS")?,
            handshakes: take_map(ebpf, "HANDSHAKES")?,
            failures: take_map(ebpf, "FAILURES")?,
            resets: take_map(ebpf, "RESETS")?,
            connections: take_map(ebpf, "CONNECTIONS")?,
            connect_errors: take_map(ebpf, "CONNECT_ERRORS")?,
            socket_errors: take_map(ebpf, "SOCKET_ERRORS")?,
            segments: take_map(ebpf, "SEGMENTS")?,
            recovered: take_map(ebpf, "RECOVERED")?,
            drops: take_map(ebpf, "DROPS")?,
            listen_overflows: take_map(ebpf, "LISTEN_OVERFLOWS")?,
        })
    }

    /// A bookkeeping counter summed over all CPUs.
    pub fn stat(&self, stat: Stat) -> u64 {
        sum_slot(&self.stats, stat as u32)
    }

    /// Skipped runs of each guarded probe's main program that its backup handled,
    /// indexed by `tcptrace_common::stats::Guarded`.
    pub fn recovered(&self) -> Vec<u64> {
        (0..GUARDED_SLOTS)
            .map(|slot| sum_slot(&self.recovered, slot))
            .collect()
    }

    fn connections(&self) -> Connections {
        let slot = |i| sum_slot(&self.connections, i);
        let range = |first: u32, n: u32| (first..first + n).map(slot).collect();
        Connections {
            sent_bytes: slot(counters::CONN_SENT_BYTES),
            received_bytes: slot(counters::CONN_RECEIVED_BYTES),
            sent_segments: slot(counters::CONN_SENT_SEGMENTS),
            lifetimes: range(counters::CONN_LIFETIME_BUCKET0, counters::LIFETIME_BUCKETS),
            lifetime_sum_ns: slot(counters::CONN_LIFETIME_SUM_NS),
            rtts: range(counters::CONN_RTT_BUCKET0, counters::RTT_BUCKETS),
            rtt_sum_us: slot(counters::CONN_RTT_SUM_US),
            closed_by: std::array::from_fn(|i| slot(counters::CONN_CLOSED_BY + i as u32)),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let handshake = |side: u8| Histogram {
            buckets: (0..counters::HANDSHAKE_BUCKETS)
                .map(|b| sum_slot(&self.handshakes, counters::handshake_bucket_index(side, b)))
                .collect(),
            sum_ns: sum_slot(&self.handshakes, counters::handshake_sum_index(side)),
            untimed: sum_slot(&self.handshakes, counters::handshake_untimed_index(side)),
        };
        Snapshot {
            transitions: (0..counters::TRANSITION_SLOTS)
                .map(|i| {
                    (
                        counters::transition_from_index(i),
                        sum_slot(&self.transitions, i),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            retransmits: sum_hash(&self.retransmits)
                .into_iter()
                .map(|(k, v)| (counters::retransmit_from_key(k), v))
                .collect(),
            handshakes: [handshake(0), handshake(1)],
            failures: sum_hash(&self.failures)
                .into_iter()
                .map(|(k, v)| (counters::failure_from_key(k), v))
                .collect(),
            resets_sent: sum_slot(&self.resets, counters::RESET_SENT),
            resets_received: sum_slot(&self.resets, counters::RESET_RECEIVED),
            connections: self.connections(),
            connect_errors: sum_hash(&self.connect_errors)
                .into_iter()
                .map(|(errno, n)| (errno as i32, n))
                .collect(),
            socket_errors: sum_hash(&self.socket_errors)
                .into_iter()
                .map(|(errno, n)| (errno as i32, n))
                .collect(),
            segments: (0..counters::SEGMENT_SLOTS)
                .map(|i| sum_slot(&self.segments, i))
                .collect(),
            drops: sum_hash(&self.drops)
                .into_iter()
                .map(|(i, n)| (counters::drop_from_index(i), n))
                .collect(),
            listen_overflows: std::array::from_fn(|at| sum_slot(&self.listen_overflows, at as u32)),
            syns_unjudged: sum_slot(&self.listen_overflows, counters::OVERFLOW_SYN_UNJUDGED),
        }
    }
}
