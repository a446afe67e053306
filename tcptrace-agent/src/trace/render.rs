//! Rendering events for `tcptrace trace`: aligned text lines or JSON lines.
use serde::Serialize;
use tcptrace_common::{
    config::Source,
    event::{FLAG_SK_ERR_READ, OUTCOME_ESTABLISHED},
    state::state_name,
    Event, EventKind, HandshakeSide, RetransmitKind,
};

use crate::{
    event::clock::{Clock, Rfc3339},
    event::{self, comm, errno_name, failure_reason, owner_pid},
    k8s::cgroup::Workload,
};

pub const TEXT_HEADER: &str = "TIME(UTC)       EVENT      PID     COMM             NETNS      LOCAL                                  REMOTE                                 DETAIL";

pub fn text_line(e: &Event, clock: &Clock) -> String {
    let kind = EventKind::from_u8(e.kind);
    let pid = owner_pid(e).map_or_else(|| "-".to_string(), |p| p.to_string());
    let name = if owner_pid(e).is_some() {
        comm(&e.comm)
    } else {
        "-".to_string()
    };
    let netns = if e.netns == 0 {
        "-".to_string()
    } else {
        e.netns.to_string()
    };
    format!(
        "{} {:<10} {:<7} {:<16} {:<10} {:<38} {:<38} {}",
        clock.time_of_day(e.ts_ns),
        kind.map_or("unknown", kind_name),
        pid,
        name,
        netns,
        endpoint(e, true),
        endpoint(e, false),
        detail(e)
    )
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::StateChange => "state",
        EventKind::Handshake => "handshake",
        EventKind::Retransmit => "retransmit",
        EventKind::ConnectError => "connect",
        EventKind::Segment => "segment",
        EventKind::SocketError => "error",
        EventKind::Reset => "reset",
    }
}

fn endpoint(e: &Event, local: bool) -> String {
    let (addr, port) = if local {
        (&e.saddr, e.sport)
    } else {
        (&e.daddr, e.dport)
    };
    match event::ip(e.family, addr) {
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

fn detail(e: &Event) -> String {
    match EventKind::from_u8(e.kind) {
        Some(EventKind::StateChange) => {
            let (from, to) = (state_name(e.old_state), state_name(e.new_state));
            if e.duration_ns == 0 {
                format!("{from} -> {to}")
            } else {
                format!(
                    "{from} -> {to} (in {from} {})",
                    human_duration(e.duration_ns)
                )
            }
        }
        Some(EventKind::Handshake) => {
            let side = HandshakeSide::from_u8(e.detail).map_or("?", HandshakeSide::name);
            let took = human_duration(e.duration_ns);
            if e.outcome == OUTCOME_ESTABLISHED {
                format!("{side} established in {took}")
            } else if e.flags & FLAG_SK_ERR_READ != 0 {
                format!(
                    "{side} failed after {took}: {} ({})",
                    failure_reason(e),
                    errno_name(e.err)
                )
            } else {
                format!("{side} failed after {took}: {}", failure_reason(e))
            }
        }
        Some(EventKind::Retransmit) => {
            let kind = RetransmitKind::from_u8(e.detail).map_or("?", RetransmitKind::name);
            let mut s = format!("{kind} in {}", state_name(e.old_state));
            if e.segs > 1 {
                s.push_str(&format!(", {} segments", e.segs));
            }
            if e.err != 0 {
                s.push_str(&format!(" (not sent: {})", errno_name(-e.err)));
            }
            s
        }
        Some(EventKind::ConnectError) => format!(
            "connect() failed: {} (seen by {})",
            errno_name(e.err),
            Source::from_u8(e.detail).name()
        ),
        Some(EventKind::Segment) => format!(
            "{} received in {}",
            tcp_flags(e.detail),
            state_name(e.old_state)
        ),
        Some(EventKind::SocketError) => format!("socket error {}", errno_name(e.err)),
        Some(EventKind::Reset) => format!(
            "RST {} in {}",
            reset_direction(e.detail),
            state_name(e.old_state)
        ),
        None => format!("unknown event kind {}", e.kind),
    }
}

/// `sent` or `received`, from a reset event's detail (the `RESETS` slot).
pub fn reset_direction(detail: u8) -> &'static str {
    if u32::from(detail) == tcptrace_common::counters::RESET_RECEIVED {
        "received"
    } else {
        "sent"
    }
}

/// `SYN,ACK`: the flags of a TCP segment, in header order.
pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let set: Vec<&str> = (0..8)
        .filter(|bit| flags & (1 << bit) != 0)
        .map(|bit| NAMES[bit])
        .collect();
    if set.is_empty() {
        "no flags".to_string()
    } else {
        set.join(",")
    }
}

