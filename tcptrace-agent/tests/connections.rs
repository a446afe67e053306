//! Connection lifetimes: close events and the connection counters against what the
//! kernel itself reports for the same sockets (`ss -ti` in the test's own network
//! namespace, `TcpRetransSegs`) and the bytes the test itself moved.
mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    delta, growth, http_exchange, parse_exposition, require_root, serial, value, wait_until, Agent,
    Netns, Tracer,
};
use serde_json::Value;

/// Bytes the client sends, then the server.
const UP: usize = 300_000;
const DOWN: usize = 50_000;

/// What `ss -tiH` says of one socket: (local, remote) -> (bytes_acked, bytes_received).
fn ss_bytes(ns: &Netns, port: u16) -> HashMap<(String, String), (u64, u64)> {
    let text = ns.exec(&["ss", "-tinH", "state", "established"]);
    let mut sockets = HashMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(info) = lines.next() else { break };
        let (local, remote) = (cols[2].to_string(), cols[3].to_string());
        if !local.ends_with(&format!(":{port}")) && !remote.ends_with(&format!(":{port}")) {
            continue;
        }
        let field = |name: &str| -> u64 {
            info.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}:")))
                .map_or(0, |v| v.parse().unwrap())
        };
        sockets.insert(
            (local, remote),
            (field("bytes_acked"), field("bytes_received")),
        );
    }
    sockets
}

/// One connection in `ns` on `port`: the client sends `UP` bytes, the server answers
/// `DOWN`, then `between` runs while both are open and every byte is acknowledged;
/// then the client closes first. Runs inside the namespace.
fn one_connection(ns: &Netns, port: u16, between: impl FnOnce()) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = vec![0u8; UP];
        conn.read_exact(&mut got).unwrap();
        conn.write_all(&vec![2u8; DOWN]).unwrap();
        // The client's FIN: it closes first.
        assert_eq!(conn.read(&mut [0u8; 1]).unwrap(), 0);
    });
    ready_rx.recv().unwrap();
    let client = ns.run(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Segment by segment: one lost packet is one lost segment, not a 64 KiB skb.
        c.set_nodelay(true).unwrap();
        for _ in 0..UP / 1000 {
            c.write_all(&[1u8; 1000]).unwrap();
        }
        let mut got = vec![0u8; DOWN];
        c.read_exact(&mut got).unwrap();
        go_rx.recv().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    });
    between();
    go_tx.send(()).unwrap();
    client.join().unwrap();
    server.join().unwrap();
}

/// Both ends of the test's connection, once the kernel says every byte was
/// acknowledged: client (bytes_acked, bytes_received), then server.
fn both_ends_acked(ns: &Netns, port: u16) -> [(u64, u64); 2] {
    wait_until(Duration::from_secs(10), "every byte acknowledged", || {
        let sockets = ss_bytes(ns, port);
        let client = sockets
            .iter()
            .find(|((_, remote), _)| remote.ends_with(&format!(":{port}")))?;
        let server = sockets
            .iter()
            .find(|((local, _), _)| local.ends_with(&format!(":{port}")))?;
        // The client's SYN counts one; the server's child starts after its SYN-ACK.
        let done =
            *client.1 == ((UP + 1) as u64, DOWN as u64) && *server.1 == (DOWN as u64, UP as u64);
        done.then_some([*client.1, *server.1])
    })
}

#[test]
fn close_events_carry_what_each_connection_carried() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("close");
    // Ethernet-sized segments, and some loss, so that there are retransmits to count.
    ns.like_a_real_link();
    let port = 21000 + (std::process::id() % 20000) as u16;
    let netns = format!("/var/run/netns/{}", ns.name);
    let tracer = Tracer::start(&["--netns", &netns, "--events", "closes"]);
    let before = ns.nstat();
    ns.drop_on_input(
        "tcptrace_loss",
        &[format!(
            "tcp dport {port} numgen random mod 100 < 3 counter"
        )],
    );
    let started = Instant::now();
    let mut acked = None;
    one_connection(&ns, port, || acked = Some(both_ends_acked(&ns, port)));
    let [client_ss, server_ss] = acked.unwrap();
    ns.delete_table("tcptrace_loss");
    tracer.wait_for("both closes", |events| {
        events.iter().filter(|e| e["event"] == "close").count() >= 2
    });
    let elapsed = started.elapsed().as_nanos() as u64;
    let after = ns.nstat();
    let traced = tracer.stop();
    assert_eq!(traced.lost(), 0);
    let closes: Vec<&Value> = traced.of_kind("close").collect();
    assert_eq!(closes.len(), 2, "{closes:?}");
    let client = closes.iter().find(|e| e["dport"] == port).unwrap();
    let server = closes.iter().find(|e| e["sport"] == port).unwrap();

    // The kernel's counts just before the close, plus each FIN (one each way).
    assert_eq!(client["bytes_sent"], client_ss.0 + 1, "{client}");
    assert_eq!(client["bytes_received"], client_ss.1 + 1, "{client}");
    assert_eq!(server["bytes_sent"], server_ss.0 + 1, "{server}");
    assert_eq!(server["bytes_received"], server_ss.1 + 1, "{server}");
    // ... which are the bytes the test moved: the SYN and the FINs count one each.
    assert_eq!(client["bytes_sent"], UP as u64 + 2);
    assert_eq!(server["bytes_received"], UP as u64 + 1);
    assert_eq!(server["bytes_sent"], DOWN as u64 + 1);
    assert_eq!(client["bytes_received"], DOWN as u64 + 1);

    assert_eq!(client["closed_by"], "local");
    assert_eq!(server["closed_by"], "remote");
    let retransmitted: u64 = closes
        .iter()
        .map(|e| e["retransmitted"].as_u64().unwrap())
        .sum();
    let truth = delta(&before, &after, "TcpRetransSegs");
    assert!(
        truth > 0,
        "the loss caused no retransmits; nothing was tested"
    );
    assert_eq!(
        retransmitted, truth,
        "retransmitted segments vs TcpRetransSegs"
    );
    for e in [client, server] {
        let lifetime = e["duration_ns"].as_u64().expect("a lifetime");
        assert!(lifetime > 0 && lifetime < elapsed, "{e}");
        assert!(e["rtt_us"].as_u64().is_some_and(|rtt| rtt > 0), "{e}");
        assert_eq!(e["pid"], std::process::id());
    }
}

