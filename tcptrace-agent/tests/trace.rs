//! `tcptrace trace` against the real kernel: real sockets, ground truth from the sockets
//! themselves, from the kernel's counters (nstat) and from libbpf-tools' tcpstates.
//!
//! The tests run one at a time (`serial`): the kernel skips a tracing program when any
//! other BPF program is running on the same CPU, so one test's tracers flooding the
//! CPUs can make another's timer-driven event (a SYN retransmit) a counted skip.
mod common;

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::{
    churn, delta, free_port, in_private_netns, pod_cgroup_levels, require_root, serial,
    set_linger_zero, snmp_tcp, test_container_id, test_pod_uid, wait_until, CgroupTree, Netns,
    Tracer,
};
use serde_json::Value;

const CONNECTIONS: usize = 200;

const CLIENT_SEQUENCE: [(&str, &str); 5] = [
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    // The kernel hands the connection to a timewait socket and closes the full socket.
    ("FIN_WAIT2", "CLOSE"),
];

const SERVER_SEQUENCE: [(&str, &str); 5] = [
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

/// How many of `events` are of this kind.
fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

fn pair(e: &Value) -> (String, String) {
    (
        e["old_state"].as_str().unwrap().to_string(),
        e["new_state"].as_str().unwrap().to_string(),
    )
}

/// The transitions of one socket, in order. A client's CLOSE->SYN_SENT runs inside
/// connect() before the kernel picks the local port, so that event carries port 0 and is
/// joined through the socket address of the events that follow it. Likewise some kernels
/// (Debian's 5.10, 6.1 and 6.12, seen in `cargo xtask vm-test`) set an accepted socket to SYN_RECV
/// before copying the peer's port into it: its LISTEN->SYN_RECV carries remote port 0.
fn transitions_of(
    events: &[&Value],
    local: SocketAddr,
    remote: SocketAddr,
) -> Vec<(String, String)> {
    let by_ports = |e: &&&Value| e["sport"] == local.port() && e["dport"] == remote.port();
    let Some(first) = events.iter().position(|e| by_ports(&e)) else {
        return Vec::new();
    };
    let skaddr = &events[first]["skaddr"];
    let before_ports = events[..first]
        .iter()
        .rev()
        .find(|e| &e["skaddr"] == skaddr)
        .filter(|e| {
            (e["sport"] == 0 && e["dport"] == remote.port())
                || (e["sport"] == local.port() && e["dport"] == 0 && e["new_state"] == "SYN_RECV")
        });
    before_ports
        .into_iter()
        .chain(events.iter().filter(by_ports))
        .map(|e| pair(e))
        .collect()
}

fn expect_sequence(got: Vec<(String, String)>, want: &[(&str, &str)], what: &str) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want, "{what}");
}

