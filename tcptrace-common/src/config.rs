//! Load-time configuration handed to the eBPF programs as a read-only global.
//!
//! Tracepoint layouts are read from tracefs `format` files at startup, so the programs
//! never hard-code field offsets; filters let `tcptrace trace` drop events in the kernel.

/// Marks a tracepoint field this kernel does not have.
pub const FIELD_ABSENT: u16 = u16::MAX;
/// The most of a tracepoint record the programs copy (one read per event).
pub const RECORD_MAX: usize = 128;

/// Marks a kernel struct offset that could not be resolved (no BTF).
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Byte offsets of the fields tcptrace reads from one tracepoint record.
/// Every TCP/sock tracepoint it uses shares the same field names; fields an event lacks
/// are `FIELD_ABSENT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpLayout {
    /// Bytes of the record the programs copy: the end of the furthest field they read.
    pub len: u16,
    pub skaddr: u16,
    /// `skbaddr` (tcp_retransmit_skb).
    pub skbaddr: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `oldstate` (inet_sock_set_state) or `state` (retransmit tracepoints).
    pub oldstate: u16,
    pub newstate: u16,
    /// `err` (tcp_retransmit_skb on 6.x) or `error` (inet_sk_error_report).
    pub err: u16,
}

impl TpLayout {
    pub const ABSENT: TpLayout = TpLayout {
        len: 0,
        skaddr: FIELD_ABSENT,
        skbaddr: FIELD_ABSENT,
        sport: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        family: FIELD_ABSENT,
        protocol: FIELD_ABSENT,
        saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        saddr_v6: FIELD_ABSENT,
        daddr_v6: FIELD_ABSENT,
        oldstate: FIELD_ABSENT,
        newstate: FIELD_ABSENT,
        err: FIELD_ABSENT,
    };
}

/// Which events reach the ring buffer. Zero values mean "any". Counters ignore filters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Bit set of `EventKind::bit()`; 0 = every kind, `NO_EVENTS` = none.
    pub kinds: u32,
    /// Owner thread-group id.
    pub pid: u32,
    /// Either port.
    pub port: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Family of `cidr_addr`; 0 = no address filter.
    pub cidr_family: u16,
    pub cidr_prefix: u8,
    /// Length of `comm`; 0 = no command filter.
    pub comm_len: u8,
    /// Network namespace inode (`ls -L -i /proc/PID/ns/net`); 0 = any.
    pub netns: u32,
    pub _pad: u32,
    pub cidr_addr: [u8; 16],
    /// Exact owner command name (as the kernel truncates it, up to 15 bytes).
    pub comm: [u8; 16],
}

/// `Filter::kinds` value that lets no event through: counters only.
pub const NO_EVENTS: u32 = 1 << 31;

impl Filter {
    pub const ANY: Filter = Filter {
        kinds: 0,
        pid: 0,
        port: 0,
        family: 0,
        cidr_family: 0,
        cidr_prefix: 0,
        comm_len: 0,
        netns: 0,
        _pad: 0,
        cidr_addr: [0; 16],
        comm: [0; 16],
    };
}

