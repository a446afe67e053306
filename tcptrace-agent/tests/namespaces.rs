//! A node shared by many pods: each in its own network namespace, all listening on the
//! same address and port, some holding far more sockets than a fixed-size map can track.
//! Ground truth is the tests' own sockets: which thread listened in which namespace,
//! which connected, and how many.
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    process::Child,
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{
    free_port, growth, require_root, serial, test_container_id, test_pod_uid, wait_until, Agent,
    Tracer,
};
use serde_json::Value;

/// A network namespace of its own, held by a thread: `(inode, the namespace file)`.
struct Namespace {
    inode: u32,
    file: std::fs::File,
    release: mpsc::Sender<()>,
    holder: thread::JoinHandle<()>,
}

impl Namespace {
    fn new() -> Namespace {
        let (tx, rx) = mpsc::channel();
        let (release, hold) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            common::enter_new_netns();
            let file = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            tx.send(file).unwrap();
            let _ = hold.recv();
        });
        let file = rx.recv().unwrap();
        Namespace {
            inode: file.metadata().unwrap().ino() as u32,
            file,
            release,
            holder,
        }
    }

    /// Run `f` on a thread named `name` inside this namespace (its comm is the name).
    fn run<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let file = self.file.try_clone().unwrap();
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // SAFETY: setns on this thread only, with a namespace file we hold open.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .unwrap()
    }

    fn close(self) {
        let _ = self.release.send(());
        self.holder.join().unwrap();
    }
}

/// Sockets a test keeps open until it is done.
struct Held {
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
}

/// In each of `namespaces`, thread `lsn-<i>` listens on 127.0.0.1:`port`; then, once
/// every namespace listens, thread `cli-<i>` opens `i + 2` connections to its own. All
/// are held until `Held` drops. Returns, per namespace inode, (listener comm, client
/// comm, connections).
fn listen_and_connect(
    namespaces: &[Namespace],
    port: u16,
) -> (BTreeMap<u32, (String, String, usize)>, Held) {
    let listeners: Vec<TcpListener> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            ns.run(&format!("lsn-{i}"), move || {
                TcpListener::bind(("127.0.0.1", port)).unwrap()
            })
            .join()
            .unwrap()
        })
        .collect();
    let mut expected = BTreeMap::new();
    let mut streams = Vec::new();
    for (i, (ns, listener)) in namespaces.iter().zip(&listeners).enumerate() {
        let n = i + 2;
        let clients = ns
            .run(&format!("cli-{i}"), move || {
                (0..n)
                    .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                    .collect::<Vec<_>>()
            })
            .join()
            .unwrap();
        for _ in 0..n {
            streams.push(listener.accept().unwrap().0);
        }
        streams.extend(clients);
        expected.insert(ns.inode, (format!("lsn-{i}"), format!("cli-{i}"), n));
    }
    let held = Held {
        _listeners: listeners,
        _streams: streams,
    };
    (expected, held)
}

fn handshakes<'a>(events: &'a [Value], side: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events
        .iter()
        .filter(move |e| e["event"] == "handshake" && e["side"] == side)
}

