//! Exact under contention: real clients between two network namespaces over a lossy
//! veth, with another tool's BPF programs busy on the same hot networking tracepoints,
//! round after round. Ground truth: the kernel's own counters of the host and both
//! namespaces.
mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    bracketed, delta, growth, host_and, label, require_root, serial, series_of, total, value,
    Agent, Netns,
};

const SERVER: &str = "10.213.0.2";
const PORT: u16 = 8080;

/// Two namespaces joined by a veth pair, each dropping 3% of the TCP segments it
/// receives.
struct LossyLink {
    client: Netns,
    server: Netns,
}

impl LossyLink {
    fn new() -> LossyLink {
        let (client, server) = (Netns::new("cli"), Netns::new("srv"));
        let pid = std::process::id();
        let (a, b) = (format!("tca{pid}"), format!("tcb{pid}"));
        common::sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        common::sh(&["ip", "link", "set", &a, "netns", &client.name]);
        common::sh(&["ip", "link", "set", &b, "netns", &server.name]);
        for (ns, dev, addr) in [
            (&client, &a, "10.213.0.1/24"),
            (&server, &b, "10.213.0.2/24"),
        ] {
            ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
            ns.drop_on_input(
                "tcptrace_lossy",
                &["meta l4proto tcp numgen random mod 100 < 3".into()],
            );
        }
        LossyLink { client, server }
    }

    /// Host plus both namespaces, as one reading.
    fn nstat(&self) -> HashMap<String, u64> {
        host_and(&[&self.client, &self.server])
    }
}

/// The loss goes first, and then the namespaces once none of their sockets can send
/// any more: a socket still retransmitting a lost FIN would outlive its deleted
/// namespace and add retransmits no later test's namespaces count.
impl Drop for LossyLink {
    fn drop(&mut self) {
        // Nothing here may panic: this also runs while a failed test unwinds.
        let in_ns = |ns: &Netns, args: &[&str]| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for ns in [&self.client, &self.server] {
            in_ns(ns, &["nft", "delete", "table", "inet", "tcptrace_lossy"]);
        }
        let sending = |ns: &Netns| {
            let open = in_ns(ns, &["ss", "-tanH", "exclude", "time-wait"]);
            !open.trim().is_empty()
        };
        let _ = common::poll_until(Duration::from_secs(30), || {
            (!sending(&self.client) && !sending(&self.server)).then_some(())
        });
    }
}

/// A server in its namespace: each connection gets a 2 KB answer and is closed, as by
/// a web server with `Connection: close`; bulk uploads are read to the end.
fn serve(link: &LossyLink, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    link.server.run(move || {
        let listener = TcpListener::bind((SERVER, PORT)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut workers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => workers.push(thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    let mut first = [0u8; 1];
                    if s.read(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    if first[0] == b'G' {
                        let mut request = [0u8; 64];
                        let _ = s.read(&mut request);
                        let _ = s.write_all(&[b'x'; 2_000]);
                    } else {
                        let _ = std::io::copy(&mut s, &mut std::io::sink());
                    }
                })),
                // The server's idle loop, not a wait: a non-blocking accept every 2 ms,
                // so that it sees the stop flag.
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
        workers.into_iter().for_each(|w| {
            let _ = w.join();
        });
    })
}

/// For `secs`: 32 clients making short request/answer connections, 8 bulk uploads.
fn clients(link: &LossyLink, secs: u64) -> thread::JoinHandle<()> {
    link.client.run(move || {
        let until = Instant::now() + Duration::from_secs(secs);
        let short = (0..32).map(move |_| {
            thread::spawn(move || {
                while Instant::now() < until {
                    let Ok(mut s) = TcpStream::connect((SERVER, PORT)) else {
                        continue;
                    };
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
                    let _ = std::io::copy(&mut s, &mut std::io::sink());
                }
            })
        });
        let bulk = (0..8).map(move |_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect((SERVER, PORT)).unwrap();
                while Instant::now() < until {
                    if s.write_all(&[b'b'; 65536]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
                let _ = s.read(&mut [0u8; 1]);
            })
        });
        let all: Vec<_> = short.chain(bulk).collect();
        all.into_iter().for_each(|t| t.join().unwrap());
    })
}

/// Another tool's programs on the hottest networking tracepoints, walking the kernel
/// stack each time (a long run): classic tracepoints share one recursion guard per CPU,
/// so they make tcptrace's classic programs skip runs; tcptrace's raw and BTF-typed
/// programs have guards of their own.
struct Bpftrace(Child);

