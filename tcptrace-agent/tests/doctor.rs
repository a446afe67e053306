//! `tcptrace doctor` against ground truth (root): each test builds the situation in a
//! network namespace of its own thread, runs doctor inside it, and compares with what
//! the kernel says (`ss`, the syscalls' own results, the sysctls it set).
mod common;

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use tcptrace_agent::doctor::timeouts;

/// `tcptrace doctor --json` with these arguments, run in the caller's network namespace
/// (call it from inside `in_private_netns`): the report and the exit status.
fn doctor(args: &[&str]) -> (Value, i32) {
    tcptrace_json(&[&["doctor", "--json"], args].concat())
}

/// Sockets in TIME_WAIT in the calling thread's network namespace, as `ss` counts them.
fn time_wait_in_ss() -> u64 {
    let ss = Command::new("ss")
        .args(["-tanH", "state", "time-wait"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ss.stdout).lines().count() as u64
}

/// Sockets in one state (`ss`'s name for it, e.g. "close-wait") in the calling thread's
/// network namespace.
fn in_ss_state(state: &str) -> u64 {
    let ss = Command::new("ss")
        .args(["-tanH", "state", state])
        .output()
        .unwrap();
    assert!(ss.status.success(), "{ss:?}");
    String::from_utf8_lossy(&ss.stdout).lines().count() as u64
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    find_by(&report["findings"], "check", check)
}

#[test]
fn time_wait_count_equals_ss() {
    require_root!();
    let _serial = serial();
    let (doctor_count, ss_count) = in_private_netns(&[], || {
        let listener = TcpListener::bind("127.0.0.1:6000").unwrap();
        let mut servers = Vec::new();
        for _ in 0..1000 {
            let client = TcpStream::connect("127.0.0.1:6000").unwrap();
            let (server, _) = listener.accept().unwrap();
            drop(client); // the client closes first and keeps TIME_WAIT
            servers.push(server);
        }
        // Each server sees its client's FIN (the end of its stream), then closes its side.
        for server in &mut servers {
            server
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0, "a FIN, no data");
        }
        drop(servers);
        wait_until(Duration::from_secs(10), "every client in TIME_WAIT", || {
            (time_wait_in_ss() >= 1000).then_some(())
        });
        let (report, _) = doctor(&["--measure", "0"]);
        (
            report["census"]["time_wait"].as_u64().unwrap(),
            time_wait_in_ss(),
        )
    });
    eprintln!("doctor {doctor_count}, ss {ss_count}");
    assert_eq!(doctor_count, ss_count);
    assert_eq!(doctor_count, 1000, "every client socket is in TIME_WAIT");
}

