//! Each check of `tcptrace doctor`: evidence in, one finding out, with the fix.
use std::time::Duration;

use serde::Serialize;

use super::measure::Measured;
use crate::{doctor::census::Census, doctor::sysctl::TcpSysctls, doctor::timeouts};

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
        format!(
            "retransmission timeout: from {} ms (TCP_RTO_MIN) to {} s (TCP_RTO_MAX), doubling per retry; tcp_retries2 = {}",
            timeouts::RTO_MIN.as_millis(),
            timeouts::RTO_MAX.as_secs(),
            s.retries2
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
             call but a dead peer fails in seconds, not {}. Request timeouts must allow for \
             retransmissions too (at least a few RTOs). Lowering net.ipv4.tcp_syn_retries \
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
