//! Kubernetes: what a cgroup path says about its processes (`cgroup`), and the names of
//! this node's pods and containers (`pod_names`), from the API server (`api`) or the
//! kubelet, both over one small HTTP/1.1 GET client (`http_get`).
pub mod api;
pub mod cgroup;
pub mod http_get;
pub mod pod_names;
