//! Connection lifetimes: close events and the connection counters against what the
//! kernel itself reports for the same sockets (`ss -ti` in the test's own network
//! namespace, `TcpRetransSegs`) and the bytes and messages the test itself moved.
mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    delta, exchange, growth, label, parse_exposition, require_root, serial, series_of, sh, value,
    wait_until, Agent, Netns, Tracer,
};
use serde_json::Value;

/// Bytes the client sends, then the server.
const UP: usize = 300_000;
const DOWN: usize = 50_000;

/// The kernel's own counts of one socket, as `ss -ti` shows them (absent ones are 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SsInfo {
    bytes_acked: u64,
    bytes_received: u64,
    /// `tcp_sock.data_segs_out`.
    data_segs_out: u64,
    /// `tcp_sock.total_retrans`: the second number of `retrans:x/y`.
    total_retrans: u64,
}

impl SsInfo {
    fn bytes(&self) -> (u64, u64) {
        (self.bytes_acked, self.bytes_received)
    }
}

/// `ss -tinH` output: (local, remote) -> the socket's counts. A socket's line is followed
/// by its indented `tcp_info` line, where it has one (TIME_WAIT has none).
fn parse_ss(text: &str) -> HashMap<(String, String), SsInfo> {
    let mut sockets = HashMap::new();
    let mut current = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // The endpoints are the last two columns, with or without a State column.
            let cols: Vec<&str> = line.split_whitespace().collect();
            current = (cols.len() >= 4).then(|| {
                let n = cols.len();
                (cols[n - 2].to_string(), cols[n - 1].to_string())
            });
            continue;
        }
        let Some(endpoints) = current.take() else {
            continue;
        };
        let field = |name: &str| -> Option<&str> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}:")))
        };
        let number = |name: &str| field(name).map_or(0, |v| v.parse().unwrap());
        let info = SsInfo {
            bytes_acked: number("bytes_acked"),
            bytes_received: number("bytes_received"),
            data_segs_out: number("data_segs_out"),
            total_retrans: field("retrans")
                .and_then(|v| v.split_once('/'))
                .map_or(0, |(_, total)| total.parse().unwrap()),
        };
        sockets.insert(endpoints, info);
    }
    sockets
}

