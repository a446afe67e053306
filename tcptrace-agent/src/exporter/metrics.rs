//! `/metrics`: every metric tcptrace exports, read at scrape time from the kernel's
//! lossless counters, from sock_diag and from the agent itself. METRICS.md documents
//! each one; keep the two in step.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use prometheus::{core::Collector, Encoder as _};
use std::collections::BTreeMap;

use tcptrace_common::{
    counters::{handshake_bucket_upper_seconds, HANDSHAKE_BUCKETS, SEGMENT_FLAGS, SEGMENT_STATES},
    event::FLAG_SK_ERR_READ,
    state::state_name,
    HandshakeSide, RetransmitKind, Stat, TcpState,
};

use super::{
    connections, drops,
    exposition::{self, counter, gauge, histogram, Family, HistogramSeries},
    listen_queues,
    workloads::WorkloadMetrics,
};
use crate::{
    doctor::census::Census,
    event::{errno_name, FailureReason},
    kernel::{
        self,
        counters::{Histogram, KernelCounters, Snapshot},
        probes::PROBES,
        HookStatus,
    },
};

/// Exported histogram buckets: 2^4 us (16 us) .. 2^28 us (268 s, beyond the 127 s a
/// default SYN-retry budget can take), then +Inf.
const FIRST_EXPORTED_BUCKET: u32 = 4;
const LAST_EXPORTED_BUCKET: u32 = 28;

/// What the agent knows about itself, updated by the ring-buffer drain.
#[derive(Default)]
pub struct AgentStats {
    /// Events decoded from the ring buffer.
    pub events_delivered: AtomicU64,
}

pub struct Metrics {
    counters: Mutex<KernelCounters>,
    hooks: Vec<HookStatus>,
    pub agent: AgentStats,
    /// Per-workload series from the event stream (`run --labels workload`).
    pub workloads: Option<Mutex<WorkloadMetrics>>,
    /// Who opened each listener, for the listen-queue gauges' `comm`.
    listen_owners: Mutex<listen_queues::Owners>,
    process: prometheus::process_collector::ProcessCollector,
}

