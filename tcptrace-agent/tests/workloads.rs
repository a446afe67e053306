//! `run --labels workload[,remote]` (root): processes in pod- and container-shaped
//! cgroups make connections, and the per-workload series name them, from the cgroup path
//! alone or with names from a kubelet pod list; the series budget (exposed time series)
//! holds under thousands of label sets and 1,000 distinct peers, the scrape stays within
//! the worst case METRICS.md documents, and every folded event is accounted for.
mod common;
mod fake_api;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use fake_api::FakeApiServer;
use serde_json::Value;
use tcptrace_agent::{
    exporter::settings::DEFAULT_MAX_SERIES, exporter::workloads::BUDGET_FAMILIES,
    exporter::worst_case,
};

/// Accept connections on `listener` and hand each to `handle` (with the stop flag, for
/// answers that stay open) on a thread of its own, until the returned flag is set.
fn serve_until_stopped(
    listener: TcpListener,
    mut handle: impl FnMut(TcpStream, &AtomicBool) + Send + 'static,
) -> Arc<AtomicBool> {
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            let Ok((conn, _)) = listener.accept() else {
                // The fake server's idle loop, not a wait: a non-blocking accept every
                // 20 ms, so that it sees the stop flag.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            conn.set_nonblocking(false).unwrap();
            handle(conn, &stopped);
        }
    });
    stop
}

/// Serve `body` as the kubelet's `/pods` until dropped.
struct FakeKubelet {
    url: String,
    stop: Arc<AtomicBool>,
}

impl FakeKubelet {
    fn serve(body: String) -> FakeKubelet {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/pods", listener.local_addr().unwrap());
        let stop = serve_until_stopped(listener, move |mut conn, _| {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        FakeKubelet { url, stop }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The series the series budget covers (the per-workload families) in one scrape.
fn exposed(m: &HashMap<String, f64>) -> usize {
    m.keys()
        .filter(|k| BUDGET_FAMILIES.iter().any(|f| k.starts_with(f)))
        .count()
}

/// Where a series stands in the collapse order: `own`, or the `into` of the folds it
/// holds (`remote_address`, `remote_other`, `other`).
fn fold_level(series: &str) -> &'static str {
    match (label(series, "namespace"), label(series, "remote")) {
        ("other", _) => "other",
        (_, "other") => "remote_other",
        (_, remote) if remote.parse::<std::net::IpAddr>().is_ok() => "remote_address",
        _ => "own",
    }
}

/// What the per-workload families counted (a counter's value, a histogram's _count)
/// in the series `pick` selects, grown from `before` to `after`.
fn counted(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    pick: impl Fn(&str) -> bool,
) -> f64 {
    // Every counter family (bytes for the connection ones), and the histogram's count.
    let counts = |k: &str| {
        BUDGET_FAMILIES
            .iter()
            .filter(|f| **f != BUDGET_FAMILIES[3])
            .any(|f| k.starts_with(&format!("{f}{{")))
            || k.starts_with(&format!("{}_count{{", BUDGET_FAMILIES[3]))
    };
    let sum = |m: &HashMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| counts(k) && pick(k))
            .map(|(_, v)| v)
            .sum()
    };
    sum(after) - sum(before)
}

fn folded(m: &HashMap<String, f64>, into: &str) -> f64 {
    value(
        m,
        &format!("tcptrace_series_folded_total{{into=\"{into}\"}}"),
    )
}

/// Each level of the collapse holds exactly what tcptrace_series_folded_total says went
/// there: whatever other traffic the agent saw, both come from the same scrape.
fn assert_folds_accounted(before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
    for into in ["remote_address", "remote_other", "other"] {
        assert_eq!(
            folded(after, into) - folded(before, into),
            counted(before, after, |k| fold_level(k) == into),
            "into {into}"
        );
    }
}

/// A connect from a process in `cgroup` to a closed port: refused (bash's redirection
/// fails, as it should).
fn refused_from(cgroup: &CgroupTree) {
    let closed = free_port("127.0.0.1".parse().unwrap());
    assert!(!cgroup.run(&format!("exec 3<>/dev/tcp/127.0.0.1/{closed}")));
}

/// Until the agent has the names a name source gave it: refused connects from `probe`, a
/// container of a pod given last, until one is counted in `series`, the series of that
/// pod's names. The agent names an event as it reads it, so from then on it has
/// whatever the source gave before that pod too.
fn until_named(agent: &Agent, probe: &CgroupTree, series: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("a refusal counted in {series}"),
        || {
            refused_from(probe);
            (value(&agent.scrape(), series) >= 1.0).then_some(())
        },
    );
}

