//! Each check of `tcptrace doctor`: evidence in, one finding out, with the fix.
use std::time::Duration;

use serde::Serialize;

use super::measure::Measured;
use crate::{
    doctor::census::Census, doctor::sockstat::TcpMemory, doctor::sysctl::TcpSysctls,
    doctor::timeouts,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub summary: String,
    pub evidence: Vec<String>,
    /// What to change: a sysctl, a socket option, or the design.
    pub fix: String,
}

/// Documented idle timeouts of common load balancers, seconds: AWS NLB (350, fixed for
/// TCP flows before 2024, now the default), GCP and Azure load balancers (240 default),
/// AWS ALB (60 default). A connection idle longer is dropped without a RST to either end.
pub const LB_IDLE_TIMEOUTS: [(&str, u64); 3] = [
    ("AWS NLB", 350),
    ("GCP/Azure load balancer", 240),
    ("AWS ALB", 60),
];

/// Thresholds for TIME_WAIT and ephemeral-port use, as a share of the limit.
const WARN_SHARE: f64 = 0.5;
const CRITICAL_SHARE: f64 = 0.9;

fn by_share(share: f64) -> Severity {
    if share >= CRITICAL_SHARE {
        Severity::Critical
    } else if share >= WARN_SHARE {
        Severity::Warning
    } else {
        Severity::Ok
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{s} s ({}h{:02}m)", s / 3600, s % 3600 / 60)
    } else {
        format!("{s} s")
    }
}

pub fn time_wait(s: &TcpSysctls, c: &Census, m: Option<&Measured>) -> Finding {
    let share = c.time_wait as f64 / s.max_tw_buckets.max(1) as f64;
    let mut evidence = vec![
        format!(
            "{} sockets in TIME_WAIT; net.ipv4.tcp_max_tw_buckets = {} ({:.1}% used)",
            c.time_wait,
            s.max_tw_buckets,
            share * 100.0
        ),
        format!(
            "net.ipv4.tcp_tw_reuse = {} (0 off, 1 outgoing connections may reuse TIME_WAIT ports, 2 loopback only)",
            s.tw_reuse
        ),
    ];
    let mut top: Vec<_> = c.time_wait_by_remote.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (remote, n) in top.iter().take(3) {
        evidence.push(format!("{n} of them with {remote}"));
    }
    if let Some(m) = m {
        for (who, n) in &m.active_closers {
            evidence.push(format!(
                "closed first (will hold TIME_WAIT): {who}, {n} connections in {:.0} s",
                m.seconds
            ));
        }
    }
    Finding {
        check: "time_wait",
        severity: by_share(share),
        summary: format!(
            "{} TIME_WAIT sockets, {:.1}% of the table",
            c.time_wait,
            share * 100.0
        ),
        evidence,
        fix: "TIME_WAIT stays with the side that closes first, for 60 s. Let clients close \
              first, reuse connections (keep-alive, pooling) instead of one per request, and \
              for outgoing connections set net.ipv4.tcp_tw_reuse=1. tcp_fin_timeout does not \
              shorten TIME_WAIT. Beyond tcp_max_tw_buckets the kernel destroys TIME_WAIT \
              sockets early (\"time wait bucket table overflow\")."
            .into(),
    }
}