/// Several namespaces listen on the same address and port with their own clients: every
/// accepted connection is owned by the listener of its own namespace, and carries that
/// namespace. Checked on the main path (socket storage, which copies a listener's owner
/// into its children) and on the fallback (a listener table keyed by namespace too).
#[test]
fn each_namespace_listener_owns_its_own_connections() {
    require_root!();
    let _serial = serial();
    for method in [None, Some("inet_sock_set_state=raw_tracepoint")] {
        let port = free_port([127, 0, 0, 1].into());
        let namespaces: Vec<Namespace> = (0..3).map(|_| Namespace::new()).collect();
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(["--events".into(), "handshakes".into()]);
        if let Some(m) = method {
            args.extend(["--probe-method".into(), m.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let tracer = Tracer::start(&args);
        // A second tracer filtering in the kernel on the second namespace only.
        let only = namespaces[1].inode.to_string();
        let mut filtered_args = args.clone();
        filtered_args.extend(["--netns", &only]);
        let filtered = Tracer::start(&filtered_args);

        let (expected, held) = listen_and_connect(&namespaces, port);
        let total: usize = expected.values().map(|(_, _, n)| n).sum();
        tracer.wait_for("every server handshake", |events| {
            handshakes(events, "server").count() >= total
        });
        let events = tracer.events();
        for side in ["server", "client"] {
            let seen: Vec<&Value> = handshakes(&events, side).collect();
            assert_eq!(seen.len(), total, "{method:?} {side}: {seen:?}");
            for e in seen {
                let netns = e["netns"].as_u64().expect("netns in every event") as u32;
                let (lsn, cli, _) = expected
                    .get(&netns)
                    .unwrap_or_else(|| panic!("{method:?}: unknown namespace in {e}"));
                let owner = if side == "server" { lsn } else { cli };
                assert_eq!(e["comm"], owner.as_str(), "{method:?} {side}: {e}");
                assert_eq!(e["pid"], std::process::id(), "{e}");
            }
        }
        let n1 = expected[&namespaces[1].inode].2;
        filtered.wait_for("the filtered namespace's handshakes", |events| {
            handshakes(events, "server").count() >= n1
        });
        let only_ns1 = filtered.stop();
        assert_eq!(only_ns1.events.len(), 2 * n1, "{:?}", only_ns1.events);
        assert!(only_ns1
            .events
            .iter()
            .all(|e| e["netns"] == namespaces[1].inode));
        drop(held);
        drop(tracer);
        namespaces.into_iter().for_each(Namespace::close);
    }
}

/// Far more sockets open than the fallback map holds: on the main path (socket
/// storage) every new handshake is still counted on both sides and timed, with its
/// owner; on the fallback (forced), the ones it cannot track are counted without a
/// duration (`tcptrace_handshakes_untimed_total`) and without an owner, and the overflow
/// is reported. In both, the handshake counters grow by exactly the connections made.
#[test]
fn handshakes_count_with_more_sockets_open_than_the_fallback_map_holds() {
    require_root!();
    let _serial = serial();
    for (method, main_path) in [
        (None, true),
        (Some("inet_sock_set_state=raw_tracepoint"), false),
    ] {
        let mut args = vec!["--max-sockets", "64"];
        if let Some(m) = method {
            args.extend(["--probe-method", m]);
        }
        let agent = Agent::start(&args);
        let port = free_port([127, 0, 0, 1].into());
        let port_arg = port.to_string();
        let mut tracer_args = vec!["--port", &port_arg, "--events", "handshakes"];
        tracer_args.extend(&args);
        let tracer = Tracer::start(&tracer_args);
        // Listening after the tracer started: children inherit a known owner.
        let listener = common::deep_listener_on(port);
        let before = agent.scrape();

        // 200 connections held open (401 sockets with the listener), then 50 more.
        const HELD: usize = 200;
        const NEW: usize = 50;
        let mut held = Vec::new();
        for _ in 0..HELD + NEW {
            let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            held.push((c, listener.accept().unwrap().0));
        }
        tracer.wait_for("every handshake of both sides", |events| {
            handshakes(events, "server").count() >= HELD + NEW
                && handshakes(events, "client").count() >= HELD + NEW
        });
        let after = agent.scrape();
        let grew = |series: &str| growth(&before, &after, series);
        // Each scrape makes a connection of its own: the second one's is in `after`.
        let made = (HELD + NEW + 1) as f64;
        for side in ["client", "server"] {
            let timed = grew(&format!(
                r#"tcptrace_handshake_duration_seconds_count{{side="{side}"}}"#
            ));
            let untimed = grew(&format!(
                r#"tcptrace_handshakes_untimed_total{{side="{side}"}}"#
            ));
            assert_eq!(
                timed + untimed,
                made,
                "{method:?} {side}: every handshake counted"
            );
            if main_path {
                assert_eq!(untimed, 0.0, "{side}: socket storage times every handshake");
            } else {
                assert!(
                    untimed > 0.0,
                    "{side}: a 64-socket map cannot time them all"
                );
            }
        }
        let untracked = grew(r#"tcptrace_kernel_map_full_total{map="sockets"}"#);
        assert_eq!(
            untracked > 0.0,
            !main_path,
            "{method:?}: {untracked} untracked"
        );
        let tracking = if main_path { "socket_storage" } else { "hash" };
        assert_eq!(
            common::value(
                &after,
                &format!(
                    r#"tcptrace_probe_attached{{probe="socket_tracking",method="{tracking}"}}"#
                )
            ),
            1.0
        );

        let traced = tracer.stop();
        let owned = |side| {
            handshakes(&traced.events, side)
                .filter(|e| e["pid"] == std::process::id())
                .count()
        };
        if main_path {
            assert_eq!(
                owned("client"),
                HELD + NEW,
                "every client handshake has its owner"
            );
            assert_eq!(
                owned("server"),
                HELD + NEW,
                "every server handshake has its owner"
            );
        } else {
            assert!(
                owned("client") < HELD + NEW,
                "the fallback cannot own them all"
            );
            assert!(traced
                .stderr
                .contains("sockets untracked (socket map full)"));
            assert!(traced
                .stderr
                .contains("socket map full, 1 sockets untracked on this CPU"));
        }
        drop(held);
        let _ = agent.stop();
    }
}

/// A listener in a pod: a process in the pod's cgroup, in the pod's own network
/// namespace, accepting `n` connections on 127.0.0.1:`port`.
fn pod_listener(pod: &common::CgroupTree, ns: &common::Netns, port: u16, n: usize) -> Child {
    let script = "import socket,sys\n\
        s=socket.socket(); s.bind(('127.0.0.1',int(sys.argv[1]))); s.listen(64)\n\
        print('ready',flush=True)\n\
        for _ in range(int(sys.argv[2])):\n    c,_=s.accept(); c.recv(1); c.close()\n";
    let mut child = pod.spawn(&format!(
        "exec ip netns exec {} python3 -c \"{script}\" {port} {n}",
        ns.name
    ));
    let mut ready = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    child
}

/// Two pods, each in its own network namespace, listen on the same address and port;
/// once both listen, clients in each namespace connect to their own. The server side of
/// every handshake is counted for the pod whose listener accepted it, on the main path
/// and on the fallback.
#[test]
fn server_handshakes_count_for_the_pod_whose_listener_accepted_them() {
    require_root!();
    let _serial = serial();
    for method in [None, Some("inet_sock_set_state=raw_tracepoint")] {
        let mut args = vec!["--labels", "workload"];
        args.extend(method.iter().flat_map(|m| ["--probe-method", m]));
        let agent = Agent::start(&args);
        let port = free_port([127, 0, 0, 1].into());
        // (pod UID, container id, connections)
        let pods: Vec<(String, String, usize)> = (1..=2)
            .map(|i| {
                let n = 0x600 + i as u32;
                (test_pod_uid(n), test_container_id(n), i + 1)
            })
            .collect();
        let namespaces: Vec<common::Netns> = (0..pods.len())
            .map(|i| common::Netns::new(&format!("pod{i}")))
            .collect();
        let cgroups: Vec<common::CgroupTree> = pods
            .iter()
            .map(|(uid, id, _)| common::CgroupTree::create(&common::pod_cgroup_levels(uid, id)))
            .collect();
        let listeners: Vec<Child> = pods
            .iter()
            .zip(&cgroups)
            .zip(&namespaces)
            .map(|(((_, _, n), cgroup), ns)| pod_listener(cgroup, ns, port, *n))
            .collect();
        for ((_, _, n), ns) in pods.iter().zip(&namespaces) {
            let n = *n;
            ns.run(move || {
                for _ in 0..n {
                    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    c.write_all(b"x").unwrap();
                }
            })
            .join()
            .unwrap();
        }
        for mut l in listeners {
            assert!(l.wait().unwrap().success());
        }
        for (uid, id, n) in &pods {
            let series = format!(
                "tcptrace_workload_handshake_duration_seconds_count{{namespace=\"\",pod=\"{uid}\",container=\"containerd:{}\",workload=\"\",side=\"server\"}}",
                &id[..12]
            );
            let seen = wait_until(Duration::from_secs(5), &series, || {
                let v = common::value(&agent.scrape(), &series);
                (v >= *n as f64).then_some(v)
            });
            assert_eq!(seen, *n as f64, "{method:?}: {series}");
        }
    }
}

/// `wait_until` is what the tests use instead of sleeping: it fails with what it waited
/// for.
#[test]
fn waiting_for_a_condition_fails_with_its_name() {
    let r = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_millis(50),
            "a condition that never holds",
            || None::<()>,
        )
    });
    let msg = r.unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("a condition that never holds"), "{msg}");
}