/// The refusals of a pod's container, under its names.
fn refused_series(namespace: &str, pod: &str, container: &str, workload: &str) -> String {
    format!(
        "tcptrace_workload_connect_failures_total{{namespace=\"{namespace}\",pod=\"{pod}\",container=\"{container}\",workload=\"{workload}\",reason=\"refused\"}}"
    )
}

#[test]
fn pod_containers_are_named_from_the_kubelet_or_by_uid_and_id() {
    require_root!();
    let _serial = serial();
    let (named_uid, named_id) = (test_pod_uid(0x1111), test_container_id(0x111));
    let (bare_uid, bare_id) = (test_pod_uid(0x2222), test_container_id(0x222));
    let (probe_uid, probe_id) = (test_pod_uid(0x4444), test_container_id(0x444));
    // The recorded-format pod list, with the UIDs and container ids of both pods ours.
    let pods = include_str!("kubelet/pods.json")
        .replace("3a5a1e6b-7d1f-4c2e-9b8a-2b6f0e3c1d4e", &named_uid)
        .replace(
            "8c2f1e0d9b7a6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e",
            &named_id,
        )
        .replace("6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f", &probe_uid)
        .replace(
            "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988",
            &probe_id,
        );
    let kubelet = FakeKubelet::serve(pods);
    let agent = Agent::start(&["--labels", "workload", "--kubelet", &kubelet.url]);
    // The first pod-list fetch: the second pod named.
    let probe = CgroupTree::create(&pod_cgroup_levels(&probe_uid, &probe_id));
    let probe_series = refused_series(
        "monitoring",
        "node-agent-5kq2z",
        "agent",
        "DaemonSet/node-agent",
    );
    until_named(&agent, &probe, &probe_series);
    let named = CgroupTree::create(&pod_cgroup_levels(&named_uid, &named_id));
    let bare = CgroupTree::create(&pod_cgroup_levels(&bare_uid, &bare_id));
    for cgroup in [&named, &bare] {
        refused_from(cgroup);
    }
    let named_series = refused_series("shop", "web-7d4b9c8f5-x2k9p", "web", "Deployment/web");
    let bare_series = refused_series("", &bare_uid, &format!("containerd:{}", &bare_id[..12]), "");
    // The refusal is a RST received in SYN_SENT, by the same workload.
    let named_resets = "tcptrace_workload_resets_total{namespace=\"shop\",pod=\"web-7d4b9c8f5-x2k9p\",container=\"web\",workload=\"Deployment/web\",direction=\"received\"}";
    let m = wait_until(
        Duration::from_secs(10),
        "both refusals and the reset counted",
        || {
            let m = agent.scrape();
            let counted = [&named_series, &bare_series, named_resets]
                .iter()
                .all(|s| value(&m, s) >= 1.0);
            counted.then_some(m)
        },
    );
    let failures = series_of(&m, "tcptrace_workload_connect_failures_total");
    assert_eq!(value(&m, &named_series), 1.0, "{failures:?}");
    assert_eq!(
        value(&m, named_resets),
        1.0,
        "{:?}",
        series_of(&m, "tcptrace_workload_resets_total")
    );
    assert_eq!(value(&m, &bare_series), 1.0, "{failures:?}");
}