#[test]
fn an_exhausted_port_range_is_critical_and_eaddrnotavail_is_counted() {
    require_root!();
    let _serial = serial();
    let (report, status) =
        in_private_netns(&[("net.ipv4.ip_local_port_range", "40000 40009")], || {
            let listener = TcpListener::bind("127.0.0.1:5555").unwrap();
            let held: Vec<TcpStream> = (0..10)
                .map(|_| TcpStream::connect("127.0.0.1:5555").unwrap())
                .collect();
            let doctor = std::thread::spawn(|| doctor(&["--measure", "3"]));
            // Keep failing while doctor measures (it attaches within the first second).
            let until = Instant::now() + Duration::from_millis(3500);
            let mut refused = 0;
            while Instant::now() < until {
                match TcpStream::connect("127.0.0.1:5555") {
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => refused += 1,
                    other => panic!("expected EADDRNOTAVAIL, got {other:?}"),
                }
                // The load: a failure every 100 ms for doctor to measure, not a wait.
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(refused > 0);
            let result = doctor.join().unwrap();
            drop((held, listener));
            result
        });
    let ports = finding(&report, "ephemeral_ports");
    assert_eq!(ports["severity"], "critical", "{ports}");
    assert_eq!(status, 4, "critical findings exit with 4");
    let seen = report["measured"]["connect_errors"]["EADDRNOTAVAIL"]
        .as_u64()
        .unwrap_or(0);
    assert!(seen > 0, "{}", report["measured"]);
    let evidence = ports["evidence"].to_string();
    assert!(
        evidence.contains("10 local ports in use towards 127.0.0.1:5555 (100.0%)"),
        "{evidence}"
    );
}

/// A listener of backlog 2 that never accepts: three connections fill its queue (the
/// kernel queues backlog + 1), a fourth SYN overflows it. doctor reports the queue as
/// `ss` shows it, warns, gives the namespace's ListenOverflows as `nstat` counts it, and
/// tells of a second listener whose backlog somaxconn capped.
#[test]
fn a_full_accept_queue_is_reported_as_ss_and_nstat_see_it() {
    require_root!();
    let _serial = serial();
    let me = std::process::id();
    in_private_netns(&[("net.core.somaxconn", "64")], move || {
        let _full = listener_with_backlog("127.0.0.1:6003", 2);
        let _capped = listener_with_backlog("127.0.0.1:6004", 1024);
        let _queued: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect("127.0.0.1:6003").unwrap())
            .collect();
        wait_until(Duration::from_secs(10), "3 connections queued (ss)", || {
            (ss_listen_queue(6003) == (3, 2)).then_some(())
        });
        let overflows = || parse_nstat(&sh(&["nstat", "-asz"]))["TcpExtListenOverflows"];
        // The fourth SYN finds the queue full; closed before it is retransmitted (1 s),
        // so the counter then holds still.
        let syn = connect_in_progress(6003);
        wait_until(Duration::from_secs(10), "ListenOverflows counted", || {
            (overflows() >= 1).then_some(())
        });
        drop(syn);
        let before = overflows();
        let (report, _) = doctor(&["--measure", "0"]);
        let (ss_full, ss_capped, after) =
            (ss_listen_queue(6003), ss_listen_queue(6004), overflows());
        assert_eq!(before, after, "the counter moved while doctor ran");
        eprintln!(
            "doctor {} {}\nss 6003 {ss_full:?}, 6004 {ss_capped:?}; nstat ListenOverflows {after}",
            report["census"]["listeners"],
            finding(&report, "listen_queues")
        );

        let census = &report["census"];
        let queue = |port: u16| {
            let l = find_by(&census["listeners"], "local", &format!("127.0.0.1:{port}"));
            (
                l["queue_length"].as_u64().unwrap(),
                l["queue_limit"].as_u64().unwrap(),
            )
        };
        assert_eq!(queue(6003), ss_full);
        assert_eq!(queue(6003), (3, 2), "a backlog of 2 queues 3");
        assert_eq!(queue(6004), ss_capped);
        assert_eq!(queue(6004), (0, 64), "1024 capped at somaxconn");
        let full = find_by(&census["listeners"], "local", "127.0.0.1:6003");
        assert_eq!(full["pid"], me, "{full}");

        let f = finding(&report, "listen_queues");
        assert_eq!(f["severity"], "warning", "{f}");
        let evidence: Vec<&str> = f["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        let has = |start: &str| evidence.iter().any(|e| e.starts_with(start));
        assert!(has("127.0.0.1:6003 ("), "{evidence:?}");
        assert!(
            evidence
                .iter()
                .any(|e| e.contains("accept queue 3 of 2, full")),
            "{evidence:?}"
        );
        assert!(has("capped at somaxconn: 127.0.0.1:6004 ("), "{evidence:?}");
        assert!(
            has(&format!("ListenOverflows {after}, ListenDrops ")),
            "{evidence:?}"
        );
        assert!(after >= 1);
    });
}

fn set_keepalive(s: &TcpStream, idle_s: i32, intvl_s: i32, count: i32) {
    let fd = s.as_raw_fd();
    for (level, opt, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl_s),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        // SAFETY: setsockopt with a valid fd and an int option value.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }
}

/// The kernel's `tcp_info` of one of our sockets.
fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    // SAFETY: getsockopt(TCP_INFO) into a zeroed tcp_info of the size we pass.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info
    }
}

