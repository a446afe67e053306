//! Per-workload series (`run --labels workload[,remote|,peer]`): retransmits, handshake
//! latency, connect failures and resets by Kubernetes namespace/pod/container (or container id, or host
//! process), optionally by remote endpoint or by who holds it (`peer`), aggregated from the event stream under a
//! series budget. The kernel's lossless counters stay unlabelled; these follow the ring
//! buffer, so a full ring (counted in tcptrace_ringbuf_events_lost_total) undercounts them.
mod labels;

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use tcptrace_common::EventKind;

use super::{
    budget::{Budget, Landing},
    drops::{reason_label, REASON_LABEL_MAX},
    exposition::{counter, gauge, histogram, Family, HistogramSeries},
};
use crate::{
    event::{TcpEvent, What},
    k8s::pod_names,
};
use labels::Labeler;
pub use labels::MAX_LABEL_BYTES;

/// Upper bounds (ns) of the per-workload handshake buckets, exposed in seconds. Few,
/// because each bucket is a time series for every label set; placed where handshakes of
/// different kinds fall apart:
/// - 100 µs: the same host (loopback, pods on the node: tens of µs);
/// - 1 ms: the same LAN or zone (sub-millisecond);
/// - 10 ms: across zones of a region (a few ms);
/// - 100 ms: the WAN (tens of ms);
/// - 1 s: beyond it a SYN or SYN-ACK was lost: the first retransmission leaves after
///   the 1 s initial RTO;
/// - 3 s: beyond it a second one (1 s + 2 s of exponential backoff; a third on Linux
///   6.5+, whose first SYN retries are 1 s apart).
///
/// The node-level `tcptrace_handshake_duration_seconds` keeps the kernel's 25 log2
/// buckets: it has two label sets, not thousands.
pub const HANDSHAKE_LE_NS: [u64; 6] = [
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    3_000_000_000,
];

/// Exposed series of one handshake histogram label set: buckets, +Inf, _sum, _count.
pub const HISTOGRAM_SERIES: usize = HANDSHAKE_LE_NS.len() + 3;

/// Exposed series of the families' `other` label sets, reserved in the budget: the
/// counters and the histogram. `--max-series` can be no smaller.
pub const OTHER_SERIES: usize = BUDGET_FAMILIES.len() - 1 + HISTOGRAM_SERIES;

/// The families the budget covers, as their sample lines begin.
pub const BUDGET_FAMILIES: [&str; 9] = [
    "tcptrace_workload_retransmits_total",
    "tcptrace_workload_connect_failures_total",
    "tcptrace_workload_resets_total",
    "tcptrace_workload_handshake_duration_seconds",
    "tcptrace_workload_connection_sent_bytes_total",
    "tcptrace_workload_connection_received_bytes_total",
    "tcptrace_workload_drops_total",
    "tcptrace_workload_listen_overflows_total",
    "tcptrace_workload_connection_sent_segments_total",
];

/// `into` of tcptrace_series_folded_total, for each coarser level an update can land
/// in (with `remote`: the address alone, `remote="other"`, then the family's `other`;
/// with `peer`: `peer="other"`, then the family's `other`).
const FOLDED_INTO_REMOTE: [&str; 3] = ["remote_address", "remote_other", "other"];
const FOLDED_INTO_PEER: [&str; 2] = ["peer_other", "other"];
const FOLDED_INTO: [&str; 1] = ["other"];

/// What the per-workload series say of the other end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RemoteLabel {
    /// Nothing.
    #[default]
    Off,
    /// `remote`: `ip:port`, ephemeral ports as `ip:ephemeral`.
    Endpoint,
    /// `peer`: who holds the address (`pod:NS/NAME`, `service:NS/NAME`, `node:NAME`, a
    /// named range, `unresolved`, `loopback`, `external`; see `k8s::peers`).
    Peer(crate::k8s::peers::Ranges),
}