/// The established sockets of `ns` with `port` at either end.
fn ss_established(ns: &Netns, port: u16) -> HashMap<(String, String), SsInfo> {
    let on_port = |a: &String| a.ends_with(&format!(":{port}"));
    parse_ss(&ns.exec(&["ss", "-tinH", "state", "established"]))
        .into_iter()
        .filter(|((local, remote), _)| on_port(local) || on_port(remote))
        .collect()
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

/// Both ends of the test's connection on `port`, once the kernel says every byte was
/// acknowledged (nothing is left to send or retransmit): client, then server. The
/// client sent `up` bytes and received `down`.
fn acked_both_ways(ns: &Netns, port: u16, up: usize, down: usize) -> [SsInfo; 2] {
    wait_until(Duration::from_secs(10), "every byte acknowledged", || {
        let sockets = ss_established(ns, port);
        let client = sockets
            .iter()
            .find(|((_, remote), _)| remote.ends_with(&format!(":{port}")))?
            .1;
        let server = sockets
            .iter()
            .find(|((local, _), _)| local.ends_with(&format!(":{port}")))?
            .1;
        // The client's SYN counts one; the server's child starts after its SYN-ACK.
        let done = client.bytes() == ((up + 1) as u64, down as u64)
            && server.bytes() == (down as u64, up as u64);
        done.then_some([*client, *server])
    })
}

fn both_ends_acked(ns: &Netns, port: u16) -> [SsInfo; 2] {
    acked_both_ways(ns, port, UP, DOWN)
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
    assert_eq!(client["bytes_sent"], client_ss.bytes_acked + 1, "{client}");
    assert_eq!(
        client["bytes_received"],
        client_ss.bytes_received + 1,
        "{client}"
    );
    assert_eq!(server["bytes_sent"], server_ss.bytes_acked + 1, "{server}");
    assert_eq!(
        server["bytes_received"],
        server_ss.bytes_received + 1,
        "{server}"
    );
    // Data segments: the kernel's just before the close, which only FINs followed (a
    // bare FIN, even retransmitted, is no data segment).
    assert_eq!(client["segs_out"], client_ss.data_segs_out, "{client}");
    assert_eq!(server["segs_out"], server_ss.data_segs_out, "{server}");
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
/// connections add to the counters once both their ends closed: bytes, the request and
/// the answer, the client's SYN and a FIN each way; data segments, what the kernel
/// counted for both ends once the answer was complete.
struct Scraper {
    addr: SocketAddr,
    /// (sent bytes, received bytes, sent segments) all scrapes so far add.
    owed: (f64, f64, f64),
    taken: u32,
}

/// A scrape, and what the scrapes before it add to the counters.
struct Scrape {
    metrics: HashMap<String, f64>,
    owed: (f64, f64, f64),
    number: u32,
}

impl Scraper {
    fn scrape(&mut self) -> Scrape {
        let request = b"GET /metrics HTTP/1.1\r\nHost: tcptrace\r\n\r\n";
        let mut conn = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let answer = exchange(&mut conn, request).expect("scrape");
        assert_eq!(answer.status, 200);
        // The agent closed after its answer and this end sent its last data: both
        // ends' data segments are final, and both sockets are still there to ask.
        let ends = [
            conn.local_addr().unwrap().to_string(),
            self.addr.to_string(),
        ];
        let sockets = parse_ss(&sh(&[
            "ss",
            "-tinH",
            "state",
            "all",
            &format!(
                "( sport = :{} or dport = :{} )",
                self.addr.port(),
                self.addr.port()
            ),
        ]));
        let segments: u64 = [(&ends[0], &ends[1]), (&ends[1], &ends[0])]
            .into_iter()
            .map(|(local, remote)| sockets[&(local.clone(), remote.clone())].data_segs_out)
            .sum();
        drop(conn);
        let wire = (request.len() + answer.head.len() + 4 + answer.body.len()) as f64;
        let body = String::from_utf8(answer.body).unwrap();
        let before = self.owed;
        self.owed = (
            before.0 + wire + 3.0,
            before.1 + wire + 2.0,
            before.2 + segments as f64,
        );
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
            let quiet = counted(&last, &now) == (0.0, 0.0, 0.0);
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
const SEGMENTS: &str = "tcptrace_connection_sent_segments_total";

/// What the byte and segment counters grew by from `a` to `b`, less the scrapes' own
/// connections.
fn counted(a: &Scrape, b: &Scrape) -> (f64, f64, f64) {
    (
        growth(&a.metrics, &b.metrics, SENT) - (b.owed.0 - a.owed.0),
        growth(&a.metrics, &b.metrics, RECEIVED) - (b.owed.1 - a.owed.1),
        growth(&a.metrics, &b.metrics, SEGMENTS) - (b.owed.2 - a.owed.2),
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
        owed: (0.0, 0.0, 0.0),
        taken: 0,
    };
    let base = scraper.quiet();

    let mut open = None;
    one_connection(&ns, port, || {
        let [client, server] = both_ends_acked(&ns, port);
        let kernel = (client.bytes_acked + client.bytes_received)
            + (server.bytes_acked + server.bytes_received);
        let segments = client.data_segs_out + server.data_segs_out;
        open = Some((scraper.scrape(), kernel as f64, segments as f64));
    });
    // Counted while open: up to the last segment each end received. Here that is all
    // of the data, the answer's last ACK perhaps not. Every data segment was sent
    // before the last segment its end received (the answer's ACK, for the server): all
    // of them.
    let (open, kernel_open, segments_open) = open.unwrap();
    let (sent, received, segments) = counted(&base, &open);
    assert!(
        sent + received >= (UP + DOWN) as f64 && sent + received <= kernel_open,
        "open: counted {sent} + {received}, the kernel says {kernel_open}"
    );
    assert_eq!(segments, segments_open, "open: data segments sent");

    // Closed: exactly what the kernel counted, plus a FIN each way (no data segment).
    let end = scraper.quiet();
    assert_eq!(
        counted(&base, &end),
        (
            (UP + 1 + DOWN + 2) as f64,
            (DOWN + UP + 2) as f64,
            segments_open
        ),
        "(sent, received, segments) besides the scrapes"
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

/// Messages each connection of the ratio test sends, echoed one at a time, and their size.
const MESSAGES: usize = 30;
const MESSAGE: usize = 200;
const CONNECTIONS: usize = 2;

/// A port below the ephemeral range, so that a series' `remote` names it.
fn port_below_ephemeral(base: u16) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let first: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let port = base + (std::process::id() % 5000) as u16;
    assert!(
        port < first,
        "port {port} is in the ephemeral range ({range})"
    );
    port
}

/// Echo connections in `ns` on `port`, one after another: the client sends `MESSAGES`
/// messages of `MESSAGE` bytes (no delay), each only once the previous one came back,
/// so each is exactly one data segment when first sent. Before each client closes,
/// every byte acknowledged both ways, `ss -ti` is read: (client, server) per connection.
fn echo_connections(ns: &Netns, port: u16) -> Vec<[SsInfo; 2]> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = ns.run(move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        ready_tx.send(()).unwrap();
        for _ in 0..CONNECTIONS {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_nodelay(true).unwrap();
            let mut message = [0u8; MESSAGE];
            for _ in 0..MESSAGES {
                conn.read_exact(&mut message).unwrap();
                conn.write_all(&message).unwrap();
            }
            assert_eq!(conn.read(&mut [0u8; 1]).unwrap(), 0);
        }
    });
    ready_rx.recv().unwrap();
    let mut kernel = Vec::new();
    for _ in 0..CONNECTIONS {
        let (echoed_tx, echoed_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let client = ns.run(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_nodelay(true).unwrap();
            let mut back = [0u8; MESSAGE];
            for i in 0..MESSAGES {
                c.write_all(&[i as u8; MESSAGE]).unwrap();
                c.read_exact(&mut back).unwrap();
            }
            echoed_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
        });
        echoed_rx.recv().unwrap();
        let bytes = MESSAGES * MESSAGE;
        kernel.push(acked_both_ways(ns, port, bytes, bytes));
        go_tx.send(()).unwrap();
        client.join().unwrap();
    }
    server.join().unwrap();
    kernel
}

#[test]
fn workload_segments_and_retransmits_give_the_kernels_retransmit_ratio() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&["--labels", "workload,remote"]);
    let ns = Netns::new("ratio");
    let port = port_below_ephemeral(24000);
    // Lose a fifth of the client's data segments; never a SYN, FIN or bare ACK (IP
    // length 60 or less), so every retransmit is of data and none follows the close.
    ns.drop_on_input(
        "tcptrace_loss",
        &[format!(
            "tcp dport {port} ip length > 100 numgen random mod 100 < 20 counter"
        )],
    );
    let kernel = echo_connections(&ns, port);

    // The kernel's definition: every transmission of a data segment counts, the first
    // and each retransmission (each message is one segment and was sent first once).
    for [client, server] in &kernel {
        assert_eq!(
            client.data_segs_out,
            MESSAGES as u64 + client.total_retrans,
            "{client:?}"
        );
        assert_eq!(
            server.data_segs_out,
            MESSAGES as u64 + server.total_retrans,
            "{server:?}"
        );
    }
    let segments: u64 = kernel.iter().map(|[client, _]| client.data_segs_out).sum();
    let retransmits: u64 = kernel.iter().map(|[client, _]| client.total_retrans).sum();
    assert!(
        retransmits > 0,
        "the loss caused no retransmits; nothing was tested"
    );

    // The clients' series: theirs alone have this remote.
    let remote = format!("127.0.0.1:{port}");
    let ours = |m: &HashMap<String, f64>, family: &str| -> Vec<(String, f64)> {
        series_of(m, family)
            .into_iter()
            .filter(|(series, _)| label(series, "remote") == remote)
            .collect()
    };
    const SEGMENTS_FAMILY: &str = "tcptrace_workload_connection_sent_segments_total";
    const RETRANSMITS_FAMILY: &str = "tcptrace_workload_retransmits_total";
    let sum = |rows: &[(String, f64)]| rows.iter().map(|(_, v)| v).sum::<f64>();
    // Closes and retransmits reach the series through the ring buffer: wait for
    // everything, then require exactly it.
    let m = wait_until(Duration::from_secs(10), "the clients' series", || {
        let m = agent.scrape();
        let done = sum(&ours(&m, SEGMENTS_FAMILY)) >= segments as f64
            && sum(&ours(&m, RETRANSMITS_FAMILY)) >= retransmits as f64;
        done.then_some(m)
    });
    let counted_segments = ours(&m, SEGMENTS_FAMILY);
    assert_eq!(counted_segments.len(), 1, "{counted_segments:?}");
    assert_eq!(
        counted_segments[0].1, segments as f64,
        "{counted_segments:?}"
    );
    let counted_retransmits = ours(&m, RETRANSMITS_FAMILY);
    assert_eq!(counted_retransmits.len(), 1, "{counted_retransmits:?}");
    let (series, n) = &counted_retransmits[0];
    assert_eq!(label(series, "kind"), "data");
    assert_eq!(*n, retransmits as f64, "{series}");
    // Both families name the same workload.
    let workload = |series: &str| {
        ["namespace", "pod", "container", "workload"].map(|l| label(series, l).to_string())
    };
    assert_eq!(workload(series), workload(&counted_segments[0].0));
}
