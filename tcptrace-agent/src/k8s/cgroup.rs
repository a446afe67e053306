//! Attribution: from the cgroup id the kernel records for a socket's owner to the cgroup
//! path, and from the path to what runs there: container runtime and id, Kubernetes pod
//! UID and QoS class, or a systemd unit. Names (namespace, pod, container) need the
//! kubelet or the API server and are not resolved here.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

/// What a cgroup path says about its processes. Fields are absent when the path does
/// not say (a host process has none of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Container scopes as systemd-driven runtimes name them: `<prefix>-<id>.scope`.
const SCOPE_PREFIXES: [(&str, &str); 6] = [
    ("cri-containerd-", "containerd"),
    ("crio-conmon-", "cri-o"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-conmon-", "podman"),
    ("libpod-", "podman"),
];

/// Read a cgroup path (as in /proc/PID/cgroup or below the cgroup2 mount).
pub fn parse(path: &str) -> Workload {
    let mut w = Workload {
        cgroup: path.to_string(),
        ..Workload::default()
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let in_kubepods = segments.iter().any(|s| s.starts_with("kubepods"));
    for (i, seg) in segments.iter().enumerate() {
        if let Some((runtime, id)) = scope_container(seg) {
            w.runtime = Some(runtime);
            w.container_id = Some(id.to_string());
        } else if is_container_id(seg) {
            // cgroupfs driver: the bare id under its pod (Kubernetes) or `docker`.
            let parent = i.checked_sub(1).map(|p| segments[p]).unwrap_or("");
            if parent.starts_with("pod") || parent == "docker" {
                w.runtime = w
                    .runtime
                    .or(Some(if parent == "docker" { "docker" } else { "cri" }));
                w.container_id = Some(seg.to_string());
            }
        }
        if in_kubepods {
            if let Some(uid) = pod_uid(seg) {
                w.pod_uid = Some(uid);
            }
            for qos in ["burstable", "besteffort"] {
                if *seg == qos || *seg == format!("kubepods-{qos}.slice") {
                    w.qos = Some(qos);
                }
            }
        }
        if let Some(unit) = seg.strip_suffix(".service") {
            w.unit = Some(format!("{}.service", unit.replace("\\x2d", "-")));
        }
    }
    if w.pod_uid.is_some() && w.qos.is_none() {
        w.qos = Some("guaranteed");
    }
    w
}

/// `<prefix>-<id>.scope` (systemd driver) or `<prefix>-<id>` (podman's cgroupfs driver:
/// `/libpod_parent/libpod-<id>`).
fn scope_container(seg: &str) -> Option<(&'static str, &str)> {
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_container_id(id).then_some((*runtime, id))
    })
}

/// Container ids are hex, 64 characters in every runtime here (12 at the least).
fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(seg: &str) -> Option<String> {
    let name = seg.strip_suffix(".slice").unwrap_or(seg);
    let (before, uid) = name.rsplit_once("pod")?;
    let systemd = before.starts_with("kubepods") && before.ends_with('-');
    if !(before.is_empty() || systemd) {
        return None;
    }
    let uid = uid.replace('_', "-");
    let valid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then_some(uid)
}

/// cgroup ids (the cgroup2 directory's inode, what `bpf_get_current_cgroup_id` returns)
/// to paths, from a walk of the cgroup2 mount, redone when an id is not found: at most
/// once per batch of events (`new_batch`, every ring-buffer drain), and once per
/// `RETRY_MISS` for the same id, so new containers are found at once while an id whose
/// cgroup is gone costs little.
pub struct CgroupIndex {
    root: Option<PathBuf>,
    paths: IdMap<String>,
    /// What each looked-up path says, parsed once (every event of a busy owner asks).
    parsed: IdMap<Workload>,
    /// Ids a walk did not find, and when.
    misses: IdMap<Instant>,
    /// Whether this batch may still walk.
    may_walk: bool,
}

