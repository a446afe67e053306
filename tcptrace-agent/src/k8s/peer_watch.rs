//! The cluster's pod and service addresses, from the API server, for the `peer` label:
//! every pod (its `podIPs`, and its node's `hostIPs` as `node:NAME`) and every service
//! (`clusterIPs` and load-balancer ingress IPs), listed then watched by kube's watcher.
//!
//! Cost, measured by tests/peers.rs against a cluster of 10,000 pods and 2,000 services:
//! - on the API server: one list of each resource per agent start, in pages of 500
//!   (12.5 MB for the test's 10,000 pods of 1.2 KB each; served from the watch cache
//!   on Kubernetes 1.31+, consistent reads from cache), then one watch of each per
//!   node, resumed from its last version (bookmarks keep it recent) after a
//!   disconnect, listing again only when the server answers 410 Gone. Every pod change
//!   in the cluster is sent to every node: the price of the watch, against nothing for
//!   the PromQL join of `remote` with kube-state-metrics (METRICS.md).
//! - on the agent: objects are read into types that keep only what the book needs
//!   (names, UID, version, addresses): annotations and managed fields are skipped
//!   while parsing, never held, and one page is in memory at a time. The book is
//!   bounded (`peers::MAX_ADDRESSES`).
//!
//! RBAC: `list` and `watch` on `pods` and `services`, cluster-wide (deploy/tcptrace.yaml).
use std::{borrow::Cow, net::IpAddr, sync::Arc, time::Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    runtime::{watcher, watcher::Event},
    Api,
};
use serde::{Deserialize, Deserializer};

use crate::k8s::{
    api::watch_forever,
    peers::{Held, Holder, ObjectId, SharedBook},
};

/// Start following the cluster's pods and services into `book`, on the running tokio
/// runtime, until the process ends.
pub fn spawn(client: kube::Client, book: SharedBook) {
    tokio::spawn(follow(
        Api::<PodAddresses>::all(client.clone()),
        book.clone(),
    ));
    tokio::spawn(follow(Api::<ServiceAddresses>::all(client), book));
}

/// An object that holds addresses.
trait HoldsAddresses:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + 'static
{
    const HOLDER: Holder;

    /// The object itself, then any other objects it tells about (a pod's node).
    fn held(&self) -> Vec<Held>;

    fn object(&self) -> Option<ObjectId> {
        let uid = self.meta().uid.as_deref().filter(|u| !u.is_empty())?;
        Some(ObjectId {
            holder: Self::HOLDER,
            id: uid.into(),
        })
    }

    fn label(&self) -> Arc<str> {
        let meta = self.meta();
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        // Capped to a label's length where it becomes one (`Labeler::peer`).
        format!("{}:{namespace}/{name}", Self::HOLDER.name()).into()
    }
}

/// One resource's objects into `book`, for ever (`api::watch_forever`).
async fn follow<K: HoldsAddresses>(api: Api<K>, book: SharedBook) {
    // Pages of 500 (kube's default): one page at a time in memory. A list from the
    // watch cache (resourceVersion=0) would come whole, whatever the limit: measured
    // at +21.6 MiB peak for 10,000 pods against +6 MiB in pages (tests/peers.rs).
    let config = watcher::Config::default();
    let mut pending: Vec<Held> = Vec::new();
    let resource = K::plural(&());
    watch_forever(api, config, |event| {
        let now = Instant::now();
        let mut book = book.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Init => pending.clear(),
            Event::InitApply(object) => pending.extend(object.held()),
            Event::InitDone => {
                let (own, others): (Vec<Held>, Vec<Held>) = std::mem::take(&mut pending)
                    .into_iter()
                    .partition(|h| h.object.holder == K::HOLDER);
                log::info!("kubernetes api: {} {resource} in the cluster", own.len());
                book.replace_all(K::HOLDER, own, now);
                others.into_iter().for_each(|h| book.set(h));
            }
            Event::Apply(object) => {
                for held in object.held() {
                    if held.addresses.is_empty() {
                        book.retire(&held.object, now);
                    } else {
                        book.set(held);
                    }
                }
                book.purge(now);
            }
            Event::Delete(object) => {
                if let Some(gone) = object.object() {
                    book.retire(&gone, now);
                }
                book.purge(now);
            }
        }
    })
    .await;
}

/// Of an object's metadata, what the book needs; the rest (labels, annotations, managed
/// fields: most of an object's bytes) is skipped by the parser.
fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
    }
    let m = Slim::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Ip {
    ip: Option<String>,
}

