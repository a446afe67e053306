//! `tcptrace doctor` against ground truth (root): each test builds the situation in a
//! network namespace of its own thread, runs doctor inside it, and compares with what
//! the kernel says (`ss`, the syscalls' own results, the sysctls it set).
mod common;

use std::{
    io::{ErrorKind, Read},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

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

/// How long the kernel says a connection has moved no data, either way (what doctor
/// calls idle).
fn idle(s: &TcpStream) -> Duration {
    // SAFETY: getsockopt(TCP_INFO) into a zeroed tcp_info of the size we pass.
    let info = unsafe {
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
    };
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