/// Maps keyed by cgroup id. The ids are inode numbers the kernel hands out, not keys
/// anyone picks, so a multiplicative hash serves; `trace --json` looks up the owner of
/// every event, and SipHash was 7% of the tracer's time under churn.
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the odd constant spreads consecutive ids over all bits.
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(self.0 ^ u64::from(*b));
        }
    }
}

const RETRY_MISS: Duration = Duration::from_secs(1);
/// Remembered misses at most (then forgotten all at once).
const MAX_MISSES: usize = 10_000;

/// At most this many cgroups are indexed (a walk stops there).
const MAX_CGROUPS: usize = 100_000;

impl CgroupIndex {
    pub fn new() -> CgroupIndex {
        let root = cgroup2_root();
        // Without the node's whole hierarchy the owners' cgroup ids lead nowhere, and
        // series say `unresolved` instead of a container: say why once, at the start.
        match &root {
            None => log::warn!(
                "no cgroup2 hierarchy at /sys/fs/cgroup: connections cannot be attributed to \
                 containers (series say container=\"unresolved\"); mount the node's \
                 /sys/fs/cgroup"
            ),
            Some(root) if std::fs::metadata(root).map(|m| m.ino()).ok() != Some(ROOT_CGROUP_ID) => {
                log::warn!(
                    "{} is a cgroup namespace's part of the hierarchy, not its root: only \
                     connections of cgroups below it can be attributed; mount the node's \
                     /sys/fs/cgroup",
                    root.display()
                )
            }
            Some(_) => {}
        }
        CgroupIndex {
            root,
            paths: IdMap::default(),
            parsed: IdMap::default(),
            misses: IdMap::default(),
            may_walk: true,
        }
    }

    pub fn lookup(&mut self, id: u64) -> Option<&Workload> {
        // The common case first: an owner already seen.
        if self.parsed.contains_key(&id) {
            return self.parsed.get(&id);
        }
        if !self.paths.contains_key(&id) {
            let retry = self
                .misses
                .get(&id)
                .is_none_or(|t| t.elapsed() > RETRY_MISS);
            if retry && self.may_walk {
                self.may_walk = false;
                self.walk();
            }
        }
        let Some(path) = self.paths.get(&id) else {
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
            self.misses.insert(id, Instant::now());
            return None;
        };
        Some(self.parsed.entry(id).or_insert_with(|| parse(path)))
    }

    /// A new batch of events: the next unknown id may walk the hierarchy again.
    pub fn new_batch(&mut self) {
        self.may_walk = true;
    }

