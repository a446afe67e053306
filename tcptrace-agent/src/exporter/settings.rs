//! Validated settings of `tcptrace run`: command-line flags over an optional TOML config
//! file over defaults. Every value is checked here, before anything touches the kernel,
//! with a message that names the value and where it came from. The flag parsers use the
//! same checks, so a value means the same in both places.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::{
    k8s::{api, pod_names::NameSource},
    kernel::{check_max_sockets, check_ring_bytes, DEFAULT_MAX_SOCKETS, DEFAULT_RING_BYTES},
};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9479";
pub const DEFAULT_MAX_SERIES: u64 = 2000;
pub const DEFAULT_SERIES_TTL_SECS: u64 = 600;

/// `workload` or `workload,remote` -> whether `remote` is on.
pub fn parse_labels(s: &str) -> Result<bool, String> {
    let words: Vec<&str> = s.split(',').map(str::trim).collect();
    if !words.contains(&"workload") || words.iter().any(|w| !["workload", "remote"].contains(w)) {
        return Err(format!("`{s}`: use `workload` or `workload,remote`"));
    }
    Ok(words.contains(&"remote"))
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

/// The config file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    /// A second listener for /healthz and /readyz only; off when absent.
    pub health_listen: Option<String>,
    pub ring_bytes: Option<u64>,
    pub max_sockets: Option<u64>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    /// `workload` or `workload,remote`.
    pub labels: Option<String>,
    pub max_series: Option<u64>,
    /// Seconds.
    pub series_ttl: Option<u64>,
    pub kubelet: Option<String>,
    /// `in-cluster` or `https://HOST:PORT`.
    pub kube_api: Option<String>,
    pub kube_credentials: Option<PathBuf>,
    pub node_name: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        ConfigFile::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ConfigFile> {
        Ok(toml::from_str(text)?)
    }
}

/// Flags as given on the command line (`None` = not given).
#[derive(Debug, Default)]
pub struct Flags {
    pub listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
    pub ring_bytes: Option<u32>,
    pub max_sockets: Option<u32>,
    pub log_level: Option<log::LevelFilter>,
    pub log_format: Option<LogFormat>,
    /// `--labels`: whether `remote` is on.
    pub labels: Option<bool>,
    pub max_series: Option<u64>,
    pub series_ttl: Option<std::time::Duration>,
    pub kubelet: Option<String>,
    pub kube_api: Option<String>,
    pub kube_credentials: Option<PathBuf>,
    pub node_name: Option<String>,
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

/// Flags win over the file, the file over defaults; file values are checked like flags.
pub fn resolve(flags: Flags, file: ConfigFile) -> Result<Settings> {
    let labels = labels(&flags, &file)?;
    Ok(Settings {
        listen: match (flags.listen, file.listen) {
            (Some(v), _) => v,
            (None, Some(s)) => checked("listen", parse_listen(&s))?,
            (None, None) => parse_listen(DEFAULT_LISTEN).map_err(anyhow::Error::msg)?,
        },
        health_listen: match (flags.health_listen, file.health_listen) {
            (Some(v), _) => Some(v),
            (None, Some(s)) => Some(checked("health_listen", parse_listen(&s))?),
            (None, None) => None,
        },
        ring_bytes: match (flags.ring_bytes, file.ring_bytes) {
            (Some(v), _) => v,
            (None, Some(n)) => checked("ring_bytes", check_ring_bytes(n))?,
            (None, None) => DEFAULT_RING_BYTES,
        },
        max_sockets: match (flags.max_sockets, file.max_sockets) {
            (Some(v), _) => v,
            (None, Some(n)) => checked("max_sockets", check_max_sockets(n))?,
            (None, None) => DEFAULT_MAX_SOCKETS,
        },
        log_level: match (flags.log_level, file.log_level) {
            (Some(v), _) => v,
            (None, Some(s)) => checked("log_level", parse_log_level(&s))?,
            (None, None) => log::LevelFilter::Info,
        },
        log_format: match (flags.log_format, file.log_format) {
            (Some(v), _) => v,
            (None, Some(s)) => checked("log_format", parse_log_format(&s))?,
            (None, None) => LogFormat::Text,
        },
        labels,
    })
}

fn labels(
    flags: &Flags,
    file: &ConfigFile,
) -> Result<Option<crate::exporter::workloads::LabelOptions>> {
    let names = name_source(flags, file)?;
    let remote = match (flags.labels, &file.labels) {
        (Some(v), _) => v,
        (None, Some(s)) => checked("labels", parse_labels(s))?,
        (None, None) if names == NameSource::None => return Ok(None),
        (None, None) => anyhow::bail!(
            "a pod name source (kubelet, kube_api) names per-workload series: add --labels workload"
        ),
    };
    let max_series = match (flags.max_series, file.max_series) {
        (Some(v), _) => v,
        (None, Some(n)) => checked("max_series", check_max_series(n))?,
        (None, None) => DEFAULT_MAX_SERIES,
    };
    let ttl = match (flags.series_ttl, file.series_ttl) {
        (Some(v), _) => v,
        (None, Some(0)) => anyhow::bail!("series_ttl: must be at least 1 second"),
        (None, Some(n)) => std::time::Duration::from_secs(n),
        (None, None) => std::time::Duration::from_secs(DEFAULT_SERIES_TTL_SECS),
    };
    Ok(Some(crate::exporter::workloads::LabelOptions {
        remote,
        max_series: max_series as usize,
        ttl,
        names,
    }))
}

/// `--kubelet` or `--kube-api` (with the node's name and the credentials), not both.
fn name_source(flags: &Flags, file: &ConfigFile) -> Result<NameSource> {
    let kubelet = flags.kubelet.clone().or_else(|| file.kubelet.clone());
    let api = flags.kube_api.clone().or_else(|| file.kube_api.clone());
    let api = match (kubelet, api) {
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
            checked("kube_api", api::host_port(url).map_err(|e| e.to_string()))?;
            Some(api)
        }
    };
    let node = flags
        .node_name
        .clone()
        .or_else(|| file.node_name.clone())
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .context(
            "kube_api watches the pods of this node: give --node-name or set NODE_NAME \
             (in a DaemonSet, from the downward API: fieldRef spec.nodeName)",
        )?;
    let credentials = flags
        .kube_credentials
        .clone()
        .or_else(|| file.kube_credentials.clone())
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

