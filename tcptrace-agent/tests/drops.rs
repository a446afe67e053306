//! What the kernel turned away, against its own counters: packets an nftables rule
//! dropped (the rule's counter), a receive buffer filled on purpose (TcpExtTCPRcvQDrop),
//! and a tiny accept queue overflowed (TcpExtListenOverflows), each in a network
//! namespace of its own. Drops and overflows are counted machine-wide, so these tests
//! run one at a time and compare growth; the events are filtered to the test's
//! namespace.
mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    bracketed, delta, label, require_root, serial, series_of, settled, total, value, wait_until,
    Agent, Netns, Tracer,
};
use serde_json::Value;

fn port_for(offset: u16) -> u16 {
    20000 + offset + (std::process::id() % 10000) as u16
}

/// Packets the rule with this comment in `table` matched, as nftables counts them.
fn nft_packets(ns: &Netns, table: &str) -> u64 {
    let text = ns.exec(&["nft", "list", "table", "inet", table]);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in:\n{text}"))
}

#[test]
fn nftables_drops_carry_their_reason_and_match_the_rule_counter() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("nftdrop");
    let port = port_for(0);
    let netns = format!("/var/run/netns/{}", ns.name);
    let agent = Agent::start(&[]);
    let tracer = Tracer::start(&["--netns", &netns, "--events", "drops"]);
    let series = "tcptrace_drops_total{reason=\"NETFILTER_DROP\"}";
    let before = agent.scrape();
    ns.drop_on_input("tcptrace_drop", &[format!("tcp dport {port} counter")]);
    // SYNs into the rule: the first and its retransmissions (1 s, then 2 s later).
    let client = ns.run(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(3500)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    });
    client.join().unwrap();
    let dropped = nft_packets(&ns, "tcptrace_drop");
    assert!(dropped >= 3, "the rule dropped {dropped} SYNs");
    let counted = settled("the NETFILTER_DROP counter", || {
        value(&agent.scrape(), series) - value(&before, series)
    });
    assert_eq!(
        counted as u64, dropped,
        "tcptrace_drops_total vs the rule's counter"
    );
    tracer.wait_for("a drop event per packet", |events| {
        events.len() as u64 >= dropped
    });
    let traced = tracer.stop();
    assert_eq!(traced.lost(), 0);
    let drops: Vec<&Value> = traced.of_kind("drop").collect();
    assert_eq!(drops.len() as u64, dropped, "{drops:?}");
    for e in drops {
        assert_eq!(e["reason"], "NETFILTER_DROP", "{e}");
        assert_eq!(e["dport"], port, "the packet's destination: {e}");
        assert!(e.get("state").is_none(), "no socket had it yet: {e}");
    }
}

/// Shrinking the receive buffer of a connection whose window is already open: data
/// the window allows arrives, and the socket has no room for it (PROTO_MEM, counted
/// in TcpExtTCPRcvQDrop). Returns when the namespace counted at least one.
fn overrun_a_receive_buffer(ns: &Netns, port: u16) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        ready_tx.send(()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        conn
    });
    ready_rx.recv().unwrap();
    let client = ns.run(move || {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.set_nonblocking(true).unwrap();
        client
    });
    let mut conn = server.join().unwrap();
    let mut client = client.join().unwrap();
    conn.set_nonblocking(true).unwrap();
    // Open the window: the receiver reads for a while.
    let open_until = Instant::now() + Duration::from_millis(500);
    let mut sink = vec![0u8; 1 << 20];
    while Instant::now() < open_until {
        let _ = client.write(&[7u8; 65536]);
        while conn.read(&mut sink).is_ok_and(|n| n > 0) {}
    }
    set_rcvbuf(&conn, 4096);
    wait_until(
        Duration::from_secs(20),
        "a receive-queue drop (TcpExtTCPRcvQDrop)",
        || {
            match client.write(&[7u8; 65536]) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("send: {e}"),
            }
            (ns.nstat().get("TcpExtTCPRcvQDrop").copied().unwrap_or(0) > 0).then_some(())
        },
    );
}

fn set_rcvbuf(socket: &TcpStream, bytes: i32) {
    // SAFETY: a valid socket and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn a_receive_buffer_filled_on_purpose_drops_with_proto_mem() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("rcvbuf");
    let port = port_for(1);
    let netns = format!("/var/run/netns/{}", ns.name);
    let tracer = Tracer::start(&["--netns", &netns, "--events", "drops"]);
    let before = ns.nstat();
    overrun_a_receive_buffer(&ns, port);
    let truth = settled("TcpExtTCPRcvQDrop", || {
        delta(&before, &ns.nstat(), "TcpExtTCPRcvQDrop")
    });
    tracer.wait_for("a PROTO_MEM drop per TCPRcvQDrop", |events| {
        events.iter().filter(|e| e["reason"] == "PROTO_MEM").count() as u64 >= truth
    });
    let traced = tracer.stop();
    assert_eq!(traced.lost(), 0);
    let proto_mem: Vec<&Value> = traced
        .of_kind("drop")
        .filter(|e| e["reason"] == "PROTO_MEM")
        .collect();
    assert_eq!(proto_mem.len() as u64, truth, "{proto_mem:?}");
    for e in proto_mem {
        // The receiving connection's own socket, and the test is its owner.
        assert_eq!(e["sport"], port, "{e}");
        assert_eq!(e["state"], "ESTABLISHED", "{e}");
        assert_eq!(e["pid"], std::process::id(), "{e}");
    }
}