/// How long the kernel says a connection has moved no data, either way (what doctor
/// calls idle).
fn idle(s: &TcpStream) -> Duration {
    let info = tcp_info(s);
    let ms = info.tcpi_last_data_sent.min(info.tcpi_last_data_recv);
    Duration::from_millis(ms.into())
}

#[test]
fn idle_connections_are_split_by_keepalive_with_their_owner() {
    require_root!();
    let _serial = serial();
    let me = std::process::id();
    in_private_netns(&[], move || {
        let listener = TcpListener::bind("127.0.0.1:6001").unwrap();
        let plain = TcpStream::connect("127.0.0.1:6001").unwrap();
        let (plain_server, _) = listener.accept().unwrap();
        let watched = TcpStream::connect("127.0.0.1:6001").unwrap();
        set_keepalive(&watched, 600, 60, 5);
        let (watched_server, _) = listener.accept().unwrap();
        let sockets = [&plain, &plain_server, &watched, &watched_server];
        wait_until(Duration::from_secs(10), "every connection idle 1 s", || {
            sockets
                .iter()
                .all(|s| idle(s) >= Duration::from_secs(1))
                .then_some(())
        });
        let (report, status) = doctor(&["--measure", "0", "--idle-after", "1"]);
        let census = &report["census"];
        // Client with SO_KEEPALIVE: armed. The other client and both server ends: not.
        assert_eq!(census["idle_with_keepalive"], 1, "{census}");
        assert_eq!(census["idle_without_keepalive"], 3, "{census}");
        let listed = census["idle"].as_array().unwrap();
        let entry = |addr: std::net::SocketAddr| {
            listed
                .iter()
                .find(|i| i["local"] == addr.to_string())
                .unwrap_or_else(|| panic!("{addr} not listed: {census}"))
        };
        assert_eq!(entry(plain.local_addr().unwrap())["keepalive"], false);
        assert_eq!(entry(watched.local_addr().unwrap())["keepalive"], true);
        assert_eq!(entry(plain.local_addr().unwrap())["pid"], me);
        assert_eq!(finding(&report, "idle_connections")["severity"], "warning");
        assert_eq!(status, 3, "warnings exit with 3");
    });
}

#[test]
fn the_namespace_sysctls_drive_the_computed_figures() {
    require_root!();
    let _serial = serial();
    let tuned = in_private_netns(
        &[
            ("net.ipv4.tcp_keepalive_time", "60"),
            ("net.ipv4.tcp_keepalive_intvl", "10"),
            ("net.ipv4.tcp_keepalive_probes", "3"),
            ("net.ipv4.tcp_syn_retries", "2"),
            ("net.ipv4.tcp_synack_retries", "1"),
        ],
        || doctor(&["--measure", "0"]).0,
    );
    let keepalive = finding(&tuned, "keepalive");
    assert!(
        keepalive["summary"]
            .as_str()
            .unwrap()
            .ends_with("after 90 s"),
        "{keepalive}"
    );
    // 90 s is still longer than an ALB's 60 s idle timeout, but shorter than an NLB's.
    let evidence = keepalive["evidence"].to_string();
    assert!(
        evidence.contains("AWS ALB") && !evidence.contains("AWS NLB"),
        "{evidence}"
    );
    let timeouts = finding(&tuned, "connect_timeout");
    assert!(
        timeouts["summary"]
            .as_str()
            .unwrap()
            .starts_with("kernel connect timeout 7 s"),
        "{timeouts}"
    );
    assert!(
        timeouts["evidence"].to_string().contains("after 3 s"),
        "synack 1 retry: {timeouts}"
    );

    let defaults = in_private_netns(&[], || doctor(&["--measure", "0"]).0);
    assert!(finding(&defaults, "keepalive")["summary"]
        .as_str()
        .unwrap()
        .contains("7875 s"));
    assert!(finding(&defaults, "connect_timeout")["summary"]
        .as_str()
        .unwrap()
        .contains("127 s"));
}

