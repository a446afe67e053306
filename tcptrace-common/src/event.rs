//! The records the eBPF programs write to the ring buffer and keep in per-socket maps.

/// What an [`Event`] describes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP state transition (`sock:inet_sock_set_state`).
    StateChange = 1,
    /// A handshake finished: established or failed, with its duration.
    Handshake = 2,
    /// A segment was retransmitted (`tcp:tcp_retransmit_skb` / `tcp_retransmit_synack`).
    Retransmit = 3,
    /// connect() failed before a SYN was sent (`tcp_v4_connect`/`tcp_v6_connect`
    /// returned an error, e.g. EADDRNOTAVAIL when no local port is free).
    ConnectError = 4,
    /// A segment arrived for a socket in a handshake state (LISTEN, SYN_SENT,
    /// SYN_RECV): its TCP flags tell a SYN-ACK from a RST or an unexpected ACK.
    Segment = 5,
    /// The kernel reported an error on a socket (`sock:inet_sk_error_report`): ETIMEDOUT
    /// when keep-alive or retransmissions gave up, ECONNRESET, ICMP errors.
    SocketError = 6,
    /// A RST sent or received on a tracked socket (`detail`: 0 sent, 1 received, as the
    /// `RESETS` slots).
    Reset = 7,
    /// A synchronised connection closed (-> CLOSE from ESTABLISHED or a closing state):
    /// its lifetime, bytes, retransmitted segments and smoothed RTT, read from the
    /// socket at that moment; `detail` is the [`ClosedBy`].
    Close = 8,
    /// The kernel dropped a TCP packet and said why (`skb:kfree_skb`): `err` is the drop
    /// reason (`enum skb_drop_reason`), `old_state` the socket's state when the packet
    /// had one (0 when not). Endpoints are the socket's when it is known (local first),
    /// else the packet's own (its source first); `skaddr` is 0 then.
    Drop = 9,
    /// A connection a listener's full accept queue turned away, as the kernel counts in
    /// ListenOverflows: `detail` is [`OverflowAt`]; the endpoints are the listener's
    /// (local) and the client's; owner is the listener's.
    ListenOverflow = 10,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<EventKind> {
        match v {
            1 => Some(EventKind::StateChange),
            2 => Some(EventKind::Handshake),
            3 => Some(EventKind::Retransmit),
            4 => Some(EventKind::ConnectError),
            5 => Some(EventKind::Segment),
            6 => Some(EventKind::SocketError),
            7 => Some(EventKind::Reset),
            8 => Some(EventKind::Close),
            9 => Some(EventKind::Drop),
            10 => Some(EventKind::ListenOverflow),
            _ => None,
        }
    }

    /// Bit of this kind in [`crate::Filter::kinds`].
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// Which segment a retransmit event re-sent.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetransmitKind {
    /// A data (or FIN) segment of a synchronised connection.
    Data = 0,
    /// The client's SYN (socket in SYN_SENT).
    Syn = 1,
    /// The server's SYN-ACK (`tcp:tcp_retransmit_synack`).
    SynAck = 2,
}

impl RetransmitKind {
    pub const ALL: [RetransmitKind; 3] = [
        RetransmitKind::Data,
        RetransmitKind::Syn,
        RetransmitKind::SynAck,
    ];

    pub fn from_u8(v: u8) -> Option<RetransmitKind> {
        Self::ALL.iter().copied().find(|k| *k as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            RetransmitKind::Data => "data",
            RetransmitKind::Syn => "syn",
            RetransmitKind::SynAck => "synack",
        }
    }
}

/// Which end of a connection a handshake event was measured on.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeSide {
    /// connect(): SYN_SENT -> ESTABLISHED (or -> CLOSE on failure).
    Client = 0,
    /// accept side: SYN_RECV -> ESTABLISHED (or -> CLOSE on failure).
    Server = 1,
}

impl HandshakeSide {
    pub fn from_u8(v: u8) -> Option<HandshakeSide> {
        match v {
            0 => Some(HandshakeSide::Client),
            1 => Some(HandshakeSide::Server),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HandshakeSide::Client => "client",
            HandshakeSide::Server => "server",
        }
    }
}

/// Which end started closing a connection, in a close event's `detail`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// This socket sent the first FIN (ESTABLISHED -> FIN_WAIT1).
    Local = 0,
    /// The peer's FIN came first (ESTABLISHED -> CLOSE_WAIT).
    Remote = 1,
    /// No FIN exchange began: the connection ended with a reset, a timeout or an abort.
    Neither = 2,
}