/// `1.234s`, `12.3ms`, `45us`: three significant digits are plenty for a terminal.
pub fn human_duration(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.3}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.3}ms", ns as f64 / 1e6)
    } else {
        format!("{}us", ns / 1000)
    }
}

/// A value serialized as the JSON string of its `Display`, written in place: no
/// intermediate `String` per field per event.
pub struct Shown<T>(pub T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `0x...`, the socket address as the kernel prints pointers in hex.
pub struct Hex(pub u64);

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// One JSON object per event. Field names are part of the interface (see README).
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    pub time: Shown<Rfc3339>,
    pub ts_ns: u64,
    pub event: &'static str,
    pub pid: Option<u32>,
    pub comm: Option<std::borrow::Cow<'a, str>>,
    pub cgroup_id: Option<u64>,
    pub family: u8,
    pub saddr: Shown<std::net::IpAddr>,
    pub sport: u16,
    pub daddr: Shown<std::net::IpAddr>,
    pub dport: u16,
    pub skaddr: Shown<Hex>,
    /// The socket's network namespace (inode); `null` when the kernel offsets are unknown.
    pub netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_state: Option<&'static str>,
    /// state: time spent in old_state (absent when unknown); handshake: its duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmit: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// retransmit: segments re-sent (several under GSO); absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u16>,
    /// segment: the TCP flags of a segment received in a handshake state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// connect: which hook saw the error (`function` or `tracepoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// reset: `sent` or `received`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    /// The owner's cgroup and what it says: container runtime and id, pod UID, QoS,
    /// unit (`Workload`'s fields, inline: serde's `flatten` turns the whole object into
    /// a map, which doubled the cost of every line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
}

impl<'a> JsonEvent<'a> {
    fn attribute(&mut self, w: &'a Workload) {
        self.cgroup = Some(&w.cgroup);
        self.runtime = w.runtime;
        self.container_id = w.container_id.as_deref();
        self.pod_uid = w.pod_uid.as_deref();
        self.qos = w.qos;
        self.unit = w.unit.as_deref();
    }
}

pub fn json_event<'a>(e: &'a Event, clock: &Clock) -> JsonEvent<'a> {
    let pid = owner_pid(e);
    let kind = EventKind::from_u8(e.kind);
    let mut j = JsonEvent {
        time: Shown(clock.rfc3339_display(e.ts_ns)),
        ts_ns: e.ts_ns,
        event: kind.map_or("unknown", kind_name),
        pid,
        comm: pid.map(|_| event::comm_str(&e.comm)),
        cgroup_id: pid.map(|_| e.cgroup_id),
        family: if e.family == tcptrace_common::AF_INET {
            4
        } else {
            6
        },
        saddr: Shown(event::ip(e.family, &e.saddr)),
        sport: e.sport,
        daddr: Shown(event::ip(e.family, &e.daddr)),
        dport: e.dport,
        skaddr: Shown(Hex(e.skaddr)),
        netns: (e.netns != 0).then_some(e.netns),
        old_state: None,
        new_state: None,
        duration_ns: None,
        side: None,
        outcome: None,
        reason: None,
        error: None,
        retransmit: None,
        state: None,
        segments: None,
        flags: None,
        source: None,
        direction: None,
        cgroup: None,
        runtime: None,
        container_id: None,
        pod_uid: None,
        qos: None,
        unit: None,
    };
    match kind {
        Some(EventKind::StateChange) => {
            j.old_state = Some(state_name(e.old_state));
            j.new_state = Some(state_name(e.new_state));
            j.duration_ns = (e.duration_ns != 0).then_some(e.duration_ns);
        }
        Some(EventKind::Handshake) => {
            j.side = HandshakeSide::from_u8(e.detail).map(HandshakeSide::name);
            j.duration_ns = Some(e.duration_ns);
            if e.outcome == OUTCOME_ESTABLISHED {
                j.outcome = Some("established");
            } else {
                j.outcome = Some("failed");
                j.reason = Some(failure_reason(e));
                j.error = (e.flags & FLAG_SK_ERR_READ != 0).then(|| errno_name(e.err));
            }
        }
        Some(EventKind::Retransmit) => {
            j.retransmit = RetransmitKind::from_u8(e.detail).map(RetransmitKind::name);
            j.state = Some(state_name(e.old_state));
            j.segments = (e.segs != 0).then_some(e.segs);
            j.error = (e.err != 0).then(|| errno_name(-e.err));
        }
        Some(EventKind::ConnectError) => {
            j.error = Some(errno_name(e.err));
            j.source = Some(Source::from_u8(e.detail).name());
        }
        Some(EventKind::Segment) => {
            j.state = Some(state_name(e.old_state));
            j.flags = Some(tcp_flags(e.detail));
        }
        Some(EventKind::SocketError) => j.error = Some(errno_name(e.err)),
        Some(EventKind::Reset) => {
            j.direction = Some(reset_direction(e.detail));
            j.state = Some(state_name(e.old_state));
        }
        None => {}
    }
    j
}