impl RemoteLabel {
    /// The label's name, if the series have one.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            RemoteLabel::Off => None,
            RemoteLabel::Endpoint => Some("remote"),
            RemoteLabel::Peer(_) => Some("peer"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelOptions {
    /// The other end's label, if any.
    pub remote: RemoteLabel,
    /// Exposed time series of the per-workload families, `other` series included.
    pub max_series: usize,
    pub ttl: Duration,
    pub names: pod_names::NameSource,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Kind {
    Retransmits,
    Handshakes,
    ConnectFailures,
    Resets,
    /// Bytes of closed connections (close events), sent and received.
    SentBytes,
    ReceivedBytes,
    Drops,
    /// By listener (`address:port`), the owner being the listener's.
    ListenOverflows,
    /// Data segments closed connections sent, retransmits included (close events).
    SentSegments,
}

impl Kind {
    /// Exposed series of one label set.
    fn cost(self) -> usize {
        match self {
            Kind::Handshakes => HISTOGRAM_SERIES,
            _ => 1,
        }
    }
}

const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    kind: Kind,
    namespace: String,
    pod: String,
    container: String,
    workload: String,
    remote: String,
    /// The family's own label: retransmit kind, handshake side, failure reason, reset
    /// direction, drop reason, listener.
    detail: Cow<'static, str>,
}

#[derive(Default)]
struct Value {
    /// Counters: what was added (segments for retransmits). Histograms: observations.
    count: u64,
    /// Histograms: observations per bucket of `HANDSHAKE_LE_NS`, not cumulative (those
    /// above the last bound are only in `count`).
    buckets: [u64; HANDSHAKE_LE_NS.len()],
    sum_ns: u64,
}

impl Value {
    fn observe(&mut self, duration_ns: u64) {
        self.count += 1;
        self.sum_ns += duration_ns;
        if let Some(b) = HANDSHAKE_LE_NS.iter().position(|le| duration_ns <= *le) {
            self.buckets[b] += 1;
        }
    }

    fn histogram<'a>(&self, labels: Vec<&'a str>) -> HistogramSeries<'a> {
        let mut cumulative = 0;
        let buckets = HANDSHAKE_LE_NS
            .iter()
            .zip(self.buckets)
            .map(|(le, n)| {
                cumulative += n;
                (*le as f64 / 1e9, cumulative)
            })
            .collect();
        HistogramSeries {
            labels,
            buckets,
            count: self.count,
            sum: self.sum_ns as f64 / 1e9,
        }
    }
}

pub struct WorkloadMetrics {
    opts: LabelOptions,
    labeler: Labeler,
    budget: Budget<Key, Value>,
    /// What landed in a coarser series than its own, by level (see `folded_into`):
    /// events, segments for retransmits.
    folded: Vec<u64>,
    expired_at: Instant,
}

impl WorkloadMetrics {
    /// Series named from `names` and, with `peer`, `book` (filled by the name source,
    /// see `pod_names` and `peer_watch`).
    pub fn new(
        opts: LabelOptions,
        names: pod_names::Shared,
        book: crate::k8s::peers::SharedBook,
    ) -> WorkloadMetrics {
        let peers = match &opts.remote {
            RemoteLabel::Peer(ranges) => Some(crate::k8s::peers::PeerNames {
                book,
                ranges: ranges.clone(),
            }),
            _ => None,
        };
        WorkloadMetrics {
            budget: Budget::new(opts.max_series, OTHER_SERIES, opts.ttl),
            folded: vec![0; folded_into(&opts.remote).len()],
            labeler: Labeler::new(names, peers),
            opts,
            expired_at: Instant::now(),
        }
    }

    /// A new drain of the ring buffer begins (cgroups may have appeared since the last).
    pub fn new_batch(&mut self) {
        self.labeler.new_batch();
    }

    /// The event kinds `record` counts; the kernel sends `run` no others.
    pub const KINDS_READ: [EventKind; 6] = [
        EventKind::Retransmit,
        EventKind::Handshake,
        EventKind::Reset,
        EventKind::Close,
        EventKind::Drop,
        EventKind::ListenOverflow,
    ];

