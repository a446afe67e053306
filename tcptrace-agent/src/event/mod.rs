//! Events as the agent's consumers see them: each ring-buffer record decoded once, at
//! the boundary, into a `TcpEvent` — the socket it is about (endpoints, namespace,
//! owner) and what happened to it (`What`, one variant per kind, with typed fields).
//! The trace renderers, the per-workload series and doctor all read these; none reads
//! the raw `#[repr(C)]` record. Their words come from `names`.
pub mod clock;
pub mod names;

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tcptrace_common::{
    config::Source,
    event::{ClosedBy, OverflowAt, FLAG_OWNER_UNKNOWN, FLAG_SK_ERR_READ, OUTCOME_ESTABLISHED},
    Event, EventKind, HandshakeSide, RetransmitKind, AF_INET,
};

pub use names::{errno_name, FailureReason, ResetDirection};

/// One event, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC when it happened.
    pub ts_ns: u64,
    /// The kernel's socket address: joins the events of one socket.
    pub skaddr: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's network namespace (inode), where the kernel's offsets are known.
    pub netns: Option<u32>,
    /// The process that connected or listened, where tcptrace saw it do so.
    pub owner: Option<Owner>,
    pub what: What,
}

/// The process a socket belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub cgroup_id: u64,
    /// The command (thread) name, as the kernel keeps it: at most 15 bytes.
    comm: [u8; 16],
}

impl Owner {
    pub fn new(pid: u32, cgroup_id: u64, name: &str) -> Owner {
        let mut comm = [0u8; 16];
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        Owner {
            pid,
            cgroup_id,
            comm,
        }
    }

    /// The command name, borrowed when it is valid UTF-8 (it nearly always is).
    pub fn comm(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.comm_bytes())
    }

    /// The command name's bytes, as the kernel stored them (up to its NUL). The NUL is
    /// found in the name as one 128-bit word, without a loop: the search byte by byte
    /// took a third of rendering a JSON line.
    pub fn comm_bytes(&self) -> &[u8] {
        const ONES: u128 = u128::MAX / 0xff;
        let word = u128::from_le_bytes(self.comm);
        // The lowest set high bit marks the first zero byte (higher ones may be false).
        let zeros = word.wrapping_sub(ONES) & !word & (ONES << 7);
        let end = (zeros.trailing_zeros() / 8) as usize;
        &self.comm[..end.min(16)]
    }
}

/// What happened, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A state transition; the time spent in `from` where tcptrace saw it entered.
    State {
        from: u8,
        to: u8,
        time_in_from_ns: Option<u64>,
    },
    /// A socket left SYN_SENT (client) or SYN_RECV (server): established, or failed.
    Handshake {
        side: HandshakeSide,
        duration_ns: u64,
        failure: Option<Failure>,
    },
    Retransmit {
        kind: RetransmitKind,
        state: u8,
        /// Segments in the retransmitted skb (GSO), where the kernel offset is known.
        segments: Option<u32>,
        /// The error the kernel retransmitted with (the retransmit was not sent).
        error: Option<i32>,
    },
    /// connect() failed before a SYN left; `seen_by` the function hook or the fallback.
    ConnectError { errno: i32, seen_by: Source },
    /// A segment received in LISTEN, SYN_SENT or SYN_RECV.
    Segment { state: u8, flags: u8 },
    /// The kernel reported an error on the socket.
    SocketError { errno: i32 },
    Reset {
        direction: ResetDirection,
        state: u8,
    },
    /// A connection closed: what it carried, read from the socket as it closed.
    Close(Close),
    /// The kernel dropped a TCP packet for `reason` (its number on this kernel); the
    /// socket's state where the packet had a socket. Without one, `local` is the
    /// packet's source and `remote` its destination.
    Drop { reason: u32, state: Option<u8> },
    /// A listener's full accept queue turned a connection away (`local` the listener,
    /// `remote` the client).
    ListenOverflow { at: OverflowAt },
}

/// A connection's life, as its close reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// The state it closed from (`LAST_ACK`, `FIN_WAIT2`, `ESTABLISHED` for an abort, ...).
    pub from: u8,
    /// From connect() or the SYN its listener answered; `None` when tcptrace did not
    /// see it begin.
    pub lifetime_ns: Option<u64>,
    /// Bytes the peer acknowledged and bytes received (`tcp_sock.bytes_acked`,
    /// `bytes_received`; the SYN and FIN count one each).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Data segments sent, retransmits included (`tcp_sock.data_segs_out`).
    pub segs_out: u32,
    /// Segments the connection retransmitted (`tcp_sock.total_retrans`).
    pub retransmitted: u32,
    /// Smoothed round-trip time; `None` without a sample or the kernel offset.
    pub rtt_us: Option<u32>,
    pub closed_by: ClosedBy,
}

/// Why a handshake failed, and the socket's error where the kernel gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub errno: Option<i32>,
}

impl TcpEvent {
    /// Decode one ring-buffer record; `None` for one of the wrong size (the agent and
    /// the eBPF object would disagree on the layout) or of an unknown kind.
    pub fn decode(bytes: &[u8]) -> Option<TcpEvent> {
        if bytes.len() < std::mem::size_of::<Event>() {
            return None;
        }
        // SAFETY: Event is plain old data and the slice holds at least
        // size_of::<Event>() bytes; read_unaligned makes no alignment assumption.
        let e = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
        TcpEvent::from_record(&e)
    }