pub fn ephemeral_ports(s: &TcpSysctls, c: &Census, m: Option<&Measured>) -> Finding {
    let (lo, hi) = s.local_port_range;
    let top = c.port_use(s, 3);
    let worst = top.first().map_or(0.0, |t| t.2);
    let exhausted = m.map_or(0, |m| {
        m.connect_errors.get("EADDRNOTAVAIL").copied().unwrap_or(0)
    });
    let mut evidence = vec![format!(
        "net.ipv4.ip_local_port_range = {lo}-{hi}: {} ports per destination and local address",
        s.ephemeral_ports()
    )];
    for (remote, n, share) in &top {
        evidence.push(format!(
            "{n} local ports in use towards {remote} ({:.1}%)",
            share * 100.0
        ));
    }
    if let Some(m) = m {
        evidence.push(format!(
            "connect() failed with EADDRNOTAVAIL {exhausted} times in {:.0} s",
            m.seconds
        ));
    }
    let severity = if exhausted > 0 {
        Severity::Critical
    } else {
        by_share(worst)
    };
    Finding {
        check: "ephemeral_ports",
        severity,
        summary: if exhausted > 0 {
            format!("ephemeral ports exhausted: {exhausted} connect() calls got EADDRNOTAVAIL")
        } else {
            format!(
                "busiest destination uses {:.1}% of the ephemeral range",
                worst * 100.0
            )
        },
        evidence,
        fix: "Each (local address, destination) pair can use every port of \
              ip_local_port_range once, TIME_WAIT included. Reuse connections (pooling, \
              keep-alive), widen net.ipv4.ip_local_port_range (e.g. 1024 65535, keeping \
              listening ports out of it), set net.ipv4.tcp_tw_reuse=1, or spread over more \
              local or destination addresses."
            .into(),
    }
}

pub fn keepalive(s: &TcpSysctls, c: &Census) -> Finding {
    let detection = s.keepalive_detection();
    let beaten_by: Vec<String> = LB_IDLE_TIMEOUTS
        .iter()
        .filter(|(_, t)| detection.as_secs() > *t)
        .map(|(name, t)| format!("{name} ({t} s)"))
        .collect();
    let mut evidence = vec![
        format!(
            "tcp_keepalive_time {} s + tcp_keepalive_intvl {} s x tcp_keepalive_probes {} = {} to notice a dead peer",
            s.keepalive_time_s,
            s.keepalive_intvl_s,
            s.keepalive_probes,
            secs(detection)
        ),
        format!(
            "idle connections: {} with keep-alive armed, {} without",
            c.idle_with_keepalive, c.idle_without_keepalive
        ),
    ];
    if !beaten_by.is_empty() {
        evidence.push(format!(
            "idle timeouts shorter than that: {}",
            beaten_by.join(", ")
        ));
    }
    Finding {
        check: "keepalive",
        severity: if beaten_by.is_empty() {
            Severity::Ok
        } else {
            Severity::Warning
        },
        summary: format!("keep-alive notices a dead peer after {}", secs(detection)),
        evidence,
        fix: "Load balancers and NAT drop idle flows silently; the next send then waits for \
              retransmissions to time out. Enable SO_KEEPALIVE on long-lived connections with \
              TCP_KEEPIDLE below the shortest idle timeout on the path (e.g. 60 s), \
              TCP_KEEPINTVL 10 s and TCP_KEEPCNT 6, or lower net.ipv4.tcp_keepalive_time for \
              every socket that enables keep-alive."
            .into(),
    }
}

pub fn idle_connections(c: &Census, idle_after: Duration) -> Finding {
    let mut evidence = vec![format!(
        "ESTABLISHED without data for {} or more: {} with keep-alive, {} without",
        secs(idle_after),
        c.idle_with_keepalive,
        c.idle_without_keepalive
    )];
    for i in c.idle.iter().filter(|i| !i.keepalive).take(5) {
        evidence.push(format!(
            "{} -> {} idle {:.0} s, no keep-alive, owner {}",
            i.local,
            i.remote,
            i.idle_s,
            match (&i.comm, i.pid) {
                (Some(comm), Some(pid)) => format!("{comm} ({pid})"),
                _ => "unknown".into(),
            }
        ));
    }
    Finding {
        check: "idle_connections",
        severity: if c.idle_without_keepalive > 0 {
            Severity::Warning
        } else {
            Severity::Ok
        },
        summary: format!(
            "{} idle connections without keep-alive (possible zombies)",
            c.idle_without_keepalive
        ),
        evidence,
        fix: "An idle connection without keep-alive never learns that its peer or a \
              middlebox forgot it. Enable SO_KEEPALIVE (with TCP_KEEPIDLE below the path's \
              idle timeout), or give the application an idle timeout that closes it."
            .into(),
    }
}

