//! Kubernetes: what a cgroup path says about its processes (`cgroup`), the names of
//! this node's pods and containers (`pod_names`), from the kubelet's pod list (hyper's
//! HTTP client) or the API server (`api`, kube-rs's watcher), and who holds a remote
//! address in the cluster (`peers`, filled by `peer_watch`); both keep a gone object's
//! names for a while (`retention`).
pub mod api;
pub mod cgroup;
pub mod peer_watch;
pub mod peers;
pub mod pod_names;
pub mod retention;