impl ClosedBy {
    pub const ALL: [ClosedBy; 3] = [ClosedBy::Local, ClosedBy::Remote, ClosedBy::Neither];

    pub fn from_u8(v: u8) -> Option<ClosedBy> {
        Self::ALL.iter().copied().find(|c| *c as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            ClosedBy::Local => "local",
            ClosedBy::Remote => "remote",
            ClosedBy::Neither => "neither",
        }
    }
}

/// Where a listen-queue overflow turned a connection away, in a listen-overflow event's
/// `detail`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowAt {
    /// Its SYN found the accept queue full (`tcp_conn_request`): no SYN-ACK was sent,
    /// the client retransmits its SYN.
    Syn = 0,
    /// Its final ACK found the queue full (`tcp_check_req`): the client believes it is
    /// connected; the server retransmits its SYN-ACK and drops the half-open connection
    /// after `tcp_synack_retries`.
    Ack = 1,
}

impl OverflowAt {
    pub const ALL: [OverflowAt; 2] = [OverflowAt::Syn, OverflowAt::Ack];

    pub fn from_u8(v: u8) -> Option<OverflowAt> {
        Self::ALL.iter().copied().find(|c| *c as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            OverflowAt::Syn => "syn",
            OverflowAt::Ack => "ack",
        }
    }

    /// What the kernel dropped, in words.
    pub fn segment(self) -> &'static str {
        match self {
            OverflowAt::Syn => "SYN",
            OverflowAt::Ack => "final ACK",
        }
    }
}

/// Handshake outcome codes in [`Event::outcome`].
pub const OUTCOME_ESTABLISHED: u8 = 0;
pub const OUTCOME_FAILED: u8 = 1;

/// [`Event::flags`] / [`SockInfo::flags`]: a RST arrived while the socket was tracked.
pub const FLAG_RST_RECEIVED: u8 = 1;
/// [`Event::flags`]: the owner is unknown (the socket existed before tcptrace attached,
/// or its tracking entry could not be stored).
pub const FLAG_OWNER_UNKNOWN: u8 = 2;
/// [`Event::flags`]: `err` holds the socket's pending error (`sk->sk_err`) read from the
/// kernel; without BTF the offset is unknown and this bit stays clear.
pub const FLAG_SK_ERR_READ: u8 = 4;
/// [`SockInfo::flags`]: this socket sent the first FIN of its connection.
pub const FLAG_FIN_SENT_FIRST: u32 = 8;
/// [`SockInfo::flags`]: the peer's FIN came first.
pub const FLAG_FIN_RECEIVED_FIRST: u32 = 16;

/// The process a socket belongs to, captured in process context (connect/listen) and
/// carried to every later event of that socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub cgroup_id: u64,
    /// Thread-group id (the "pid" users see); 0 when unknown.
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// Per-socket tracking state, keyed by the kernel socket address. Removed when the
/// socket reaches CLOSE or is destroyed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub owner: Owner,
    /// `bpf_ktime_get_ns()` of the last state transition.
    pub state_since_ns: u64,
    /// Entry into SYN_SENT / SYN_RECV; 0 once the handshake is over.
    pub handshake_start_ns: u64,
    pub flags: u32,
    /// `tcp_sock.total_retrans` when a retransmit of this socket was last counted: the
    /// next one counts what the kernel added since (`RETRANS_SEEN_UNKNOWN`: not yet).
    pub retrans_seen: u32,
    /// The socket's TCP state since its last transition (`TcpState` value).
    pub state: u8,
    pub _pad: [u8; 3],
    /// `tcp_sock.data_segs_out` as last added to the segment counter, as `acked_seen`
    /// for bytes.
    pub segs_out_seen: u32,
    /// When the connection began (connect(), or the SYN a listener answered); 0 for a
    /// socket that predates tracking.
    pub born_ns: u64,
    /// `tcp_sock.bytes_acked` and `bytes_received` as last added to the byte counters:
    /// each segment that arrives (`tcp:tcp_probe`) and the close add what the kernel
    /// counted since.
    pub acked_seen: u64,
    pub received_seen: u64,
}

/// [`SockInfo::retrans_seen`] before the socket's first retransmit was read.
pub const RETRANS_SEEN_UNKNOWN: u32 = u32::MAX;

/// Key of the listener table: children of a listener inherit its owner. Aligned to 8 so
/// that the eBPF side builds and copies the address as two words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenKey {
    /// Listening address; all zeroes for a wildcard bind.
    pub addr: [u8; 16],
    pub family: u16,
    pub port: u16,
    /// The listener's network namespace (inode; 0 without kernel BTF): every pod may
    /// listen on the same address and port in its own namespace.
    pub netns: u32,
}