/// A peer that vanishes behind a firewall: with short keep-alive settings the kernel
/// gives up on the connection with ETIMEDOUT, and the agent counts exactly that one.
#[test]
fn a_blackholed_peer_is_counted_as_an_etimedout_close() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start(&[]);
    let series = "tcptrace_socket_errors_total{errno=\"ETIMEDOUT\"}";
    let before = value(&agent.scrape(), series);
    let err = in_private_netns(&[], || {
        let listener = TcpListener::bind("127.0.0.1:6002").unwrap();
        let mut client = TcpStream::connect("127.0.0.1:6002").unwrap();
        let (server, _) = listener.accept().unwrap();
        set_keepalive(&client, 1, 1, 2);
        nft(&drop_on_input(
            "blackhole",
            &["tcp dport 6002".into(), "tcp sport 6002".into()],
        ));
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = client.read(&mut buf).unwrap_err();
        // The server's side ends with a RST, not a FIN: a FIN into the blackhole would
        // be retransmitted for minutes by a socket outliving this namespace, adding
        // retransmits no later test can see in any namespace's counters.
        set_linger_zero(&server);
        err
    });
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let after = wait_until(Duration::from_secs(10), "the ETIMEDOUT counted", || {
        let after = value(&agent.scrape(), series);
        (after > before).then_some(after)
    });
    assert_eq!(after - before, 1.0, "one connection timed out");
}

#[test]
fn close_wait_sockets_are_listed_under_their_process_as_ss_counts_them() {
    require_root!();
    let _serial = serial();
    const N: u64 = 7;
    let me = std::process::id();
    in_private_netns(&[], move || {
        let listener = TcpListener::bind("127.0.0.1:6003").unwrap();
        // Each client closes at once; the server accepts and never closes its side.
        let servers: Vec<TcpStream> = (0..N)
            .map(|_| {
                let client = TcpStream::connect("127.0.0.1:6003").unwrap();
                let (server, _) = listener.accept().unwrap();
                drop(client);
                server
            })
            .collect();
        wait_until(Duration::from_secs(10), "N sockets in CLOSE_WAIT", || {
            (in_ss_state("close-wait") == N).then_some(())
        });
        let (fresh, _) = doctor(&["--measure", "0"]);
        let in_ss = in_ss_state("close-wait");
        let census = &fresh["census"];
        eprintln!("CLOSE_WAIT: doctor {}, ss {in_ss}", census["close_wait"]);
        assert_eq!(census["close_wait"], in_ss, "{census}");
        assert_eq!(census["close_wait_processes"], 1, "{census}");
        let mine = &census["close_wait_by_process"][0];
        assert_eq!(mine["pid"], me, "{census}");
        assert_eq!(mine["sockets"], N, "{census}");
        assert_eq!(mine["idle"], 0, "{census}");
        // A few seconds old and fewer than a crowd: reported, not a warning yet.
        assert_eq!(finding(&fresh, "close_wait")["severity"], "info");

        wait_until(
            Duration::from_secs(10),
            "every server socket idle 1 s",
            || {
                servers
                    .iter()
                    .all(|s| idle(s) >= Duration::from_secs(1))
                    .then_some(())
            },
        );
        let (stale, status) = doctor(&["--measure", "0", "--idle-after", "1"]);
        let mine = &stale["census"]["close_wait_by_process"][0];
        assert_eq!(mine["idle"], N, "{mine}");
        let check = finding(&stale, "close_wait");
        assert_eq!(check["severity"], "warning", "{check}");
        let evidence = check["evidence"].to_string();
        assert!(
            evidence.contains(&format!("({me}): {N} CLOSE_WAIT sockets, {N} idle")),
            "{evidence}"
        );
        assert_eq!(status, 3, "warnings exit with 3");
        drop(servers);
    });
}