    /// The same from a record already copied out.
    pub fn from_record(e: &Event) -> Option<TcpEvent> {
        let owned = e.flags & FLAG_OWNER_UNKNOWN == 0 && e.pid != 0;
        Some(TcpEvent {
            ts_ns: e.ts_ns,
            skaddr: e.skaddr,
            local: SocketAddr::new(ip(e.family, &e.saddr), e.sport),
            remote: SocketAddr::new(ip(e.family, &e.daddr), e.dport),
            netns: (e.netns != 0).then_some(e.netns),
            owner: owned.then_some(Owner {
                pid: e.pid,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
            }),
            what: what(e)?,
        })
    }

    pub fn kind(&self) -> EventKind {
        match self.what {
            What::State { .. } => EventKind::StateChange,
            What::Handshake { .. } => EventKind::Handshake,
            What::Retransmit { .. } => EventKind::Retransmit,
            What::ConnectError { .. } => EventKind::ConnectError,
            What::Segment { .. } => EventKind::Segment,
            What::SocketError { .. } => EventKind::SocketError,
            What::Reset { .. } => EventKind::Reset,
            What::Close(_) => EventKind::Close,
            What::Drop { .. } => EventKind::Drop,
            What::ListenOverflow { .. } => EventKind::ListenOverflow,
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

fn what(e: &Event) -> Option<What> {
    Some(match EventKind::from_u8(e.kind)? {
        EventKind::StateChange => What::State {
            from: e.old_state,
            to: e.new_state,
            time_in_from_ns: (e.duration_ns != 0).then_some(e.duration_ns),
        },
        EventKind::Handshake => {
            let sk_err = (e.flags & FLAG_SK_ERR_READ != 0).then_some(e.err);
            What::Handshake {
                side: HandshakeSide::from_u8(e.detail)?,
                duration_ns: e.duration_ns,
                failure: (e.outcome != OUTCOME_ESTABLISHED).then(|| Failure {
                    reason: FailureReason::classify(e.detail, e.flags, sk_err),
                    errno: sk_err,
                }),
            }
        }
        EventKind::Retransmit => What::Retransmit {
            kind: RetransmitKind::from_u8(e.detail)?,
            state: e.old_state,
            segments: (e.segs != 0).then_some(e.segs),
            error: (e.err != 0).then_some(-e.err),
        },
        EventKind::ConnectError => What::ConnectError {
            errno: e.err,
            seen_by: Source::from_u8(e.detail),
        },
        EventKind::Segment => What::Segment {
            state: e.old_state,
            flags: e.detail,
        },
        EventKind::SocketError => What::SocketError { errno: e.err },
        EventKind::Reset => What::Reset {
            direction: ResetDirection::from_slot(e.detail),
            state: e.old_state,
        },
        EventKind::Close => What::Close(Close {
            from: e.old_state,
            lifetime_ns: (e.duration_ns != 0).then_some(e.duration_ns),
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            segs_out: e.segs_out,
            retransmitted: e.segs,
            rtt_us: (e.rtt_us != 0).then_some(e.rtt_us),
            closed_by: ClosedBy::from_u8(e.detail)?,
        }),
        EventKind::Drop => What::Drop {
            reason: e.err as u32,
            state: (e.old_state != 0).then_some(e.old_state),
        },
        EventKind::ListenOverflow => What::ListenOverflow {
            at: OverflowAt::from_u8(e.detail)?,
        },
    })
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::{event::FLAG_RST_RECEIVED, AF_INET6};

    fn bytes(e: &Event) -> &[u8] {
        // SAFETY: Event is plain old data.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        }
    }

    #[test]
    fn a_record_becomes_its_typed_event_once() {
        let mut e = Event::zeroed();
        e.kind = EventKind::Handshake as u8;
        e.detail = HandshakeSide::Client as u8;
        e.outcome = 1;
        e.flags = FLAG_SK_ERR_READ;
        e.err = libc::ECONNREFUSED;
        e.family = AF_INET;
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.sport = 40000;
        e.dport = 443;
        e.pid = 42;
        e.netns = 4026531840;
        e.comm[..4].copy_from_slice(b"curl");
        let t = TcpEvent::decode(bytes(&e)).unwrap();
        assert_eq!(t.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(t.remote, "10.0.0.2:443".parse().unwrap());
        assert_eq!(t.netns, Some(4026531840));
        assert_eq!(t.owner.as_ref().unwrap().comm(), "curl");
        assert_eq!(t.kind(), EventKind::Handshake);
        assert_eq!(
            t.what,
            What::Handshake {
                side: HandshakeSide::Client,
                duration_ns: 0,
                failure: Some(Failure {
                    reason: FailureReason::Refused,
                    errno: Some(libc::ECONNREFUSED)
                })
            }
        );
        assert!(TcpEvent::decode(&bytes(&e)[..50]).is_none());
    }

    #[test]
    fn unknown_owners_kinds_and_families() {
        let mut e = Event::zeroed();
        e.kind = EventKind::Reset as u8;
        e.pid = 7;
        e.flags = FLAG_OWNER_UNKNOWN | FLAG_RST_RECEIVED;
        e.family = AF_INET6;
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        let t = TcpEvent::from_record(&e).unwrap();
        assert_eq!(t.owner, None);
        assert_eq!(t.netns, None);
        assert!(t.is_ipv6());
        assert_eq!(t.local.ip().to_string(), "::1");
        e.kind = 0;
        assert!(TcpEvent::from_record(&e).is_none());
    }
}
