//! Kubernetes: what a cgroup path says about its processes (`cgroup`), and the names of
//! this node's pods and containers (`pod_names`), from the kubelet's pod list (hyper's
//! HTTP client) or the API server (`api`, kube-rs's watcher).
pub mod api;
pub mod cgroup;
pub mod pod_names;