/// /proc/net/sockstat's TCP line as the calling thread's namespace has it, by name.
fn sockstat_tcp() -> HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].parse().unwrap()))
        .collect()
}

/// Write to a peer that never reads until the send buffer is full: what is left waits
/// for a window the peer keeps closed.
fn fill_until_blocked(s: &mut TcpStream) {
    s.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    loop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => panic!("filling the send buffer: {e}"),
        }
    }
}

#[test]
fn orphans_and_memory_are_sockstat_s_figures() {
    require_root!();
    let _serial = serial();
    const ORPHANS: u64 = 3;
    const TIME_WAIT: u64 = 5;
    let (report, sockstat) = in_private_netns(&[], || {
        // Orphans: closed with data the peer does not read, they stay in FIN_WAIT1.
        let stalled = TcpListener::bind("127.0.0.1:6004").unwrap();
        let mut servers = Vec::new();
        for _ in 0..ORPHANS {
            let mut client = TcpStream::connect("127.0.0.1:6004").unwrap();
            let (server, _) = stalled.accept().unwrap();
            fill_until_blocked(&mut client);
            drop(client);
            // Dropping the server end (unread data in it) resets its orphan: the test
            // leaves nothing behind, also when it fails.
            servers.push(server);
        }
        let churned = TcpListener::bind("127.0.0.1:6005").unwrap();
        churn(&churned, TIME_WAIT as usize);
        wait_until(
            Duration::from_secs(10),
            "orphans and TIME_WAIT in place",
            || {
                (in_ss_state("fin-wait-1") == ORPHANS && in_ss_state("time-wait") == TIME_WAIT)
                    .then_some(())
            },
        );
        // inuse and tw are this namespace's and hold still; orphan, alloc and mem are the
        // node's and may move: a doctor run between two equal readings must show them.
        let still = wait_until(
            Duration::from_secs(30),
            "sockstat holding still across a doctor run",
            || {
                let before = sockstat_tcp();
                let (report, _) = doctor(&["--measure", "0"]);
                (sockstat_tcp() == before).then_some((report, before))
            },
        );
        drop((servers, churned));
        still
    });
    let memory = &report["memory"];
    eprintln!("doctor {memory}, sockstat {sockstat:?}");
    for (ours, sockstat_name) in [
        ("inuse", "inuse"),
        ("tw", "tw"),
        ("orphan", "orphan"),
        ("alloc", "alloc"),
        ("mem_pages", "mem"),
    ] {
        assert_eq!(memory[ours], sockstat[sockstat_name], "{ours}: {memory}");
    }
    // The two listeners, the orphans and their server ends.
    assert_eq!(sockstat["inuse"], 2 + 2 * ORPHANS);
    assert_eq!(sockstat["tw"], TIME_WAIT);
    assert!(sockstat["orphan"] >= ORPHANS, "ours are among the node's");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert_eq!(memory["page_size"], page);
    // The limits are node-wide: a namespace other than the host's has no tcp_mem.
    assert!(memory["tcp_mem"].is_null() && memory["max_orphans"].is_null());
    let check = finding(&report, "orphans_and_memory");
    assert!(
        check["evidence"]
            .to_string()
            .contains("net.ipv4.tcp_mem is not visible from this network namespace"),
        "{check}"
    );
}

#[test]
fn the_node_wide_limits_are_read_where_they_are_visible() {
    require_root!();
    // The test's own namespace: the host's, unless the tests run in another.
    let (report, _) = doctor(&["--measure", "0"]);
    let memory = &report["memory"];
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    match (read("tcp_max_orphans"), read("tcp_mem")) {
        (Some(max_orphans), Some(tcp_mem)) => {
            assert_eq!(memory["max_orphans"].to_string(), max_orphans.trim());
            let pages: Vec<Value> = tcp_mem
                .split_whitespace()
                .map(|v| Value::from(v.parse::<u64>().unwrap()))
                .collect();
            assert_eq!(memory["tcp_mem"], Value::from(pages), "{memory}");
        }
        _ => assert!(memory["tcp_mem"].is_null() && memory["max_orphans"].is_null()),
    }
}