/// The `CONFIG` global of the eBPF object.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub set_state: TpLayout,
    pub retransmit_skb: TpLayout,
    pub retransmit_synack: TpLayout,
    pub destroy_sock: TpLayout,
    pub receive_reset: TpLayout,
    /// Only its presence matters: the program counts, reading no field.
    pub send_reset: TpLayout,
    /// `syscalls:sys_exit_connect` (`ret` in the `err` slot): connect()'s return code
    /// where no function hook on `tcp_v4_connect`/`tcp_v6_connect` attaches.
    pub sys_exit_connect: TpLayout,
    /// `sock:inet_sk_error_report` (`error` in the `err` slot).
    pub error_report: TpLayout,
    /// `tcp:tcp_probe`: only `skaddr` (the byte counts are read from the socket).
    pub tcp_probe: TpLayout,
    /// `skb:kfree_skb`: `skbaddr`, `reason` (in the `err` slot) and, since Linux 6.11,
    /// `rx_sk` (in the `skaddr` slot), the socket that received the packet.
    pub kfree_skb: TpLayout,
    /// `struct sock_common` read like a record, offsets from BTF, for the function
    /// hooks: `sport` is `skc_num` (host order), `dport` is `skc_dport` (network
    /// order), `oldstate` is the one-byte `skc_state`. `len` 0 without BTF.
    pub sock: TpLayout,
    /// `offsetof(struct sock, sk_err)` from BTF, or `OFFSET_UNKNOWN`.
    pub sk_err_offset: u32,
    /// `offsetof(struct tcp_sock, srtt_us)` from BTF, or `OFFSET_UNKNOWN`.
    pub srtt_offset: u32,
    /// Offset of `TCP_SKB_CB(skb)->tcp_gso_segs` in `struct sk_buff` (`cb` plus the
    /// member's offset in `struct tcp_skb_cb`), or `OFFSET_UNKNOWN`.
    pub skb_segs_offset: u32,
    /// Offset of `TCP_SKB_CB(skb)->tcp_flags` in `struct sk_buff`, or `OFFSET_UNKNOWN`.
    pub skb_flags_offset: u32,
    /// `offsetof(struct sock, sk_protocol)` (the raw state tracepoint filters TCP with
    /// it), or `OFFSET_UNKNOWN`.
    pub sk_protocol_offset: u32,
    /// `offsetof(struct inet_sock, inet_sport)`: the local port as the state tracepoint
    /// reports it (`skc_num` is already 0 when a closing socket's state changes).
    pub inet_sport_offset: u32,
    /// `offsetof(struct sock_common, skc_net)`: the socket's `struct net *`.
    pub skc_net_offset: u32,
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`: the network
    /// namespace's inode number, what `/proc/PID/ns/net` links to.
    pub net_inum_offset: u32,
    /// `offsetof(struct tcp_sock, total_retrans)`: segments this socket retransmitted,
    /// added by the kernel together with TcpRetransSegs.
    pub total_retrans_offset: u32,
    /// `offsetof(struct tcp_sock, bytes_acked)` and `bytes_received` (u64 each): what a
    /// connection carried, or `OFFSET_UNKNOWN`.
    pub bytes_acked_offset: u32,
    pub bytes_received_offset: u32,
    /// `offsetof(struct tcp_sock, data_segs_out)` (u32): data segments a connection
    /// sent, retransmits included, or `OFFSET_UNKNOWN`.
    pub data_segs_out_offset: u32,
    /// 1 where `tcp_retransmit_skb` passes `err` as its third argument (raw and
    /// BTF-typed tracepoints read it there), 0 before that (Linux 6.17).
    pub retransmit_err_arg: u32,
    /// Arguments `skb:kfree_skb` passes to raw and BTF-typed programs: 2 (skb, location)
    /// before drop reasons (5.17), 3 with the reason, 4 with `rx_sk` too (6.11).
    pub kfree_skb_args: u32,
    /// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` on this kernel (from the tracepoint's
    /// format), 0 where it has no such reason.
    pub listen_overflow_reason: u32,
    /// `struct sk_buff` members a dropped packet's headers and socket are found with:
    /// `head`, `network_header`, `transport_header` (u16 offsets from `head`), `sk`,
    /// and `_skb_refdst` (its route: `dst_entry.dev` -> `net_device.nd_net` gives the
    /// network namespace of a packet that has no socket and no device any more).
    pub skb_head_offset: u32,
    pub skb_network_header_offset: u32,
    pub skb_transport_header_offset: u32,
    pub skb_sk_offset: u32,
    pub skb_refdst_offset: u32,
    pub dst_dev_offset: u32,
    pub dev_nd_net_offset: u32,
    /// `struct sock` `sk_ack_backlog` and `sk_max_ack_backlog`: a listener's accept
    /// queue and its limit.
    pub sk_ack_backlog_offset: u32,
    pub sk_max_ack_backlog_offset: u32,
    /// Wake the reader once this many bytes wait in the ring buffer; below it events
    /// are batched and the reader polls on a short timer (fewer wakeups under load).
    pub wakeup_bytes: u32,
    pub filter: Filter,
    /// `[start, end)` of `tcp_rcv_state_process` in kernel text (from kallsyms): a SYN a
    /// listener consumed there went through `tcp_conn_request`, overflow or not. Both 0
    /// where the addresses are hidden (`kptr_restrict`).
    pub rcv_state_process_start: u64,
    pub rcv_state_process_end: u64,
}