    /// Count one event from the ring buffer.
    pub fn record(&mut self, e: &TcpEvent) {
        match &e.what {
            What::Close(c) => {
                self.add(Kind::SentBytes, "".into(), e, c.bytes_sent);
                self.add(Kind::ReceivedBytes, "".into(), e, c.bytes_received);
                // None where the kernel's offset is unknown: no series spent on zeros.
                if c.segs_out > 0 {
                    self.add(Kind::SentSegments, "".into(), e, c.segs_out.into());
                }
            }
            _ => {
                if let Some((kind, detail)) = classify(e) {
                    let added = match e.what {
                        What::Retransmit { segments, .. } => {
                            u64::from(segments.unwrap_or(1).max(1))
                        }
                        _ => 1,
                    };
                    self.add(kind, detail, e, added);
                }
            }
        }
    }

    /// Add `added` (or an observation, for handshakes) to the event's series of `kind`.
    fn add(&mut self, kind: Kind, detail: Cow<'static, str>, e: &TcpEvent, added: u64) {
        let choices = self.choices(kind, detail, e);
        let remote = self.opts.remote.name().is_some();
        let now = Instant::now();
        let other = || other_key(kind, remote);
        let (landing, v) = self.budget.entry(choices, other, kind.cost(), now);
        match e.what {
            What::Handshake { duration_ns, .. } if kind == Kind::Handshakes => {
                v.observe(duration_ns)
            }
            _ => v.count += added,
        }
        // Choice 0 is the event's own label set; every later level is a fold.
        let level = match landing {
            Landing::Choice(0) => None,
            Landing::Choice(i) => Some(i - 1),
            Landing::Other => Some(self.folded.len() - 1),
        };
        if let Some(level) = level {
            self.folded[level] += added;
        }
        if now.duration_since(self.expired_at) > Duration::from_secs(10) {
            self.budget.expire(now);
            self.expired_at = now;
        }
    }

    /// The event's label set, then (with `remote`) the coarser ones it may fall back to:
    /// the remote address alone, then `remote="other"`; (with `peer`) `peer="other"`.
    fn choices(
        &mut self,
        kind: Kind,
        detail: Cow<'static, str>,
        e: &TcpEvent,
    ) -> impl ExactSizeIterator<Item = Key> {
        let owner = self.labeler.owner(e);
        let key = Key {
            kind,
            namespace: owner.namespace,
            pod: owner.pod,
            container: owner.container,
            workload: owner.workload,
            remote: String::new(),
            detail,
        };
        let ip = e.remote.ip();
        let remotes = match self.opts.remote {
            RemoteLabel::Off => vec![String::new()],
            RemoteLabel::Endpoint => vec![
                self.labeler.endpoint(ip, e.remote.port()),
                ip.to_string(),
                OTHER.to_string(),
            ],
            RemoteLabel::Peer(_) => vec![self.labeler.peer(ip), OTHER.to_string()],
        };
        remotes.into_iter().map(move |remote| Key {
            remote,
            ..key.clone()
        })
    }