#[test]
fn tcp_retries2_of_the_namespace_is_shown_in_seconds() {
    require_root!();
    let _serial = serial();
    let retries2 = || std::fs::read_to_string("/proc/sys/net/ipv4/tcp_retries2").unwrap();
    let host = retries2();
    let tuned = in_private_netns(
        &[
            ("net.ipv4.tcp_retries2", "5"),
            ("net.ipv4.tcp_retries1", "2"),
        ],
        || doctor(&["--measure", "0"]).0,
    );
    assert_eq!(retries2(), host, "set in the namespace only");
    let check = finding(&tuned, "retransmission_timeout");
    let summary = check["summary"].as_str().unwrap();
    // tcp_model_timeout: (2^6 - 1) x 200 ms, and (2^3 - 1) x 200 ms for tcp_retries1.
    assert!(
        summary.contains("after 12.6 s (tcp_retries2 = 5)"),
        "{summary}"
    );
    assert!(
        check["evidence"]
            .to_string()
            .contains("tcp_retries1 = 2: after 1.4 s"),
        "{check}"
    );
    assert_eq!(check["severity"], "warning", "under RFC 1122's 100 s");

    let defaults = in_private_netns(&[], || doctor(&["--measure", "0"]).0);
    let check = finding(&defaults, "retransmission_timeout");
    let summary = check["summary"].as_str().unwrap();
    assert!(
        summary.contains("after 924.6 s (15.4 min) (tcp_retries2 = 15)"),
        "{summary}"
    );
    assert_eq!(check["severity"], "ok");
}

/// The kernel against the model doctor explains: with tcp_retries2 = 3 (3.0 s), a
/// connection to a blackholed peer gets ETIMEDOUT at the first retransmission timeout
/// 3.0 s or more after its first timeout retransmission (`give_up_after`).
#[test]
fn a_blackholed_connection_gives_up_when_the_model_says() {
    require_root!();
    let _serial = serial();
    let (rto, elapsed, err) = in_private_netns(&[("net.ipv4.tcp_retries2", "3")], || {
        let listener = TcpListener::bind("127.0.0.1:6006").unwrap();
        let mut client = TcpStream::connect("127.0.0.1:6006").unwrap();
        let (server, _) = listener.accept().unwrap();
        let rto = Duration::from_micros(tcp_info(&client).tcpi_rto.into());
        nft(&drop_on_input(
            "blackhole",
            &["tcp dport 6006".into(), "tcp sport 6006".into()],
        ));
        client.write_all(b"x").unwrap();
        // Consecutive timeouts (tcpi_retransmits) turn 1 at the first timeout
        // retransmission; a tail loss probe before it leaves them at 0.
        let first = wait_until(Duration::from_secs(5), "the first timeout", || {
            (tcp_info(&client).tcpi_retransmits >= 1).then(Instant::now)
        });
        client
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let err = client.read(&mut [0u8; 1]).unwrap_err();
        let elapsed = first.elapsed();
        set_linger_zero(&server);
        (rto, elapsed, err)
    });
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let expected = timeouts::give_up_after(rto, 3, timeouts::RTO_MAX);
    eprintln!(
        "RTO {rto:?}: ETIMEDOUT {elapsed:?} after the first retransmission, model {expected:?}"
    );
    // Noticing the first timeout takes up to a polling interval; each timer may fire
    // late by its wheel's granularity (at most 1/8 of its length).
    assert!(
        elapsed + Duration::from_millis(50) >= expected
            && elapsed <= expected + expected / 8 + Duration::from_millis(100),
        "ETIMEDOUT {elapsed:?} after the first retransmission, expected {expected:?}"
    );
}