/// A listener in the listener table: its owner, for children to inherit, and its
/// socket, whose accept queue a SYN's overflow is judged by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub owner: Owner,
    pub skaddr: u64,
}

/// One ring-buffer record. Addresses are 16 bytes; IPv4 uses the first four.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ts_ns: u64,
    /// Kernel address of the socket: stable for the socket's life, a join key.
    pub skaddr: u64,
    /// StateChange: time spent in `old_state` (0 = unknown). Handshake: its duration.
    pub duration_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    /// Retransmit: the tracepoint's `err` (0 = sent). Handshake: the socket error
    /// (`ECONNREFUSED`, `ETIMEDOUT`, ...; 0 = none) when `FLAG_SK_ERR_READ` is set.
    /// ConnectError: the errno connect() returned. SocketError: the errno reported.
    /// Drop: the kernel's drop reason.
    pub err: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    /// StateChange: from. Retransmit and Segment: the socket's state. Handshake: the
    /// state left.
    pub old_state: u8,
    /// StateChange: to. Handshake: ESTABLISHED or CLOSE.
    pub new_state: u8,
    /// Retransmit: [`RetransmitKind`]. Handshake: [`HandshakeSide`]. Segment: the TCP
    /// flags byte. ConnectError: the [`Source`](crate::config::Source) that saw it.
    pub detail: u8,
    /// Handshake: `OUTCOME_*`.
    pub outcome: u8,
    pub flags: u8,
    /// Retransmit: segments in the retransmitted skb (GSO), as the kernel's
    /// TcpRetransSegs counts them; 0 when the kernel offset is unknown. Close: segments
    /// the connection retransmitted (`tcp_sock.total_retrans`).
    pub segs: u32,
    /// The socket's network namespace (inode of `/proc/PID/ns/net`); 0 when unknown.
    pub netns: u32,
    /// Close: smoothed round-trip time in microseconds (`tcp_sock.srtt_us` / 8); 0 when
    /// unknown.
    pub rtt_us: u32,
    pub comm: [u8; 16],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Close: `tcp_sock.bytes_acked`, bytes the peer acknowledged (SYN and FIN each
    /// count one).
    pub bytes_sent: u64,
    /// Close: `tcp_sock.bytes_received` (the peer's FIN counts one).
    pub bytes_received: u64,
    /// Close: `tcp_sock.data_segs_out`, data segments sent, retransmits included.
    pub segs_out: u32,
    pub _pad: u32,
}

impl Event {
    pub const fn zeroed() -> Event {
        Event {
            ts_ns: 0,
            skaddr: 0,
            duration_ns: 0,
            cgroup_id: 0,
            pid: 0,
            err: 0,
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            old_state: 0,
            new_state: 0,
            detail: 0,
            outcome: 0,
            flags: 0,
            segs: 0,
            netns: 0,
            rtt_us: 0,
            comm: [0; 16],
            saddr: [0; 16],
            daddr: [0; 16],
            bytes_sent: 0,
            bytes_received: 0,
            segs_out: 0,
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Owner>(), 32);
        assert_eq!(size_of::<SockInfo>(), 88);
        assert_eq!(size_of::<ListenKey>(), 24);
        assert_eq!(size_of::<Listener>(), 40);
        assert_eq!(size_of::<Event>(), 136);
        assert_eq!(align_of::<Event>(), 8);
        assert_eq!(offset_of!(Event, netns), 56);
        assert_eq!(offset_of!(Event, comm), 64);
        assert_eq!(offset_of!(Event, daddr), 96);
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EventKind::StateChange,
            EventKind::Handshake,
            EventKind::Retransmit,
            EventKind::ConnectError,
            EventKind::Segment,
            EventKind::SocketError,
            EventKind::Reset,
            EventKind::Close,
            EventKind::Drop,
            EventKind::ListenOverflow,
        ] {
            assert_eq!(EventKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(EventKind::from_u8(0), None);
        for k in RetransmitKind::ALL {
            assert_eq!(RetransmitKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(HandshakeSide::from_u8(1), Some(HandshakeSide::Server));
        assert_eq!(HandshakeSide::from_u8(2), None);
        for c in ClosedBy::ALL {
            assert_eq!(ClosedBy::from_u8(c as u8), Some(c));
        }
        for at in OverflowAt::ALL {
            assert_eq!(OverflowAt::from_u8(at as u8), Some(at));
        }
    }
}
