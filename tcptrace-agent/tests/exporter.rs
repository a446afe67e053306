//! `tcptrace run` against the real kernel: its counters must equal what the tests' own
//! connections did and what the kernel counted (nstat), even when the ring buffer
//! overflows; a real Prometheus scrapes it and promtool checks the exposition.
//!
//! The kernel counters are machine-wide, so every test here runs alone (`serial`): even
//! a readiness probe is a TCP connection that would show up in another test's counts.
mod common;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use common::{
    bracketed, churn, connect_refused, delta, free_port, growth, host_and, http_request,
    in_private_netns, label, listener_with_backlog, poll_until, require_root, serial, series_of,
    ss_listen_queue, thread_comm, value, wait_until, Agent, KillOnDrop, Netns, TempDir,
};

/// One scrape is one TCP connection to the agent: between two snapshots, the first
/// scrape's close (6 transitions) and the second's handshake (4 transitions, 2 handshake
/// events) land in the counters, exactly one connection's worth.
const SCRAPE_TRANSITIONS: f64 = 10.0;
const SCRAPE_HANDSHAKES: f64 = 2.0;
const HANDSHAKES: &str = "tcptrace_handshake_duration_seconds_count";

/// Transitions to a different state. The agent shuts a scrape connection down for
/// writing and then closes it; depending on whether the client's ACK or FIN came first,
/// the kernel reports that close as FIN_WAIT1 -> FIN_WAIT1, FIN_WAIT2 -> FIN_WAIT2 or
/// nothing. Those self-transitions are counted (the kernel reports them) but are not
/// state changes, so exact comparisons leave them out.
fn state_changes(m: &HashMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(series, _)| series.starts_with("tcptrace_state_transitions_total{"))
        .filter(|(series, _)| label(series, "from") != label(series, "to"))
        .map(|(_, v)| v)
        .sum()
}