#[test]
fn listen_overflows_equal_the_namespace_counter_with_their_listener() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("overflow");
    let port = port_for(2);
    let netns = format!("/var/run/netns/{}", ns.name);
    let agent = Agent::start(&["--labels", "workload"]);
    let tracer = Tracer::start(&["--netns", &netns, "--events", "overflows"]);
    let listener = listener_that_never_accepts(&ns, port);
    let kernel = || ns.nstat();
    let (before, scraped_before) = bracketed(
        kernel,
        &["TcpExtListenOverflows"],
        &["tcptrace_listen_overflows_total"],
        || agent.scrape(),
    );
    // Clients that connect and wait: each SYN beyond the queue is dropped, and again
    // at each retransmission, until they give up.
    let clients = ns
        .run(move || (0..6).map(|_| pending::connect(port)).collect::<Vec<_>>())
        .join()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "retransmitted SYNs overflowing",
        || (delta(&before, &ns.nstat(), "TcpExtListenOverflows") >= 8).then_some(()),
    );
    drop(clients);
    let (after, scraped) = bracketed(
        kernel,
        &["TcpExtListenOverflows"],
        &["tcptrace_listen_overflows_total"],
        || agent.scrape(),
    );
    let truth = delta(&before, &after, "TcpExtListenOverflows");
    assert!(truth >= 3, "only {truth} overflows; nothing was tested");
    let counted = total(&scraped, "tcptrace_listen_overflows_total")
        - total(&scraped_before, "tcptrace_listen_overflows_total");
    assert_eq!(counted as u64, truth, "tcptrace vs TcpExtListenOverflows");
    // By workload: the listener's, from the events.
    let address = format!("127.0.0.1:{port}");
    let by_listener = settled("the listener's workload series", || {
        series_of(&agent.scrape(), "tcptrace_workload_listen_overflows_total")
            .into_iter()
            .filter(|(series, _)| label(series, "listener") == address)
            .map(|(_, n)| n)
            .sum::<f64>()
    });
    assert_eq!(by_listener as u64, truth, "the listener's workload series");
    tracer.wait_for("an overflow event per overflow", |events| {
        events.len() as u64 >= truth
    });
    drop(listener);
    let traced = tracer.stop();
    assert_eq!(traced.lost(), 0);
    let overflows: Vec<&Value> = traced.of_kind("overflow").collect();
    assert_eq!(overflows.len() as u64, truth, "{overflows:?}");
    for e in overflows {
        assert_eq!(e["sport"], port, "the listener's port: {e}");
        assert_eq!(e["pid"], std::process::id(), "the listener's owner: {e}");
        assert!(e["at"] == "syn" || e["at"] == "ack", "{e}");
    }
}

#[test]
fn syns_to_a_listener_older_than_tcptrace_are_counted_as_unjudged() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("oldlisten");
    let port = port_for(3);
    // Listening before the agent starts: tcptrace never saw it open.
    let listener = listener_that_never_accepts(&ns, port);
    let agent = Agent::start(&[]);
    let before = ns.nstat();
    let scraped_before = agent.scrape();
    let clients = ns
        .run(move || (0..4).map(|_| pending::connect(port)).collect::<Vec<_>>())
        .join()
        .unwrap();
    let overflows = wait_until(Duration::from_secs(10), "SYNs overflowing", || {
        let n = delta(&before, &ns.nstat(), "TcpExtListenOverflows");
        (n >= 3).then_some(n)
    });
    drop(clients);
    drop(listener);
    let unjudged = value(&agent.scrape(), "tcptrace_listen_syns_unjudged_total")
        - value(&scraped_before, "tcptrace_listen_syns_unjudged_total");
    // Every SYN it received is there: those that overflowed and those it answered.
    assert!(
        unjudged as u64 >= overflows,
        "{unjudged} SYNs unjudged, {overflows} overflowed"
    );
}

/// A listener in `ns` on `port` with room for one connection, that never accepts.
fn listener_that_never_accepts(ns: &Netns, port: u16) -> TcpListener {
    ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        // SAFETY: a valid socket; listen(2) only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        listener
    })
    .join()
    .unwrap()
}

/// Non-blocking connects: the test's clients wait in SYN_SENT or ESTABLISHED without a
/// thread each.
mod pending {
    use std::os::fd::{FromRawFd, OwnedFd};

    pub struct Pending(#[allow(dead_code)] OwnedFd);

    pub fn connect(port: u16) -> Pending {
        // SAFETY: plain syscalls on a socket this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let err = std::io::Error::last_os_error();
            assert!(
                rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
                "{err}"
            );
            Pending(OwnedFd::from_raw_fd(fd))
        }
    }
}