impl Bpftrace {
    fn start() -> Bpftrace {
        let child = Command::new("bpftrace")
            .args([
                "-e",
                "tracepoint:sock:inet_sock_set_state, tracepoint:tcp:tcp_retransmit_skb, \
                 tracepoint:net:netif_receive_skb, tracepoint:net:net_dev_queue, \
                 tracepoint:net:net_dev_xmit { @[probe, kstack] = count(); }",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace (cargo xtask setup installs it)");
        let mut b = Bpftrace(child);
        let stdout = b.0.stdout.as_mut().unwrap();
        let mut first = [0u8; 9];
        stdout.read_exact(&mut first).unwrap(); // "Attaching"
        b
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Client handshakes (timed, untimed and failed) or server ones.
fn handshakes(m: &HashMap<String, f64>, side: &str) -> f64 {
    let failures = if side == "client" {
        "tcptrace_connect_failures_total"
    } else {
        "tcptrace_accept_failures_total"
    };
    value(
        m,
        &format!(r#"tcptrace_handshake_duration_seconds_count{{side="{side}"}}"#),
    ) + value(
        m,
        &format!(r#"tcptrace_handshakes_untimed_total{{side="{side}"}}"#),
    ) + total(m, failures)
}

/// Retransmits of handshake segments: the kernel counts them apart (TCPSynRetrans).
fn syn_retransmits(m: &HashMap<String, f64>) -> f64 {
    series_of(m, "tcptrace_retransmits_total")
        .into_iter()
        .filter(|(series, _)| matches!(label(series, "kind"), "syn" | "synack"))
        .map(|(_, v)| v)
        .sum()
}

/// Rounds of client load, each compared with the kernel's counters around it; returns
/// the skipped runs nothing handled and the ones a backup program handled.
fn rounds(link: &LossyLink, agent: &Agent, n: usize, exact: bool) -> (f64, f64) {
    let (mut missed, mut recovered) = (0.0, 0.0);
    // Lost FINs are still retransmitted after the clients are done: compare once both
    // sides' counts hold still around a scrape.
    let settled = || {
        bracketed(
            || link.nstat(),
            &["TcpRetransSegs", "TcpExtTCPSynRetrans"],
            &["tcptrace_retransmits_total"],
            || agent.scrape(),
        )
    };
    for round in 1..=n {
        let (kernel_before, before) = settled();
        clients(link, 3).join().unwrap();
        let (kernel_after, after) = settled();
        let grew = |name: &str| growth(&before, &after, name);
        let kernel = |name: &str| delta(&kernel_before, &kernel_after, name) as f64;
        let retransmits = kernel("TcpRetransSegs");
        assert!(
            retransmits > 100.0,
            "round {round}: 3% loss made {retransmits} retransmits"
        );
        // tcp_probe's skipped runs only delay bytes to the socket's next segment (it
        // counts by delta); every other probe's feed the exact counters compared here.
        let sampler = r#"tcptrace_kernel_missed_runs_total{probe="tcp_probe"}"#;
        let round_missed = grew("tcptrace_kernel_missed_runs_total") - grew(sampler);
        let ours = grew("tcptrace_retransmits_total");
        let mut compared = vec![
            (
                "retransmitted segments vs TcpRetransSegs",
                ours,
                retransmits,
            ),
            (
                "SYN and SYN-ACK retransmits vs TCPSynRetrans",
                syn_retransmits(&after) - syn_retransmits(&before),
                kernel("TcpExtTCPSynRetrans"),
            ),
        ];
        for (side, opens) in [("client", "TcpActiveOpens"), ("server", "TcpPassiveOpens")] {
            let counted = handshakes(&after, side) - handshakes(&before, side);
            compared.push((opens, counted, kernel(opens)));
        }
        let round_recovered = grew("tcptrace_kernel_recovered_runs_total");
        if exact {
            // All of them in the message: which one is off tells where to look.
            let table: Vec<String> = compared
                .iter()
                .map(|(what, ours, truth)| format!("{what}: ours {ours}, kernel {truth}"))
                .collect();
            assert!(
                compared.iter().all(|(_, ours, truth)| ours == truth),
                "round {round}: {} ({round_missed} skipped runs missed, {round_recovered} \
                 handled by a backup program)",
                table.join("; ")
            );
        } else {
            for (what, ours, truth) in compared {
                // One skipped run hides at most one GSO skb (64 segments here).
                assert!(
                    ours <= truth && truth - ours <= round_missed * 64.0,
                    "round {round}: {what}: ours {ours}, kernel {truth}, {round_missed} skipped"
                );
            }
        }
        eprintln!(
            "round {round}: {retransmits} retransmitted segments, {} client handshakes, \
             {round_missed} skipped runs missed, {round_recovered} handled by a backup program",
            kernel("TcpActiveOpens"),
        );
        missed += round_missed;
        recovered += round_recovered;
    }
    (missed, recovered)
}

/// The socket probes on their classic tracepoints, as on kernels without raw or
/// BTF-typed ones.
const CLASSIC: [&str; 12] = [
    "--probe-method",
    "inet_sock_set_state=tracepoint",
    "--probe-method",
    "tcp_retransmit_skb=tracepoint",
    "--probe-method",
    "tcp_retransmit_synack=tracepoint",
    "--probe-method",
    "tcp_receive_reset=tracepoint",
    "--probe-method",
    "tcp_send_reset=tracepoint",
    "--probe-method",
    "inet_sk_error_report=tracepoint",
];

/// On BTF-typed tracepoints every program has a recursion guard of its own and a
/// backup for what its own guard skips: round after round, retransmits and handshakes
/// of both sides equal the kernel's counts and nothing is missed. The same load on the
/// classic tracepoints, whose guard is shared with the other tool's programs, does
/// skip runs (the kernel says how many), so the contention is real.
#[test]
fn retransmits_and_handshakes_are_exact_round_after_round_with_another_tool_busy() {
    require_root!();
    let _serial = serial();
    let link = LossyLink::new();
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(&link, stop.clone());
    let _busy = Bpftrace::start();

    let agent = Agent::start(&[]);
    let plan = agent.scrape();
    assert_eq!(
        value(
            &plan,
            r#"tcptrace_probe_attached{probe="inet_sock_set_state",method="tp_btf"}"#
        ),
        1.0,
        "the per-program-guard path"
    );
    let (missed, _) = rounds(&link, &agent, 5, true);
    assert_eq!(missed, 0.0);
    drop(agent);

    // Until the shared guard has skipped one of tcptrace's runs (a handful of rounds at
    // most): then the contention of the rounds above was real.
    let classic = Agent::start(&CLASSIC);
    let skipped = (0..6).any(|_| rounds(&link, &classic, 1, false).0 > 0.0);
    assert!(
        skipped,
        "six rounds on the classic tracepoints skipped nothing"
    );
    drop(classic);

    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}
