//! Kubernetes names for the pod UIDs and container ids the cgroup paths give, from one
//! of two sources: the kubelet's pod list of this node (`GET /pods`, a v1 PodList over
//! plain HTTP, refreshed every `REFRESH`), or the API server's pods on this node, listed
//! and watched (`api`). Without a source, or while it does not answer, names stay
//! unknown and series carry the pod UID and container id instead; nothing fails.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::k8s::retention::{missing, Retiring};
use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::Uri;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HttpClient},
    rt::TokioExecutor,
};
pub use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

pub const REFRESH: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);
/// A pod list larger than this is refused (a node runs at most a few hundred pods).
pub const MAX_LIST: usize = 64 << 20;

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
    /// Pods gone from the source, forgotten after `retention::RETAIN`.
    retiring: Retiring<String>,
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
    /// on `pods`, nothing else (see `api`).
    Api(crate::k8s::api::ApiTarget),
}

/// A name source checked and ready to start.
pub struct Follower {
    pub names: Shared,
    /// The cluster's addresses, filled when `peers` was asked for (see `peer_watch`).
    pub peers: crate::k8s::peers::SharedBook,
    watch_peers: bool,
    source: Checked,
}

enum Checked {
    None,
    Kubelet(Uri),
    Api(Box<crate::k8s::api::Client>),
}

/// Check `source` before anything is loaded: a source that cannot work as configured
/// (no CA, no token, a bad address) is an error now rather than a warning every minute.
/// With `peers` (and the API server as `source`), the cluster's pod and service
/// addresses are followed too. Call on the tokio runtime.
pub fn prepare(source: &NameSource, peers: bool) -> Result<Follower> {
    let source = match source {
        NameSource::None => Checked::None,
        NameSource::Kubelet(url) => Checked::Kubelet(kubelet_url(url).context("--kubelet")?),
        NameSource::Api(target) => Checked::Api(Box::new(
            crate::k8s::api::Client::new(target).context("--kube-api")?,
        )),
    };
    Ok(Follower {
        names: Shared::default(),
        peers: Default::default(),
        watch_peers: peers,
        source,
    })
}

impl Follower {
    /// Start filling `names`, as tasks of the running tokio runtime. Call after
    /// capabilities are dropped: a thread started for the work (DNS lookups run on
    /// tokio's blocking threads) keeps the capabilities it was created with.
    pub fn start(self) {
        match self.source {
            Checked::None => {}
            Checked::Kubelet(url) => spawn_kubelet_refresher(url, self.names),
            Checked::Api(client) => {
                if self.watch_peers {
                    crate::k8s::peer_watch::spawn(client.kube(), self.peers);
                }
                client.spawn(self.names)
            }
        }
    }
}

/// A v1 PodList, as the kubelet's `/pods` gives it.
#[derive(Deserialize)]
pub struct PodList {
    pub items: Vec<Pod>,
}

/// Parse a v1 PodList.
pub fn parse_list(json: &[u8]) -> Result<PodList> {
    serde_json::from_slice(json).context("not a v1 PodList")
}

/// What the names need of one pod: its UID, names and workload, and its containers'
/// ids and names.
pub struct Entry {
    uid: String,
    info: PodInfo,
    /// (container id without the scheme, container name)
    containers: Vec<(String, String)>,
}

impl Entry {
    /// `None` for a pod without a UID (never from a real source).
    pub fn of(pod: &Pod) -> Option<Entry> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let workload = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| controller(&o.kind, &o.name))
            .unwrap_or_default();
        let statuses = pod.status.iter().flat_map(|s| {
            let init = s.init_container_statuses.iter().flatten();
            s.container_statuses.iter().flatten().chain(init)
        });
        let containers = statuses
            .filter_map(|c| {
                let (_, id) = c.container_id.as_deref()?.split_once("://")?;
                Some((id.to_string(), c.name.clone()))
            })
            .collect();
        Some(Entry {
            uid,
            info: PodInfo {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                workload,
            },
            containers,
        })
    }
}

/// The entries of a list's pods (those with a UID).
pub fn entries(pods: &[Pod]) -> Vec<Entry> {
    pods.iter().filter_map(Entry::of).collect()
}

