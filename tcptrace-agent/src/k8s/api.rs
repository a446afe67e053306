//! Pod names from the Kubernetes API server, through kube-rs: the pods of this node only
//! (field selector `spec.nodeName=NODE`), listed and then watched by kube's `watcher`,
//! which resumes a watch that ends from the last resource version and lists again when
//! the server no longer has it (410 Gone). TLS (rustls with ring) trusts the
//! credentials' `ca.crt`; the bearer token is read from the credentials' `token`. kube
//! re-reads both at least once a minute: projected tokens and CAs rotate. The RBAC this
//! needs is exactly `list` and `watch` on `pods` (core group), cluster-wide because the
//! field selector is not an RBAC scope: the ClusterRole in deploy/tcptrace.yaml, pinned
//! by tests/deploy.rs. The watcher never asks for one pod by name (`get`) and writes
//! nothing.
use std::{path::Path, path::PathBuf, pin::pin, time::Duration, time::Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use hyper::Uri;
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api,
};
use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::k8s::pod_names::{Entry, Pod, Shared};
/// What kube's watcher hands over: a list as `Init`, `InitApply`.., `InitDone`, then
/// `Apply` and `Delete` as the watch goes.
pub use kube::runtime::watcher::Event;

/// Where a pod running with a service account finds its credentials.
pub const IN_CLUSTER_CREDENTIALS: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A checked target: the cluster's client, and the node whose pods are watched.
pub struct Client {
    kube: kube::Client,
    node: String,
}

impl Client {
    /// Check `target` (address, CA, token) and build the client: a bad setting fails at
    /// startup. Call on the tokio runtime (kube's client spawns its request buffer).
    pub fn new(target: &ApiTarget) -> Result<Client> {
        let url = match &target.url {
            Some(url) => parse_url(url)?,
            None => in_cluster_url()?,
        };
        let ca = target.credentials.join("ca.crt");
        let token = target.credentials.join("token");
        let mut config = kube::Config::new(url);
        config.root_cert = Some(read_ca(&ca)?);
        config.root_cert_file = Some(ca);
        check_token(&token)?;
        config.auth_info.token_file = Some(token.to_string_lossy().into_owned());
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        let client =
            kube::Client::try_from(config).context("cannot build the kubernetes client")?;
        Ok(Client {
            kube: client,
            node: target.node.clone(),
        })
    }

    /// Keep `names` current, on the running tokio runtime, until the process ends.
    pub fn spawn(self, names: Shared) {
        tokio::spawn(follow(self, names));
    }

    /// The client, for other watches of the same cluster (`peer_watch`).
    pub fn kube(&self) -> kube::Client {
        self.kube.clone()
    }
}

/// The pods of this node, into `names`.
async fn follow(client: Client, names: Shared) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", client.node));
    let pods: Api<Pod> = Api::all(client.kube);
    let mut listing = Listing::default();
    watch_forever(pods, config, |event| listing.apply(event, &names)).await;
}

/// List, then watch, for ever (kube's watcher), handing each event to `apply`; errors
/// are logged, and the watcher waits before its next request with kube's default
/// backoff (0.8 s doubling to 30 s).
pub async fn watch_forever<K>(api: Api<K>, config: watcher::Config, mut apply: impl FnMut(Event<K>))
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let resource = K::plural(&Default::default()).into_owned();
    let mut events = pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => apply(event),
            Err(e) => log::warn!("kubernetes api, {resource}: {:#}", anyhow::Error::from(e)),
        }
    }
}

/// The watcher's events applied to the names. A list (the first, or one after 410
/// Gone) arrives pod by pod between `Init` and `InitDone` and replaces the names only
/// when complete, so that pods missing from it retire rather than blink out.
#[derive(Default)]
pub struct Listing {
    /// The pods of the list in progress.
    pending: Vec<Entry>,
}

impl Listing {
    pub fn apply(&mut self, event: Event<Pod>, names: &Shared) {
        let now = Instant::now();
        match event {
            Event::Init => self.pending.clear(),
            Event::InitApply(pod) => self.pending.extend(Entry::of(&pod)),
            Event::InitDone => {
                let pods = std::mem::take(&mut self.pending);
                log::info!("kubernetes api: {} pods on this node", pods.len());
                lock(names).replace_all(pods, now);
            }
            Event::Apply(pod) => {
                let mut names = lock(names);
                if let Some(entry) = Entry::of(&pod) {
                    names.upsert(entry);
                }
                names.purge(now);
            }
            Event::Delete(pod) => {
                let mut names = lock(names);
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    names.retire(uid, now);
                }
                names.purge(now);
            }
        }
    }
}

fn lock(names: &Shared) -> std::sync::RwLockWriteGuard<'_, crate::k8s::pod_names::Names> {
    names.write().unwrap_or_else(|p| p.into_inner())
}

