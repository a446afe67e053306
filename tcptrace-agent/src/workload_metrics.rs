//! Per-workload series (`run --labels workload[,remote]`): retransmits, handshake
//! latency, connect failures and resets by Kubernetes namespace/pod/container (or container id, or host
//! process), optionally by remote endpoint, aggregated from the event stream under a
//! series budget. The kernel's lossless counters stay unlabelled; these follow the ring
//! buffer, so a full ring (counted in tcptrace_ringbuf_events_lost_total) undercounts them.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tcptrace_common::{
    counters::{handshake_bucket, HANDSHAKE_BUCKETS},
    event::{FLAG_OWNER_UNKNOWN, OUTCOME_ESTABLISHED},
    Event, EventKind, HandshakeSide, RetransmitKind,
};

use crate::{
    events,
    exposition::{counter, gauge, histogram, Family},
    kernel_counters::Histogram,
    metrics::handshake_series,
    pod_names,
    series_budget::Budget,
    workload::CgroupIndex,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelOptions {
    /// Add the remote endpoint (`ip:port`, ephemeral ports as `ip:ephemeral`).
    pub remote: bool,
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
}

const KINDS: usize = 4;
const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    kind: Kind,
    namespace: String,
    pod: String,
    container: String,
    workload: String,
    remote: String,
    /// The family's own label: retransmit kind, handshake side, failure reason.
    detail: &'static str,
}

#[derive(Default)]
struct Value {
    /// Counters: updates (segments for retransmits).
    count: u64,
    /// Handshake latency, in the kernel histogram's log2 buckets.
    latency: Histogram,
}

pub struct WorkloadMetrics {
    opts: LabelOptions,
    cgroups: CgroupIndex,
    names: pod_names::Shared,
    budget: Budget<Key, Value>,
    ephemeral: (u16, u16),
    expired_at: Instant,
}

impl WorkloadMetrics {
    /// Series named from `names` (filled by the name source, see `pod_names`).
    pub fn new(opts: LabelOptions, names: pod_names::Shared) -> WorkloadMetrics {
        let ephemeral = crate::sysctl::TcpSysctls::read()
            .map(|s| s.local_port_range)
            .unwrap_or((32768, 60999));
        WorkloadMetrics {
            budget: Budget::new(opts.max_series, KINDS, opts.ttl),
            opts,
            cgroups: CgroupIndex::new(),
            names,
            ephemeral,
            expired_at: Instant::now(),
        }
    }

    /// A new drain of the ring buffer begins (cgroups may have appeared since the last).
    pub fn new_batch(&mut self) {
        self.cgroups.new_batch();
    }

    /// The event kinds `record` counts; the kernel sends `run` no others.
    pub const KINDS_READ: [EventKind; 3] = [
        EventKind::Retransmit,
        EventKind::Handshake,
        EventKind::Reset,
    ];

    /// Count one event from the ring buffer.
    pub fn record(&mut self, e: &Event) {
        let (kind, detail) = match EventKind::from_u8(e.kind) {
            Some(EventKind::Retransmit) => (
                Kind::Retransmits,
                RetransmitKind::from_u8(e.detail).map_or("unknown", RetransmitKind::name),
            ),
            Some(EventKind::Handshake) if e.outcome == OUTCOME_ESTABLISHED => (
                Kind::Handshakes,
                HandshakeSide::from_u8(e.detail).map_or("unknown", HandshakeSide::name),
            ),
            Some(EventKind::Handshake) if e.detail == HandshakeSide::Client as u8 => {
                (Kind::ConnectFailures, events::failure_reason(e))
            }
            Some(EventKind::Reset) => (Kind::Resets, crate::output::reset_direction(e.detail)),
            _ => return,
        };
        let key = self.key(kind, detail, e);
        let other = Key {
            kind,
            namespace: OTHER.into(),
            pod: OTHER.into(),
            container: OTHER.into(),
            workload: OTHER.into(),
            remote: if self.opts.remote {
                OTHER.into()
            } else {
                String::new()
            },
            detail: OTHER,
        };
        let now = Instant::now();
        let v = self.budget.entry(key, other, now);
        match kind {
            Kind::Retransmits => v.count += u64::from(e.segs.max(1)),
            Kind::ConnectFailures | Kind::Resets => v.count += 1,
            Kind::Handshakes => {
                let h = &mut v.latency;
                h.buckets.resize(HANDSHAKE_BUCKETS as usize, 0);
                h.buckets[handshake_bucket(e.duration_ns) as usize] += 1;
                h.sum_ns += e.duration_ns;
            }
        }
        if now.duration_since(self.expired_at) > Duration::from_secs(10) {
            self.budget.expire(now, |k| k.namespace == OTHER);
            self.expired_at = now;
        }
    }