    pub fn families(&self) -> Vec<Family> {
        let mut names = vec!["namespace", "pod", "container", "workload"];
        names.extend(self.opts.remote.name());
        let remote = self.opts.remote.name().is_some();
        let series = |kind: Kind| self.budget.iter().filter(move |(k, _)| k.kind == kind);
        let labels = |k: &Key| {
            let mut v = vec![
                k.namespace.clone(),
                k.pod.clone(),
                k.container.clone(),
                k.workload.clone(),
            ];
            if remote {
                v.push(k.remote.clone());
            }
            if !k.detail.is_empty() {
                v.push(k.detail.to_string());
            }
            v
        };
        let scalar = |kind: Kind| -> Vec<(Vec<String>, f64)> {
            series(kind)
                .map(|(k, v)| (labels(k), v.count as f64))
                .collect()
        };
        let retransmits = scalar(Kind::Retransmits);
        let failures = scalar(Kind::ConnectFailures);
        let resets = scalar(Kind::Resets);
        let sent = scalar(Kind::SentBytes);
        let received = scalar(Kind::ReceivedBytes);
        let drops = scalar(Kind::Drops);
        let overflows = scalar(Kind::ListenOverflows);
        let segments = scalar(Kind::SentSegments);
        let handshakes: Vec<(Vec<String>, &Value)> = series(Kind::Handshakes)
            .map(|(k, v)| (labels(k), v))
            .collect();
        let with = |extra: &'static str| -> Vec<&'static str> {
            let mut n = names.clone();
            n.push(extra);
            n
        };
        fn as_refs(rows: &[(Vec<String>, f64)]) -> Vec<(Vec<&str>, f64)> {
            rows.iter()
                .map(|(l, v)| (l.iter().map(String::as_str).collect(), *v))
                .collect()
        }
        let into = folded_into(&self.opts.remote);
        let mut families = vec![
            counter(
                BUDGET_FAMILIES[0],
                "Retransmitted segments by workload (from events; see METRICS.md).",
                &with("kind"),
                as_refs(&retransmits),
            ),
            counter(
                BUDGET_FAMILIES[1],
                "Failed client handshakes by workload and reason (from events).",
                &with("reason"),
                as_refs(&failures),
            ),
            counter(
                BUDGET_FAMILIES[2],
                "RSTs sent and received on tracked sockets by workload (from events).",
                &with("direction"),
                as_refs(&resets),
            ),
            histogram(
                BUDGET_FAMILIES[3],
                "Completed handshakes by workload and side (from events).",
                &with("side"),
                handshakes
                    .iter()
                    .map(|(l, v)| v.histogram(l.iter().map(String::as_str).collect()))
                    .collect(),
            ),
            counter(
                BUDGET_FAMILIES[4],
                "Bytes closed connections sent (acknowledged by the peer) by workload (from close events).",
                &names,
                as_refs(&sent),
            ),
            counter(
                BUDGET_FAMILIES[5],
                "Bytes closed connections received by workload (from close events).",
                &names,
                as_refs(&received),
            ),
            counter(
                BUDGET_FAMILIES[6],
                "TCP packets dropped on the workload's sockets, by the kernel's reason (from drop events).",
                &with("reason"),
                as_refs(&drops),
            ),
            counter(
                BUDGET_FAMILIES[7],
                "Connections a full accept queue turned away, by the listener (address:port) and its workload (from overflow events).",
                &with("listener"),
                as_refs(&overflows),
            ),
            counter(
                BUDGET_FAMILIES[8],
                "Data segments closed connections sent, retransmitted ones included (tcp_sock.data_segs_out), by workload (from close events).",
                &names,
                as_refs(&segments),
            ),
            gauge(
                "tcptrace_workload_series",
                "Time series the per-workload families expose now, `other` series included (at most --max-series).",
                &[],
                vec![(vec![], self.budget.exposed() as f64)],
            ),
            counter(
                "tcptrace_series_folded_total",
                "Events (segments for retransmits) counted in a coarser series than their own to keep within --max-series: into remote_address (remote without its port), remote_other (remote=\"other\", the workload kept), peer_other (peer=\"other\", the workload kept) or other (the family's `other` series).",
                &["into"],
                into.iter()
                    .zip(&self.folded)
                    .map(|(into, n)| (vec![*into], *n as f64))
                    .collect(),
            ),
        ];
        families.extend(self.labeler.peer_families());
        families
    }
}

/// The widest remote a series can have: a full IPv6 address with an ephemeral port.
const WIDEST_REMOTE: &str = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:ephemeral";

