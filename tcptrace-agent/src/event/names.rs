//! The vocabulary of events, in one place, each list with its `ALL`: event kinds with
//! their names in output and in `--events`, why a handshake failed, which way a reset
//! went, TCP flags and errno names. Renderers, filters and metrics all take their words
//! from here, so a word added here reaches every one of them.
use std::borrow::Cow;

use tcptrace_common::{
    counters::RESET_RECEIVED, event::FLAG_RST_RECEIVED, EventKind, HandshakeSide,
};

/// An event kind, its name in text and JSON output, and its word in `--events`.
#[derive(Clone, Copy, Debug)]
pub struct KindName {
    pub kind: EventKind,
    pub name: &'static str,
    pub word: &'static str,
    /// What a count of them is called (`trace`'s closing summary).
    pub counted: &'static str,
}

pub const KINDS: [KindName; 10] = [
    KindName {
        kind: EventKind::StateChange,
        name: "state",
        word: "states",
        counted: "state changes",
    },
    KindName {
        kind: EventKind::Handshake,
        name: "handshake",
        word: "handshakes",
        counted: "handshakes",
    },
    KindName {
        kind: EventKind::Retransmit,
        name: "retransmit",
        word: "retransmits",
        counted: "retransmits",
    },
    KindName {
        kind: EventKind::ConnectError,
        name: "connect",
        word: "connects",
        counted: "connect errors",
    },
    KindName {
        kind: EventKind::Segment,
        name: "segment",
        word: "segments",
        counted: "handshake segments",
    },
    KindName {
        kind: EventKind::SocketError,
        name: "error",
        word: "errors",
        counted: "socket errors",
    },
    KindName {
        kind: EventKind::Reset,
        name: "reset",
        word: "resets",
        counted: "resets",
    },
    KindName {
        kind: EventKind::Close,
        name: "close",
        word: "closes",
        counted: "closes",
    },
    KindName {
        kind: EventKind::Drop,
        name: "drop",
        word: "drops",
        counted: "drops",
    },
    KindName {
        kind: EventKind::ListenOverflow,
        name: "overflow",
        word: "overflows",
        counted: "listen overflows",
    },
];

/// A drop reason's name (`NETFILTER_DROP`, ...), from this kernel's own table.
pub fn drop_reason_name(reason: u32) -> String {
    crate::kernel::drop_reasons::name(reason)
}

/// The kind's name in output (`state`, `handshake`, ...).
pub fn kind_name(kind: EventKind) -> &'static str {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .map_or("unknown", |k| k.name)
}

/// A word of `--events`: the plural (`states`) or the name (`state`).
pub fn kind_by_word(word: &str) -> Option<EventKind> {
    KINDS
        .iter()
        .find(|k| k.word == word || k.name == word)
        .map(|k| k.kind)
}

/// Why a handshake failed: the `reason` of failure events and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// A RST answered the SYN: nothing listens there.
    Refused,
    /// The SYN retries ran out.
    Timeout,
    /// Reset after the SYN was answered.
    Reset,
    /// No route, or the host is down (ICMP).
    Unreachable,
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        FailureReason::Refused,
        FailureReason::Timeout,
        FailureReason::Reset,
        FailureReason::Unreachable,
        FailureReason::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureReason::Refused => "refused",
            FailureReason::Timeout => "timeout",
            FailureReason::Reset => "reset",
            FailureReason::Unreachable => "unreachable",
            FailureReason::Other => "other",
        }
    }

    /// From what the kernel knew when the handshake failed: the socket's error where it
    /// was read (`sk_err_read`), else whether a RST arrived (`flags`).
    pub fn classify(side: u8, flags: u8, sk_err: Option<i32>) -> FailureReason {
        if let Some(err) = sk_err.filter(|e| *e != 0) {
            return match err {
                libc::ECONNREFUSED => FailureReason::Refused,
                libc::ETIMEDOUT => FailureReason::Timeout,
                libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => FailureReason::Reset,
                libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => {
                    FailureReason::Unreachable
                }
                _ => FailureReason::Other,
            };
        }
        if flags & FLAG_RST_RECEIVED != 0 {
            // A RST answering a SYN is a refusal; one arriving later resets the handshake.
            return match HandshakeSide::from_u8(side) {
                Some(HandshakeSide::Client) => FailureReason::Refused,
                _ => FailureReason::Reset,
            };
        }
        FailureReason::Other
    }
}