fn lifecycle(ip: IpAddr) {
    require_root!();
    let _serial = serial();
    let port = free_port(ip);
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
    let conns = churn(&listener, CONNECTIONS);
    drop(listener);
    tracer.wait_for("every transition and handshake", |events| {
        count(events, "state") >= CONNECTIONS * 10 + 2
            && count(events, "handshake") >= 2 * CONNECTIONS
    });
    let traced = tracer.stop();
    assert!(traced.status.success(), "{}", traced.stderr);
    assert_eq!(
        traced.lost(),
        0,
        "ring buffer lost events: {}",
        traced.stderr
    );

    let me = std::process::id();
    let family = if ip.is_ipv4() { 4 } else { 6 };
    let states: Vec<&Value> = traced.of_kind("state").collect();
    for e in &states {
        assert_eq!(e["pid"], me, "every socket here is ours: {e}");
        assert_eq!(e["family"], family, "{e}");
    }
    for (client, server) in &conns {
        expect_sequence(
            transitions_of(&states, *client, *server),
            &CLIENT_SEQUENCE,
            &format!("client {client}"),
        );
        expect_sequence(
            transitions_of(&states, *server, *client),
            &SERVER_SEQUENCE,
            &format!("server side of {client}"),
        );
        let client_events: Vec<&&Value> = states
            .iter()
            .filter(|e| e["sport"] == client.port())
            .collect();
        assert!(
            client_events
                .iter()
                .all(|e| e["daddr"] == server.ip().to_string()),
            "{client}"
        );
        assert!(
            client_events
                .iter()
                .skip(1)
                .all(|e| e["saddr"] == client.ip().to_string()),
            "{client}"
        );
    }
    // Listener: one CLOSE->LISTEN and one LISTEN->CLOSE.
    let listener_events = states
        .iter()
        .filter(|e| e["sport"] == port && e["dport"] == 0 && e["new_state"] != "SYN_RECV")
        .count();
    assert_eq!(listener_events, 2);
    assert_eq!(
        states.len(),
        CONNECTIONS * 10 + 2,
        "no transitions beyond our connections"
    );

    let handshakes: Vec<&Value> = traced.of_kind("handshake").collect();
    assert_eq!(handshakes.len(), 2 * CONNECTIONS);
    for (client, _) in &conns {
        let of_client: Vec<&&Value> = handshakes
            .iter()
            .filter(|h| h["sport"] == client.port() || h["dport"] == client.port())
            .collect();
        assert_eq!(of_client.len(), 2, "{client}");
        assert!(of_client
            .iter()
            .all(|h| h["outcome"] == "established" && h["pid"] == me));
        assert!(of_client.iter().any(|h| h["side"] == "client"));
        assert!(of_client.iter().any(|h| h["side"] == "server"));
        // Loopback handshakes take microseconds, never seconds.
        assert!(of_client
            .iter()
            .all(|h| h["duration_ns"].as_u64().unwrap() < 1_000_000_000));
    }
}