impl WorkloadMetrics {
    /// One label set of each family with every label as long as it can be (the
    /// longest value of each family's own label), and the agent's gauges: what
    /// `worst_case` measures lines against.
    pub fn widest_families(remote: RemoteLabel) -> Vec<Family> {
        let longest = "x".repeat(MAX_LABEL_BYTES);
        let remote_value = match remote {
            RemoteLabel::Off => String::new(),
            RemoteLabel::Endpoint => WIDEST_REMOTE.into(),
            RemoteLabel::Peer(_) => longest.clone(),
        };
        let opts = LabelOptions {
            remote,
            max_series: 1_000_000,
            ttl: Duration::from_secs(600),
            names: pod_names::NameSource::default(),
        };
        let mut w = WorkloadMetrics::new(opts, Default::default(), Default::default());
        let remote = w.opts.remote.name().is_some();
        let details: [(Kind, Cow<'static, str>); 9] = [
            (Kind::Retransmits, "unknown".into()),
            (Kind::Handshakes, "unknown".into()),
            (Kind::ConnectFailures, "unreachable".into()),
            (Kind::Resets, "received".into()),
            (Kind::SentBytes, "".into()),
            (Kind::ReceivedBytes, "".into()),
            (Kind::Drops, "X".repeat(REASON_LABEL_MAX).into()),
            (Kind::ListenOverflows, WIDEST_REMOTE.into()),
            (Kind::SentSegments, "".into()),
        ];
        for (kind, detail) in details {
            let key = Key {
                kind,
                namespace: longest.clone(),
                pod: longest.clone(),
                container: longest.clone(),
                workload: longest.clone(),
                remote: remote_value.clone(),
                detail,
            };
            let other = || other_key(kind, remote);
            w.budget
                .entry([key].into_iter(), other, kind.cost(), Instant::now());
        }
        w.families()
    }
}

/// The family's `other` label set: every label `other`.
fn other_key(kind: Kind, remote: bool) -> Key {
    Key {
        kind,
        namespace: OTHER.into(),
        pod: OTHER.into(),
        container: OTHER.into(),
        workload: OTHER.into(),
        remote: if remote { OTHER.into() } else { String::new() },
        detail: if matches!(
            kind,
            Kind::SentBytes | Kind::ReceivedBytes | Kind::SentSegments
        ) {
            "".into()
        } else {
            OTHER.into()
        },
    }
}

/// The family an event counts in, and its own label there (retransmit kind, handshake
/// side, failure reason, reset direction, drop reason, listener); `None` for events no
/// family counts (closes count twice, see `record`).
fn classify(e: &TcpEvent) -> Option<(Kind, Cow<'static, str>)> {
    Some(match &e.what {
        What::Retransmit { kind, .. } => (Kind::Retransmits, kind.name().into()),
        What::Handshake {
            side,
            failure: None,
            ..
        } => (Kind::Handshakes, side.name().into()),
        What::Handshake {
            side: tcptrace_common::HandshakeSide::Client,
            failure: Some(f),
            ..
        } => (Kind::ConnectFailures, f.reason.name().into()),
        What::Reset { direction, .. } => (Kind::Resets, direction.name().into()),
        // A drop on a socket of a workload; drops before any socket are node-level only.
        What::Drop {
            reason,
            state: Some(_),
        } => (Kind::Drops, reason_label(*reason).into()),
        What::ListenOverflow { .. } => (Kind::ListenOverflows, e.local.to_string().into()),
        _ => return None,
    })
}

/// The levels an update can be folded into, coarsest last.
fn folded_into(remote: &RemoteLabel) -> &'static [&'static str] {
    match remote {
        RemoteLabel::Off => &FOLDED_INTO,
        RemoteLabel::Endpoint => &FOLDED_INTO_REMOTE,
        RemoteLabel::Peer(_) => &FOLDED_INTO_PEER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Failure, FailureReason};
    use crate::exporter::exposition;
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use tcptrace_common::HandshakeSide;

    fn metrics(remote: bool, max_series: usize) -> WorkloadMetrics {
        let opts = LabelOptions {
            remote: if remote {
                RemoteLabel::Endpoint
            } else {
                RemoteLabel::Off
            },
            max_series,
            ttl: Duration::from_secs(600),
            names: Default::default(),
        };
        WorkloadMetrics::new(opts, Default::default(), Default::default())
    }

    /// A handshake with `ip:port` (the peer) that took `ns`, or a refused connect when
    /// `ns` is `None`. No owner: every event has the same workload labels.
    fn handshake(side: HandshakeSide, ip: [u8; 4], port: u16, ns: Option<u64>) -> TcpEvent {
        let unspecified = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        let failure = ns.is_none().then_some(Failure {
            reason: FailureReason::Refused,
            errno: Some(libc::ECONNREFUSED),
        });
        TcpEvent {
            ts_ns: 0,
            skaddr: 0,
            local: unspecified,
            remote: SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            netns: None,
            owner: None,
            what: What::Handshake {
                side,
                duration_ns: ns.unwrap_or(0),
                failure,
            },
        }
    }

    fn client(ip: [u8; 4], port: u16, ns: Option<u64>) -> TcpEvent {
        handshake(HandshakeSide::Client, ip, port, ns)
    }

    /// The exposition's samples: series -> value.
    fn scrape(w: &WorkloadMetrics) -> HashMap<String, f64> {
        exposition::encode(w.families())
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, v) = l.rsplit_once(' ')?;
                Some((series.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    fn in_budget(series: &str) -> bool {
        BUDGET_FAMILIES.iter().any(|f| series.starts_with(f))
    }

    /// The value of label `name` in an exposed series.
    fn label<'a>(series: &'a str, name: &str) -> &'a str {
        let start = format!("{name}=\"");
        series
            .split_once(&start)
            .and_then(|(_, rest)| rest.split('"').next())
            .unwrap_or_default()
    }

    fn sum(m: &HashMap<String, f64>, pick: impl Fn(&str) -> bool) -> f64 {
        m.iter().filter(|(k, _)| pick(k)).map(|(_, v)| v).sum()
    }

    /// 300 peers: to each, one handshake and one refused connect on each of two ports,
    /// and one accepted connection (from an ephemeral port): 900 histogram label sets
    /// (8,100 series) and 600 counter ones asked for.
    fn many_peers(w: &mut WorkloadMetrics) {
        for peer in 0..300u16 {
            let ip = [10, 1, (peer >> 8) as u8, peer as u8];
            for port in [80, 443] {
                w.record(&client(ip, port, Some(50_000)));
                w.record(&client(ip, port, None));
            }
            w.record(&handshake(HandshakeSide::Server, ip, 40000, Some(20_000)));
        }
    }

    #[test]
    fn exposed_series_stay_within_the_budget_and_the_gauge_counts_them() {
        for remote in [false, true] {
            let mut w = metrics(remote, 200);
            many_peers(&mut w);
            let m = scrape(&w);
            let exposed = m.keys().filter(|k| in_budget(k)).count();
            assert!(exposed <= 200, "{exposed} series exposed, remote {remote}");
            assert_eq!(m["tcptrace_workload_series"], exposed as f64);
        }
    }

    #[test]
    fn nothing_is_lost_and_every_fold_is_counted_where_it_landed() {
        // 28 series of room: shares of 9, 18 and 28, enough for one histogram label set
        // at each of the first two levels, and for the client's at `remote="other"`,
        // not the server's: every level is used.
        let mut w = metrics(true, OTHER_SERIES + 28);
        many_peers(&mut w);
        let m = scrape(&w);
        // Events: handshakes count in _count, refusals in the counter.
        let events = |level: Option<&str>| {
            sum(&m, |k| {
                let counted = k.starts_with("tcptrace_workload_handshake_duration_seconds_count{")
                    || k.starts_with("tcptrace_workload_connect_failures_total{");
                counted && level.is_none_or(|l| fold_level(k) == l)
            })
        };
        assert_eq!(events(None), 1500.0, "the sum over the families' series");
        // Each level holds exactly what the folded counter says went there.
        for into in FOLDED_INTO_REMOTE {
            let folded = m[&format!("tcptrace_series_folded_total{{into=\"{into}\"}}")];
            assert_eq!(folded, events(Some(into)), "into {into}");
            assert!(folded > 0.0, "nothing went {into}: {m:?}");
        }
    }

    /// Which level a series of `remote` is: `own`, or the `into` of a fold.
    fn fold_level(series: &str) -> &'static str {
        match (label(series, "namespace"), label(series, "remote")) {
            ("other", _) => "other",
            (_, "other") => "remote_other",
            (_, remote) if remote.parse::<IpAddr>().is_ok() => "remote_address",
            _ => "own",
        }
    }

    #[test]
    fn a_peer_beyond_the_first_share_is_counted_by_address() {
        let mut w = metrics(true, OTHER_SERIES + 42);
        // 42 series of room besides the `other` ones, three levels of 14: port 1..=14 of one address take the
        // first share, port 15 goes to the address alone, as does port 16.
        for port in 1..=16 {
            w.record(&client([10, 0, 0, 1], port, None));
        }
        let m = scrape(&w);
        let by_address = "tcptrace_workload_connect_failures_total{namespace=\"\",pod=\"\",container=\"unknown\",workload=\"\",remote=\"10.0.0.1\",reason=\"refused\"}";
        assert_eq!(m.get(by_address), Some(&2.0), "{m:?}");
        assert_eq!(
            m["tcptrace_series_folded_total{into=\"remote_address\"}"],
            2.0
        );
    }

    #[test]
    fn closes_drops_and_overflows_count_by_workload() {
        let mut w = metrics(false, 100);
        let mut e = client([10, 0, 0, 1], 80, Some(1));
        e.local = "10.0.0.2:8080".parse().unwrap();
        let what = |what: What| TcpEvent { what, ..e.clone() };
        w.record(&what(What::Close(crate::event::Close {
            from: tcptrace_common::TcpState::LastAck as u8,
            lifetime_ns: None,
            bytes_sent: 1001,
            bytes_received: 42,
            segs_out: 7,
            retransmitted: 0,
            rtt_us: None,
            closed_by: tcptrace_common::event::ClosedBy::Remote,
        })));
        let established = Some(tcptrace_common::TcpState::Established as u8);
        w.record(&what(What::Drop {
            reason: 7,
            state: established,
        }));
        // No socket had it: node-level only.
        w.record(&what(What::Drop {
            reason: 7,
            state: None,
        }));
        for _ in 0..3 {
            w.record(&what(What::ListenOverflow {
                at: tcptrace_common::event::OverflowAt::Syn,
            }));
        }
        let m = scrape(&w);
        let labels = "namespace=\"\",pod=\"\",container=\"unknown\",workload=\"\"";
        let get = |series: String| m.get(&series).copied();
        assert_eq!(
            get(format!(
                "tcptrace_workload_connection_sent_bytes_total{{{labels}}}"
            )),
            Some(1001.0)
        );
        assert_eq!(
            get(format!(
                "tcptrace_workload_connection_received_bytes_total{{{labels}}}"
            )),
            Some(42.0)
        );
        assert_eq!(
            get(format!(
                "tcptrace_workload_connection_sent_segments_total{{{labels}}}"
            )),
            Some(7.0)
        );
        assert_eq!(
            get(format!(
                "tcptrace_workload_drops_total{{{labels},reason=\"reason_7\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            get(format!(
                "tcptrace_workload_listen_overflows_total{{{labels},listener=\"10.0.0.2:8080\"}}"
            )),
            Some(3.0)
        );
    }

    #[test]
    fn handshake_buckets_are_few_cumulative_and_agree_with_count_and_sum() {
        let mut w = metrics(false, 100);
        let took_ns = [
            30_000,        // loopback
            100_000,       // exactly on a bound: counted in it (le is <=)
            400_000,       // LAN
            5_000_000,     // region
            40_000_000,    // WAN
            1_020_000_000, // one SYN retransmitted
            3_100_000_000, // two
        ];
        for ns in took_ns {
            w.record(&client([10, 0, 0, 1], 80, Some(ns)));
        }
        let m = scrape(&w);
        let labels = "namespace=\"\",pod=\"\",container=\"unknown\",workload=\"\",side=\"client\"";
        let bucket = |le: &str| {
            m[&format!(
                "tcptrace_workload_handshake_duration_seconds_bucket{{{labels},le=\"{le}\"}}"
            )]
        };
        let expected = [
            ("0.0001", 2.0),
            ("0.001", 3.0),
            ("0.01", 4.0),
            ("0.1", 5.0),
            ("1", 5.0),
            ("3", 6.0),
            ("+Inf", 7.0),
        ];
        for (le, n) in expected {
            assert_eq!(bucket(le), n, "le {le}");
        }
        let buckets = m
            .keys()
            .filter(|k| k.starts_with("tcptrace_workload_handshake_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, HANDSHAKE_LE_NS.len() + 1);
        let count = m[&format!("tcptrace_workload_handshake_duration_seconds_count{{{labels}}}")];
        assert_eq!(count, 7.0);
        let sum = m[&format!("tcptrace_workload_handshake_duration_seconds_sum{{{labels}}}")];
        let expected_sum = took_ns.iter().sum::<u64>() as f64 / 1e9;
        assert!((sum - expected_sum).abs() < 1e-9, "{sum} != {expected_sum}");
    }
}