/// Which way a RST went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResetDirection {
    Sent,
    Received,
}

impl ResetDirection {
    pub const ALL: [ResetDirection; 2] = [ResetDirection::Sent, ResetDirection::Received];

    /// From a reset event's detail (the `RESETS` slot).
    pub fn from_slot(detail: u8) -> ResetDirection {
        if u32::from(detail) == RESET_RECEIVED {
            ResetDirection::Received
        } else {
            ResetDirection::Sent
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ResetDirection::Sent => "sent",
            ResetDirection::Received => "received",
        }
    }
}

/// The TCP header's flag bits, in header order.
pub const TCP_FLAGS: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

/// `SYN,ACK`: the flags of a TCP segment, in header order.
pub fn tcp_flags(flags: u8) -> String {
    let set: Vec<&str> = (0..8)
        .filter(|bit| flags & (1 << bit) != 0)
        .map(|bit| TCP_FLAGS[bit])
        .collect();
    if set.is_empty() {
        "no flags".to_string()
    } else {
        set.join(",")
    }
}

/// The errnos tcptrace reports, by name.
const ERRNOS: [(i32, &str); 16] = [
    (0, "none"),
    (libc::EPIPE, "EPIPE"),
    (libc::EADDRINUSE, "EADDRINUSE"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::ENOBUFS, "ENOBUFS"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::EPERM, "EPERM"),
];

/// The symbolic name of an errno value (`errno 4242` for one tcptrace does not name).
pub fn errno_name(err: i32) -> Cow<'static, str> {
    match ERRNOS.iter().find(|(n, _)| *n == err) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(format!("errno {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::HandshakeSide;

    #[test]
    fn every_kind_has_one_name_and_one_word() {
        for k in KINDS {
            assert_eq!(kind_by_word(k.word), Some(k.kind));
            assert_eq!(kind_by_word(k.name), Some(k.kind));
            assert_eq!(kind_name(k.kind), k.name);
        }
        assert_eq!(kind_by_word("packets"), None);
    }

    #[test]
    fn failure_reasons() {
        let client = HandshakeSide::Client as u8;
        let server = HandshakeSide::Server as u8;
        let by_err = |e| FailureReason::classify(client, 0, Some(e));
        assert_eq!(by_err(libc::ECONNREFUSED), FailureReason::Refused);
        assert_eq!(by_err(libc::ETIMEDOUT), FailureReason::Timeout);
        assert_eq!(by_err(libc::EHOSTUNREACH), FailureReason::Unreachable);
        assert_eq!(
            FailureReason::classify(server, 0, Some(libc::ECONNRESET)),
            FailureReason::Reset
        );
        assert_eq!(by_err(0), FailureReason::Other);
        // Without BTF: the RST flag still tells refusal from reset.
        assert_eq!(
            FailureReason::classify(client, FLAG_RST_RECEIVED, None),
            FailureReason::Refused
        );
        assert_eq!(
            FailureReason::classify(server, FLAG_RST_RECEIVED, None),
            FailureReason::Reset
        );
        assert_eq!(
            FailureReason::classify(client, 0, None),
            FailureReason::Other
        );
        let names: Vec<&str> = FailureReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            ["refused", "timeout", "reset", "unreachable", "other"]
        );
    }

    #[test]
    fn flags_and_errnos() {
        assert_eq!(tcp_flags(0x12), "SYN,ACK");
        assert_eq!(tcp_flags(0x14), "RST,ACK");
        assert_eq!(tcp_flags(0), "no flags");
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(4242), "errno 4242");
        assert_eq!(
            ResetDirection::from_slot(RESET_RECEIVED as u8),
            ResetDirection::Received
        );
        assert_eq!(ResetDirection::from_slot(0).name(), "sent");
    }
}