/// The cluster's CA certificates (DER), for a clear error at startup; kube re-reads the
/// file itself afterwards.
fn read_ca(ca: &Path) -> Result<Vec<Vec<u8>>> {
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read the cluster CA {}", ca.display()))?
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", ca.display());
    }
    Ok(certs)
}

/// A token kube can send: kube sends the file's bytes as they are, so a newline (from
/// `kubectl create token > token`) would make every request fail.
fn check_token(path: &Path) -> Result<()> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the service account token {}", path.display()))?;
    if token.trim().is_empty() {
        bail!("{}: empty token", path.display());
    }
    if token.trim() != token {
        bail!(
            "{}: the token ends or starts with white space (a newline?); it is sent as it is: \
             write it without, e.g. `kubectl create token SA | tr -d '\\n' > token`",
            path.display()
        );
    }
    Ok(())
}

fn in_cluster_url() -> Result<Uri> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context(
        "KUBERNETES_SERVICE_HOST is not set: not running in a pod; give --kube-api https://HOST:PORT",
    )?;
    let port: u16 = std::env::var("KUBERNETES_SERVICE_PORT")
        .unwrap_or_else(|_| "443".into())
        .parse()
        .context("KUBERNETES_SERVICE_PORT is not a port")?;
    let host = if host.contains(':') {
        format!("[{host}]") // an IPv6 address
    } else {
        host
    };
    parse_url(&format!("https://{host}:{port}"))
}

/// `https://HOST[:PORT]` (a trailing `/` allowed; IPv6 in brackets), nothing more.
pub fn parse_url(url: &str) -> Result<Uri> {
    if !url.starts_with("https://") {
        bail!("`{url}`: the API server is reached over https:// only");
    }
    let uri: Uri = url
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.path() != "/" || uri.query().is_some() {
        bail!("`{url}`: give the server only (https://HOST:PORT), no path");
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("`{url}`: no host");
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ids: &str) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"web-1","namespace":"shop","uid":"{uid}","resourceVersion":"7"}},"status":{{"containerStatuses":[{ids}]}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn watch_events_add_update_and_retire_pods() {
        let names = Shared::default();
        let mut listing = Listing::default();
        listing.apply(Event::Apply(pod("u1", "")), &names);
        assert_eq!(names.read().unwrap().pods["u1"].name, "web-1");
        // The container started: its id arrives in a MODIFIED event.
        let started = pod("u1", r#"{"name":"app","containerID":"containerd://abc"}"#);
        listing.apply(Event::Apply(started), &names);
        assert_eq!(names.read().unwrap().containers["abc"], "app");
        listing.apply(Event::Delete(pod("u1", "")), &names);
        assert!(
            names.read().unwrap().pods.contains_key("u1"),
            "kept for the retention"
        );
    }

    #[test]
    fn a_list_replaces_the_names_when_complete() {
        let names = Shared::default();
        let mut listing = Listing::default();
        listing.apply(Event::Apply(pod("old", "")), &names);
        listing.apply(Event::Init, &names);
        listing.apply(Event::InitApply(pod("new", "")), &names);
        assert!(
            !names.read().unwrap().pods.contains_key("new"),
            "not before the list is complete"
        );
        listing.apply(Event::InitDone, &names);
        let names = names.read().unwrap();
        assert!(names.pods.contains_key("new"));
        assert!(
            names.pods.contains_key("old"),
            "missing from the list: retiring"
        );
    }

    #[test]
    fn server_urls() {
        let host =
            |url: &str| parse_url(url).map(|u| (u.host().unwrap().to_string(), u.port_u16()));
        assert_eq!(
            host("https://10.96.0.1:443").unwrap(),
            ("10.96.0.1".into(), Some(443))
        );
        assert_eq!(
            host("https://[fd00::1]:6443/").unwrap(),
            ("[fd00::1]".into(), Some(6443))
        );
        assert_eq!(
            host("https://kubernetes.default.svc").unwrap(),
            ("kubernetes.default.svc".into(), None)
        );
        assert!(parse_url("http://10.96.0.1").is_err());
        assert!(parse_url("https://10.96.0.1/api").is_err());
        assert!(parse_url("https://").is_err());
    }

    #[test]
    fn tokens_with_white_space_are_refused() {
        let dir = std::env::temp_dir().join(format!("tcptrace-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc").unwrap();
        assert!(check_token(&file).is_ok());
        std::fs::write(&file, "abc\n").unwrap();
        assert!(format!("{:#}", check_token(&file).unwrap_err()).contains("newline"));
        std::fs::write(&file, "\n").unwrap();
        assert!(format!("{:#}", check_token(&file).unwrap_err()).contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
