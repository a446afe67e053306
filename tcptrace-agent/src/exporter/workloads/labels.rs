//! How a socket becomes label values: its owner's cgroup becomes namespace, pod,
//! container and workload (names from the kubelet or the API server where known), its
//! peer becomes `remote` (ephemeral ports folded) or `peer` (who holds the address), and
//! every value is capped in length.
use std::net::{IpAddr, SocketAddr};

use crate::{
    event::TcpEvent,
    exporter::exposition::{counter, gauge, Family},
    k8s::{
        cgroup::CgroupIndex,
        peers::{Holder, PeerNames},
        pod_names,
    },
};

/// Label values (namespace, pod, container, workload) are cut to this many bytes as
/// exposed, escapes included: the longest Kubernetes name (a DNS subdomain) fits whole,
/// and a line of /metrics has a bound (see `worst_case`). Longer values can only come
/// from outside Kubernetes (a systemd unit, a custom controller kind).
pub const MAX_LABEL_BYTES: usize = 253;

/// The owner's labels, each capped to `MAX_LABEL_BYTES`.
pub struct OwnerLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub workload: String,
}

impl OwnerLabels {
    /// Only the container label set (`unknown`, `unresolved`, `host/...`).
    fn container(container: String) -> OwnerLabels {
        OwnerLabels {
            namespace: String::new(),
            pod: String::new(),
            container,
            workload: String::new(),
        }
    }

    fn capped(self) -> OwnerLabels {
        OwnerLabels {
            namespace: capped(self.namespace),
            pod: capped(self.pod),
            container: capped(self.container),
            workload: capped(self.workload),
        }
    }
}

pub struct Labeler {
    cgroups: CgroupIndex,
    names: pod_names::Shared,
    /// With `peer`: the cluster's addresses and the configured ranges.
    peers: Option<PeerNames>,
    /// The local ephemeral port range (net.ipv4.ip_local_port_range).
    ephemeral: (u16, u16),
}

impl Labeler {
    pub fn new(names: pod_names::Shared, peers: Option<PeerNames>) -> Labeler {
        let ephemeral = crate::doctor::sysctl::TcpSysctls::read()
            .map(|s| s.local_port_range)
            .unwrap_or((32768, 60999));
        Labeler {
            cgroups: CgroupIndex::new(),
            names,
            peers,
            ephemeral,
        }
    }

    /// A new drain of the ring buffer begins (cgroups may have appeared since the last).
    pub fn new_batch(&mut self) {
        self.cgroups.new_batch();
    }

    /// Names where the kubelet gave them, the pod UID and `runtime:id` otherwise,
    /// `host/<unit or command>` outside containers, `unresolved` for a cgroup that no
    /// longer exists, `unknown` without an owner.
    pub fn owner(&mut self, e: &TcpEvent) -> OwnerLabels {
        let Some(owner) = e.owner.as_ref().filter(|o| o.cgroup_id != 0) else {
            return OwnerLabels::container("unknown".into());
        };
        let Some(w) = self.cgroups.lookup(owner.cgroup_id) else {
            // The cgroup is gone (or beyond the index): say so rather than guess.
            return OwnerLabels::container("unresolved".into());
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
                w.unit.clone().unwrap_or_else(|| owner.comm().into_owned())
            ),
        };
        let labels = match w.pod_uid.as_ref().map(|uid| (uid, names.pods.get(uid))) {
            Some((_, Some(p))) => OwnerLabels {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                container,
                workload: p.workload.clone(),
            },
            Some((uid, None)) => OwnerLabels {
                pod: uid.clone(),
                ..OwnerLabels::container(container)
            },
            None => OwnerLabels::container(container),
        };
        labels.capped()
    }

    /// `ip:port`, or `ip:ephemeral` for a port of the local ephemeral range.
    pub fn endpoint(&self, ip: IpAddr, port: u16) -> String {
        if (self.ephemeral.0..=self.ephemeral.1).contains(&port) {
            match ip {
                IpAddr::V6(a) => format!("[{a}]:ephemeral"),
                a => format!("{a}:ephemeral"),
            }
        } else {
            SocketAddr::new(ip, port).to_string()
        }
    }
}

impl Labeler {
    /// Who holds `ip`, as the `peer` label says it (capped like every value).
    pub fn peer(&self, ip: IpAddr) -> String {
        match &self.peers {
            Some(peers) => capped(peers.label(ip)),
            None => String::new(),
        }
    }

    /// With `peer`: the address book's size by holder, and what it refused.
    pub fn peer_families(&self) -> Vec<Family> {
        let Some(peers) = &self.peers else {
            return Vec::new();
        };
        let book = peers.book.read().unwrap_or_else(|p| p.into_inner());
        vec![
            gauge(
                "tcptrace_peer_addresses",
                "Cluster addresses the peer label knows, by what holds them (from the API server's pods and services).",
                &["holder"],
                Holder::ALL
                    .iter()
                    .map(|h| (vec![h.name()], book.count(*h) as f64))
                    .collect(),
            ),
            counter(
                "tcptrace_peer_addresses_refused_total",
                "Cluster addresses not taken because the address book was full (65,536): they read as unresolved.",
                &[],
                vec![(vec![], book.refused as f64)],
            ),
        ]
    }
}

/// `value` cut (at a character boundary) to `MAX_LABEL_BYTES` as exposed, where `"`,
/// `\\` and a newline take two bytes.
pub fn capped(value: String) -> String {
    let mut exposed = 0;
    for (i, c) in value.char_indices() {
        exposed += match c {
            '"' | '\\' | '\n' => 2,
            c => c.len_utf8(),
        };
        if exposed > MAX_LABEL_BYTES {
            return value[..i].to_string();
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_label_values_are_cut_to_the_exposed_limit() {
        let long = "p".repeat(300);
        assert_eq!(capped(long).len(), MAX_LABEL_BYTES);
        let quotes = "\"".repeat(200);
        assert_eq!(
            capped(quotes).len(),
            MAX_LABEL_BYTES / 2,
            "escaped: 2 bytes each"
        );
        let multibyte = "é".repeat(200); // 2 bytes each: cut at a character boundary
        assert_eq!(capped(multibyte).len(), MAX_LABEL_BYTES - 1);
        assert_eq!(capped("web".into()), "web");
    }
}
