//! `run --labels workload,peer` (root): the remote of a connection is named by what holds
//! its address in the cluster, as a fake API server's pods, services and nodes say;
//! names follow pods as they come and go; a watch cut off resumes without listing again;
//! and a cluster of 10,000 pods and 2,000 services costs the agent a bounded, measured
//! amount of memory.
//!
//! The addresses are loopback ones (127.0.0.0/8 is local as a whole), so that real
//! connections reach them; the address book is consulted before `loopback`.
mod common;
mod fake_api;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use common::*;
use fake_api::FakeApiServer;
use serde_json::{json, Value};

fn pid() -> u32 {
    std::process::id()
}

/// A running pod `namespace/name` with `ip`, on `node` at `host_ip`.
fn pod(uid: &str, namespace: &str, name: &str, ip: &str, node: &str, host_ip: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "labels": {"app": name},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T00:00:00Z"},
            // What makes a real pod's bytes: managed fields, parsed and skipped.
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {
                    "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:status": {}, "f:type": {}},
                    "k:{\"type\":\"PodScheduled\"}": {".": {}, "f:lastProbeTime": {}, "f:status": {}, "f:type": {}}},
                    "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {},
                    "f:podIPs": {".": {}, "k:{\"ip\":\"x\"}": {".": {}, "f:ip": {}}}, "f:startTime": {}}}}],
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1.2.3"}]},
        "status": {
            "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                "image": "registry.example/app:1.2.3", "imageID": "",
                "containerID": format!("containerd://{uid}")}],
        },
    })
}

fn service(uid: &str, namespace: &str, name: &str, ip: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {"app": name}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"port": 5432, "protocol": "TCP", "targetPort": 5432}], "selector": {"app": name}},
        "status": {"loadBalancer": {}},
    })
}

fn uid(n: u32) -> String {
    format!("{:08x}-5555-4000-8000-{n:012x}", pid())
}

/// `run --labels LABELS` against `server`, 127.0.0.0/8 the cluster's range and
/// 127.1.0.0/16 a named one (with `peer`).
fn agent_with(server: &FakeApiServer, labels: &str) -> Agent {
    let args = server.agent_args(&format!("node-{}", pid()));
    let mut all = vec!["--labels", labels];
    all.extend(args.iter().map(String::as_str));
    if labels.contains("peer") {
        all.extend([
            "--cluster-cidrs",
            "127.0.0.0/8",
            "--peer-cidrs",
            "lab=127.1.0.0/16",
        ]);
    }
    Agent::start(&all)
}

/// Refused connections counted towards `peer`, summed over every workload.
fn refused_towards(m: &HashMap<String, f64>, peer: &str) -> f64 {
    series_of(m, "tcptrace_workload_connect_failures_total")
        .iter()
        .filter(|(s, _)| s.contains(&format!("peer=\"{peer}\"")) && s.contains("refused"))
        .map(|(_, v)| v)
        .sum()
}

/// Connect to `ip` on a closed port until a refusal is counted towards `peer` (10 s at
/// most): the agent names the event as it reads it, by the book it has then.
fn assert_refused_named(agent: &Agent, ip: &str, peer: &str) {
    let ip: IpAddr = ip.parse().unwrap();
    let before = refused_towards(&agent.scrape(), peer);
    let named = poll_until(Duration::from_secs(10), || {
        let closed = free_port(ip);
        let refused =
            TcpStream::connect_timeout(&SocketAddr::new(ip, closed), Duration::from_secs(1));
        assert!(refused.is_err(), "{ip}:{closed} accepted");
        (refused_towards(&agent.scrape(), peer) > before).then_some(())
    });
    if named.is_none() {
        let m = agent.scrape();
        panic!(
            "a refusal from {ip} never counted towards peer=\"{peer}\": {:#?}\n{}",
            series_of(&m, "tcptrace_workload_connect_failures_total"),
            agent.stderr()
        );
    }
}

fn until_book_holds(agent: &Agent, holder: &str, n: f64) {
    let series = format!("tcptrace_peer_addresses{{holder=\"{holder}\"}}");
    wait_until(Duration::from_secs(30), &format!("{series} = {n}"), || {
        (value(&agent.scrape(), &series) == n).then_some(())
    });
}

fn is_watch(request_line: &str) -> bool {
    request_line.contains("watch=true")
}