/// Whether nothing but one scrape's own connection moved the counters from `a` to `b`.
fn one_scrape_apart(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> bool {
    state_changes(b) - state_changes(a) == SCRAPE_TRANSITIONS
        && growth(a, b, HANDSHAKES) == SCRAPE_HANDSHAKES
}

/// Scrapes until the last two are one scrape apart: then nothing but the scrapes moves
/// the counters any more (the closes of the agent's readiness probes, or of a load just
/// made, are done). Every scrape taken, in order.
fn scrapes_until_quiet(agent: &Agent) -> Vec<HashMap<String, f64>> {
    let mut scrapes = vec![agent.scrape()];
    wait_until(
        Duration::from_secs(10),
        "two scrapes in a row one scrape apart",
        || {
            scrapes.push(agent.scrape());
            let [.., a, b] = &scrapes[..] else {
                unreachable!()
            };
            one_scrape_apart(a, b).then_some(())
        },
    );
    scrapes
}

/// Two scrapes around a load, and how many scrapes' own connections (see
/// `SCRAPE_TRANSITIONS`) their difference holds besides the load's.
struct Around {
    before: HashMap<String, f64>,
    after: HashMap<String, f64>,
    scrapes: f64,
}

/// Open and close `n` loopback connections (and their listener), between two scrapes.
fn scrapes_around_churn(agent: &Agent, n: usize) -> Around {
    scrapes_around(agent, |l| {
        churn(l, n);
    })
}

/// Run `load` against a fresh listener between two scrapes, each taken once nothing but
/// the scrapes moves the counters.
fn scrapes_around(agent: &Agent, load: impl FnOnce(&TcpListener)) -> Around {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let before = scrapes_until_quiet(agent).pop().unwrap();
    load(&listener);
    drop(listener);
    let mut since = scrapes_until_quiet(agent);
    // The last one only showed that the one before it was quiet.
    since.pop();
    let scrapes = since.len() as f64;
    Around {
        before,
        after: since.pop().unwrap(),
        scrapes,
    }
}

#[test]
fn transitions_and_handshakes_grow_by_exactly_our_connections() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&[]);
    const N: usize = 150;
    let Around {
        before,
        after,
        scrapes,
    } = scrapes_around_churn(&agent, N);

    let transitions = state_changes(&after) - state_changes(&before);
    // Each connection: 5 client + 5 server transitions; the listener: LISTEN -> CLOSE.
    assert_eq!(
        transitions,
        (N * 10 + 1) as f64 + scrapes * SCRAPE_TRANSITIONS
    );
    let listen_to_syn_recv = r#"tcptrace_state_transitions_total{from="LISTEN",to="SYN_RECV"}"#;
    assert_eq!(
        growth(&before, &after, listen_to_syn_recv),
        N as f64 + scrapes
    );
    let handshakes = growth(&before, &after, HANDSHAKES);
    assert_eq!(
        handshakes,
        2.0 * N as f64 + scrapes * SCRAPE_HANDSHAKES,
        "client and server side of each"
    );
    for side in ["client", "server"] {
        let count = format!(r#"tcptrace_handshake_duration_seconds_count{{side="{side}"}}"#);
        let inf =
            format!(r#"tcptrace_handshake_duration_seconds_bucket{{side="{side}",le="+Inf"}}"#);
        assert_eq!(value(&after, &count), value(&after, &inf));
        assert_eq!(growth(&before, &after, &count), N as f64 + scrapes);
    }
    assert_eq!(value(&after, "tcptrace_ringbuf_events_lost_total"), 0.0);
}

#[test]
fn retransmit_and_failure_counters_match_the_kernel_under_loss() {
    require_root!();
    let _serial = serial();
    let ns = Netns::new("xrtx");
    ns.like_a_real_link();
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1"]);
    let data_port = 21000 + (std::process::id() % 20000) as u16;
    let dark_port = data_port + 1;
    // 8% of the transfer both ways, every SYN to the dark port.
    ns.drop_on_input(
        "tcptrace_xloss",
        &[
            format!("tcp dport {data_port} numgen random mod 100 < 8"),
            format!("tcp sport {data_port} numgen random mod 100 < 8"),
            format!("tcp dport {dark_port}"),
        ],
    );
    let agent = Agent::start(&[]);
    // tcptrace counts the whole machine: compare with the host's counters and the
    // namespace's, each side read while neither moves.
    let settled = || {
        bracketed(
            || host_and(&[&ns]),
            &["TcpRetransSegs", "TcpExtTCPSynRetrans"],
            &["tcptrace_retransmits_total"],
            || agent.scrape(),
        )
    };
    let (kernel_before, before) = settled();
    let work = ns.run(move || {
        let reader = common::receive_one(data_port);
        let dark: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    TcpStream::connect(("127.0.0.1", dark_port))
                        .unwrap_err()
                        .kind()
                })
            })
            .collect();
        let mut client = TcpStream::connect(("127.0.0.1", data_port)).unwrap();
        client.set_nodelay(true).unwrap();
        for _ in 0..400 {
            use std::io::Write;
            client.write_all(&[1u8; 1000]).unwrap();
        }
        drop(client);
        reader.join().unwrap();
        dark.into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let dark_outcomes = work.join().unwrap();
    assert!(
        dark_outcomes
            .iter()
            .all(|k| *k == std::io::ErrorKind::TimedOut),
        "{dark_outcomes:?}"
    );
    ns.delete_table("tcptrace_xloss");
    // A FIN lost just before the rule went is retransmitted until its connection ends.
    ns.wait_closed();
    let (kernel_after, after) = settled();

    let segs = delta(&kernel_before, &kernel_after, "TcpRetransSegs") as f64;
    assert!(segs > 4.0, "the loss rule caused no data retransmits");
    // Exact, unless the kernel skipped our program (it says how often).
    common::assert_within_missed(
        (&before, &after),
        (growth(&before, &after, "tcptrace_retransmits_total"), segs),
        "tcp_retransmit_skb",
        64.0,
        "vs TcpRetransSegs",
    );
    let syn_like = |m: &HashMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(s, _)| ["syn", "synack"].contains(&label(s, "kind")))
            .map(|(_, v)| v)
            .sum()
    };
    let syn_like = syn_like(&after) - syn_like(&before);
    assert_eq!(
        syn_like,
        delta(&kernel_before, &kernel_after, "TcpExtTCPSynRetrans") as f64,
        "vs TcpExtTCPSynRetrans"
    );
    let timeouts = r#"tcptrace_connect_failures_total{reason="timeout"}"#;
    assert_eq!(
        growth(&before, &after, timeouts),
        4.0,
        "the four dark connects"
    );
}

