//! Validated settings of `tcptrace run`: command-line flags over an optional TOML config
//! file over defaults. Each setting is declared once (`run_settings!`): its flag, its
//! config-file key (the flag's name with `_`) and the function that parses and checks
//! it, the same for both, so a value means the same in both places. Every value is
//! checked before anything touches the kernel, with a message that names it.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    exporter::workloads::RemoteLabel,
    k8s::{
        api,
        peers::{self, Cidr},
        pod_names::NameSource,
    },
    kernel::{check_max_sockets, check_ring_bytes, DEFAULT_MAX_SOCKETS, DEFAULT_RING_BYTES},
};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9479";
pub const DEFAULT_MAX_SERIES: u64 = 2000;
pub const DEFAULT_SERIES_TTL_SECS: u64 = 600;

/// `workload`, `workload,remote` or `workload,peer` -> what is said of the other end
/// (a peer's ranges come from --peer-cidrs and --cluster-cidrs).
pub fn parse_labels(s: &str) -> Result<RemoteLabel, String> {
    let words: Vec<&str> = s.split(',').map(str::trim).collect();
    let known = ["workload", "remote", "peer"];
    let both = words.contains(&"remote") && words.contains(&"peer");
    if !words.contains(&"workload") || words.iter().any(|w| !known.contains(w)) || both {
        return Err(format!(
            "`{s}`: use `workload`, `workload,remote` or `workload,peer`"
        ));
    }
    Ok(if words.contains(&"remote") {
        RemoteLabel::Endpoint
    } else if words.contains(&"peer") {
        RemoteLabel::Peer(Default::default())
    } else {
        RemoteLabel::Off
    })
}

/// A list of address ranges (`--cluster-cidrs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

/// A list of named address ranges (`--peer-cidrs`), most specific first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedCidrs(pub Vec<(String, Cidr)>);

pub fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    peers::parse_cidrs(s).map(CidrList)
}

pub fn parse_named_cidrs(s: &str) -> Result<NamedCidrs, String> {
    peers::parse_named_cidrs(s).map(NamedCidrs)
}

/// Exposed series: at least room for the four `other` series and as much again for one
/// label set of each family.
pub fn check_max_series(n: u64) -> Result<u64, String> {
    let min = 2 * crate::exporter::workloads::OTHER_SERIES as u64;
    if !(min..=1_000_000).contains(&n) {
        return Err(format!(
            "{n} must be between {min} and 1000000 (exposed time series; the `other` series alone take {})",
            min / 2
        ));
    }
    Ok(n)
}

/// `0.0.0.0:9479`, `[::]:9479`, `127.0.0.1:9479`, or `:9479` (every IPv4 address).
/// An IPv4 address in brackets too (`[10.0.0.5]:9479`), so that a manifest can write
/// `[$(HOST_IP)]:9479` for nodes of either family.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!("`{s}` is not ADDR:PORT (e.g. 0.0.0.0:9479, [::]:9479, [10.0.0.5]:9479 or :9479)")
    };
    if let Some(port) = s.strip_prefix(':') {
        return format!("0.0.0.0:{port}").parse().map_err(|_| bad());
    }
    if let Some((ip, port)) = s.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(ip, port.parse().map_err(|_| bad())?));
    }
    s.parse().map_err(|_| bad())
}

pub fn parse_log_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a log level (error, warn, info, debug, trace, off)"))
}

pub fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("`{s}` is not a log format (text, json)")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A positive number of seconds, fractions allowed.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    check_ring_bytes(
        s.parse()
            .map_err(|_| format!("`{s}` is not a byte count"))?,
    )
}

pub fn parse_max_sockets(s: &str) -> Result<u32, String> {
    check_max_sockets(s.parse().map_err(|_| format!("`{s}` is not a number"))?)
}

pub fn parse_max_series(s: &str) -> Result<u64, String> {
    check_max_series(s.parse().map_err(|_| format!("`{s}` is not a number"))?)
}

fn any_text(s: &str) -> Result<String, String> {
    Ok(s.to_string())
}