impl Config {
    pub const DEFAULT: Config = Config {
        set_state: TpLayout::ABSENT,
        retransmit_skb: TpLayout::ABSENT,
        retransmit_synack: TpLayout::ABSENT,
        destroy_sock: TpLayout::ABSENT,
        receive_reset: TpLayout::ABSENT,
        send_reset: TpLayout::ABSENT,
        sys_exit_connect: TpLayout::ABSENT,
        error_report: TpLayout::ABSENT,
        tcp_probe: TpLayout::ABSENT,
        kfree_skb: TpLayout::ABSENT,
        sock: TpLayout::ABSENT,
        sk_err_offset: OFFSET_UNKNOWN,
        srtt_offset: OFFSET_UNKNOWN,
        skb_segs_offset: OFFSET_UNKNOWN,
        skb_flags_offset: OFFSET_UNKNOWN,
        sk_protocol_offset: OFFSET_UNKNOWN,
        inet_sport_offset: OFFSET_UNKNOWN,
        skc_net_offset: OFFSET_UNKNOWN,
        net_inum_offset: OFFSET_UNKNOWN,
        total_retrans_offset: OFFSET_UNKNOWN,
        bytes_acked_offset: OFFSET_UNKNOWN,
        bytes_received_offset: OFFSET_UNKNOWN,
        data_segs_out_offset: OFFSET_UNKNOWN,
        retransmit_err_arg: 0,
        kfree_skb_args: 0,
        listen_overflow_reason: 0,
        skb_head_offset: OFFSET_UNKNOWN,
        skb_network_header_offset: OFFSET_UNKNOWN,
        skb_transport_header_offset: OFFSET_UNKNOWN,
        skb_sk_offset: OFFSET_UNKNOWN,
        skb_refdst_offset: OFFSET_UNKNOWN,
        dst_dev_offset: OFFSET_UNKNOWN,
        dev_nd_net_offset: OFFSET_UNKNOWN,
        sk_ack_backlog_offset: OFFSET_UNKNOWN,
        sk_max_ack_backlog_offset: OFFSET_UNKNOWN,
        wakeup_bytes: 0,
        filter: Filter::ANY,
        rcv_state_process_start: 0,
        rcv_state_process_end: 0,
    };
}

/// Where a piece of information comes from on this kernel. The agent decides after
/// attaching (the first method of each probe that works) and writes it into the
/// `SOURCES` map, so the derived fallback stays idle where a function hook attached.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nothing attached provides it.
    None = 0,
    /// A hook on the kernel function itself (fentry/fexit or kprobe/kretprobe).
    Function = 1,
    /// Derived from tracepoints (state changes, resets, `sys_exit_connect`).
    Tracepoint = 2,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::Function => "function",
            Source::Tracepoint => "tracepoint",
        }
    }

    pub fn from_u8(v: u8) -> Source {
        match v {
            1 => Source::Function,
            2 => Source::Tracepoint,
            _ => Source::None,
        }
    }
}

/// `SOURCES` slots: connect() errors per family, handshake-state segment flags,
/// whether `tcp_destroy_sock` ends socket tracking (then CLOSE does not), and where
/// sockets are tracked.
pub const SOURCE_CONNECT_V4: u32 = 0;
pub const SOURCE_CONNECT_V6: u32 = 1;
pub const SOURCE_SEGMENTS: u32 = 2;
pub const SOURCE_DESTROY: u32 = 3;
/// Where the state program keeps per-socket state: `TRACKING_SOCKET_STORAGE`, or 0 for
/// the fallback socket map. Programs that can reach both (fentry) read it from there.
pub const SOURCE_TRACKING: u32 = 4;
pub const SOURCE_SLOTS: u32 = 5;
pub const TRACKING_SOCKET_STORAGE: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<TpLayout>(), 28);
        assert_eq!(size_of::<Filter>(), 56);
        assert_eq!(size_of::<Config>(), 11 * 28 + 25 * 4 + 56 + 2 * 8);
    }
}