/// Without workload labels `run` reads no events: the kernel builds none, and every
/// metric still comes out exact from the in-kernel counters.
#[test]
fn without_labels_run_streams_no_events_and_counts_exactly() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&[]);
    const N: usize = 300;
    let Around {
        before,
        after,
        scrapes,
    } = scrapes_around_churn(&agent, N);
    assert_eq!(
        growth(&before, &after, "tcptrace_ringbuf_events_total"),
        0.0
    );
    assert_eq!(
        state_changes(&after) - state_changes(&before),
        (N * 10 + 1) as f64 + scrapes * SCRAPE_TRANSITIONS
    );
    assert_eq!(
        growth(&before, &after, HANDSHAKES),
        2.0 * N as f64 + scrapes * SCRAPE_HANDSHAKES
    );
}

#[test]
fn counters_stay_exact_when_the_ring_buffer_overflows() {
    require_root!();
    let _serial = serial();
    // Workload labels: `run` then streams the handshake events it labels.
    let agent = Agent::start(&["--ring-bytes", "4096", "--labels", "workload"]);
    const N: usize = 1500;
    // The agent is stopped while the connections are made: nothing drains the ring, so
    // it overflows however fast or slow the machine is.
    // SAFETY: kill(2) on our own child process.
    let signal = |sig| assert_eq!(unsafe { libc::kill(agent.pid() as i32, sig) }, 0);
    let Around {
        before,
        after,
        scrapes,
    } = scrapes_around(&agent, |listener| {
        signal(libc::SIGSTOP);
        churn(listener, N);
        signal(libc::SIGCONT);
    });
    let lost = growth(&before, &after, "tcptrace_ringbuf_events_lost_total");
    assert!(lost > 0.0, "a 4 KiB ring must overflow under this churn");
    assert_eq!(
        state_changes(&after) - state_changes(&before),
        (N * 10 + 1) as f64 + scrapes * SCRAPE_TRANSITIONS,
        "{lost} events lost, counts exact"
    );
    assert_eq!(
        growth(&before, &after, HANDSHAKES),
        2.0 * N as f64 + scrapes * SCRAPE_HANDSHAKES
    );
    let submitted = growth(&before, &after, "tcptrace_ringbuf_events_total");
    assert!(submitted > 0.0);
}

/// The listen-queue gauges of a listener of the test's own equal `ss`, labelled with the
/// thread that called listen(). The agent runs in a network namespace of the test's, so
/// the family holds that namespace's listeners only: ours, one opened before the agent
/// (owner unknown to it) and the agent's own.
#[test]
fn listen_queue_gauges_equal_ss_for_our_listener() {
    require_root!();
    let _serial = serial();
    in_private_netns(&[], || {
        let older = TcpListener::bind("127.0.0.1:0").unwrap();
        let agent = Agent::start(&[]);
        // Opened after the programs attached: the listener table knows who listened.
        let listener = listener_with_backlog("127.0.0.1:0", 2);
        let port = listener.local_addr().unwrap().port();
        let _queued: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        wait_until(Duration::from_secs(10), "3 connections queued (ss)", || {
            (ss_listen_queue(port) == (3, 2)).then_some(())
        });
        let m = agent.scrape();
        let (length, limit) = ss_listen_queue(port);
        let ours = format!(
            "{{listener=\"127.0.0.1:{port}\",comm=\"{}\"}}",
            thread_comm()
        );
        let gauge = |family: &str| m.get(&format!("{family}{ours}")).copied();
        eprintln!(
            "{ours}: length {:?}, limit {:?}; ss {length}/{limit}",
            gauge("tcptrace_listen_queue_length"),
            gauge("tcptrace_listen_queue_limit")
        );
        assert_eq!(
            gauge("tcptrace_listen_queue_length"),
            Some(length as f64),
            "{m:?}"
        );
        assert_eq!(gauge("tcptrace_listen_queue_limit"), Some(limit as f64));
        assert_eq!((length, limit), (3, 2));
        // The agent's own listener, opened before its programs: named from /proc/self.
        let agents = format!("{{listener=\"{}\",comm=\"tcptrace\"}}", agent.addr);
        let mut series: Vec<String> = series_of(&m, "tcptrace_listen_queue_limit")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        series.sort();
        let older = format!(
            "{{listener=\"{}\",comm=\"unknown\"}}",
            older.local_addr().unwrap()
        );
        let mut expected = vec![
            format!("tcptrace_listen_queue_limit{ours}"),
            format!("tcptrace_listen_queue_limit{agents}"),
            format!("tcptrace_listen_queue_limit{older}"),
        ];
        expected.sort();
        assert_eq!(series, expected, "this namespace's listeners, no other");
    });
}