#[test]
fn ipv4_connections_each_show_their_full_lifecycle_once() {
    lifecycle(IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn ipv6_connections_each_show_their_full_lifecycle_once() {
    lifecycle(IpAddr::V6(Ipv6Addr::LOCALHOST));
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    require_root!();
    let _serial = serial();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = free_port(ip);
    let tracer = Tracer::start(&["--port", &port.to_string(), "--events", "handshakes"]);
    let err = TcpStream::connect(SocketAddr::new(ip, port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let traced = tracer.stop();
    let events: Vec<&Value> = traced.events.iter().collect();
    assert_eq!(events.len(), 1, "{:?}", traced.events);
    let h = events[0];
    assert_eq!(h["event"], "handshake");
    assert_eq!(h["side"], "client");
    assert_eq!(h["outcome"], "failed");
    assert_eq!(h["reason"], "refused");
    assert_eq!(h["error"], "ECONNREFUSED");
    assert_eq!(h["pid"], std::process::id());
}

/// An aborting close (SO_LINGER 0) moves the socket to CLOSE first and sends its RST
/// after: the reset is still reported with the process that owned the socket, once per
/// RST the kernel counted (TcpOutRsts in the test's own network namespace), and the peer
/// reports receiving it.
#[test]
fn an_aborting_close_reports_its_reset_with_the_owner() {
    require_root!();
    let _serial = serial();
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let tracer = Tracer::start(&["--port", &port.to_string(), "--events", "resets"]);
    let (client_port, rsts_sent) = in_private_netns(&[], move || {
        let before = snmp_tcp("OutRsts");
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        set_linger_zero(&client);
        let client_port = client.local_addr().unwrap().port();
        drop(client);
        let sent = wait_until(Duration::from_secs(10), "the kernel's RST", || {
            let sent = snmp_tcp("OutRsts") - before;
            (sent > 0).then_some(sent)
        });
        (client_port, sent)
    });
    tracer.wait_for("the reset sent and the reset received", |events| {
        let resets = |direction: &str| {
            events
                .iter()
                .filter(|e| e["event"] == "reset" && e["direction"] == direction)
                .count()
        };
        resets("sent") >= 1 && resets("received") >= 1
    });
    let traced = tracer.stop();
    let resets: Vec<&Value> = traced.of_kind("reset").collect();
    let sent: Vec<&&Value> = resets.iter().filter(|r| r["direction"] == "sent").collect();
    assert_eq!(rsts_sent, 1, "the kernel sent one RST");
    assert_eq!(sent.len() as u64, rsts_sent, "{resets:?}");
    assert_eq!(sent[0]["sport"], client_port);
    assert_eq!(sent[0]["pid"], std::process::id(), "{resets:?}");
    let received: Vec<&&Value> = resets
        .iter()
        .filter(|r| r["direction"] == "received")
        .collect();
    assert_eq!(received.len(), 1, "{resets:?}");
    assert_eq!(received[0]["sport"], port, "the server's socket got it");
    assert_eq!(
        received[0]["pid"],
        std::process::id(),
        "the listener's owner"
    );
}

#[test]
fn retransmits_match_the_namespace_counters_under_loss() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("rtx");
    // Retransmitted skbs may carry several segments, which the events must account for.
    ns.like_a_real_link();
    let port = 20000 + (std::process::id() % 20000) as u16;
    // The namespace's own connections only: its counters are the truth here.
    let netns = format!("/var/run/netns/{}", ns.name);
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--netns",
        &netns,
        "--events",
        "retransmits",
    ]);
    let before = ns.nstat();
    ns.drop_on_input(
        "tcptrace_loss",
        &[
            format!("tcp dport {port} numgen random mod 100 < 8 counter"),
            format!("tcp sport {port} numgen random mod 100 < 8 counter"),
        ],
    );
    let transfer = ns.run(move || {
        let reader = common::receive_one(port);
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.set_nodelay(true).unwrap();
        let chunk = [7u8; 1000];
        for _ in 0..400 {
            client.write_all(&chunk).unwrap();
        }
        drop(client);
        reader.join().unwrap()
    });
    assert_eq!(transfer.join().unwrap(), 400_000);
    ns.delete_table("tcptrace_loss");
    ns.wait_closed();
    let after = ns.nstat();
    let traced = tracer.stop();
    assert_eq!(traced.lost(), 0);

    let sent: Vec<&Value> = traced
        .of_kind("retransmit")
        .filter(|e| e.get("error").is_none())
        .collect();
    let truth = delta(&before, &after, "TcpRetransSegs");
    assert!(
        truth > 0,
        "the loss rule caused no retransmits; nothing was tested"
    );
    // One event per retransmitted skb; TcpRetransSegs counts the segments it carried.
    let segments: u64 = sent
        .iter()
        .map(|e| e["segments"].as_u64().expect("segment count"))
        .sum();
    assert_eq!(segments, truth, "retransmitted segments vs TcpRetransSegs");
    assert!(sent.len() as u64 <= truth);
    let syn = sent.iter().filter(|e| e["retransmit"] != "data").count() as u64;
    assert_eq!(
        syn,
        delta(&before, &after, "TcpExtTCPSynRetrans"),
        "SYN/SYN-ACK retransmits"
    );
    assert!(sent.iter().all(|e| e["pid"] == std::process::id()));
}

#[test]
fn unanswered_syn_backs_off_exponentially_then_times_out() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("syn");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=2"]);
    // Since 6.5 the first SYN retries may be linear (1 s apart); ask for classic backoff.
    if std::path::Path::new("/proc/sys/net/ipv4/tcp_syn_linear_timeouts").exists() {
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_syn_linear_timeouts=0"]);
    }
    let port = 20000 + (std::process::id() % 20000) as u16 + 1;
    ns.drop_on_input("tcptrace_blackhole", &[format!("tcp dport {port}")]);
    // The namespace's own connections only: its counters are the truth here.
    let netns = format!("/var/run/netns/{}", ns.name);
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--netns",
        &netns,
        "--events",
        "retransmits,handshakes",
    ]);
    let before = ns.nstat();
    let started = Instant::now();
    let attempt = ns.run(move || {
        TcpStream::connect(("127.0.0.1", port))
            .map(|_| ())
            .unwrap_err()
            .kind()
    });
    assert_eq!(attempt.join().unwrap(), std::io::ErrorKind::TimedOut);
    let elapsed = started.elapsed();
    let after = ns.nstat();
    let traced = tracer.stop();

    let syns: Vec<u64> = traced
        .of_kind("retransmit")
        .inspect(|e| assert_eq!(e["retransmit"], "syn", "{e}"))
        .map(|e| e["ts_ns"].as_u64().unwrap())
        .collect();
    let kernel_syn_retrans = delta(&before, &after, "TcpExtTCPSynRetrans");
    assert_eq!(
        syns.len() as u64,
        kernel_syn_retrans,
        "events vs TcpExtTCPSynRetrans: {:?}\n{}",
        traced.events,
        traced.stderr
    );
    assert_eq!(syns.len(), 2, "tcp_syn_retries=2: {:?}", traced.events);
    let failure = traced
        .of_kind("handshake")
        .next()
        .expect("a failed handshake event");
    assert_eq!(failure["outcome"], "failed");
    assert_eq!(failure["reason"], "timeout");
    assert_eq!(failure["error"], "ETIMEDOUT");
    // Exponential backoff from a 1 s initial RTO: retries at ~1 s and ~3 s, gives up at ~7 s.
    let sent_at = failure["ts_ns"].as_u64().unwrap() - failure["duration_ns"].as_u64().unwrap();
    let secs = |ns: u64| ns as f64 / 1e9;
    let first = secs(syns[0] - sent_at);
    let second = secs(syns[1] - syns[0]);
    let total = secs(failure["duration_ns"].as_u64().unwrap());
    assert!((0.9..1.5).contains(&first), "first retry after {first:.3}s");
    assert!(
        (1.8..3.0).contains(&second),
        "second retry after {second:.3}s"
    );
    assert!((6.5..8.5).contains(&total), "gave up after {total:.3}s");
    assert!(elapsed.as_secs_f64() >= total - 0.5);
}

