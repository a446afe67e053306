//! Kubernetes names for the pod UIDs and container ids the cgroup paths give, from one
//! of two sources: the kubelet's pod list of this node (`GET /pods`, a v1 PodList,
//! refreshed every `REFRESH`), or the API server's pods on this node, listed and watched
//! (`kube_api`). Without a source, or while it does not answer, names stay unknown and
//! series carry the pod UID and container id instead; nothing fails.
use std::{
    collections::HashMap,
    net::TcpStream,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::k8s::http_get;

pub const REFRESH: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);
/// A pod list larger than this is refused (a node runs at most a few hundred pods).
pub const MAX_LIST: usize = 64 << 20;
/// How long the names of a pod gone from the source stay: its last connections (closing,
/// TIME_WAIT, resets) are still reported for a while, and under the same names.
pub const RETAIN: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The controller: `Deployment/web` (a ReplicaSet's hash suffix removed),
    /// `DaemonSet/agent`, `StatefulSet/db`, or empty for a bare pod.
    pub workload: String,
}

/// The names known for this node's pods, kept current by one source (the kubelet's pod
/// list or the API server's list and watch).
#[derive(Default)]
pub struct Names {
    pub pods: HashMap<String, PodInfo>,
    /// Container id (without the `containerd://` scheme) -> container name.
    pub containers: HashMap<String, String>,
    /// Pod UID -> its container ids, to forget them with the pod.
    pod_containers: HashMap<String, Vec<String>>,
    /// Pods gone from the source, forgotten at the instant given.
    retiring: HashMap<String, Instant>,
}

pub type Shared = Arc<RwLock<Names>>;

/// Where names come from (`--kubelet` or `--kube-api`; at most one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NameSource {
    #[default]
    None,
    /// The kubelet's `/pods` over http, polled.
    Kubelet(String),
    /// The API server's pods of this node, listed and watched: RBAC `list` and `watch`
    /// on `pods`, nothing else (see kube_api).
    Api(crate::k8s::api::ApiTarget),
}

/// A name source checked and ready to start.
pub struct Follower {
    pub names: Shared,
    source: Checked,
}

enum Checked {
    None,
    Kubelet(String),
    Api(crate::k8s::api::Client),
}

/// Check `source` before anything is loaded: a source that cannot work as configured
/// (no CA, no token, a bad address) is an error now rather than a warning every minute.
pub fn prepare(source: &NameSource) -> Result<Follower> {
    let source = match source {
        NameSource::None => Checked::None,
        NameSource::Kubelet(url) => Checked::Kubelet(url.clone()),
        NameSource::Api(target) => {
            Checked::Api(crate::k8s::api::Client::new(target).context("--kube-api")?)
        }
    };
    Ok(Follower {
        names: Shared::default(),
        source,
    })
}

impl Follower {
    /// Start filling `names`. Call after capabilities are dropped: the API source runs
    /// on a thread of its own, and a thread keeps the capabilities it was created with.
    pub fn start(self) -> Result<()> {
        match self.source {
            Checked::None => {}
            Checked::Kubelet(url) => spawn_kubelet_refresher(url, self.names),
            Checked::Api(client) => client.spawn(self.names)?,
        }
        Ok(())
    }
}

/// A v1 PodList, as the kubelet's `/pods` and the API server's `/api/v1/pods` give it.
#[derive(Deserialize)]
pub struct PodList {
    pub items: Vec<Pod>,
    #[serde(default)]
    pub metadata: ListMeta,
}

#[derive(Default, Deserialize)]
pub struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
}

#[derive(Deserialize)]
pub struct Pod {
    pub metadata: Meta,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
pub struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    pub uid: String,
    #[serde(default, rename = "ownerReferences")]
    owners: Vec<Owner>,
}

#[derive(Deserialize)]
struct Owner {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Default, Deserialize)]
struct Status {
    #[serde(default, rename = "containerStatuses")]
    containers: Vec<ContainerStatus>,
    #[serde(default, rename = "initContainerStatuses")]
    init_containers: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: String,
    #[serde(default, rename = "containerID")]
    id: String,
}

/// Parse a v1 PodList.
pub fn parse_list(json: &[u8]) -> Result<PodList> {
    serde_json::from_slice(json).context("not a v1 PodList")
}

impl Names {
    /// Add a pod or update it (its containers get ids as they start).
    pub fn upsert(&mut self, pod: Pod) {
        let uid = pod.metadata.uid.clone();
        self.forget_containers(&uid);
        self.retiring.remove(&uid);
        let mut ids = Vec::new();
        for c in pod
            .status
            .containers
            .iter()
            .chain(&pod.status.init_containers)
        {
            if let Some((_, id)) = c.id.split_once("://") {
                self.containers.insert(id.to_string(), c.name.clone());
                ids.push(id.to_string());
            }
        }
        self.pod_containers.insert(uid.clone(), ids);
        self.pods.insert(uid, info(pod.metadata));
    }