#[test]
fn peers_are_named_by_pods_services_and_nodes_and_follow_pods_as_they_go() {
    require_root!();
    let _serial = serial();
    let node = format!("node-{}", pid());
    let server = FakeApiServer::serve(vec![pod(
        &uid(1),
        "payments",
        "db-0",
        "127.0.77.1",
        &node,
        "127.0.77.9",
    )]);
    server.add_service(service(&uid(2), "payments", "postgres", "127.0.77.2"));
    let agent = agent_with(&server, "workload,peer");
    until_book_holds(&agent, "service", 1.0);
    until_book_holds(&agent, "pod", 1.0);

    assert_refused_named(&agent, "127.0.77.1", "pod:payments/db-0");
    assert_refused_named(&agent, "127.0.77.2", "service:payments/postgres");
    assert_refused_named(&agent, "127.0.77.9", &format!("node:{node}"));
    assert_refused_named(&agent, "127.1.0.5", "lab");
    assert_refused_named(&agent, "127.0.77.3", "unresolved");

    // The pod goes; a new one is given its address: the address reads as the new pod,
    // though the old one's names are still retained for its last connections.
    server.delete_pod(&uid(1));
    server.add(pod(
        &uid(3),
        "payments",
        "db-1",
        "127.0.77.1",
        &node,
        "127.0.77.9",
    ));
    assert_refused_named(&agent, "127.0.77.1", "pod:payments/db-1");

    // A watch cut off (an API server restart) resumes from the version seen: a pod
    // added meanwhile is named, and nothing is listed again.
    server.pause();
    server.add(pod(
        &uid(4),
        "shop",
        "web-0",
        "127.0.77.4",
        &node,
        "127.0.77.9",
    ));
    server.resume();
    assert_refused_named(&agent, "127.0.77.4", "pod:shop/web-0");
    // The peer watches are the requests without a node's field selector (the pod-name
    // watch of this node has one).
    let requests: Vec<String> = server
        .requests()
        .into_iter()
        .map(|r| r.0)
        .filter(|r| !r.contains("fieldSelector"))
        .collect();
    let lists: Vec<&String> = requests.iter().filter(|r| !is_watch(r)).collect();
    assert_eq!(
        lists.len(),
        2,
        "one list of pods, one of services: {lists:?}"
    );
    for list in lists {
        assert!(list.contains("limit=500"), "a page at a time: {list}");
    }
    let pod_watches = requests
        .iter()
        .filter(|r| is_watch(r) && r.starts_with("GET /api/v1/pods?"))
        .count();
    assert!(pod_watches >= 2, "the watch resumed: {requests:?}");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The agent's memory for a cluster of 10,000 pods on 100 nodes and 2,000 services,
/// against an agent beside it with the same settings but no `peer` (it watches only its
/// node's pods, of which there are none): the difference is what the peer names cost.
#[test]
fn a_cluster_of_ten_thousand_pods_costs_a_bounded_measured_amount_of_memory() {
    require_root!();
    let _serial = serial();
    const PODS: u32 = 10_000;
    const SERVICES: u32 = 2_000;
    let pods = (0..PODS)
        .map(|n| {
            let ip = format!("127.{}.{}.{}", 10 + n / 65536, (n / 256) % 256, n % 256);
            let node = format!("worker-{}", n % 100);
            let host = format!("127.9.0.{}", n % 100);
            let name = format!("api-7d4b9c8f5-{n:05}");
            pod(
                &uid(100_000 + n),
                &format!("team-{}", n % 50),
                &name,
                &ip,
                &node,
                &host,
            )
        })
        .collect();
    let server = FakeApiServer::serve(pods);
    for n in 0..SERVICES {
        let ip = format!("127.8.{}.{}", n / 256, n % 256);
        let name = format!("svc-{n:04}");
        server.add_service(service(
            &uid(200_000 + n),
            &format!("team-{}", n % 50),
            &name,
            &ip,
        ));
    }
    let baseline = agent_with(&server, "workload");
    let agent = agent_with(&server, "workload,peer");
    until_book_holds(&agent, "pod", f64::from(PODS));
    until_book_holds(&agent, "service", f64::from(SERVICES));
    until_book_holds(&agent, "node", 100.0);
    // A label lookup among them all.
    assert_refused_named(&agent, "127.10.39.15", "pod:team-49/api-7d4b9c8f5-09999");
    let (rss, hwm) = memory_kib(agent.pid());
    let (base_rss, base_hwm) = memory_kib(baseline.pid());
    let listed = (server.listed_bytes("pods"), server.listed_bytes("services"));
    let pages = server
        .requests()
        .iter()
        .filter(|r| r.0.starts_with("GET /api/v1/pods?") && !is_watch(&r.0))
        .filter(|r| !r.0.contains("fieldSelector"))
        .count();
    assert_eq!(pages, 20, "10,000 pods in pages of 500");
    eprintln!(
        "peer names for {PODS} pods, {SERVICES} services: agent RSS {rss} KiB (peak {hwm}), \
         beside it without peer {base_rss} KiB (peak {base_hwm}): +{} KiB (peak +{} KiB); \
         lists served: pods {} bytes, services {} bytes",
        rss.saturating_sub(base_rss),
        hwm.saturating_sub(base_hwm),
        listed.0,
        listed.1
    );
    // Bounds with room over what was measured here (METRICS.md gives the figures).
    assert!(
        rss.saturating_sub(base_rss) <= 12 * 1024,
        "the book costs {} KiB",
        rss.saturating_sub(base_rss)
    );
    assert!(
        hwm.saturating_sub(base_hwm) <= 24 * 1024,
        "the lists peaked at +{} KiB",
        hwm.saturating_sub(base_hwm)
    );
    assert_eq!(
        value(&agent.scrape(), "tcptrace_peer_addresses_refused_total"),
        0.0
    );
}