pub fn json_line(e: &Event, clock: &Clock) -> String {
    let mut line = Vec::new();
    write_json_line(&mut line, e, clock, None).expect("writing to a Vec");
    String::from_utf8(line).expect("serde_json writes UTF-8")
}

/// One JSON line (with its newline) straight into `out`, with the owner's workload
/// (resolved from its cgroup id) when known.
pub fn write_json_line(
    out: &mut impl std::io::Write,
    e: &Event,
    clock: &Clock,
    workload: Option<&Workload>,
) -> std::io::Result<()> {
    let mut j = json_event(e, clock);
    if let Some(w) = workload {
        j.attribute(w);
    }
    serde_json::to_writer(&mut *out, &j)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::{TcpState, AF_INET};

    fn state_event() -> Event {
        let mut e = Event::zeroed();
        e.kind = EventKind::StateChange as u8;
        e.family = AF_INET;
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.sport = 40000;
        e.dport = 80;
        e.pid = 42;
        e.netns = 4026531840;
        e.comm[..4].copy_from_slice(b"curl");
        e.old_state = TcpState::SynSent as u8;
        e.new_state = TcpState::Established as u8;
        e.duration_ns = 1_500_000;
        e
    }

    #[test]
    fn text_has_every_column() {
        let line = text_line(&state_event(), &Clock::fixed(0));
        assert!(line.contains("state"), "{line}");
        assert!(line.contains(" 42 "), "{line}");
        assert!(line.contains("curl"), "{line}");
        assert!(line.contains(" 4026531840 "), "{line}");
        assert!(line.contains("127.0.0.1:40000"), "{line}");
        assert!(line.contains("127.0.0.1:80"), "{line}");
        assert!(
            line.contains("SYN_SENT -> ESTABLISHED (in SYN_SENT 1.500ms)"),
            "{line}"
        );
    }

    #[test]
    fn json_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&state_event(), &Clock::fixed(0))).unwrap();
        assert_eq!(v["event"], "state");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["old_state"], "SYN_SENT");
        assert_eq!(v["new_state"], "ESTABLISHED");
        assert_eq!(v["duration_ns"], 1_500_000);
        assert_eq!(v["family"], 4);
        assert_eq!(v["netns"], 4026531840u32);
        assert!(v.get("retransmit").is_none());
    }

    #[test]
    fn failed_handshake_json() {
        let mut e = state_event();
        e.kind = EventKind::Handshake as u8;
        e.outcome = tcptrace_common::event::OUTCOME_FAILED;
        e.err = libc::ECONNREFUSED;
        e.flags = FLAG_SK_ERR_READ;
        let v: serde_json::Value = serde_json::from_str(&json_line(&e, &Clock::fixed(0))).unwrap();
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["reason"], "refused");
        assert_eq!(v["error"], "ECONNREFUSED");
        assert_eq!(v["side"], "client");
    }

    #[test]
    fn connect_error_and_segment_lines() {
        let mut e = state_event();
        e.kind = EventKind::ConnectError as u8;
        e.err = libc::EADDRNOTAVAIL;
        e.detail = Source::Tracepoint as u8;
        let line = text_line(&e, &Clock::fixed(0));
        assert!(
            line.contains("connect() failed: EADDRNOTAVAIL (seen by tracepoint)"),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line(&e, &Clock::fixed(0))).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["error"].as_str()),
            (Some("connect"), Some("EADDRNOTAVAIL"))
        );

        e.kind = EventKind::Segment as u8;
        e.old_state = TcpState::SynSent as u8;
        e.detail = 0x14;
        let line = text_line(&e, &Clock::fixed(0));
        assert!(line.contains("RST,ACK received in SYN_SENT"), "{line}");
        assert_eq!(tcp_flags(0x12), "SYN,ACK");
        assert_eq!(tcp_flags(0), "no flags");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(45_000), "45us");
        assert_eq!(human_duration(12_345_678), "12.346ms");
        assert_eq!(human_duration(3_000_000_000), "3.000s");
    }
}