/// Listeners named in the evidence, per kind (near full, capped at somaxconn).
const LISTENERS_SHOWN: usize = 5;

pub fn listen_queues(c: &Census, e: &crate::doctor::listeners::ListenEvidence) -> Finding {
    let near_full: Vec<_> = c.listeners.iter().filter(|l| l.is_near_full()).collect();
    let waiting = c.listeners.iter().filter(|l| l.queue_length > 0).count();
    let mut evidence = vec![format!(
        "{} listeners, {waiting} with connections waiting for accept(), {} at {:.0}% of their limit or more",
        c.listeners.len(),
        near_full.len(),
        crate::doctor::listeners::NEAR_FULL * 100.0
    )];
    for l in near_full.iter().take(LISTENERS_SHOWN) {
        evidence.push(format!(
            "{}: accept queue {} of {}{}",
            l.describe(),
            l.queue_length,
            l.queue_limit,
            if l.is_full() {
                ", full: new connections are turned away"
            } else {
                ""
            }
        ));
    }
    let capped = somaxconn_evidence(c, e, &mut evidence);
    let o = overflow_evidence(e, &mut evidence);
    let full = near_full.iter().filter(|l| l.is_full()).count();
    let severity = if !near_full.is_empty() || o.listen_overflows > 0 || o.listen_drops > 0 {
        Severity::Warning
    } else if capped > 0 {
        Severity::Info
    } else {
        Severity::Ok
    };
    Finding {
        check: "listen_queues",
        severity,
        summary: format!(
            "{full} accept queues full, {} near full; {} connections turned away by full queues since the namespace began; {capped} listeners capped at somaxconn",
            near_full.len() - full,
            o.listen_overflows
        ),
        evidence,
        fix: "A full accept queue drops the SYN (the client sends it again 1 s later, \
              then 2 s, 4 s, ...) or the handshake's final ACK (the client believes it is \
              connected). Accept faster (more accepting threads or processes, no blocking \
              work before accept()), and give listen() a larger backlog with \
              net.core.somaxconn at least as large: the kernel caps the backlog at \
              somaxconn when listen() is called, so restart the listener after raising it. \
              The overflow counters count from the namespace's start: see whether they \
              grow (--watch, nstat)."
            .into(),
    }
}

/// net.core.somaxconn and the listeners whose limit equals it (their backlog was likely
/// larger and capped); how many those are.
fn somaxconn_evidence(
    c: &Census,
    e: &crate::doctor::listeners::ListenEvidence,
    evidence: &mut Vec<String>,
) -> usize {
    let somaxconn = match &e.somaxconn {
        Ok(n) => *n,
        Err(why) => {
            evidence.push(format!("net.core.somaxconn unknown: {why}"));
            return 0;
        }
    };
    let capped: Vec<_> = c
        .listeners
        .iter()
        .filter(|l| u64::from(l.queue_limit) == somaxconn)
        .collect();
    evidence.push(format!(
        "net.core.somaxconn = {somaxconn}: {} listeners have exactly that limit: listen() asked for that much or more and was capped (Go asks for somaxconn itself); a higher somaxconn raises theirs at their next listen()",
        capped.len()
    ));
    for l in capped.iter().take(LISTENERS_SHOWN) {
        evidence.push(format!(
            "capped at somaxconn: {}, accept queue {} of {}",
            l.describe(),
            l.queue_length,
            l.queue_limit
        ));
    }
    capped.len()
}

