//! The largest `/metrics` a node can serve, from the code's constants: the series
//! budget, the per-workload buckets, the longest label values, the kernel maps' key
//! spaces, the probes and their methods. The families are rendered by the same
//! functions `/metrics` uses, from inputs where every map is full and every label is at
//! its longest; then every value is counted at the widest a value can print.
//! METRICS.md gives these figures (a test checks they are the ones computed here), and
//! the workloads test checks a real agent stays within them.
use std::net::{Ipv6Addr, SocketAddr};

use prometheus::core::Collector as _;
use tcptrace_common::{
    counters::{CONNECT_ERROR_SLOTS, DROP_REASON_ROWS, HANDSHAKE_BUCKETS, SEGMENT_SLOTS},
    RetransmitKind, TcpState,
};

use super::{
    exposition::{self, Family},
    listen_queues, metrics,
    workloads::{RemoteLabel, WorkloadMetrics, BUDGET_FAMILIES},
};
use crate::{
    doctor::{census::Census, listeners::Listener},
    kernel::{attach::Stage, counters::Snapshot, plan::Skipped, probes::PROBES, HookStatus},
};

/// Every sample value prints in at most this many bytes. Counts are u64: at most 20
/// digits. The other values (seconds from nanoseconds, shares of at most 65535 ports,
/// process figures) are 0 or at least 1e-9, and print as the shortest decimal that
/// reads back as the same f64: at most 17 significant digits after `0.` and 8 zeros.
pub const VALUE_BYTES: usize = 27;

/// Exposed series (sample lines) and bytes of a /metrics body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    pub series: usize,
    pub bytes: usize,
}

impl Bound {
    /// Count one line of the exposition, its value (if a sample) at its widest.
    fn add(&mut self, line: &str) {
        self.bytes += line_bytes(line);
        self.series += usize::from(!line.starts_with('#'));
    }
}

fn line_bytes(line: &str) -> usize {
    match line.rsplit_once(' ') {
        Some((series, _)) if !line.starts_with('#') => series.len() + 1 + VALUE_BYTES + 1,
        _ => line.len() + 1,
    }
}

/// The worst case of `tcptrace run` with `--labels workload[,remote|,peer]` and this
/// `--max-series`: the node-level families at their largest, plus `max_series` lines
/// of the per-workload families, each as wide as the widest of them can be.
pub fn node(max_series: usize, remote: RemoteLabel) -> Bound {
    let mut bound = Bound::default();
    for line in exposition::encode(node_families()).lines() {
        bound.add(line);
    }
    let mut widest = 0;
    for line in exposition::encode(WorkloadMetrics::widest_families(remote)).lines() {
        let budgeted =
            !line.starts_with('#') && BUDGET_FAMILIES.iter().any(|f| line.starts_with(f));
        if budgeted {
            widest = widest.max(line_bytes(line));
        } else {
            bound.add(line);
        }
    }
    bound.series += max_series;
    bound.bytes += max_series * widest;
    bound
}

/// Every family but the per-workload ones, at its largest.
fn node_families() -> Vec<Family> {
    // Drop reasons at the longest label they can have (the kernel names them).
    let longest = |_| "X".repeat(super::drops::REASON_LABEL_MAX);
    let mut families = metrics::kernel_families_with(&every_key(), &longest);
    let missed = PROBES.iter().map(|p| (p.name, 1)).collect();
    families.extend(metrics::agent_families(
        &|_| 1,
        1,
        &every_method_tried(),
        missed,
        &[1; tcptrace_common::stats::GUARDED_SLOTS as usize],
    ));
    families.extend(metrics::socket_families_of(&busiest(), &Census::default()));
    families.extend(listen_queues::families(&widest_listeners()));
    families.push(process_families());
    families.push(metrics::scrape_duration(1.0));
    families
}

/// A snapshot holding every key the kernel's counters can report.
fn every_key() -> Snapshot {
    let states = TcpState::ALL.map(|s| s as u8);
    let mut s = Snapshot::default();
    for from in states {
        for to in states {
            s.transitions.insert((from, to), 1);
        }
    }
    for kind in RetransmitKind::ALL {
        for state in states {
            for ipv6 in [false, true] {
                s.retransmits.insert((kind as u8, state, ipv6), 1);
            }
        }
    }
    for h in &mut s.handshakes {
        h.buckets = vec![1; HANDSHAKE_BUCKETS as usize];
    }
    for errno in 0..CONNECT_ERROR_SLOTS as i32 {
        s.connect_errors.insert(errno, 1);
        s.socket_errors.insert(errno, 1);
    }
    s.segments = vec![1; SEGMENT_SLOTS as usize];
    s.connections.lifetimes = vec![1; tcptrace_common::counters::LIFETIME_BUCKETS as usize];
    s.connections.rtts = vec![1; tcptrace_common::counters::RTT_BUCKETS as usize];
    for reason in 0..DROP_REASON_ROWS {
        for state in states.into_iter().chain([0]) {
            s.drops.insert((reason, state), 1);
        }
    }
    s
}