impl Names {
    /// Add a pod or update it (its containers get ids as they start).
    pub fn upsert(&mut self, pod: Entry) {
        self.forget_containers(&pod.uid);
        self.retiring.cancel(&pod.uid);
        let mut ids = Vec::new();
        for (id, name) in pod.containers {
            self.containers.insert(id.clone(), name);
            ids.push(id);
        }
        self.pod_containers.insert(pod.uid.clone(), ids);
        self.pods.insert(pod.uid, pod.info);
    }

    /// The pod is gone: keep its names for `retention::RETAIN`.
    pub fn retire(&mut self, uid: &str, now: Instant) {
        if self.pods.contains_key(uid) {
            self.retiring.start(&uid.to_string(), now);
        }
    }

    /// A full list: its pods are upserted, pods missing from it retire.
    pub fn replace_all(&mut self, pods: Vec<Entry>, now: Instant) {
        for uid in missing(self.pods.keys(), pods.iter().map(|p| &p.uid)) {
            self.retire(&uid, now);
        }
        for pod in pods {
            self.upsert(pod);
        }
        self.purge(now);
    }

    /// Forget the pods whose retention ended.
    pub fn purge(&mut self, now: Instant) {
        for uid in self.retiring.take_ended(now) {
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

/// Keep `shared` filled from the kubelet's pod list at `url` until the process ends.
fn spawn_kubelet_refresher(url: Uri, shared: Shared) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            match fetch_kubelet(&client, &url).await {
                Ok(list) => {
                    log::debug!("kubelet: {} pods", list.items.len());
                    let mut names = shared.write().unwrap_or_else(|p| p.into_inner());
                    names.replace_all(entries(&list.items), Instant::now());
                }
                Err(e) => log::warn!("kubelet pod list from {url}: {e:#}"),
            }
            tokio::time::sleep(REFRESH).await;
        }
    });
}

/// `--kubelet`: plain http (the kubelet's read-only port, or a local proxy).
fn kubelet_url(url: &str) -> Result<Uri> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        bail!("`{url}`: only http://HOST[:PORT]/PATH URLs are supported (the kubelet read-only port or a proxy)");
    }
    Ok(uri)
}

/// `GET url`, the whole answer within `TIMEOUT` and `MAX_LIST` bytes, as a PodList.
async fn fetch_kubelet(
    client: &HttpClient<HttpConnector, Empty<Bytes>>,
    url: &Uri,
) -> Result<PodList> {
    let body = tokio::time::timeout(TIMEOUT, async {
        let response = client.get(url.clone()).await?;
        if response.status() != hyper::StatusCode::OK {
            bail!("HTTP status {}", response.status());
        }
        let body = Limited::new(response.into_body(), MAX_LIST)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
        Ok(body.to_bytes())
    })
    .await
    .with_context(|| format!("no answer within {TIMEOUT:?}"))??;
    parse_list(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::retention::RETAIN;

    fn recorded() -> Names {
        let mut names = Names::default();
        names.replace_all(recorded_entries(), Instant::now());
        names
    }

    fn recorded_entries() -> Vec<Entry> {
        let list = parse_list(include_bytes!("../../tests/kubelet/pods.json")).unwrap();
        entries(&list.items)
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
        names.replace_all(recorded_entries(), t0 + Duration::from_secs(1));
        names.purge(t0 + RETAIN * 2);
        assert!(names.pods.contains_key(WEB_UID));
    }

    #[test]
    fn init_containers_are_named_and_pods_without_uid_skipped() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"uid":"u","name":"p","namespace":"n"},"status":{"initContainerStatuses":[{"name":"init","image":"i","imageID":"","ready":false,"restartCount":0,"containerID":"cri-o://abc"}]}}"#,
        )
        .unwrap();
        let mut names = Names::default();
        names.upsert(Entry::of(&pod).unwrap());
        assert_eq!(names.containers["abc"], "init");
        let no_uid: Pod = serde_json::from_str(r#"{"metadata":{"name":"p"}}"#).unwrap();
        assert!(Entry::of(&no_uid).is_none());
    }

    #[test]
    fn kubelet_urls_are_plain_http() {
        assert!(kubelet_url("http://127.0.0.1:10255/pods").is_ok());
        assert!(kubelet_url("https://127.0.0.1:10250/pods").is_err());
        assert!(kubelet_url("127.0.0.1:10255/pods").is_err());
    }
}