/// The namespace's overflow counters (zeros where unknown).
fn overflow_evidence(
    e: &crate::doctor::listeners::ListenEvidence,
    evidence: &mut Vec<String>,
) -> crate::doctor::listeners::Overflows {
    match &e.overflows {
        Ok(o) => {
            evidence.push(format!(
                "ListenOverflows {}, ListenDrops {} in this namespace since it began (/proc/net/netstat TcpExt; nstat TcpExtListenOverflows)",
                o.listen_overflows, o.listen_drops
            ));
            *o
        }
        Err(why) => {
            evidence.push(format!("listen overflow counters unknown: {why}"));
            crate::doctor::listeners::Overflows::default()
        }
    }
}

pub fn timeouts(s: &TcpSysctls, m: Option<&Measured>) -> Finding {
    let connect = timeouts::connect_timeout(s.syn_retries);
    let p99 = m.and_then(|m| m.handshake_p99_ms);
    let recommended = timeouts::recommended_connect_timeout(
        Duration::from_secs_f64(p99.unwrap_or(0.0) / 1000.0),
        s.syn_linear_timeouts,
    );
    let mut evidence = vec![
        format!(
            "net.ipv4.tcp_syn_retries = {}{}: connect() to a silent peer fails after {} with {} SYN retransmissions",
            s.syn_retries,
            if s.syn_linear_timeouts > 0 {
                format!(" (first {} retransmissions 1 s apart: tcp_syn_linear_timeouts)", s.syn_linear_timeouts)
            } else {
                String::new()
            },
            secs(connect),
            timeouts::syn_retransmissions(s.syn_retries, s.syn_linear_timeouts)
        ),
        format!(
            "net.ipv4.tcp_synack_retries = {}: a server drops an unanswered half-open connection after {}",
            s.synack_retries,
            secs(timeouts::synack_timeout(s.synack_retries))
        ),
    ];
    if let Some(m) = m {
        evidence.push(match (m.handshake_p50_ms, p99) {
            (Some(p50), Some(p99)) => format!(
                "measured: {} client handshakes in {:.0} s, p50 {p50:.3} ms, p99 {p99:.3} ms",
                m.handshakes, m.seconds
            ),
            _ => format!(
                "measured: no completed client handshake in {:.0} s",
                m.seconds
            ),
        });
        for waits in &m.syn_backoff {
            evidence.push(format!("observed SYN backoff (s between sends): {waits:?}"));
        }
    }
    let too_long = connect > recommended * 10;
    Finding {
        check: "connect_timeout",
        severity: if too_long {
            Severity::Warning
        } else {
            Severity::Ok
        },
        summary: format!(
            "kernel connect timeout {}; recommended application connect timeout {:.1} s",
            secs(connect),
            recommended.as_secs_f64()
        ),
        evidence,
        fix: format!(
            "Give connect() an application timeout of about {:.1} s: the p99 handshake \
             ({}) plus the first two SYN retransmissions, so one lost SYN does not fail the \
             call but a dead peer fails in seconds, not {}. Request timeouts: see \
             retransmission_timeout. Lowering net.ipv4.tcp_syn_retries \
             shortens the kernel's limit for every program.",
            recommended.as_secs_f64(),
            p99.map_or("not measured".into(), |p| format!("{p:.3} ms")),
            secs(connect)
        ),
    }
}

pub fn retransmissions(m: &Measured) -> Finding {
    let total: u64 = m.retransmits.values().sum();
    let syn = m.retransmits.get("syn").copied().unwrap_or(0);
    let mut evidence = vec![format!(
        "{total} segments retransmitted in {:.0} s: {:?}",
        m.seconds, m.retransmits
    )];
    for (remote, n) in &m.retransmits_by_remote {
        evidence.push(format!("{n} data retransmits towards {remote}"));
    }
    for (reason, n) in &m.failed_handshakes {
        evidence.push(format!("{n} client handshakes failed: {reason}"));
    }
    Finding {
        check: "retransmissions",
        severity: if syn > 0 || !m.failed_handshakes.is_empty() {
            Severity::Warning
        } else {
            Severity::Ok
        },
        summary: format!("{total} retransmits ({syn} SYN) while measuring"),
        evidence,
        fix: "SYN retransmissions add whole seconds to connect(); data retransmits stall \
              streams for an RTO each. Look at the destinations named here for loss \
              (full queues, policers, dropping firewalls)."
            .into(),
    }
}