/// libbpf-tools' tcpstates, attached to the same tracepoint, as an independent witness.
struct Tcpstates {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    out: std::thread::JoinHandle<()>,
}

impl Tcpstates {
    fn start(filter: &str, port: u16) -> Tcpstates {
        let mut child = std::process::Command::new("stdbuf")
            .args(["-oL", "tcpstates", "-w", filter, &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("tcpstates (libbpf-tools; cargo xtask setup installs it)");
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let printed = lines.clone();
        let out = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("SKADDR") {
                    let _ = ready_tx.send(());
                } else {
                    printed.lock().unwrap().push(line);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tcpstates did not start");
        Tcpstates { child, lines, out }
    }

    /// How many transitions it printed so far.
    fn printed(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// (socket address, old state, new state) of every line it printed.
    fn stop(mut self) -> Vec<(String, String, String)> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap();
        self.out.join().unwrap();
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let arrow = f.iter().position(|w| *w == "->").expect("tcpstates line");
                (
                    format!("0x{}", f[0]),
                    f[arrow - 1].to_string(),
                    f[arrow + 1].to_string(),
                )
            })
            .collect()
    }
}

#[test]
fn same_transitions_as_libbpf_tools_tcpstates() {
    require_root!();
    let _serial = serial();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = free_port(ip);
    let server_side = Tcpstates::start("-L", port);
    let client_side = Tcpstates::start("-D", port);
    let tracer = Tracer::start(&["--port", &port.to_string(), "--events", "states"]);
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
    churn(&listener, 20);
    drop(listener);
    let all = 20 * 10 + 2;
    tracer.wait_for("every transition", |events| events.len() >= all);
    wait_until(Duration::from_secs(10), "tcpstates printing them", || {
        (server_side.printed() + client_side.printed() >= all).then_some(())
    });
    let traced = tracer.stop();
    let mut theirs = server_side.stop();
    theirs.extend(client_side.stop());
    let mut ours: Vec<(String, String, String)> = traced
        .events
        .iter()
        .map(|e| {
            let (old, new) = pair(e);
            (e["skaddr"].as_str().unwrap().to_string(), old, new)
        })
        .collect();
    theirs.sort();
    ours.sort();
    assert_eq!(ours.len(), all);
    assert_eq!(ours, theirs, "tcptrace and tcpstates disagree");
}

fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn filters_run_in_the_kernel() {
    require_root!();
    let _serial = serial();
    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let port = free_port(ip);
    let p = port.to_string();
    let ours = Tracer::start(&[
        "--port",
        &p,
        "--comm",
        &thread_comm(),
        "-6",
        "--addr",
        "::1",
    ]);
    let other_pid = Tracer::start(&["--port", &p, "--pid", "1"]);
    let other_family = Tracer::start(&["--port", &p, "-4"]);
    let other_net = Tracer::start(&["--port", &p, "--addr", "fd00::/8"]);
    let handshakes_only = Tracer::start(&["--port", &p, "--events", "handshakes", "--count", "2"]);
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
    churn(&listener, 5);
    drop(listener);
    // Those filtered out have nothing to wait for: a tracer prints what is left in its
    // ring buffer when it stops.
    ours.wait_for("every transition", |events| {
        count(events, "state") >= 5 * 10 + 2
    });
    handshakes_only.wait_for("two handshakes", |events| events.len() >= 2);

    assert_eq!(ours.stop().of_kind("state").count(), 5 * 10 + 2);
    for (name, t) in [
        ("--pid 1", other_pid),
        ("-4", other_family),
        ("--addr fd00::/8", other_net),
    ] {
        let traced = t.stop();
        assert!(
            traced.events.is_empty(),
            "{name} let through {:?}",
            traced.events
        );
        assert!(
            traced.stderr.contains("filtered in the kernel"),
            "{}",
            traced.stderr
        );
    }
    // --count stops the tracer by itself once it has printed that many events.
    let traced = handshakes_only.stop();
    assert_eq!(traced.events.len(), 2);
    assert!(traced.events.iter().all(|e| e["event"] == "handshake"));
}

#[test]
fn children_of_a_listener_older_than_the_tracer_are_timed_without_an_owner() {
    require_root!();
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tracer = Tracer::start(&["--port", &port.to_string(), "--events", "handshakes"]);
    churn(&listener, 3);
    tracer.wait_for("both sides of each handshake", |events| {
        count(events, "handshake") >= 2 * 3
    });
    let traced = tracer.stop();
    let server: Vec<&Value> = traced
        .events
        .iter()
        .filter(|e| e["side"] == "server")
        .collect();
    assert_eq!(server.len(), 3, "{:?}", traced.events);
    assert!(server
        .iter()
        .all(|e| e["pid"].is_null() && e["outcome"] == "established"));
    let client: Vec<&Value> = traced
        .events
        .iter()
        .filter(|e| e["side"] == "client")
        .collect();
    assert!(
        client.iter().all(|e| e["pid"] == std::process::id()),
        "connect() is seen live"
    );
}

/// A process in a cgroup named as the kubelet and containerd name a burstable pod's
/// container connects: the tracer's JSON carries the pod UID, QoS class, runtime and
/// container id parsed from the owner's cgroup.
#[test]
fn owners_in_a_pod_cgroup_are_attributed_to_the_pod_and_container() {
    require_root!();
    let _serial = serial();
    let uid = test_pod_uid(0x7c9e);
    let container = test_container_id(0xab);
    let levels = pod_cgroup_levels(&uid, &container);
    let cgroup = CgroupTree::create(&levels);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tracer = Tracer::start(&["--port", &port.to_string(), "--events", "states"]);
    assert!(cgroup.run(&format!("exec 3<>/dev/tcp/127.0.0.1/{port}")));
    let _ = listener.accept().unwrap();
    let connect =
        |e: &&Value| e["event"] == "state" && e["new_state"] == "SYN_SENT" && e["dport"] == port;
    tracer.wait_for("the connect", |events| events.iter().any(|e| connect(&e)));
    let traced = tracer.stop();
    let connect = traced
        .events
        .iter()
        .find(connect)
        .unwrap_or_else(|| panic!("no connect seen: {:?}", traced.events));
    assert_eq!(connect["comm"], "bash", "{connect}");
    assert_eq!(connect["pod_uid"], uid.as_str(), "{connect}");
    assert_eq!(connect["container_id"], container.as_str(), "{connect}");
    assert_eq!(connect["runtime"], "containerd");
    assert_eq!(connect["qos"], "burstable");
    assert!(
        connect["cgroup"].as_str().unwrap().ends_with(&levels[3]),
        "{connect}"
    );
}