/// Scrapes `/metrics`, each on a connection of its own, and keeps account of what those
/// connections add to the byte counters once both their ends closed: the request and
/// the answer, the client's SYN and a FIN each way.
struct Scraper {
    addr: SocketAddr,
    /// (sent, received) all scrapes so far add.
    owed: (f64, f64),
    taken: u32,
}

/// A scrape, and what the scrapes before it add to the counters.
struct Scrape {
    metrics: HashMap<String, f64>,
    owed: (f64, f64),
    number: u32,
}

impl Scraper {
    fn scrape(&mut self) -> Scrape {
        let request = b"GET /metrics HTTP/1.1\r\nHost: tcptrace\r\n\r\n";
        let answer = http_exchange(self.addr, request).expect("scrape");
        assert_eq!(answer.status, 200);
        let wire = (request.len() + answer.head.len() + 4 + answer.body.len()) as f64;
        let body = String::from_utf8(answer.body).unwrap();
        let before = self.owed;
        self.owed = (before.0 + wire + 3.0, before.1 + wire + 2.0);
        self.taken += 1;
        Scrape {
            metrics: parse_exposition(&body),
            owed: before,
            number: self.taken,
        }
    }

    /// Scrapes until one shows that nothing but the scrapes moved the byte counters
    /// since the one before: every connection before it is closed and counted.
    fn quiet(&mut self) -> Scrape {
        let mut last = self.scrape();
        wait_until(Duration::from_secs(10), "a quiet host", || {
            let now = self.scrape();
            let quiet = counted(&last, &now) == (0.0, 0.0);
            last = now;
            quiet.then(|| Scrape {
                metrics: last.metrics.clone(),
                ..last
            })
        })
    }
}

const SENT: &str = "tcptrace_connection_sent_bytes_total";
const RECEIVED: &str = "tcptrace_connection_received_bytes_total";

/// What the byte counters grew by from `a` to `b`, less the scrapes' own connections.
fn counted(a: &Scrape, b: &Scrape) -> (f64, f64) {
    (
        growth(&a.metrics, &b.metrics, SENT) - (b.owed.0 - a.owed.0),
        growth(&a.metrics, &b.metrics, RECEIVED) - (b.owed.1 - a.owed.1),
    )
}

#[test]
fn byte_counters_count_open_connections_and_close_exactly() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&[]);
    let ns = Netns::new("bytes");
    let port = 22000 + (std::process::id() % 20000) as u16;
    let mut scraper = Scraper {
        addr: agent.addr,
        owed: (0.0, 0.0),
        taken: 0,
    };
    let base = scraper.quiet();

    let mut open = None;
    one_connection(&ns, port, || {
        let [client, server] = both_ends_acked(&ns, port);
        let kernel = (client.0 + client.1 + server.0 + server.1) as f64;
        open = Some((scraper.scrape(), kernel));
    });
    // Counted while open: up to the last segment each end received. Here that is all
    // of the data, the answer's last ACK perhaps not.
    let (open, kernel_open) = open.unwrap();
    let (sent, received) = counted(&base, &open);
    assert!(
        sent + received >= (UP + DOWN) as f64 && sent + received <= kernel_open,
        "open: counted {sent} + {received}, the kernel says {kernel_open}"
    );

    // Closed: exactly what the kernel counted, plus a FIN each way.
    let end = scraper.quiet();
    assert_eq!(
        counted(&base, &end),
        ((UP + 1 + DOWN + 2) as f64, (DOWN + UP + 2) as f64),
        "(sent, received) besides the scrapes"
    );
    // Every close is counted once, with its lifetime and RTT: ours (two ends) and
    // each scrape's (two ends).
    let closes = 2.0 + 2.0 * (end.number - base.number) as f64;
    let grew = |name| growth(&base.metrics, &end.metrics, name);
    assert_eq!(grew("tcptrace_connections_closed_total"), closes);
    assert_eq!(grew("tcptrace_connection_duration_seconds_count"), closes);
    assert_eq!(grew("tcptrace_rtt_seconds_count"), closes);
    assert_eq!(
        value(
            &end.metrics,
            "tcptrace_connections_closed_total{closed_by=\"neither\"}"
        ),
        value(
            &base.metrics,
            "tcptrace_connections_closed_total{closed_by=\"neither\"}"
        ),
    );
}