pub fn socket_errors(m: &Measured) -> Finding {
    let timeouts = m.socket_errors.get("ETIMEDOUT").copied().unwrap_or(0);
    Finding {
        check: "socket_errors",
        severity: if timeouts > 0 {
            Severity::Warning
        } else {
            Severity::Ok
        },
        summary: format!("{timeouts} connections ended by a timeout (ETIMEDOUT) while measuring"),
        evidence: vec![format!(
            "socket errors in {:.0} s: {:?}",
            m.seconds, m.socket_errors
        )],
        fix: "ETIMEDOUT on an established connection means keep-alive probes or \
              retransmissions (tcp_retries2) went unanswered: the peer or the path is gone."
            .into(),
    }
}

/// Seconds with a tenth, and minutes beside them from two minutes on: "924.6 s (15.4 min)".
fn tenths(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 120.0 {
        format!("{s:.1} s ({:.1} min)", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn from_ms(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// RFC 1122 (4.2.3.5): the time before an established connection is given up "MUST be
/// large enough to provide retransmission of the segment for at least 100 seconds".
const RFC1122_MIN_GIVE_UP: Duration = Duration::from_secs(100);

/// The RTO and RTT a request timeout must allow for, and where they come from: the p99
/// over this namespace's established connections; else the measured p99 handshake plus
/// the RTO floor (a connection's RTO is its RTT plus at least tcp_rto_min); else the floor.
fn round_trip_basis(
    s: &TcpSysctls,
    c: &Census,
    m: Option<&Measured>,
) -> (Duration, Duration, String) {
    let handshake = m.and_then(|m| m.handshake_p99_ms).map(from_ms);
    let measured = handshake.map_or(String::new(), |h| {
        format!("; measured p99 client handshake {}", ms(h))
    });
    if let Some(r) = &c.round_trips {
        let rtt = from_ms(r.rtt_p99_ms).max(handshake.unwrap_or_default());
        let why = format!(
            "p99 over {} established connections (tcp_info): RTO {}, RTT {}{measured} ({} left out: retransmitting now, their RTO backed off)",
            r.connections,
            ms(from_ms(r.rto_p99_ms)),
            ms(from_ms(r.rtt_p99_ms)),
            r.backing_off
        );
        return (from_ms(r.rto_p99_ms), rtt, why);
    }
    if let Some(h) = handshake {
        let why = format!(
            "no established connection to read: RTO estimated as tcp_rto_min {} + the measured p99 handshake {}",
            ms(s.rto_min()),
            ms(h)
        );
        return (s.rto_min() + h, h, why);
    }
    let why = format!(
        "no established connection to read and nothing measured: the RTO floor, tcp_rto_min {}",
        ms(s.rto_min())
    );
    (s.rto_min(), Duration::ZERO, why)
}

/// When the error comes after the first retransmission: exactly for the RTO read from
/// this namespace's connections; else only its bound, since a real RTO is above the
/// floor by the RTT and a jiffy or so, and whether one more timeout is needed can turn
/// on that (1044.4 s for 200 ms exactly, 928.5 s for 204 ms).
fn first_timeout_past(s: &TcpSysctls, c: &Census, rto: Duration) -> String {
    if c.round_trips.is_some() {
        return format!(
            "{} after the first retransmission for the RTO above ({})",
            tenths(timeouts::give_up_after(rto, s.retries2, s.rto_max())),
            ms(rto)
        );
    }
    format!(
        "up to one RTO (at most {} s) past the model",
        s.rto_max().as_secs()
    )
}

/// What tcp_retries2 and tcp_retries1 mean in seconds, and how the kernel gets there.
fn retries_evidence(s: &TcpSysctls, c: &Census, rto: Duration) -> Vec<String> {
    vec![
        format!(
            "net.ipv4.tcp_retries2 = {}: an established connection whose peer stopped answering fails with ETIMEDOUT after {} of retransmissions",
            s.retries2,
            tenths(timeouts::retransmission_timeout(s.retries2, s.rto_max()))
        ),
        format!(
            "the kernel turns the count into time (tcp_model_timeout): {} ms doubling to {} s, then {} s per retry, whatever the connection's own RTO; at each retransmission timeout it compares that with the time since the first one, so the error comes at the first timeout past it: {}",
            timeouts::RTO_MIN.as_millis(),
            s.rto_max().as_secs(),
            s.rto_max().as_secs(),
            first_timeout_past(s, c, rto)
        ),
        format!(
            "net.ipv4.tcp_retries1 = {}: after {} of retransmissions the kernel asks for the route to be looked up again (and, with tcp_mtu_probing, probes a smaller MTU)",
            s.retries1,
            tenths(timeouts::retransmission_timeout(s.retries1, s.rto_max()))
        ),
    ]
}

/// The request timeout's arithmetic, and what a shorter one costs.
fn request_timeout_evidence(rto: Duration, rtt: Duration, allowance: Duration) -> String {
    format!(
        "request timeout = server time + 3 x RTO {}{} = server time + {:.2} s: two lost transmissions of one segment in a row still succeed; a timeout under one RTO ({}) fails on a single lost segment",
        ms(rto),
        if rtt.is_zero() {
            String::new()
        } else {
            format!(" + RTT {}", ms(rtt))
        },
        allowance.as_secs_f64(),
        ms(rto)
    )
}

fn retransmission_fix(s: &TcpSysctls, give_up: Duration, allowance: Duration) -> String {
    let eight = tenths(timeouts::retransmission_timeout(8, s.rto_max()));
    let mut fix = format!(
        "Give every request an application timeout of the server's own time (its p99) plus \
         {:.2} s, so one or two lost segments do not fail it, and a dead peer fails it in \
         seconds instead of {}. TCP_USER_TIMEOUT bounds the kernel's retransmissions for \
         one socket; net.ipv4.tcp_retries2 for every connection of the namespace (8 gives \
         up after {eight}).",
        allowance.as_secs_f64(),
        tenths(give_up)
    );
    if give_up < RFC1122_MIN_GIVE_UP {
        fix.push_str(&format!(
            " Below 100 s (RFC 1122 asks at least that), an outage as short as a router \
             failover kills established connections: keep net.ipv4.tcp_retries2 at 8 or \
             more ({eight})."
        ));
    }
    fix
}

pub fn retransmission_timeout(s: &TcpSysctls, c: &Census, m: Option<&Measured>) -> Finding {
    let give_up = timeouts::retransmission_timeout(s.retries2, s.rto_max());
    let (rto, rtt, basis) = round_trip_basis(s, c, m);
    let allowance = timeouts::request_timeout_allowance(rto, rtt);
    let mut evidence = retries_evidence(s, c, rto);
    evidence.push(basis);
    evidence.push(request_timeout_evidence(rto, rtt, allowance));
    Finding {
        check: "retransmission_timeout",
        severity: if give_up < RFC1122_MIN_GIVE_UP {
            Severity::Warning
        } else {
            Severity::Ok
        },
        summary: format!(
            "unanswered retransmissions end a connection after {} (tcp_retries2 = {}); request timeouts need the server's time + {:.2} s",
            tenths(give_up),
            s.retries2,
            allowance.as_secs_f64()
        ),
        evidence,
        fix: retransmission_fix(s, give_up, allowance),
    }
}

/// Warn from this many CLOSE_WAIT sockets in one process, however recent: CLOSE_WAIT
/// lasts from the peer's FIN to the application's close(), normally microseconds.
pub const CLOSE_WAIT_CROWD: u64 = 100;

fn owner(pid: Option<u32>, comm: Option<&str>) -> String {
    match (comm, pid) {
        (Some(comm), Some(pid)) => format!("{comm} ({pid})"),
        _ => "unknown owner".into(),
    }
}

fn close_wait_evidence(c: &Census, idle_after: Duration) -> Vec<String> {
    if c.close_wait == 0 {
        return vec!["no socket in CLOSE_WAIT (the peer closed, the application has not)".into()];
    }
    let mut evidence = vec![format!(
        "{} sockets in CLOSE_WAIT (the peer closed, the application has not), held by {} processes; {} of them without data for {} or more",
        c.close_wait,
        c.close_wait_processes,
        c.close_wait_idle,
        secs(idle_after)
    )];
    for o in &c.close_wait_by_process {
        evidence.push(format!(
            "{}: {} CLOSE_WAIT sockets, {} idle {} or more, the longest without data for {:.0} s",
            owner(o.pid, o.comm.as_deref()),
            o.sockets,
            o.idle,
            secs(idle_after),
            o.longest_idle_s
        ));
    }
    let unlisted = c.close_wait_processes - c.close_wait_by_process.len() as u64;
    if unlisted > 0 {
        evidence.push(format!("{unlisted} more processes hold fewer"));
    }
    evidence.push(
        "sock_diag gives no time since the peer's FIN; idle is the time without data either way, and the FIN came after the last data received".into(),
    );
    evidence
}

pub fn close_wait(c: &Census, idle_after: Duration) -> Finding {
    let crowded = c
        .close_wait_by_process
        .iter()
        .any(|o| o.sockets >= CLOSE_WAIT_CROWD);
    let severity = if crowded || c.close_wait_idle > 0 {
        Severity::Warning
    } else if c.close_wait > 0 {
        Severity::Info
    } else {
        Severity::Ok
    };
    let summary = match c.close_wait_by_process.first() {
        Some(top) => format!(
            "{} CLOSE_WAIT sockets, most held by {}: {}",
            c.close_wait,
            owner(top.pid, top.comm.as_deref()),
            top.sockets
        ),
        None => format!("{} CLOSE_WAIT sockets", c.close_wait),
    };
    Finding {
        check: "close_wait",
        severity,
        summary,
        evidence: close_wait_evidence(c, idle_after),
        fix: format!(
            "The application does not close() after the peer closed: a leaked connection. \
             A read returning 0 (end of stream) or an error means the peer is done: close \
             the socket, on error paths too, and in connection pools drop a pooled \
             connection found closed. Nothing in the kernel ends CLOSE_WAIT: each socket \
             holds a file descriptor and its buffers until the process closes it or exits. \
             Warns from {CLOSE_WAIT_CROWD} in one process, or any idle for the idle \
             threshold."
        ),
    }
}

fn mib(t: &TcpMemory, pages: u64) -> String {
    format!("{:.1} MiB", t.bytes(pages) as f64 / (1024.0 * 1024.0))
}

/// Orphans against tcp_max_orphans: evidence, severity.
fn orphan_use(t: &TcpMemory) -> (String, Severity) {
    let Some(max) = t.max_orphans else {
        return (
            format!(
                "{} orphans (closed by their application, still sending or waiting for the peer), node-wide; net.ipv4.tcp_max_orphans is not visible from this network namespace",
                t.orphan
            ),
            Severity::Ok,
        );
    };
    let share = t.orphan as f64 / max.max(1) as f64;
    let severity = if share >= CRITICAL_SHARE {
        Severity::Critical
    } else if share > WARN_SHARE {
        Severity::Warning
    } else {
        Severity::Ok
    };
    (
        format!(
            "{} orphans (closed by their application, still sending or waiting for the peer), node-wide, of net.ipv4.tcp_max_orphans = {max} ({:.1}%); past it the kernel resets orphans (\"too many orphaned sockets\"), sooner those that sent nothing in 240 s or got an ICMP error (past a half of it, a quarter with both)",
            t.orphan,
            share * 100.0
        ),
        severity,
    )
}

/// TCP's buffer memory against tcp_mem (or the pressure flag): evidence, severity.
fn memory_use(t: &TcpMemory) -> (Vec<String>, Severity) {
    let pressure_flag = match t.under_pressure {
        Some(true) => Severity::Warning,
        _ => Severity::Ok,
    };
    let flag = format!(
        "the kernel's TCP memory-pressure flag (/proc/net/protocols): {}",
        match t.under_pressure {
            Some(true) => "set",
            Some(false) => "clear",
            None => "not shown",
        }
    );
    let Some([low, pressure, high]) = t.tcp_mem else {
        return (
            vec![
                format!(
                    "TCP buffers hold {} pages ({}), node-wide; net.ipv4.tcp_mem is not visible from this network namespace (run doctor in the host's namespace to compare)",
                    t.mem_pages,
                    mib(t, t.mem_pages)
                ),
                flag,
            ],
            pressure_flag,
        );
    };
    let severity = if t.mem_pages >= high {
        Severity::Critical
    } else if t.mem_pages >= pressure {
        Severity::Warning
    } else {
        pressure_flag
    };
    (
        vec![
            format!(
                "TCP buffers hold {} pages ({}), node-wide; net.ipv4.tcp_mem = {low} {pressure} {high} pages (low {}, pressure {}, high {}): {:.1}% of the pressure value",
                t.mem_pages,
                mib(t, t.mem_pages),
                mib(t, low),
                mib(t, pressure),
                mib(t, high),
                t.mem_pages as f64 / pressure.max(1) as f64 * 100.0
            ),
            flag,
        ],
        severity,
    )
}

pub fn orphans_and_memory(t: &TcpMemory) -> Finding {
    let (orphans, orphan_severity) = orphan_use(t);
    let (memory, memory_severity) = memory_use(t);
    let mut evidence = vec![format!(
        "/proc/net/sockstat: {} TCP sockets in use and {} TIME_WAIT in this network namespace; node-wide (every namespace sees the same): {} orphans, {} sockets allocated, {} pages of buffers (pages of {} bytes, sysconf)",
        t.inuse, t.tw, t.orphan, t.alloc, t.mem_pages, t.page_size
    )];
    evidence.push(orphans);
    evidence.extend(memory);
    Finding {
        check: "orphans_and_memory",
        severity: orphan_severity.max(memory_severity),
        summary: format!(
            "{} orphan sockets, TCP buffers {}{}",
            t.orphan,
            mib(t, t.mem_pages),
            match t.tcp_mem {
                Some([_, pressure, _]) => format!(
                    " ({:.1}% of tcp_mem's pressure value)",
                    t.mem_pages as f64 / pressure.max(1) as f64 * 100.0
                ),
                None => String::new(),
            }
        ),
        evidence,
        fix: "Orphans are sockets their application closed while the kernel still sends \
              (FIN_WAIT1: unsent data or a FIN to a peer that does not read or is gone) or \
              waits for the peer (LAST_ACK, CLOSING). Many mean peers that stopped reading \
              or vanished: find them (`ss -to state fin-wait-1`), lower \
              net.ipv4.tcp_orphan_retries to retry less, and raise tcp_max_orphans only \
              with the memory for it (an orphan keeps its send buffer). Past tcp_mem's \
              pressure value the kernel shrinks every socket's buffers, past its high value \
              it refuses memory (\"out of memory -- consider tuning tcp_mem\"): find the \
              sockets with large queues (`ss -tm`), and raise tcp_mem only if the node has \
              the memory."
            .into(),
    }
}