/// Every probe with every method of its plan tried: one `tcptrace_probe_attached`
/// series each.
fn every_method_tried() -> Vec<HookStatus> {
    PROBES
        .iter()
        .map(|p| {
            let (used, tried) = p.methods.split_last().expect("every probe has a method");
            HookStatus {
                hook: p.name,
                method: used.name,
                attached: true,
                purpose: p.purpose,
                prog_fds: Vec::new(),
                skipped: tried
                    .iter()
                    .map(|m| Skipped {
                        method: m.name,
                        stage: Stage::Load,
                        reason: String::new(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// As many destinations as `tcptrace_ephemeral_port_utilization` shows, each as long
/// as a socket address prints.
fn busiest() -> Vec<(SocketAddr, u64, f64)> {
    (0..metrics::PORT_USE_SERIES)
        .map(|i| {
            let ip = Ipv6Addr::from(u128::MAX - i as u128);
            (SocketAddr::new(ip.into(), u16::MAX), 1, 1.0)
        })
        .collect()
}

/// More listeners than the listen-queue gauges name, each at the longest address, with
/// the widest command name: `COMM_MAX_BYTES` characters the exposition escapes (two
/// bytes each).
fn widest_listeners() -> Vec<listen_queues::Row> {
    let listeners: Vec<Listener> = (0..=listen_queues::LISTENERS_EXPORTED)
        .map(|i| Listener {
            local: SocketAddr::new(Ipv6Addr::from(u128::MAX - i as u128).into(), u16::MAX),
            queue_length: u32::MAX,
            queue_limit: u32::MAX,
            pid: None,
            comm: None,
            inode: i as u32,
        })
        .collect();
    let comm = "\\".repeat(listen_queues::COMM_MAX_BYTES);
    listen_queues::rows(&listeners, listen_queues::LISTENERS_EXPORTED, |_| {
        Some(comm.clone())
    })
}

/// Every metric the process collector describes, whether or not this system lets it
/// read each one, typed `counter` (the longer of its two types).
fn process_families() -> Family {
    let process = prometheus::process_collector::ProcessCollector::for_self();
    let text = process
        .desc()
        .iter()
        .map(|d| {
            let name = &d.fq_name;
            format!(
                "# HELP {name} {}\n# TYPE {name} counter\n{name} 1\n",
                d.help
            )
        })
        .collect();
    Family::from_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::settings::DEFAULT_MAX_SERIES;

    #[test]
    fn values_print_within_the_widest_value() {
        let widest = |v: f64| format!("{v}").len();
        assert_eq!(widest(u64::MAX as f64), 20);
        // Seconds from nanoseconds: every magnitude, and digits that do not round well.
        let mut ns: u64 = 1;
        while ns < u64::MAX / 10 {
            for n in [ns, ns + 1, ns * 3 + 7, ns * 7 - 1, ns * 9 + 1] {
                assert!(widest(n as f64 / 1e9) <= VALUE_BYTES, "{n} ns");
            }
            ns *= 10;
        }
        assert!(widest(1.0 / 65535.0) <= VALUE_BYTES);
    }

    #[test]
    fn the_bound_grows_with_the_budget_by_the_widest_line() {
        let small = node(1000, RemoteLabel::Endpoint);
        let large = node(2000, RemoteLabel::Endpoint);
        assert_eq!(large.series - small.series, 1000);
        let widest = (large.bytes - small.bytes) / 1000;
        // Four label values at their longest, a remote, a name: over a kilobyte.
        assert!(
            widest > 4 * crate::exporter::workloads::MAX_LABEL_BYTES,
            "{widest}"
        );
        assert!(
            node(2000, RemoteLabel::Off).bytes < large.bytes,
            "remote makes lines longer"
        );
    }

    /// METRICS.md gives the figures for the DaemonSet's settings (--labels workload
    /// --max-series 2000) and with `remote`, and how they add up, and DEPLOY.md repeats
    /// the first: they must be the ones computed here.
    #[test]
    fn the_docs_give_the_computed_figures() {
        let doc = include_str!("../../../METRICS.md");
        let max = DEFAULT_MAX_SERIES as usize;
        let peer = RemoteLabel::Peer(Default::default());
        let mut missing = Vec::new();
        for (labels, remote) in [
            ("workload", RemoteLabel::Off),
            ("workload,remote", RemoteLabel::Endpoint),
            ("workload,peer", peer),
        ] {
            let b = node(max, remote.clone());
            let row = format!(
                "| `--labels {labels}` | {} | {} |",
                thousands(b.series),
                thousands(b.bytes)
            );
            let fixed = node(0, remote.clone());
            let widest = node(1, remote).bytes - fixed.bytes;
            let parts = format!(
                "{} + {} series; {} + {} x {} bytes",
                thousands(fixed.series),
                thousands(max),
                thousands(fixed.bytes),
                thousands(max),
                thousands(widest)
            );
            missing.extend([row, parts].into_iter().filter(|f| !doc.contains(f)));
        }
        assert!(
            missing.is_empty(),
            "METRICS.md lacks\n{}",
            missing.join("\n")
        );
        // DEPLOY.md's Cardinality section repeats the DaemonSet's figures.
        let deploy: Vec<&str> = include_str!("../../../DEPLOY.md")
            .split_whitespace()
            .collect();
        let b = node(max, RemoteLabel::Off);
        let figures = format!(
            "{} series and {} bytes",
            thousands(b.series),
            thousands(b.bytes)
        );
        assert!(
            deploy.join(" ").contains(&figures),
            "DEPLOY.md lacks {figures}"
        );
    }

    fn thousands(n: usize) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}