/// The addresses a list of `{ip: ...}` gives, unparsable ones skipped.
fn addresses<'a>(ips: impl IntoIterator<Item = &'a Ip>) -> Vec<IpAddr> {
    ips.into_iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// A v1 Pod, as far as its addresses go.
#[derive(Clone, Debug, Deserialize)]
pub struct PodAddresses {
    #[serde(default, deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<Ip>,
    #[serde(default, rename = "hostIPs")]
    host_ips: Vec<Ip>,
    phase: Option<String>,
}

impl HoldsAddresses for PodAddresses {
    const HOLDER: Holder = Holder::Pod;

    /// The pod's own addresses, none for a host-network pod (they are its node's) or a
    /// finished one (they are free again); and its node's.
    fn held(&self) -> Vec<Held> {
        let mut held = Vec::new();
        if let Some(object) = self.object() {
            let finished = matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"));
            let own = !self.spec.host_network && !finished;
            held.push(Held {
                object,
                addresses: if own {
                    addresses(&self.status.pod_ips)
                } else {
                    Vec::new()
                },
                label: self.label(),
            });
        }
        let node_ips = addresses(&self.status.host_ips);
        if let Some(node) = self
            .spec
            .node_name
            .as_deref()
            .filter(|_| !node_ips.is_empty())
        {
            held.push(Held {
                object: ObjectId {
                    holder: Holder::Node,
                    id: node.into(),
                },
                addresses: node_ips,
                label: format!("node:{node}").into(),
            });
        }
        held
    }
}

/// A v1 Service, as far as its addresses go.
#[derive(Clone, Debug, Deserialize)]
pub struct ServiceAddresses {
    #[serde(default, deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: ServiceSpec,
    #[serde(default)]
    status: ServiceStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct ServiceSpec {
    /// `None` for a headless service: its names are its pods'.
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceStatus {
    #[serde(default)]
    load_balancer: LoadBalancer,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct LoadBalancer {
    #[serde(default)]
    ingress: Vec<Ip>,
}

impl HoldsAddresses for ServiceAddresses {
    const HOLDER: Holder = Holder::Service;

    fn held(&self) -> Vec<Held> {
        let Some(object) = self.object() else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = self
            .spec
            .cluster_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.extend(addresses(&self.status.load_balancer.ingress));
        vec![Held {
            object,
            addresses: ips,
            label: self.label(),
        }]
    }
}

/// kube's description of a resource, for a type of our own.
macro_rules! core_v1_resource {
    ($ty:ty, $kind:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = kube::core::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1_resource!(PodAddresses, "Pod", "pods");
core_v1_resource!(ServiceAddresses, "Service", "services");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_holds_its_ips_and_tells_its_nodes() {
        let pod: PodAddresses = serde_json::from_str(
            r#"{"metadata":{"name":"db-0","namespace":"shop","uid":"u1","annotations":{"a":"b"},"managedFields":[{"manager":"x"}]},
                "spec":{"nodeName":"n1","containers":[{"name":"c"}]},
                "status":{"phase":"Running","podIP":"10.42.0.7","podIPs":[{"ip":"10.42.0.7"},{"ip":"fd00::7"}],"hostIP":"192.0.2.1","hostIPs":[{"ip":"192.0.2.1"}]}}"#,
        )
        .unwrap();
        let held = pod.held();
        assert_eq!(&*held[0].label, "pod:shop/db-0");
        assert_eq!(held[0].addresses.len(), 2);
        assert_eq!(&*held[1].label, "node:n1");
        assert_eq!(
            held[1].addresses,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(pod.metadata.annotations.is_none(), "skipped while parsing");
    }

    #[test]
    fn host_network_and_finished_pods_hold_no_address_of_their_own() {
        for extra in [r#""hostNetwork":true,"#, ""] {
            let phase = if extra.is_empty() {
                "Succeeded"
            } else {
                "Running"
            };
            let pod: PodAddresses = serde_json::from_str(&format!(
                r#"{{"metadata":{{"name":"p","namespace":"n","uid":"u"}},"spec":{{{extra}"nodeName":"n1"}},"status":{{"phase":"{phase}","podIPs":[{{"ip":"192.0.2.1"}}],"hostIPs":[{{"ip":"192.0.2.1"}}]}}}}"#
            ))
            .unwrap();
            let held = pod.held();
            assert!(held[0].addresses.is_empty(), "{extra} {phase}");
            assert_eq!(&*held[1].label, "node:n1");
        }
    }

    #[test]
    fn a_service_holds_its_cluster_and_load_balancer_ips() {
        let svc: ServiceAddresses = serde_json::from_str(
            r#"{"metadata":{"name":"postgres","namespace":"payments","uid":"s1"},
                "spec":{"clusterIP":"10.96.0.20","clusterIPs":["10.96.0.20"],"type":"LoadBalancer"},
                "status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.5"},{"hostname":"lb.example"}]}}}"#,
        )
        .unwrap();
        let held = svc.held();
        assert_eq!(&*held[0].label, "service:payments/postgres");
        assert_eq!(held[0].addresses.len(), 2);
        let headless: ServiceAddresses = serde_json::from_str(
            r#"{"metadata":{"name":"db","namespace":"n","uid":"s2"},"spec":{"clusterIP":"None","clusterIPs":["None"]}}"#,
        )
        .unwrap();
        assert!(headless.held()[0].addresses.is_empty());
    }
}