    fn walk(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        self.paths.clear();
        self.parsed.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if self.paths.len() >= MAX_CGROUPS {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
                self.paths.insert(meta.ino(), format!("/{}", rel.display()));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

impl Default for CgroupIndex {
    fn default() -> Self {
        CgroupIndex::new()
    }
}

/// The id (directory inode) of the cgroup2 hierarchy's root: the first kernfs node.
const ROOT_CGROUP_ID: u64 = 1;

/// The cgroup2 hierarchy: /sys/fs/cgroup itself (unified) or /sys/fs/cgroup/unified
/// (hybrid v1 + v2, as on this project's development machine).
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path shapes seen in the wild, each with where it was seen.
    #[test]
    fn real_world_paths() {
        // Kubernetes e2e_node tests, example path with the systemd driver and CRI-O's
        // conmon scope.
        let w = parse("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7632a2_a56e_4278_987a_22de18008dbe.slice/crio-conmon-0bc5eac79e3ae7a0c2651f14722aa10fa333eb2325c2ca97da33aa284cda81b0.scope");
        assert_eq!(w.runtime, Some("cri-o"));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("0b7632a2-a56e-4278-987a-22de18008dbe")
        );
        assert_eq!(w.qos, Some("burstable"));
        assert_eq!(
            w.container_id.as_deref(),
            Some("0bc5eac79e3ae7a0c2651f14722aa10fa333eb2325c2ca97da33aa284cda81b0")
        );
        // A blog post reading pids.max of a MySQL pod (systemd driver, cgroup v1 pids).
        let w = parse("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1c178021_5860_4495_a1ab_f9ac17877672.slice");
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("1c178021-5860-4495-a1ab-f9ac17877672")
        );
        assert_eq!(w.container_id, None);
        // `podman inspect` output, CgroupPath of a rootful container.
        let w = parse("/machine.slice/libpod-55ea3863351726184e26ca7418f577d04c96dac0009e1f088f6c0c7a1dc2ed7c.scope");
        assert_eq!(w.runtime, Some("podman"));
        assert_eq!(
            w.container_id.as_deref(),
            Some("55ea3863351726184e26ca7418f577d04c96dac0009e1f088f6c0c7a1dc2ed7c")
        );
        assert_eq!(w.pod_uid, None);
        // podman's nested `container` cgroup (cgroup v2, split), from a node-agent test.
        let w = parse("/machine.slice/libpod-0123456789abcdef.scope/container");
        assert_eq!(w.container_id.as_deref(), Some("0123456789abcdef"));
        // podman 4.3 with the cgroupfs manager, seen on this project's machine
        // (/proc/PID/cgroup of a container, cgroup v1/v2 hybrid).
        let w = parse("/libpod_parent/libpod-d90b081dc2cb649c858bfcef751a6c711c574db29b78dce241b2f2f5ba0bcf1b");
        assert_eq!(w.runtime, Some("podman"));
        assert_eq!(
            w.container_id.as_deref(),
            Some("d90b081dc2cb649c858bfcef751a6c711c574db29b78dce241b2f2f5ba0bcf1b")
        );
        // Docker with the systemd driver, a cgroup v1 line of a Java agent's test.
        let w = parse("/system.slice/docker-67f98c9e6188f9c1818672a15dbe46237b6ee7e77f834d40d41c5fb3c2f84a2f.scope");
        assert_eq!(w.runtime, Some("docker"));
        assert_eq!(w.unit, None);
    }

    #[test]
    fn kubelet_naming_for_both_drivers() {
        // kubelet's CgroupName.ToCgroupfs() / ToSystemd() for a Guaranteed pod and for a
        // BestEffort one (UID dashes become underscores under systemd).
        let id = "4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0";
        let w = parse(&format!(
            "/kubepods/pod5e1d9a3c-3f0b-4b8e-9a51-6c3b1f0e2d7a/{id}"
        ));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("5e1d9a3c-3f0b-4b8e-9a51-6c3b1f0e2d7a")
        );
        assert_eq!((w.qos, w.runtime), (Some("guaranteed"), Some("cri")));
        assert_eq!(w.container_id.as_deref(), Some(id));
        let w = parse(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5e1d9a3c_3f0b_4b8e_9a51_6c3b1f0e2d7a.slice/cri-containerd-{id}.scope"
        ));
        assert_eq!((w.qos, w.runtime), (Some("besteffort"), Some("containerd")));
        let w = parse(&format!("/docker/{id}"));
        assert_eq!(w.runtime, Some("docker"));
    }

    #[test]
    fn host_processes_and_units() {
        assert_eq!(parse("/").container_id, None);
        assert_eq!(parse("/init.scope").runtime, None);
        let w = parse("/system.slice/systemd\\x2dresolved.service");
        assert_eq!(w.unit.as_deref(), Some("systemd-resolved.service"));
        // Not a pod: "pod" inside an ordinary name.
        assert_eq!(parse("/system.slice/podman.service").pod_uid, None);
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-2.scope").container_id,
            None
        );
    }

    #[test]
    fn our_own_cgroup_resolves() {
        let root = cgroup2_root().expect("a cgroup2 hierarchy (unified or hybrid)");
        let ino = std::fs::metadata(&root).unwrap().ino();
        // What CgroupIndex::new takes for the whole hierarchy (not a namespace's part).
        assert_eq!(ino, ROOT_CGROUP_ID);
        let mut index = CgroupIndex::new();
        assert_eq!(index.lookup(ino).map(|w| w.cgroup.as_str()), Some("/"));
    }
}
