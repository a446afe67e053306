//! Pod names from the Kubernetes API server: the pods of this node only
//! (`fieldSelector=spec.nodeName=NODE`), listed once and then watched, over TLS checked
//! against the service account's CA, with the service account's bearer token (re-read
//! for every request: projected tokens rotate). A watch that ends is resumed from the
//! last resource version; one the server no longer has (410 Gone) starts over with a
//! list. The RBAC this needs is exactly `list` and `watch` on `pods` (core group),
//! cluster-wide because the field selector is not an RBAC scope: the ClusterRole in
//! deploy/tcptrace.yaml, pinned by tests/deploy.rs. It never asks for one pod by name
//! (`get`) and writes nothing.
use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde::Deserialize;

use crate::{
    k8s::http_get,
    k8s::pod_names::{self, Pod, Shared},
};

/// Where a pod running with a service account finds its credentials.
pub const IN_CLUSTER_CREDENTIALS: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server ends each watch after this long; the client then resumes it.
const WATCH_SECONDS: u64 = 300;
/// A silent watch beyond this is dead (bookmarks arrive about once a minute).
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS + 60);
/// One watch event is one pod; a line longer than this is refused.
const MAX_EVENT: u64 = 4 << 20;
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What `--kube-api`, `--kube-credentials` and `--node-name` say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTarget {
    /// `https://HOST:PORT`, or `None` for the in-cluster address
    /// (`KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`).
    pub url: Option<String>,
    /// A directory with `token` and `ca.crt`.
    pub credentials: PathBuf,
    /// The node whose pods are watched.
    pub node: String,
}

/// A checked target: where to connect, and the TLS settings trusting the cluster's CA.
pub struct Client {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token_file: PathBuf,
    pods_path: String,
}

impl Client {
    /// Check `target` (address, CA, token): a bad setting fails at startup.
    pub fn new(target: &ApiTarget) -> Result<Client> {
        let (host, port) = match &target.url {
            Some(url) => host_port(url)?,
            None => in_cluster_address()?,
        };
        let ca = target.credentials.join("ca.crt");
        let tls = tls_config(&ca)?;
        let token_file = target.credentials.join("token");
        read_token(&token_file)?;
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("`{host}` is not a host name or address"))?;
        Ok(Client {
            pods_path: format!(
                "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
                url_encode(&target.node)
            ),
            host,
            port,
            server_name,
            tls: Arc::new(tls),
            token_file,
        })
    }

    /// `GET path` (after the pods path) and the response, its status checked.
    fn get(
        &self,
        query: &str,
        read_timeout: Duration,
    ) -> Result<http_get::Body<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{} has no address", self.host))?;
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_read_timeout(Some(read_timeout))?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let tls = rustls::ClientConnection::new(self.tls.clone(), self.server_name.clone())?;
        let stream = rustls::StreamOwned::new(tls, tcp);
        let bearer = format!("Bearer {}", read_token(&self.token_file)?);
        let path = format!("{}{query}", self.pods_path);
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port) // an IPv6 address
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let response = http_get::get(stream, &authority, &path, &[("Authorization", &bearer)])
            .with_context(|| format!("GET https://{authority}{path}"))?;
        if response.status != 200 {
            let detail = response.body.read_all(4096).unwrap_or_default();
            bail!(
                "GET {path}: HTTP {} {}",
                response.status,
                String::from_utf8_lossy(&detail).trim()
            );
        }
        Ok(response.body)
    }

    /// List this node's pods into `names`; the list's resource version.
    /// RBAC: `list` on `pods` (GET /api/v1/pods without `watch`).
    fn list(&self, names: &Shared) -> Result<String> {
        let body = self.get("", CONNECT_TIMEOUT * 6)?;
        let list = pod_names::parse_list(&body.read_all(pod_names::MAX_LIST)?)?;
        log::info!(
            "kubernetes api: {} pods on this node (resource version {})",
            list.items.len(),
            list.metadata.resource_version
        );
        lock(names).replace_all(list.items, Instant::now());
        Ok(list.metadata.resource_version)
    }

    /// Apply watch events from `version` on until the server ends the watch; the last
    /// resource version seen, or `None` when the server has forgotten `version`.
    /// RBAC: `watch` on `pods` (GET /api/v1/pods?watch=1).
    fn watch(&self, version: &str, names: &Shared) -> Result<Option<String>> {
        let query = format!(
            "&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
            url_encode(version)
        );
        let mut events = BufReader::new(self.get(&query, WATCH_IDLE)?);
        let mut version = version.to_string();
        loop {
            let mut line = Vec::new();
            (&mut events).take(MAX_EVENT).read_until(b'\n', &mut line)?;
            if line.is_empty() {
                return Ok(Some(version)); // the server ended the watch
            }
            if line.last() != Some(&b'\n') {
                bail!("watch event longer than {MAX_EVENT} bytes or cut short");
            }
            match apply_line(&line, names)? {
                Applied::Version(v) => version = v,
                Applied::Gone => return Ok(None),
            }
        }
    }
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Debug, PartialEq)]
pub enum Applied {
    Version(String),
    /// 410 Gone: the version asked for is no longer kept; list again.
    Gone,
}

/// One line of a watch answer (one JSON event) into `names`.
pub fn apply_line(line: &[u8], names: &Shared) -> Result<Applied> {
    let event: WatchEvent = serde_json::from_slice(line).context("not a watch event")?;
    apply(event, names)
}