/// Our pod on `node`, number `n`: the recorded web pod with a UID, a container id
/// and names of its own (`api{n}-7d4b9c8f5-q8r2t`, container `api`).
fn api_pod(node: &str, n: u32) -> (Value, String, String) {
    let pid = std::process::id();
    let uid = format!("{pid:08x}-3333-4000-8000-{n:012x}");
    let id = format!("{n:08x}{pid:08x}{:048x}", 0);
    let recorded: Value = serde_json::from_str(include_str!("kubelet/pods.json")).unwrap();
    let mut pod = recorded["items"][0].clone();
    pod["spec"]["nodeName"] = node.into();
    pod["metadata"]["uid"] = uid.clone().into();
    pod["metadata"]["name"] = format!("api{n}-7d4b9c8f5-q8r2t").into();
    pod["metadata"]["ownerReferences"][0]["name"] = format!("api{n}-7d4b9c8f5").into();
    pod["status"]["containerStatuses"][0]["containerID"] = format!("containerd://{id}").into();
    pod["status"]["containerStatuses"][0]["name"] = "api".into();
    (pod, uid, id)
}

/// The recorded pods (none of them ours), moved to `node`.
fn recorded_pods(node: &str) -> Vec<Value> {
    let recorded: Value = serde_json::from_str(include_str!("kubelet/pods.json")).unwrap();
    let mut pods = recorded["items"].as_array().unwrap().clone();
    for pod in &mut pods {
        pod["spec"]["nodeName"] = node.into();
    }
    pods
}

/// `run --labels workload` with names from `server`'s pods of `node`.
fn agent_on(server: &FakeApiServer, node: &str) -> Agent {
    let args = server.agent_args(node);
    let mut all = vec!["--labels", "workload"];
    all.extend(args.iter().map(String::as_str));
    Agent::start(&all)
}

/// Wait until the agent has `lists` lists done and a watch open, and its events applied.
fn wait_for_watch(server: &FakeApiServer, lists: usize) {
    wait_until(Duration::from_secs(15), "the agent's watch", || {
        let listed = server.requests().iter().filter(|r| !is_watch(&r.0)).count();
        (listed == lists && server.open_watches() == 1).then_some(())
    });
}

/// An agent watching the fake API server's pods of a node of this test run, once its
/// first watch is open; the server then holds its answers (`pause`) until the test
/// resumes it.
fn agent_watching_a_paused_server() -> (String, FakeApiServer, Agent) {
    let node = format!("node-{}", std::process::id());
    let server = FakeApiServer::serve(recorded_pods(&node));
    let agent = agent_on(&server, &node);
    wait_for_watch(&server, 1);
    server.pause();
    (node, server, agent)
}

fn is_watch(request_line: &str) -> bool {
    request_line.contains("watch=true")
}

/// A connection refused from pod `n`'s container is counted under its names, once the
/// agent has applied the event that named it (10 s at most).
fn assert_named(agent: &Agent, (uid, id): (&str, &str), n: u32) {
    let cgroup = CgroupTree::create(&pod_cgroup_levels(uid, id));
    let series = format!(
        "tcptrace_workload_connect_failures_total{{namespace=\"shop\",pod=\"api{n}-7d4b9c8f5-q8r2t\",container=\"api\",workload=\"Deployment/api{n}\",reason=\"refused\"}}"
    );
    let named = poll_until(Duration::from_secs(10), || {
        let closed = free_port("127.0.0.1".parse().unwrap());
        assert!(!cgroup.run(&format!("exec 3<>/dev/tcp/127.0.0.1/{closed}")));
        let m = agent.scrape();
        (value(&m, &series) >= 1.0).then_some(())
    });
    if named.is_none() {
        let m = agent.scrape();
        panic!(
            "{series} never counted: {:?}\n{}",
            series_of(&m, "tcptrace_workload_connect_failures_total"),
            agent.stderr()
        );
    }
}

/// The query pairs of a request line, as sent (still percent-encoded).
fn query(request_line: &str) -> Vec<String> {
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').map(str::to_string).collect()
}

