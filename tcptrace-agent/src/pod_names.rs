//! Kubernetes names for the pod UIDs and container ids the cgroup paths give: the pod
//! list of this node from the kubelet (`GET /pods`, a v1 PodList), refreshed every
//! `REFRESH`. Without a kubelet URL, or while it does not answer, names stay unknown and
//! series carry the pod UID and container id instead; nothing fails.
use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

pub const REFRESH: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);
/// A pod list larger than this is refused (a node runs at most a few hundred pods).
const MAX_BODY: usize = 64 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The controller: `Deployment/web` (a ReplicaSet's hash suffix removed),
    /// `DaemonSet/agent`, `StatefulSet/db`, or empty for a bare pod.
    pub workload: String,
}

#[derive(Default)]
pub struct Names {
    pub pods: HashMap<String, PodInfo>,
    /// Container id (without the `containerd://` scheme) -> container name.
    pub containers: HashMap<String, String>,
}

pub type Shared = Arc<RwLock<Names>>;

#[derive(Deserialize)]
struct PodList {
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Meta,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    namespace: String,
    uid: String,
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

/// Parse a kubelet `/pods` answer.
pub fn parse(json: &[u8]) -> Result<Names> {
    let list: PodList = serde_json::from_slice(json).context("not a v1 PodList")?;
    let mut names = Names::default();
    for pod in list.items {
        let workload = pod
            .metadata
            .owners
            .iter()
            .find(|o| o.controller)
            .map(|o| controller(&o.kind, &o.name))
            .unwrap_or_default();
        for c in pod
            .status
            .containers
            .iter()
            .chain(&pod.status.init_containers)
        {
            if let Some((_, id)) = c.id.split_once("://") {
                names.containers.insert(id.to_string(), c.name.clone());
            }
        }
        names.pods.insert(
            pod.metadata.uid,
            PodInfo {
                namespace: pod.metadata.namespace,
                name: pod.metadata.name,
                workload,
            },
        );
    }
    Ok(names)
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

/// Keep `shared` filled from `url` (http only) until the process ends.
pub fn spawn_refresher(url: String, shared: Shared) {
    tokio::spawn(async move {
        loop {
            let fetched = {
                let url = url.clone();
                tokio::task::spawn_blocking(move || fetch(&url).and_then(|b| parse(&b))).await
            };
            match fetched {
                Ok(Ok(names)) => {
                    log::debug!("kubelet: {} pods", names.pods.len());
                    *shared.write().unwrap_or_else(|p| p.into_inner()) = names;
                }
                Ok(Err(e)) => log::warn!("kubelet pod list from {url}: {e:#}"),
                Err(e) => log::warn!("kubelet pod list: {e}"),
            }
            tokio::time::sleep(REFRESH).await;
        }
    });
}

/// `GET` over plain HTTP/1.1 (the kubelet's read-only port, or a local proxy).
fn fetch(url: &str) -> Result<Vec<u8>> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported (the kubelet read-only port or a proxy)")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut response)?;
    if response.len() > MAX_BODY {
        bail!("answer larger than {MAX_BODY} bytes");
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("HTTP status {status}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(&response[split + 4..]);
    }
    Ok(response[split + 4..].to_vec())
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16)
            .context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("short chunk")?);
        body = body.get(size + 2..).context("short chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_pods_and_container_ids() {
        let names = parse(include_bytes!("../tests/kubelet/pods.json")).unwrap();
        let web = &names.pods["3a5a1e6b-7d1f-4c2e-9b8a-2b6f0e3c1d4e"];
        assert_eq!(
            (web.namespace.as_str(), web.name.as_str()),
            ("shop", "web-7d4b9c8f5-x2k9p")
        );
        assert_eq!(web.workload, "Deployment/web");
        assert_eq!(
            names.containers["8c2f1e0d9b7a6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"],
            "web"
        );
        let agent = &names.pods["6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"];
        assert_eq!(agent.workload, "DaemonSet/node-agent");
        assert_eq!(controller("StatefulSet", "db"), "StatefulSet/db");
        assert_eq!(controller("ReplicaSet", "odd"), "ReplicaSet/odd");
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