    #[test]
    fn flags_override_file_override_defaults() {
        let file = ConfigFile::parse(
            "listen = \"127.0.0.1:1234\"\nring_bytes = 8192\nlog_format = \"json\"\n",
        )
        .unwrap();
        let flags = Flags {
            ring_bytes: Some(16384),
            ..Default::default()
        };
        let s = resolve(flags, file).unwrap();
        assert_eq!(s.listen, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(s.health_listen, None, "off unless asked for");
        assert_eq!(s.ring_bytes, 16384);
        assert_eq!(s.max_sockets, DEFAULT_MAX_SOCKETS);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(
            resolve(Flags::default(), ConfigFile::default())
                .unwrap()
                .listen
                .port(),
            9479
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = |text: &str| {
            format!(
                "{:#}",
                ConfigFile::parse(text)
                    .and_then(|f| resolve(Flags::default(), f))
                    .unwrap_err()
            )
        };
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
        let file = ConfigFile::parse(
            "labels = \"workload,remote\"\nmax_series = 500\nkubelet = \"http://127.0.0.1:10255/pods\"\n",
        )
        .unwrap();
        let l = resolve(Flags::default(), file).unwrap().labels.unwrap();
        assert!(l.remote);
        assert_eq!(l.max_series, 500);
        assert_eq!(l.ttl.as_secs(), DEFAULT_SERIES_TTL_SECS);
        assert_eq!(
            l.names,
            NameSource::Kubelet("http://127.0.0.1:10255/pods".into())
        );
        assert!(resolve(Flags::default(), ConfigFile::default())
            .unwrap()
            .labels
            .is_none());
    }

    #[test]
    fn the_api_server_as_name_source() {
        let file = ConfigFile::parse(
            "labels = \"workload\"\nkube_api = \"in-cluster\"\nnode_name = \"node-7\"\n",
        )
        .unwrap();
        let l = resolve(Flags::default(), file).unwrap().labels.unwrap();
        assert_eq!(
            l.names,
            NameSource::Api(api::ApiTarget {
                url: None,
                credentials: api::IN_CLUSTER_CREDENTIALS.into(),
                node: "node-7".into(),
            })
        );
        let err =
            |flags: Flags| format!("{:#}", resolve(flags, ConfigFile::default()).unwrap_err());
        let api = |url: &str| Flags {
            labels: Some(false),
            kube_api: Some(url.into()),
            node_name: Some("n".into()),
            ..Default::default()
        };
        assert!(err(api("http://10.0.0.1")).contains("https:// only"));
        assert!(err(Flags {
            kubelet: Some("http://127.0.0.1:10255/pods".into()),
            ..api("in-cluster")
        })
        .contains("choose one"));
        assert!(err(Flags {
            labels: None,
            ..api("in-cluster")
        })
        .contains("add --labels workload"));
    }

    #[test]
    fn health_listen_from_the_file_or_the_flag() {
        let file = ConfigFile::parse("health_listen = \":9480\"\n").unwrap();
        assert_eq!(
            resolve(Flags::default(), file).unwrap().health_listen,
            Some("0.0.0.0:9480".parse().unwrap())
        );
        let file = ConfigFile::parse("health_listen = \":9480\"\n").unwrap();
        let flags = Flags {
            health_listen: Some("10.1.2.3:9481".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            resolve(flags, file).unwrap().health_listen,
            Some("10.1.2.3:9481".parse().unwrap())
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