impl Metrics {
    pub fn new(
        counters: KernelCounters,
        hooks: Vec<HookStatus>,
        workloads: Option<WorkloadMetrics>,
        listen_owners: listen_queues::Owners,
    ) -> Metrics {
        Metrics {
            counters: Mutex::new(counters),
            hooks,
            workloads: workloads.map(Mutex::new),
            listen_owners: Mutex::new(listen_owners),
            agent: AgentStats::default(),
            process: prometheus::process_collector::ProcessCollector::for_self(),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> prometheus::Result<String> {
        let started = Instant::now();
        let mut families = {
            let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let snap = counters.snapshot();
            let mut f = kernel_families(&snap);
            f.extend(agent_families(
                &|s| counters.stat(s),
                self.agent.events_delivered.load(Ordering::Relaxed),
                &self.hooks,
                kernel::missed_by_hook(&self.hooks, &counters.recovered()),
                &counters.recovered(),
            ));
            f
        };
        families.extend(socket_families(
            &mut self.listen_owners.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        if let Some(w) = &self.workloads {
            families.extend(w.lock().unwrap_or_else(|p| p.into_inner()).families());
        }
        families.push(process_family(&self.process)?);
        families.push(scrape_duration(started.elapsed().as_secs_f64()));
        Ok(exposition::encode(families))
    }
}

pub fn scrape_duration(seconds: f64) -> Family {
    gauge(
        "tcptrace_scrape_duration_seconds",
        "Time this scrape took to collect every metric (before encoding).",
        &[],
        vec![(vec![], seconds)],
    )
}

/// The process collector's families (CPU, memory, fds), in text form.
pub fn process_family(
    process: &prometheus::process_collector::ProcessCollector,
) -> prometheus::Result<Family> {
    let mut text = Vec::new();
    prometheus::TextEncoder::new().encode(&process.collect(), &mut text)?;
    Ok(Family::from_text(
        String::from_utf8_lossy(&text).into_owned(),
    ))
}

/// The agent's own families: ring buffer, kernel maps, skipped runs, probes, version.
/// `stat` reads one of the programs' bookkeeping counters; `missed` is per hook;
/// `recovered` per guarded probe (`tcptrace_common::stats::Guarded`).
pub fn agent_families(
    stat: &dyn Fn(Stat) -> u64,
    delivered: u64,
    hooks: &[HookStatus],
    missed: Vec<(&'static str, u64)>,
    recovered: &[u64],
) -> Vec<Family> {
    let map_full = |s: Stat| stat(s) as f64;
    vec![
        counter(
            "tcptrace_ringbuf_events_produced_total",
            "Events offered to the ring buffer (= written + lost).",
            &[],
            vec![(vec![], stat(Stat::EventsProduced) as f64)],
        ),
        counter(
            "tcptrace_ringbuf_events_total",
            "Events the kernel wrote to the ring buffer.",
            &[],
            vec![(vec![], stat(Stat::EventsSubmitted) as f64)],
        ),
        counter(
            "tcptrace_ringbuf_events_lost_total",
            "Events dropped because the ring buffer was full (counters are unaffected).",
            &[],
            vec![(vec![], stat(Stat::EventsLost) as f64)],
        ),
        counter(
            "tcptrace_events_delivered_total",
            "Events the agent read from the ring buffer.",
            &[],
            vec![(vec![], delivered as f64)],
        ),
        counter(
            "tcptrace_kernel_map_full_total",
            "Updates refused because a bounded kernel map was full.",
            &["map"],
            vec![
                (vec!["sockets"], map_full(Stat::SocketMapFull)),
                (vec!["listeners"], map_full(Stat::ListenerMapFull)),
                (vec!["counters"], map_full(Stat::CounterUpdateFailed)),
            ],
        ),
        counter(
            "tcptrace_kernel_missed_runs_total",
            "Hook runs the kernel skipped because a BPF program was already running on the same CPU (recursion protection) and that no backup program handled: their events are missing (and their counts, but for retransmits, which the socket's next one makes up for).",
            &["probe"],
            missed.into_iter().map(|(hook, n)| (vec![hook], n as f64)).collect(),
        ),
        counter(
            "tcptrace_kernel_recovered_runs_total",
            "Events the kernel skipped a probe's main program for (an interrupt fired the same tracepoint on that CPU while it ran) and its backup program handled: nothing missing.",
            &["probe"],
            recovered_by_probe(hooks, recovered),
        ),
        gauge(
            "tcptrace_probe_attached",
            "1 for the method each probe uses on this kernel, 0 for each method it skipped.",
            &["probe", "method"],
            probe_methods(hooks),
        ),
        gauge(
            "tcptrace_build_info",
            "Always 1; the version of the running agent.",
            &["version"],
            vec![(vec![env!("CARGO_PKG_VERSION")], 1.0)],
        ),
    ]
}

/// Recovered runs of the attached probes that pair a main program with a backup.
fn recovered_by_probe(hooks: &[HookStatus], recovered: &[u64]) -> Vec<(Vec<&'static str>, f64)> {
    PROBES
        .iter()
        .filter_map(|p| Some((p.name, p.guarded?)))
        .filter(|(name, _)| hooks.iter().any(|h| h.hook == *name && h.attached))
        .map(|(name, slot)| {
            let n = recovered.get(slot as usize).copied().unwrap_or(0);
            (vec![name], n as f64)
        })
        .collect()
}

/// One series per method tried: 1 for the one in use, 0 for those skipped.
fn probe_methods(hooks: &[HookStatus]) -> Vec<(Vec<&'static str>, f64)> {
    let mut series = Vec::new();
    for h in hooks {
        for s in &h.skipped {
            series.push((vec![h.hook, s.method], 0.0));
        }
        if h.attached {
            series.push((vec![h.hook, h.method], 1.0));
        }
    }
    series
}

fn family_label(ipv6: bool) -> &'static str {
    if ipv6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// The metric families backed by the kernel's lossless counters.
pub fn kernel_families(s: &Snapshot) -> Vec<Family> {
    kernel_families_with(s, &drops::reason_label)
}

/// The same, each drop reason labelled by `reason_label`.
pub fn kernel_families_with(s: &Snapshot, reason_label: &dyn Fn(u32) -> String) -> Vec<Family> {
    let connect_errors = by_errno(&s.connect_errors, libc::EADDRNOTAVAIL);
    let socket_errors = by_errno(&s.socket_errors, libc::ETIMEDOUT);
    let mut families = vec![
        counter(
            "tcptrace_state_transitions_total",
            "TCP state transitions (sock:inet_sock_set_state), by old and new state.",
            &["from", "to"],
            s.transitions
                .iter()
                .map(|((from, to), n)| (vec![state_name(*from), state_name(*to)], *n as f64))
                .collect(),
        ),
        counter(
            "tcptrace_retransmits_total",
            "Retransmitted segments (as TcpRetransSegs counts them), by kind, socket state and family.",
            &["kind", "state", "family"],
            s.retransmits
                .iter()
                .map(|((kind, state, ipv6), n)| {
                    let kind = RetransmitKind::from_u8(*kind).map_or("unknown", RetransmitKind::name);
                    (vec![kind, state_name(*state), family_label(*ipv6)], *n as f64)
                })
                .collect(),
        ),
        histogram(
            "tcptrace_handshake_duration_seconds",
            "Completed TCP handshakes by side: client SYN_SENT->ESTABLISHED; server SYN-ACK round trip plus final-ACK processing.",
            &["side"],
            [HandshakeSide::Client, HandshakeSide::Server]
                .iter()
                .map(|side| handshake_series(vec![side.name()], &s.handshakes[*side as usize]))
                .collect(),
        ),
        counter(
            "tcptrace_handshakes_untimed_total",
            "Completed handshakes whose start tcptrace did not see (the fallback socket map was full, or they began before it attached): counted here, with no latency.",
            &["side"],
            [HandshakeSide::Client, HandshakeSide::Server]
                .iter()
                .map(|side| (vec![side.name()], s.handshakes[*side as usize].untimed as f64))
                .collect(),
        ),
        counter(
            "tcptrace_connect_failures_total",
            "Client handshakes that failed, by reason (from the socket error: ECONNREFUSED, ETIMEDOUT, ...).",
            &["reason"],
            failures_by_reason(s, HandshakeSide::Client),
        ),
        counter(
            "tcptrace_accept_failures_total",
            "Server handshakes (SYN_RECV) that failed, by reason.",
            &["reason"],
            failures_by_reason(s, HandshakeSide::Server),
        ),
        counter(
            "tcptrace_resets_total",
            "TCP resets sent (tcp:tcp_send_reset) and received (tcp:tcp_receive_reset).",
            &["direction"],
            vec![(vec!["sent"], s.resets_sent as f64), (vec!["received"], s.resets_received as f64)],
        ),
        counter(
            "tcptrace_connect_errors_total",
            "connect() calls on TCP sockets that failed before a SYN was sent, by errno (EADDRNOTAVAIL: no free local port).",
            &["errno"],
            connect_errors
                .iter()
                .map(|(errno, n)| (vec![errno.as_str()], *n))
                .collect(),
        ),
        counter(
            "tcptrace_socket_errors_total",
            "Errors the kernel reported on TCP sockets (sock:inet_sk_error_report), by errno: ETIMEDOUT when keep-alive or retransmissions gave up on a peer.",
            &["errno"],
            socket_errors
                .iter()
                .map(|(errno, n)| (vec![errno.as_str()], *n))
                .collect(),
        ),
        counter(
            "tcptrace_handshake_segments_total",
            "Segments received in LISTEN, SYN_SENT or SYN_RECV, by state and flags (syn, synack, rst, ack, other). Without a tcp_rcv_state_process hook only rst is counted.",
            &["state", "flags"],
            handshake_segments(s),
        ),
    ];
    families.extend(connections::families(&s.connections));
    families.extend(drops::families(s, reason_label));
    families
}

/// Series by errno name. `always` is present from the start (0 until it happens), so
/// alerts on it (port exhaustion, dead peers) work at once; others appear when first seen.
fn by_errno(counts: &BTreeMap<i32, u64>, always: i32) -> Vec<(String, f64)> {
    let mut series = counts.clone();
    series.entry(always).or_insert(0);
    series
        .into_iter()
        .map(|(errno, n)| (errno_name(errno).into_owned(), n as f64))
        .collect()
}

fn handshake_segments(s: &Snapshot) -> Vec<(Vec<&'static str>, f64)> {
    let mut series = Vec::new();
    for (row, state) in SEGMENT_STATES.iter().enumerate() {
        for (col, flags) in SEGMENT_FLAGS.iter().enumerate() {
            let n = s
                .segments
                .get(row * SEGMENT_FLAGS.len() + col)
                .copied()
                .unwrap_or(0);
            series.push((vec![state_name(*state), *flags], n as f64));
        }
    }
    series
}

/// One exported handshake histogram series from the kernel's log2 buckets (the
/// per-workload ones have buckets of their own, see `workload_metrics`).
fn handshake_series<'a>(labels: Vec<&'a str>, h: &Histogram) -> HistogramSeries<'a> {
    let mut cumulative = 0;
    let mut buckets = Vec::new();
    for b in 0..HANDSHAKE_BUCKETS {
        cumulative += h.buckets.get(b as usize).copied().unwrap_or(0);
        if (FIRST_EXPORTED_BUCKET..=LAST_EXPORTED_BUCKET).contains(&b) {
            buckets.push((handshake_bucket_upper_seconds(b), cumulative));
        }
    }
    HistogramSeries {
        labels,
        buckets,
        count: h.count(),
        sum: h.sum_ns as f64 / 1e9,
    }
}

/// Every reason is always present (0 until it happens), so rate() works from the start.
fn failures_by_reason(s: &Snapshot, side: HandshakeSide) -> Vec<(Vec<&'static str>, f64)> {
    FailureReason::ALL
        .iter()
        .map(|reason| {
            let n: u64 = s
                .failures
                .iter()
                .filter(|((sd, flags, err), _)| {
                    let sk_err = (flags & FLAG_SK_ERR_READ != 0).then_some(*err);
                    *sd == side as u8 && FailureReason::classify(*sd, *flags, sk_err) == *reason
                })
                .map(|(_, n)| n)
                .sum();
            (vec![reason.name()], n as f64)
        })
        .collect()
}

/// Connections without data for this long count as idle in `tcptrace_idle_connections`
/// (`tcptrace doctor --idle-after` chooses its own).
pub const IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Destinations exported in `tcptrace_ephemeral_port_utilization`: the busiest, so the
/// series count stays bounded whatever the host connects to.
pub const PORT_USE_SERIES: usize = 10;

/// The families computed from one sock_diag pass over the agent's namespace.
fn socket_families(listen_owners: &mut listen_queues::Owners) -> Vec<Family> {
    let census = crate::doctor::sysctl::TcpSysctls::read().and_then(|sysctls| {
        let census = Census::take(&sysctls, IDLE_AFTER)?;
        Ok((census.port_use(&sysctls, PORT_USE_SERIES), census))
    });
    let (port_use, census) = census.unwrap_or_else(|e| {
        log::warn!("sock_diag: {e:#}");
        Default::default()
    });
    let listeners = listen_owners.rows(&census.listeners);
    let mut families = socket_families_of(&port_use, &census);
    families.extend(listen_queues::families(&listeners));
    families
}

/// The sock_diag families from a census and the busiest destinations (`Census::port_use`).
pub fn socket_families_of(
    port_use: &[(std::net::SocketAddr, u64, f64)],
    census: &Census,
) -> Vec<Family> {
    let remotes: Vec<(String, f64)> = port_use
        .iter()
        .map(|(remote, _, share)| (remote.to_string(), *share))
        .collect();
    vec![
        gauge(
            "tcptrace_sockets",
            "TCP sockets in the agent's network namespace by state, from sock_diag (as ss -tan).",
            &["state"],
            TcpState::ALL
                .iter()
                .filter(|s| **s != TcpState::BoundInactive)
                .map(|s| {
                    let n = census.by_state.get(s.name()).copied().unwrap_or(0);
                    (vec![s.name()], n as f64)
                })
                .collect(),
        ),
        gauge(
            "tcptrace_ephemeral_port_utilization",
            "Share of ip_local_port_range in use towards each of the busiest remote endpoints (1 = no local port left for it).",
            &["remote"],
            remotes.iter().map(|(r, v)| (vec![r.as_str()], *v)).collect(),
        ),
        gauge(
            "tcptrace_idle_connections",
            "ESTABLISHED connections without data for 300 s or more, by whether a keep-alive timer watches them.",
            &["keepalive"],
            vec![
                (vec!["yes"], census.idle_with_keepalive as f64),
                (vec!["no"], census.idle_without_keepalive as f64),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let mut h = Histogram {
            buckets: vec![0; HANDSHAKE_BUCKETS as usize],
            sum_ns: 3_000_000,
            untimed: 0,
        };
        h.buckets[2] = 1; // < 4 us: folded into the first exported bucket
        h.buckets[7] = 2; // < 128 us
        h.buckets[31] = 1; // beyond the last exported bucket: only in +Inf
        let s = handshake_series(vec!["client"], &h);
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.first(), Some(&(16e-6, 1)));
        assert!(s.buckets.contains(&(128e-6, 3)));
        assert_eq!(s.buckets.last().unwrap().1, 3);
        assert!((s.sum - 0.003).abs() < 1e-12);
    }

    #[test]
    fn kernel_families_render_as_valid_exposition() {
        let mut snap = Snapshot::default();
        snap.transitions.insert((7, 2), 5);
        snap.retransmits.insert((1, 2, false), 3);
        snap.failures.insert(
            (
                0,
                tcptrace_common::event::FLAG_SK_ERR_READ,
                libc::ECONNREFUSED,
            ),
            2,
        );
        snap.handshakes[0].buckets = vec![0; HANDSHAKE_BUCKETS as usize];
        snap.handshakes[1].buckets = vec![0; HANDSHAKE_BUCKETS as usize];
        let text = exposition::encode(kernel_families(&snap));
        assert!(
            text.contains("tcptrace_state_transitions_total{from=\"CLOSE\",to=\"SYN_SENT\"} 5"),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_retransmits_total{kind=\"syn\",state=\"SYN_SENT\",family=\"ipv4\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_connect_failures_total{reason=\"refused\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_connect_failures_total{reason=\"timeout\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_handshake_duration_seconds_bucket{side=\"server\",le=\"+Inf\"} 0"
            ),
            "{text}"
        );
    }
}