fn any_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// Declares `RunSettings` from one list: each setting's doc (its `--help`), its clap
/// attributes, its type and its parser; the config-file key is the field's name.
macro_rules! run_settings {
    ($( $(#[$attr:meta])* $name:ident: $ty:ty = $parse:expr; )*) => {
        /// `tcptrace run`'s settings as given, each one optional: from the flags, or
        /// from a `--config` file (`RunSettings::from_toml`); `resolve` adds defaults.
        #[derive(clap::Args, Clone, Debug, Default, PartialEq)]
        pub struct RunSettings {
            $( $(#[$attr])* pub $name: Option<$ty>, )*
        }

        impl RunSettings {
            /// Every key a config file may hold.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// These settings where given, else `other`'s (flags over the file).
            pub fn or(self, other: RunSettings) -> RunSettings {
                RunSettings { $( $name: self.$name.or(other.$name), )* }
            }

            /// The settings a TOML config file gives, each checked like its flag.
            pub fn from_toml(text: &str) -> Result<RunSettings> {
                let mut table: toml::Table = toml::from_str(text)?;
                let mut given = RunSettings::default();
                $(
                    if let Some(value) = table.remove(stringify!($name)) {
                        let key = stringify!($name);
                        given.$name = Some(checked(key, toml_text(key, &value).and_then(|t| $parse(&t)))?);
                    }
                )*
                if let Some(key) = table.keys().next() {
                    bail!("unknown field `{key}`: the keys are {}", Self::KEYS.join(", "));
                }
                Ok(given)
            }
        }
    };
}

run_settings! {
    /// Address and port for /metrics, /healthz and /readyz: `0.0.0.0:9479` (default),
    /// `127.0.0.1:9479`, `[::]:9479`, `[10.0.0.5]:9479`, or `:9479` for every IPv4
    /// address.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    listen: SocketAddr = parse_listen;
    /// A second, small listener serving only /healthz and /readyz (404 otherwise), for
    /// the kubelet's probes: answered even while every connection of --listen is taken.
    /// Same forms as --listen; at most 8 connections, 2 s each. Off by default.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    health_listen: SocketAddr = parse_listen;
    /// Ring buffer size in bytes: a power of two from 4096 to 1 GiB (default 4 MiB).
    /// Only --labels reads events from it; without, it is one page.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_bytes)]
    ring_bytes: u32 = parse_ring_bytes;
    /// Sockets the fallback socket map tracks at once (default 65536), on kernels
    /// without socket storage for tracing programs (before 5.11, or without BTF).
    /// Sockets beyond it are counted, without owner or handshake latency; their counts
    /// stay exact.
    #[arg(long, value_name = "N", value_parser = parse_max_sockets)]
    max_sockets: u32 = parse_max_sockets;
    /// (The global --log-level; `log_level` in the config file.)
    #[arg(skip)]
    log_level: log::LevelFilter = parse_log_level;
    /// (The global --log-format; `log_format` in the config file.)
    #[arg(skip)]
    log_format: LogFormat = parse_log_format;
    /// Per-workload series: `workload` (namespace, pod, container and controller from
    /// the owner's cgroup and, with --kube-api or --kubelet, the pod's names; container id or
    /// host process outside Kubernetes), optionally `,remote` (the peer's ip:port,
    /// ephemeral ports collapsed) or `,peer` (who holds the peer's address:
    /// `pod:NS/NAME`, `service:NS/NAME`, `node:NAME`, a --peer-cidrs name, `unresolved`,
    /// `loopback` or `external`; needs --kube-api and RBAC list/watch on pods and services
    /// cluster-wide, see DEPLOY.md). Off by default.
    #[arg(long, value_name = "LIST", value_parser = parse_labels)]
    labels: RemoteLabel = parse_labels;
    /// With `--labels workload,peer`: the cluster's pod and service ranges; an address
    /// there that no pod, service or node holds reads as `unresolved`, any other as
    /// `loopback` or `external` (default: the private ranges 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16, 100.64.0.0/10 and fc00::/7).
    #[arg(long, value_name = "CIDR,..", value_parser = parse_cidr_list)]
    cluster_cidrs: CidrList = parse_cidr_list;
    /// With `--labels workload,peer`: names for address ranges outside the cluster's
    /// objects, e.g. `office=192.0.2.0/24,db-vpc=10.20.0.0/16` (the most specific range
    /// wins; checked after pods, services and nodes).
    #[arg(long, value_name = "NAME=CIDR,..", value_parser = parse_named_cidrs)]
    peer_cidrs: NamedCidrs = parse_named_cidrs;
    /// The most time series the per-workload families expose at once (default 2000),
    /// as Prometheus counts them: 1 per counter label set, 9 per handshake histogram
    /// label set (6 buckets, +Inf, _sum, _count), the `other` series included. Beyond
    /// it a new label set loses its remote's port, then its remote (with `,remote`; with
    /// `,peer`, its peer becomes `other`), then goes to its family's `other` series;
    /// tcptrace_series_folded_total counts each step.
    #[arg(long, value_name = "N", value_parser = parse_max_series)]
    max_series: u64 = parse_max_series;
    /// Drop workload series not updated for this many seconds (default 600).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    series_ttl: Duration = parse_seconds;
    /// The kubelet's pod list, for pod and container names: an http:// URL such as
    /// http://127.0.0.1:10255/pods (the read-only port) or a local proxy.
    /// Not with --kube-api.
    #[arg(long, value_name = "URL")]
    kubelet: String = any_text;
    /// Pod and container names from the Kubernetes API server: the pods of this node
    /// only, listed then watched. `in-cluster` (in a pod: KUBERNETES_SERVICE_HOST and
    /// _PORT) or https://HOST:PORT. Needs RBAC list and watch on pods (see DEPLOY.md);
    /// with `--labels workload,peer`, every pod and service of the cluster, listed
    /// then watched (list and watch on pods and services).
    #[arg(long, value_name = "in-cluster|URL")]
    kube_api: String = any_text;
    /// With --kube-api: a directory holding the service account's `token` and the
    /// cluster's `ca.crt` (default /var/run/secrets/kubernetes.io/serviceaccount).
    #[arg(long, value_name = "DIR")]
    kube_credentials: PathBuf = any_path;
    /// With --kube-api: this node's name (default: the NODE_NAME environment variable,
    /// which the DaemonSet sets from spec.nodeName).
    #[arg(long, value_name = "NAME")]
    node_name: String = any_text;
}

impl RunSettings {
    pub fn load(path: &Path) -> Result<RunSettings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        RunSettings::from_toml(&text).with_context(|| format!("config file {}", path.display()))
    }
}

/// A config-file value as its flag would be written: strings as they are, numbers and
/// booleans in decimal.
fn toml_text(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "{key} must be a string or a number, not a {}",
            other.type_str()
        )),
    }
}