#[test]
fn promtool_accepts_the_exposition() {
    require_root!();
    let _serial = serial();
    // Without labels, and with the per-workload families (their histograms included).
    for args in [&[][..], &["--labels", "workload,remote"]] {
        let agent = Agent::start(args);
        // Make every family appear: a retransmit is hard to force here, the rest are
        // easy (a refusal; the scrapes are handshakes).
        connect_refused();
        let body = wait_until(Duration::from_secs(10), "a handshake histogram", || {
            let (_, body) = agent.get("/metrics").unwrap();
            let histogram = "tcptrace_workload_handshake_duration_seconds_bucket{";
            (args.is_empty() || body.contains(histogram)).then_some(body)
        });
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(body.as_bytes());
        assert!(
            child.status.success() && child.stdout.is_empty() && child.stderr.is_empty(),
            "promtool ({args:?}): {}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
    }
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn a_real_prometheus_scrapes_the_same_values() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&[]);
    let dir = TempDir::new("prom");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .unwrap();
    let prom_port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let prom_addr = SocketAddr::from(([127, 0, 0, 1], prom_port));
    // Dropped before its directory.
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package; cargo xtask setup installs it)"),
    );

    let query = |q: &str| -> Option<f64> {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        let (status, body) = http_request(
            prom_addr,
            &format!("GET {path} HTTP/1.1\r\nHost: prom\r\nConnection: close\r\n\r\n"),
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    // Until Prometheus listens, every query is itself a refused connection: wait first.
    let up = || (query(r#"up{job="tcptrace"}"#) == Some(1.0)).then_some(());
    wait_until(
        Duration::from_secs(60),
        "Prometheus to scrape the agent",
        up,
    );
    for _ in 0..3 {
        connect_refused();
    }
    let refused = r#"tcptrace_connect_failures_total{reason="refused"}"#;
    let direct = value(&agent.scrape(), refused);
    assert!(direct >= 3.0);
    let mut seen = None;
    poll_until(Duration::from_secs(60), || {
        seen = query(refused);
        (seen == Some(direct)).then(up).flatten()
    });
    assert_eq!(seen, Some(direct), "Prometheus's value of {refused}");
    assert_eq!(query("tcptrace_build_info"), Some(1.0));
}

#[test]
fn http_answers_bad_requests_clearly_and_keeps_serving() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&[]);
    let req = |raw: &str| http_request(agent.addr, raw).unwrap().0;
    assert_eq!(req("GET /nope HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(
        req("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        405
    );
    assert_eq!(req("GARBAGE\r\n\r\n"), 400);
    assert_eq!(
        req(&format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(10_000)
        )),
        431
    );
    assert_eq!(req("HEAD /metrics HTTP/1.1\r\n\r\n"), 200);
    assert_eq!(req("GET /healthz HTTP/1.1\r\n\r\n"), 200);
    assert_eq!(agent.get("/metrics").unwrap().0, 200);
    let (status, log) = agent.stop();
    assert!(status.success(), "SIGTERM is a clean exit: {log}");
    assert!(log.contains("every program detached"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn bad_listen_addresses_fail_before_loading() {
    require_root!();
    let _serial = serial();
    let out = Command::new(common::TCPTRACE)
        .args(["run", "--listen", "localhost"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not ADDR:PORT"));

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(common::TCPTRACE)
        .args(["--log-level", "info", "run", "--listen", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("attached"),
        "nothing may be loaded when the port is taken: {stderr}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&["--log-format", "json"]);
    let (_, log) = agent.stop();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            v["level"].is_string() && v["msg"].is_string() && v["ts"].is_string(),
            "{line}"
        );
    }
}