/// One watch event into `names`.
fn apply(event: WatchEvent, names: &Shared) -> Result<Applied> {
    if event.kind == "ERROR" {
        let code = event.object.get("code").and_then(|c| c.as_u64());
        if code == Some(410) {
            return Ok(Applied::Gone);
        }
        bail!("watch error: {}", event.object);
    }
    let version = event
        .object
        .pointer("/metadata/resourceVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let now = Instant::now();
    let mut names = lock(names);
    match event.kind.as_str() {
        "ADDED" | "MODIFIED" => {
            let pod: Pod = serde_json::from_value(event.object).context("not a pod")?;
            names.upsert(pod);
        }
        "DELETED" => {
            let pod: Pod = serde_json::from_value(event.object).context("not a pod")?;
            names.retire(&pod.metadata.uid, now);
        }
        "BOOKMARK" => {}
        other => log::debug!("kubernetes api: watch event {other} ignored"),
    }
    names.purge(now);
    Ok(Applied::Version(version))
}

fn lock(names: &Shared) -> std::sync::RwLockWriteGuard<'_, pod_names::Names> {
    names.write().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Keep `names` current from a thread of its own until the process ends.
    pub fn spawn(self, names: Shared) -> Result<()> {
        std::thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || follow(&self, &names))?;
        Ok(())
    }
}

/// List, then watch from the list's version, for ever; errors are logged and retried
/// with a backoff from `RETRY_MIN` to `RETRY_MAX`.
fn follow(client: &Client, names: &Shared) {
    let mut retry = RETRY_MIN;
    let mut version: Option<String> = None;
    loop {
        let started = Instant::now();
        let step = match &version {
            None => client.list(names).map(Some),
            Some(v) => client.watch(v, names),
        };
        match step {
            // A watch the server (or a proxy) ends at once would otherwise be reopened
            // in a tight loop: pace it like an error, without the warning.
            Ok(next) if version.is_some() && started.elapsed() < RETRY_MIN => {
                version = next;
                std::thread::sleep(retry);
                retry = (retry * 2).min(RETRY_MAX);
            }
            Ok(next) => {
                version = next;
                retry = RETRY_MIN;
            }
            Err(e) => {
                log::warn!("kubernetes api: {e:#}; retrying in {retry:?}");
                std::thread::sleep(retry);
                retry = (retry * 2).min(RETRY_MAX);
                // Resume the watch if there is a version; the list otherwise.
            }
        }
    }
}

fn tls_config(ca: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read the cluster CA {}", ca.display()))?;
    for cert in certs {
        roots.add(cert.with_context(|| format!("{}: not a PEM certificate", ca.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the service account token {}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("{}: empty token", path.display());
    }
    Ok(token.to_string())
}

fn in_cluster_address() -> Result<(String, u16)> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context(
        "KUBERNETES_SERVICE_HOST is not set: not running in a pod; give --kube-api https://HOST:PORT",
    )?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT")
        .unwrap_or_else(|_| "443".into())
        .parse()
        .context("KUBERNETES_SERVICE_PORT is not a port")?;
    Ok((host, port))
}

/// `https://host:port` (a trailing `/` allowed; IPv6 in brackets) -> (host, port).
pub fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("`{url}`: the API server is reached over https:// only"))?
        .trim_end_matches('/');
    if rest.contains('/') {
        bail!("`{url}`: give the server only (https://HOST:PORT), no path");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().context("bad port")?),
        _ => (rest, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("`{url}`: no host");
    }
    Ok((host.to_string(), port))
}

/// Percent-encode a query value (node names are DNS names; this is for safety).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> WatchEvent {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn watch_events_add_update_and_retire_pods() {
        let names = Shared::default();
        let pod = |uid: &str, ids: &str| {
            format!(
                r#"{{"type":"ADDED","object":{{"kind":"Pod","metadata":{{"name":"web-1","namespace":"shop","uid":"{uid}","resourceVersion":"7"}},"status":{{"containerStatuses":[{ids}]}}}}}}"#
            )
        };
        assert_eq!(
            apply(event(&pod("u1", "")), &names).unwrap(),
            Applied::Version("7".into())
        );
        assert_eq!(names.read().unwrap().pods["u1"].name, "web-1");
        // The container started: its id arrives in a MODIFIED event.
        let modified = pod("u1", r#"{"name":"app","containerID":"containerd://abc"}"#)
            .replace("ADDED", "MODIFIED");
        apply(event(&modified), &names).unwrap();
        assert_eq!(names.read().unwrap().containers["abc"], "app");
        let deleted = pod("u1", "").replace("ADDED", "DELETED");
        apply(event(&deleted), &names).unwrap();
        assert!(
            names.read().unwrap().pods.contains_key("u1"),
            "kept for the retention"
        );
        let bookmark =
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"12"}}}"#;
        assert_eq!(
            apply(event(bookmark), &names).unwrap(),
            Applied::Version("12".into())
        );
    }

    #[test]
    fn an_expired_version_relists_and_other_errors_fail() {
        let names = Shared::default();
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;
        assert_eq!(apply(event(gone), &names).unwrap(), Applied::Gone);
        let forbidden = gone.replace("410", "403");
        assert!(apply(event(&forbidden), &names).is_err());
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            host_port("https://10.96.0.1:443").unwrap(),
            ("10.96.0.1".into(), 443)
        );
        assert_eq!(
            host_port("https://[fd00::1]:6443/").unwrap(),
            ("fd00::1".into(), 6443)
        );
        assert_eq!(
            host_port("https://kubernetes.default.svc").unwrap(),
            ("kubernetes.default.svc".into(), 443)
        );
        assert!(host_port("http://10.96.0.1").is_err());
        assert!(host_port("https://10.96.0.1/api").is_err());
        assert_eq!(url_encode("node-1.example"), "node-1.example");
        assert_eq!(url_encode("a b&c"), "a%20b%26c");
    }
}