#[derive(Debug, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub health_listen: Option<SocketAddr>,
    pub ring_bytes: u32,
    pub max_sockets: u32,
    pub log_level: log::LevelFilter,
    pub log_format: LogFormat,
    /// Per-workload series, when `labels` is set.
    pub labels: Option<crate::exporter::workloads::LabelOptions>,
}

/// Name the config key in a value's error.
fn checked<T>(key: &str, r: Result<T, String>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

/// The settings given (flags over the file), with defaults for the rest.
pub fn resolve(given: RunSettings) -> Result<Settings> {
    Ok(Settings {
        labels: labels(&given)?,
        listen: match given.listen {
            Some(v) => v,
            None => parse_listen(DEFAULT_LISTEN).map_err(anyhow::Error::msg)?,
        },
        health_listen: given.health_listen,
        ring_bytes: given.ring_bytes.unwrap_or(DEFAULT_RING_BYTES),
        max_sockets: given.max_sockets.unwrap_or(DEFAULT_MAX_SOCKETS),
        log_level: given.log_level.unwrap_or(log::LevelFilter::Info),
        log_format: given.log_format.unwrap_or(LogFormat::Text),
    })
}

fn labels(given: &RunSettings) -> Result<Option<crate::exporter::workloads::LabelOptions>> {
    let names = name_source(given)?;
    let remote = match given.labels.clone() {
        Some(v) => v,
        None if names == NameSource::None => return Ok(None),
        None => anyhow::bail!(
            "a pod name source (kubelet, kube_api) names per-workload series: add --labels workload"
        ),
    };
    let ranges_given = given.cluster_cidrs.is_some() || given.peer_cidrs.is_some();
    let remote = match remote {
        RemoteLabel::Peer(_) if !matches!(names, NameSource::Api(_)) => anyhow::bail!(
            "labels workload,peer: peer names come from the API server: add --kube-api (or use \
             workload,remote and join `remote` with kube-state-metrics in PromQL, see METRICS.md)"
        ),
        RemoteLabel::Peer(_) => RemoteLabel::Peer(peers::Ranges {
            named: given.peer_cidrs.clone().map(|n| n.0).unwrap_or_default(),
            cluster: match &given.cluster_cidrs {
                Some(c) => c.0.clone(),
                None => peers::Ranges::default().cluster,
            },
        }),
        _ if ranges_given => anyhow::bail!(
            "cluster_cidrs and peer_cidrs name the peer label's values: add --labels workload,peer"
        ),
        other => other,
    };
    Ok(Some(crate::exporter::workloads::LabelOptions {
        remote,
        max_series: given.max_series.unwrap_or(DEFAULT_MAX_SERIES) as usize,
        ttl: given
            .series_ttl
            .unwrap_or(Duration::from_secs(DEFAULT_SERIES_TTL_SECS)),
        names,
    }))
}

/// `--kubelet` or `--kube-api` (with the node's name and the credentials), not both.
fn name_source(given: &RunSettings) -> Result<NameSource> {
    let api = match (given.kubelet.clone(), given.kube_api.clone()) {
        (Some(_), Some(_)) => {
            anyhow::bail!("kubelet and kube_api are two sources of pod names: choose one")
        }
        (Some(url), None) => return Ok(NameSource::Kubelet(url)),
        (None, None) => return Ok(NameSource::None),
        (None, Some(api)) => api,
    };
    let url = match api.as_str() {
        "in-cluster" => None,
        url => {
            checked("kube_api", api::parse_url(url).map_err(|e| e.to_string()))?;
            Some(api)
        }
    };
    let node = given
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .context(
            "kube_api watches the pods of this node: give --node-name or set NODE_NAME \
             (in a DaemonSet, from the downward API: fieldRef spec.nodeName)",
        )?;
    let credentials = given
        .kube_credentials
        .clone()
        .unwrap_or_else(|| api::IN_CLUSTER_CREDENTIALS.into());
    Ok(NameSource::Api(api::ApiTarget {
        url,
        credentials,
        node,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a config file's settings give, as printed.
    fn resolve_error(text: &str) -> String {
        format!(
            "{:#}",
            RunSettings::from_toml(text).and_then(resolve).unwrap_err()
        )
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let file = RunSettings::from_toml(
            "listen = \"127.0.0.1:1234\"\nring_bytes = 8192\nlog_format = \"json\"\n",
        )
        .unwrap();
        let flags = RunSettings {
            ring_bytes: Some(16384),
            ..Default::default()
        };
        let s = resolve(flags.or(file)).unwrap();
        assert_eq!(s.listen, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(s.health_listen, None, "off unless asked for");
        assert_eq!(s.ring_bytes, 16384);
        assert_eq!(s.max_sockets, DEFAULT_MAX_SOCKETS);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(resolve(RunSettings::default()).unwrap().listen.port(), 9479);
    }

    #[test]
    fn bad_values_are_named() {
        let err = resolve_error;
        assert!(err("ring_bytes = 0").contains("ring_bytes: 0 must be a power of two"));
        assert!(err("ring_bytes = 4097").contains("ring_bytes: 4097"));
        assert!(err("ring_bytes = 99999999999999").contains("ring_bytes"));
        assert!(err("max_sockets = 1").contains("max_sockets: 1 must be between"));
        assert!(err("listen = \"nowhere\"").contains("listen: `nowhere` is not ADDR:PORT"));
        assert!(err("health_listen = \"9480\"").contains("health_listen: `9480` is not ADDR:PORT"));
        assert!(err("log_level = \"loud\"").contains("log_level"));
        assert!(err("log_format = \"xml\"").contains("log_format"));
        assert!(err("rings = 4096").contains("unknown field `rings`"));
        assert!(err("labels = \"pods\"").contains("labels: `pods`"));
        assert!(err("labels = \"workload\"\nmax_series = 5").contains("max_series: 5"));
        assert!(err("ring_bytes = \"big\"").contains("ring_bytes"));
        assert!(
            err("listen = ").contains("TOML parse error"),
            "{}",
            err("listen = ")
        );
    }

    #[test]
    fn workload_labels_from_the_file() {
        let file = RunSettings::from_toml(
            "labels = \"workload,remote\"\nmax_series = 500\nkubelet = \"http://127.0.0.1:10255/pods\"\n",
        )
        .unwrap();
        let l = resolve(file).unwrap().labels.unwrap();
        assert_eq!(l.remote, RemoteLabel::Endpoint);
        assert_eq!(l.max_series, 500);
        assert_eq!(l.ttl.as_secs(), DEFAULT_SERIES_TTL_SECS);
        assert_eq!(
            l.names,
            NameSource::Kubelet("http://127.0.0.1:10255/pods".into())
        );
        assert!(resolve(RunSettings::default()).unwrap().labels.is_none());
    }

    #[test]
    fn peer_labels_need_the_api_server_and_take_their_ranges() {
        let err = resolve_error;
        let api = "kube_api = \"in-cluster\"\nnode_name = \"n\"\n";
        assert!(err("labels = \"workload,peer\"").contains("add --kube-api"));
        assert!(err("labels = \"workload,remote,peer\"").contains("workload,peer`"));
        assert!(
            err("labels = \"workload\"\ncluster_cidrs = \"10.0.0.0/8\"").contains("workload,peer")
        );
        assert!(err(&format!(
            "labels = \"workload,peer\"\n{api}peer_cidrs = \"x=10.0.0.1/8\""
        ))
        .contains("host bits"));
        let file = RunSettings::from_toml(&format!(
            "labels = \"workload,peer\"\n{api}cluster_cidrs = \"10.42.0.0/16,10.96.0.0/12\"\npeer_cidrs = \"corp=192.0.2.0/24\"\n"
        ))
        .unwrap();
        let RemoteLabel::Peer(ranges) = resolve(file).unwrap().labels.unwrap().remote else {
            panic!("peer");
        };
        assert_eq!(ranges.cluster.len(), 2);
        assert_eq!(ranges.named[0].0, "corp");
    }

    #[test]
    fn the_api_server_as_name_source() {
        let file = RunSettings::from_toml(
            "labels = \"workload\"\nkube_api = \"in-cluster\"\nnode_name = \"node-7\"\n",
        )
        .unwrap();
        let l = resolve(file).unwrap().labels.unwrap();
        assert_eq!(
            l.names,
            NameSource::Api(api::ApiTarget {
                url: None,
                credentials: api::IN_CLUSTER_CREDENTIALS.into(),
                node: "node-7".into(),
            })
        );
        let err = |flags: RunSettings| format!("{:#}", resolve(flags).unwrap_err());
        let api = |url: &str| RunSettings {
            labels: Some(RemoteLabel::Off),
            kube_api: Some(url.into()),
            node_name: Some("n".into()),
            ..Default::default()
        };
        assert!(err(api("http://10.0.0.1")).contains("https:// only"));
        assert!(err(RunSettings {
            kubelet: Some("http://127.0.0.1:10255/pods".into()),
            ..api("in-cluster")
        })
        .contains("choose one"));
        assert!(err(RunSettings {
            labels: None,
            ..api("in-cluster")
        })
        .contains("add --labels workload"));
    }

    #[test]
    fn health_listen_from_the_file_or_the_flag() {
        let file = RunSettings::from_toml("health_listen = \":9480\"\n").unwrap();
        assert_eq!(
            resolve(file).unwrap().health_listen,
            Some("0.0.0.0:9480".parse().unwrap())
        );
        let file = RunSettings::from_toml("health_listen = \":9480\"\n").unwrap();
        let flags = RunSettings {
            health_listen: Some("10.1.2.3:9481".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            resolve(flags.or(file)).unwrap().health_listen,
            Some("10.1.2.3:9481".parse().unwrap())
        );
    }

    /// One declaration: every flag is a config-file key of the same name (`-` as `_`),
    /// and every key but the global log ones is a flag.
    #[test]
    fn every_flag_is_a_config_key_and_back() {
        use clap::Args as _;
        let command = RunSettings::augment_args(clap::Command::new("run"));
        let mut flags: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| l.replace('-', "_"))
            .collect();
        flags.sort();
        let mut keys: Vec<String> = RunSettings::KEYS
            .iter()
            .filter(|k| !["log_level", "log_format"].contains(k))
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        assert_eq!(flags, keys);
        // And a key parses like its flag: the same function, the same message.
        let err = format!(
            "{:#}",
            RunSettings::from_toml("max_sockets = 1").unwrap_err()
        );
        assert_eq!(
            err,
            format!("max_sockets: {}", parse_max_sockets("1").unwrap_err())
        );
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen(":9479").unwrap(),
            "0.0.0.0:9479".parse().unwrap()
        );
        assert_eq!(parse_listen("[::]:80").unwrap(), "[::]:80".parse().unwrap());
        assert_eq!(
            parse_listen("[10.0.0.5]:9479").unwrap(),
            "10.0.0.5:9479".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[fd00::5]:9479").unwrap(),
            "[fd00::5]:9479".parse().unwrap()
        );
        assert!(parse_listen("[10.0.0.5]").is_err());
        assert!(parse_listen("[nowhere]:80").is_err());
        assert!(parse_listen("localhost:80").is_err());
        assert!(parse_listen("1.2.3.4").is_err());
    }
}