#[test]
fn pods_added_by_the_api_server_watch_are_named() {
    require_root!();
    let _serial = serial();
    let node = format!("node-{}", std::process::id());
    let server = FakeApiServer::serve(recorded_pods(&node));
    let agent = agent_on(&server, &node);
    wait_for_watch(&server, 1);
    // Our pod arrives (ADDED) on the open watch, as a pod scheduled later does.
    let (pod, uid, id) = api_pod(&node, 1);
    server.add(pod);
    assert_named(&agent, (&uid, &id), 1);
    let requests = server.requests();
    assert_eq!(
        requests.iter().map(|r| &r.0[..4]).collect::<Vec<_>>(),
        ["GET ", "GET "],
        "one list, one watch: {requests:?}"
    );
    let selector = format!("fieldSelector=spec.nodeName%3D{node}");
    assert!(
        requests[0].0.starts_with("GET /api/v1/pods?"),
        "{requests:?}"
    );
    assert!(query(&requests[0].0).contains(&selector), "{requests:?}");
    let watch = query(&requests[1].0);
    for pair in [
        &selector,
        "watch=true",
        "allowWatchBookmarks=true",
        "resourceVersion=2",
    ] {
        assert!(
            watch.iter().any(|p| p == pair),
            "the watch starts from the list's version: {pair} in {requests:?}"
        );
    }
    for (_, auth) in &requests {
        assert_eq!(auth, &format!("Bearer {}", server.token));
    }
}

/// (a) A watch cut off (a server restart, a proxy) resumes from the last version seen:
/// a pod added meanwhile is named, and nothing is listed again.
#[test]
fn a_watch_cut_off_resumes_without_losing_a_pod() {
    require_root!();
    let _serial = serial();
    let (node, server, agent) = agent_watching_a_paused_server();
    let seen = server.version();
    let (pod, uid, id) = api_pod(&node, 2);
    server.add(pod);
    server.resume();
    wait_for_watch(&server, 1);
    assert_named(&agent, (&uid, &id), 2);
    let watches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| is_watch(&r.0))
        .collect();
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert!(
        query(&watches[1].0).contains(&format!("resourceVersion={seen}")),
        "resumed from the version seen: {watches:?}"
    );
}

/// (b) A watch from a version the server no longer keeps (410 Gone) lists again, and the
/// list brings the pods added in between.
#[test]
fn an_expired_version_relists_and_picks_up_the_current_pods() {
    require_root!();
    let _serial = serial();
    let (node, server, agent) = agent_watching_a_paused_server();
    let (pod, uid, id) = api_pod(&node, 3);
    server.add(pod);
    server.compact();
    server.resume();
    wait_for_watch(&server, 2);
    assert_named(&agent, (&uid, &id), 3);
    let requests: Vec<String> = server.requests().into_iter().map(|r| r.0).collect();
    let kinds: Vec<bool> = requests.iter().map(|r| is_watch(r)).collect();
    assert_eq!(
        kinds,
        [false, true, true, false, true],
        "list, watch, watch (410 Gone), list, watch: {requests:?}"
    );
}

#[test]
fn the_series_budget_holds_and_the_folded_counter_accounts_for_the_rest() {
    require_root!();
    let _serial = serial();
    // Room, in the first third, for the test's own scrapes (about 28 series: their
    // handshake histograms, bytes, segments and drops) and the first containers.
    const MAX: usize = 130;
    const REMOTES: u16 = 5000;
    const CGROUPS: usize = 500;
    let agent = Agent::start(&[
        "--labels",
        "workload,remote",
        "--max-series",
        &MAX.to_string(),
    ]);
    let before = agent.scrape();
    let pid = std::process::id();
    let parent = format!("tcptrace-test-{pid}");
    let _parent = CgroupTree::create(std::slice::from_ref(&parent));
    let started = Instant::now();
    // The containers stay until the end: the agent resolves cgroups after the fact, and a
    // container gone within the 50 ms drain interval would stay unresolved.
    let _containers = in_private_netns(&[], move || {
        let mut containers = Vec::new();
        // 500 containers, each refused once.
        for i in 0..CGROUPS {
            // Distinct in their first 12 digits, like real (random) container ids.
            let id = test_container_id(i as u32);
            let c = CgroupTree::create(&[parent.clone(), format!("docker-{id}.scope")]);
            assert!(!c.run("exec 3<>/dev/tcp/127.0.0.1/7"));
            containers.push(c);
        }
        // 5,000 remote endpoints: every port below 5001 is closed in this namespace.
        for port in 1..=REMOTES {
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        }
        containers
    });
    eprintln!(
        "made {} refusals in {:?}",
        REMOTES as usize + CGROUPS,
        started.elapsed()
    );
    let expected = f64::from(REMOTES) + CGROUPS as f64;
    // Every refusal is counted once, in its own series or a coarser one (whose reason
    // is `refused`, or `other` in the family's `other` series).
    let refused = |after: &HashMap<String, f64>| {
        counted(&before, after, |k| {
            k.starts_with("tcptrace_workload_connect_failures_total{")
                && ["refused", "other"].contains(&label(k, "reason"))
        })
    };
    let after = wait_until(Duration::from_secs(10), "every refusal counted", || {
        let m = agent.scrape();
        (refused(&m) >= expected).then_some(m)
    });
    assert_eq!(refused(&after), expected, "every refusal is counted once");
    let exposed = exposed(&after);
    assert!(exposed <= MAX, "{exposed} series exposed, budget {MAX}");
    assert_eq!(value(&after, "tcptrace_workload_series"), exposed as f64);
    let containers = series_of(&after, "tcptrace_workload_connect_failures_total")
        .iter()
        .filter(|(k, _)| k.contains("container=\"docker:") && fold_level(k) == "own")
        .count();
    assert!(
        containers > 0,
        "the first containers got series of their own: {:#?}",
        after
            .keys()
            .filter(|k| k.starts_with("tcptrace_workload") && fold_level(k) == "own")
            .collect::<Vec<_>>()
    );
    let all_folded: f64 = ["remote_address", "remote_other", "other"]
        .iter()
        .map(|into| folded(&after, into) - folded(&before, into))
        .sum();
    // Each refusal that kept a series of its own holds one of at most MAX series.
    assert!(all_folded >= expected - MAX as f64, "{all_folded} folded");
    assert_folds_accounted(&before, &after);
}