    fn key(&mut self, kind: Kind, detail: &'static str, e: &Event) -> Key {
        let (namespace, pod, container, workload) = self.owner_labels(e);
        Key {
            kind,
            namespace,
            pod,
            container,
            workload,
            remote: if self.opts.remote {
                self.remote(e)
            } else {
                String::new()
            },
            detail,
        }
    }

    /// (namespace, pod, container, workload): names where the kubelet gave them, the
    /// pod UID and `runtime:id` otherwise, `host/<unit or command>` outside containers,
    /// `unresolved` for a cgroup that no longer exists, `unknown` without an owner.
    fn owner_labels(&mut self, e: &Event) -> (String, String, String, String) {
        if e.flags & FLAG_OWNER_UNKNOWN != 0 || e.cgroup_id == 0 {
            return (
                String::new(),
                String::new(),
                "unknown".into(),
                String::new(),
            );
        }
        let Some(w) = self.cgroups.lookup(e.cgroup_id) else {
            // The cgroup is gone (or beyond the index): say so rather than guess.
            return (
                String::new(),
                String::new(),
                "unresolved".into(),
                String::new(),
            );
        };
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        let container = match (&w.container_id, w.runtime) {
            (Some(id), runtime) => names.containers.get(id).cloned().unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    runtime.unwrap_or("container"),
                    &id[..id.len().min(12)]
                )
            }),
            (None, _) => format!(
                "host/{}",
                w.unit.clone().unwrap_or_else(|| events::comm(&e.comm))
            ),
        };
        match &w.pod_uid {
            Some(uid) => match names.pods.get(uid) {
                Some(p) => (
                    p.namespace.clone(),
                    p.name.clone(),
                    container,
                    p.workload.clone(),
                ),
                None => (String::new(), uid.clone(), container, String::new()),
            },
            None => (String::new(), String::new(), container, String::new()),
        }
    }

    fn remote(&self, e: &Event) -> String {
        let ip = events::ip(e.family, &e.daddr);
        if (self.ephemeral.0..=self.ephemeral.1).contains(&e.dport) {
            match ip {
                std::net::IpAddr::V6(a) => format!("[{a}]:ephemeral"),
                a => format!("{a}:ephemeral"),
            }
        } else {
            SocketAddr::new(ip, e.dport).to_string()
        }
    }

    pub fn families(&self) -> Vec<Family> {
        let mut names = vec!["namespace", "pod", "container", "workload"];
        if self.opts.remote {
            names.push("remote");
        }
        let series = |kind: Kind| self.budget.iter().filter(move |(k, _)| k.kind == kind);
        let labels = |k: &Key| {
            let mut v = vec![
                k.namespace.clone(),
                k.pod.clone(),
                k.container.clone(),
                k.workload.clone(),
            ];
            if self.opts.remote {
                v.push(k.remote.clone());
            }
            v.push(k.detail.to_string());
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
        vec![
            counter(
                "tcptrace_workload_retransmits_total",
                "Retransmitted segments by workload (from events; see METRICS.md).",
                &with("kind"),
                as_refs(&retransmits),
            ),
            counter(
                "tcptrace_workload_connect_failures_total",
                "Failed client handshakes by workload and reason (from events).",
                &with("reason"),
                as_refs(&failures),
            ),
            counter(
                "tcptrace_workload_resets_total",
                "RSTs sent and received on tracked sockets by workload (from events).",
                &with("direction"),
                as_refs(&resets),
            ),
            histogram(
                "tcptrace_workload_handshake_duration_seconds",
                "Completed handshakes by workload and side (from events).",
                &with("side"),
                handshakes
                    .iter()
                    .map(|(l, v)| handshake_series(l.iter().map(String::as_str).collect(), &v.latency))
                    .collect(),
            ),
            gauge(
                "tcptrace_workload_series",
                "Labelled workload series alive now (at most --max-series).",
                &[],
                vec![(vec![], self.budget.len() as f64)],
            ),
            counter(
                "tcptrace_series_folded_total",
                "Updates of a new label set beyond --max-series, counted in the family's `other` series instead.",
                &[],
                vec![(vec![], self.budget.folded as f64)],
            ),
        ]
    }
}