    /// The pod is gone: keep its names for `RETAIN`.
    pub fn retire(&mut self, uid: &str, now: Instant) {
        if self.pods.contains_key(uid) {
            self.retiring.entry(uid.to_string()).or_insert(now + RETAIN);
        }
    }

    /// A full list: its pods are upserted, pods missing from it retire.
    pub fn replace_all(&mut self, pods: Vec<Pod>, now: Instant) {
        let listed: std::collections::HashSet<String> =
            pods.iter().map(|p| p.metadata.uid.clone()).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !listed.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.retire(&uid, now);
        }
        for pod in pods {
            self.upsert(pod);
        }
        self.purge(now);
    }

    /// Forget the pods whose retention ended.
    pub fn purge(&mut self, now: Instant) {
        let ended: Vec<String> = self
            .retiring
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in ended {
            self.retiring.remove(&uid);
            self.forget_containers(&uid);
            self.pods.remove(&uid);
        }
    }

    fn forget_containers(&mut self, uid: &str) {
        for id in self.pod_containers.remove(uid).unwrap_or_default() {
            self.containers.remove(&id);
        }
    }
}

fn info(meta: Meta) -> PodInfo {
    let workload = meta
        .owners
        .iter()
        .find(|o| o.controller)
        .map(|o| controller(&o.kind, &o.name))
        .unwrap_or_default();
    PodInfo {
        namespace: meta.namespace,
        name: meta.name,
        workload,
    }
}

/// `ReplicaSet/web-7d4b9c8f5` -> `Deployment/web`: Deployments name their ReplicaSets
/// with the pod-template hash appended.
fn controller(kind: &str, name: &str) -> String {
    if kind == "ReplicaSet" {
        if let Some((deployment, hash)) = name.rsplit_once('-') {
            if (5..=10).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return format!("Deployment/{deployment}");
            }
        }
    }
    format!("{kind}/{name}")
}

/// Keep `shared` filled from the kubelet's pod list at `url` (http only) until the
/// process ends.
fn spawn_kubelet_refresher(url: String, shared: Shared) {
    tokio::spawn(async move {
        loop {
            let fetched = {
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    fetch_kubelet(&url).and_then(|b| parse_list(&b))
                })
                .await
            };
            match fetched {
                Ok(Ok(list)) => {
                    log::debug!("kubelet: {} pods", list.items.len());
                    let mut names = shared.write().unwrap_or_else(|p| p.into_inner());
                    names.replace_all(list.items, Instant::now());
                }
                Ok(Err(e)) => log::warn!("kubelet pod list from {url}: {e:#}"),
                Err(e) => log::warn!("kubelet pod list: {e}"),
            }
            tokio::time::sleep(REFRESH).await;
        }
    });
}

/// `GET` over plain HTTP/1.1 (the kubelet's read-only port, or a local proxy).
fn fetch_kubelet(url: &str) -> Result<Vec<u8>> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported (the kubelet read-only port or a proxy)")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let response = http_get::get(stream, host, &path, &[])?;
    if response.status != 200 {
        bail!("HTTP status {}", response.status);
    }
    response.body.read_all(MAX_LIST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Names {
        let mut names = Names::default();
        let list = parse_list(include_bytes!("../../tests/kubelet/pods.json")).unwrap();
        names.replace_all(list.items, Instant::now());
        names
    }

    const WEB_UID: &str = "3a5a1e6b-7d1f-4c2e-9b8a-2b6f0e3c1d4e";
    const WEB_CONTAINER: &str = "8c2f1e0d9b7a6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";

    #[test]
    fn deployment_pods_and_container_ids() {
        let names = recorded();
        let web = &names.pods[WEB_UID];
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str()),
            ("shop", "web-7d4b9c8f5-x2k9p")
        );
        assert_eq!(web.workload, "Deployment/web");
        assert_eq!(names.containers[WEB_CONTAINER], "web");
        let agent = &names.pods["6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"];
        assert_eq!(agent.workload, "DaemonSet/node-agent");
        assert_eq!(controller("StatefulSet", "db"), "StatefulSet/db");
        assert_eq!(controller("ReplicaSet", "odd"), "ReplicaSet/odd");
    }

    #[test]
    fn gone_pods_keep_their_names_for_the_retention_then_go() {
        let mut names = recorded();
        let t0 = Instant::now();
        names.replace_all(Vec::new(), t0);
        assert!(names.pods.contains_key(WEB_UID), "retained");
        assert!(names.containers.contains_key(WEB_CONTAINER));
        names.purge(t0 + RETAIN);
        assert!(names.pods.is_empty() && names.containers.is_empty());

        // A pod listed again before its retention ends stays.
        let mut names = recorded();
        names.retire(WEB_UID, t0);
        let list = parse_list(include_bytes!("../../tests/kubelet/pods.json")).unwrap();
        names.replace_all(list.items, t0 + Duration::from_secs(1));
        names.purge(t0 + RETAIN * 2);
        assert!(names.pods.contains_key(WEB_UID));
    }
}