/// Accept and close every connection waiting on `listener`: the clients closed first,
/// so each ends with FINs, not with the RST a listener's close would send.
fn accept_all(listener: &TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    std::iter::from_fn(|| listener.accept().ok()).count()
}

/// The DaemonSet's budget with `remote`, against 1,000 distinct remote addresses: the
/// per-workload families expose at most the budget, /metrics stays within the documented
/// worst case, every event is counted once, and what was folded is accounted for.
#[test]
fn a_thousand_peers_stay_within_the_budget_and_the_documented_worst_case() {
    require_root!();
    let _serial = serial();
    const PEERS: usize = 1000;
    const OPEN: [u16; 2] = [80, 443];
    const CLOSED: u16 = 7;
    // The DaemonSet's budget (the default), with `remote`.
    let agent = Agent::start(&["--labels", "workload,remote"]);
    let before = agent.scrape();
    let pid = std::process::id();
    let parent = format!("tcptrace-test-{pid}");
    let _parent = CgroupTree::create(std::slice::from_ref(&parent));
    let id = test_container_id(0x1000);
    let container = CgroupTree::create(&[parent, format!("docker-{id}.scope")]);
    let ours = format!("docker:{}", &id[..12]);
    // From one container, to each of 1,000 addresses (127.0.1.1 .. 127.0.4.250, all
    // local): two handshakes (ports 80 and 443) and one refused connect (port 7).
    let script = format!(
        "for i in $(seq 0 {last}); do a=127.0.$((i / 250 + 1)).$((i % 250 + 1)); \
         true 3<>/dev/tcp/$a/{a} && true 3<>/dev/tcp/$a/{b} || exit 1; \
         true 2>/dev/null 3<>/dev/tcp/$a/{CLOSED} && exit 1; done; exit 0",
        last = PEERS - 1,
        a = OPEN[0],
        b = OPEN[1],
    );
    let started = Instant::now();
    // The container stays until the end: the agent resolves cgroups after the fact.
    let (_container, made, accepted) = in_private_netns(&[], move || {
        // On every address of the namespace, with room in the accept queue for every
        // connection made before they are accepted.
        let listeners = OPEN.map(|port| deep_listener_at(("0.0.0.0", port)));
        let made = container.run(&script);
        let accepted: usize = listeners.iter().map(accept_all).sum();
        (container, made, accepted)
    });
    assert!(made, "the connections from the container failed");
    assert_eq!(accepted, 2 * PEERS);
    eprintln!("made {} connections in {:?}", 3 * PEERS, started.elapsed());

    // Our events: counted in our container's series, or in the families' `other`
    // series (which other traffic on this machine may share).
    let ours_in = |m: &HashMap<String, f64>, family: &str| {
        let own = counted(&before, m, |k| {
            k.starts_with(family) && label(k, "container") == ours
        });
        let other = counted(&before, m, |k| {
            k.starts_with(family) && fold_level(k) == "other"
        });
        (own, other)
    };
    let handshakes = "tcptrace_workload_handshake_duration_seconds_count{";
    let refusals = "tcptrace_workload_connect_failures_total{";
    let expected = [(handshakes, 2 * PEERS), (refusals, PEERS)];
    let (status, body) = wait_until(Duration::from_secs(20), "every event counted", || {
        let (status, body) = agent.get("/metrics").unwrap();
        let m = parse_exposition(&body);
        let all = expected.iter().all(|(family, n)| {
            let (own, other) = ours_in(&m, family);
            own + other >= *n as f64
        });
        all.then_some((status, body))
    });
    assert_eq!(status, 200);
    let after = parse_exposition(&body);
    let lost = value(&after, "tcptrace_ringbuf_events_lost_total");
    assert_eq!(
        lost, 0.0,
        "the ring buffer overflowed: counts would be short"
    );

    // Prometheus's cost: at most the budget, and the gauge says how many.
    let exposed = exposed(&after);
    let budget = DEFAULT_MAX_SERIES as usize;
    assert!(
        exposed <= budget,
        "{exposed} series exposed, budget {budget}"
    );
    assert_eq!(value(&after, "tcptrace_workload_series"), exposed as f64);
    let worst = worst_case::node(
        budget,
        tcptrace_agent::exporter::workloads::RemoteLabel::Endpoint,
    );
    eprintln!(
        "/metrics: {} bytes, {} samples, {exposed} per-workload; folded {:?}; worst case {worst:?}",
        body.len(),
        after.len(),
        ["remote_address", "remote_other", "other"].map(|i| folded(&after, i))
    );
    assert!(
        body.len() <= worst.bytes,
        "{} bytes, worst case {}",
        body.len(),
        worst.bytes
    );

    // Nothing lost or counted twice: our events are all in our series, short by no more
    // than the families' `other` series took.
    for (family, n) in expected {
        let (own, other) = ours_in(&after, family);
        assert!(
            own <= n as f64 && n as f64 <= own + other,
            "{family}: {n} made, {own} in our series, {other} in `other`"
        );
    }
    // The events beyond the budget were folded, each level holding what it says.
    let events = 3 * PEERS; // handshakes and refusals; the refusals' RSTs come on top
    let all_folded: f64 = ["remote_address", "remote_other", "other"]
        .iter()
        .map(|into| folded(&after, into) - folded(&before, into))
        .sum();
    assert!(
        all_folded >= (events - budget) as f64,
        "{all_folded} folded"
    );
    assert_folds_accounted(&before, &after);
    // Our workload kept its name: past the peers' share its handshakes went to
    // `remote="other"` (unless other traffic on the machine filled the budget first).
    let kept = counted(&before, &after, |k| {
        k.starts_with(handshakes)
            && label(k, "container") == ours
            && fold_level(k) == "remote_other"
    });
    assert!(kept > 0.0, "no handshake of ours at remote=\"other\"");
    assert_histograms_consistent(&after);
}

/// Every handshake histogram label set: six finite buckets, cumulative, +Inf = _count.
fn assert_histograms_consistent(m: &HashMap<String, f64>) {
    let name = BUDGET_FAMILIES[3];
    for (count_series, count) in m
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}_count{{")))
    {
        let labels = count_series
            .split_once('{')
            .unwrap()
            .1
            .trim_end_matches('}');
        let mut buckets: Vec<(f64, f64)> = m
            .iter()
            .filter_map(|(k, v)| {
                let le = k
                    .strip_prefix(&format!("{name}_bucket{{{labels},le=\""))?
                    .strip_suffix("\"}")?;
                Some((le.parse().ok()?, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(buckets.len(), 7, "{labels}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{labels}: {buckets:?}"
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, *count)), "{labels}");
    }
}
