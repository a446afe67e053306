//! Kernel struct offsets the programs read directly, resolved from the running kernel's
//! BTF (`/sys/kernel/btf/vmlinux`). Without BTF every one of them is unknown and the
//! programs skip what needs it; the agent says which features that costs.
use log::{info, warn};
use tcptrace_common::{config::OFFSET_UNKNOWN, Config, TpLayout};

use crate::kernel::btf::{AttachBtf, Btf, Target};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Which kernel struct fields a method's programs read directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    Nothing,
    /// `sock_common` endpoints and state, `TCP_SKB_CB(skb)->tcp_flags`.
    SockAndSkbFlags,
    /// A full socket: `sock_common` endpoints and state, `sock.sk_protocol`,
    /// `inet_sock.inet_sport`.
    Sock,
    /// `Sock` and `sock.sk_err`.
    SockAndError,
    /// `tcp_sock.bytes_acked` and `bytes_received`.
    Bytes,
    /// A dropped packet: its reason (a tracepoint argument since 5.17), `Sock`, and the
    /// `sk_buff` members its headers, socket and route are found with.
    Drops,
    /// A SYN a listener consumed: the `sk_buff` members, `sock_common`, the listener's
    /// `sk_ack_backlog` and `sk_max_ack_backlog`, and where `tcp_rcv_state_process`
    /// lies in kernel text (kallsyms).
    ListenQueue,
}

impl Reads {
    /// What a method reading these needs, as the reason it was skipped says it.
    pub fn needs(self) -> &'static str {
        match self {
            Reads::Nothing => "nothing",
            Reads::SockAndSkbFlags => {
                "kernel BTF for the offsets of struct sock_common and TCP_SKB_CB(skb)->tcp_flags"
            }
            Reads::Sock => "kernel BTF for the offsets of struct sock_common, sock.sk_protocol and inet_sock.inet_sport",
            Reads::SockAndError => {
                "kernel BTF for the offsets of struct sock_common, sock.sk_protocol, inet_sock.inet_sport and sock.sk_err"
            }
            Reads::Bytes => {
                "kernel BTF for the offsets of tcp_sock.bytes_acked and tcp_sock.bytes_received"
            }
            Reads::Drops => "the drop reason skb:kfree_skb passes since Linux 5.17, and kernel BTF for the offsets of struct sock and struct sk_buff's head, headers, sk and route",
            Reads::ListenQueue => "the caller's address skb:consume_skb passes since Linux 6.3, tcp_rcv_state_process's address from kallsyms, and kernel BTF for the offsets of struct sk_buff's head, headers and route and sock.sk_ack_backlog and sk_max_ack_backlog",
        }
    }
}

pub struct KernelOffsets {
    /// `struct sock.sk_err`: why a handshake failed (ECONNREFUSED, ETIMEDOUT, ...).
    pub sk_err: Option<u32>,
    /// `struct tcp_sock.srtt_us`: the SYN-ACK round trip of a server handshake.
    pub srtt: Option<u32>,
    /// `TCP_SKB_CB(skb)->tcp_gso_segs`: segments per retransmitted skb.
    pub skb_segs: Option<u32>,
    /// `TCP_SKB_CB(skb)->tcp_flags`: flags of a received segment (function hooks).
    pub skb_flags: Option<u32>,
    /// `struct sock_common` endpoint fields and state (function hooks).
    pub sock: Option<TpLayout>,
    /// `struct sock.sk_protocol` (raw state tracepoint).
    pub sk_protocol: Option<u32>,
    /// `struct inet_sock.inet_sport` (the local port while a socket closes).
    pub inet_sport: Option<u32>,
    /// `struct sock_common.skc_net` and `struct net` -> `ns.inum`: the network namespace
    /// of a socket, which tells apart sockets with the same endpoints in two pods.
    pub netns: Option<(u32, u32)>,
    /// `struct tcp_sock.total_retrans`: what the kernel added to TcpRetransSegs for a
    /// socket, so a retransmit's count never depends on guessing from its error.
    pub total_retrans: Option<u32>,
    /// `struct tcp_sock.bytes_acked` and `bytes_received`: what a connection carried.
    pub bytes: Option<(u32, u32)>,
    /// `struct tcp_sock.data_segs_out`: the data segments a connection sent,
    /// retransmits included.
    pub data_segs_out: Option<u32>,
    /// `struct sk_buff` members and the route to a device's namespace: a packet's own
    /// headers, socket and network namespace.
    pub skb: Option<SkbOffsets>,
    /// `struct sock.sk_ack_backlog` and `sk_max_ack_backlog`: a listener's accept queue.
    pub ack_backlog: Option<(u32, u32)>,
    /// Not BTF: does `skb:kfree_skb` pass a drop reason (its format, Linux 5.17+)?
    pub drop_reasons: bool,
    /// Not BTF: `[start, end)` of `tcp_rcv_state_process` from kallsyms.
    pub rcv_state_process: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub head: u32,
    pub network_header: u32,
    pub transport_header: u32,
    pub sk: u32,
    pub refdst: u32,
    /// `struct dst_entry.dev`, then `struct net_device.nd_net` (a `possible_net_t`
    /// whose only member is the `struct net *`).
    pub dst_dev: u32,
    pub dev_nd_net: u32,
}

/// Read the running kernel's BTF once for the whole load: the offsets from its raw
/// bytes, and what loading needs of it, the ids of `targets`. The bytes and our index
/// are gone when this returns; where our reader fails, aya parses the bytes in full
/// (megabytes, held until the programs are loaded).
pub fn read_kernel_btf(targets: &[Target]) -> (KernelOffsets, Option<AttachBtf>) {
    let data = match std::fs::read(VMLINUX_BTF) {
        Ok(data) => data,
        Err(e) => {
            warn!("no kernel BTF ({VMLINUX_BTF}: {e})");
            return (KernelOffsets::UNKNOWN, None);
        }
    };
    match Btf::parse(&data) {
        Ok(btf) => {
            let ids = targets
                .iter()
                .filter_map(|t| Some((t.clone(), btf.id_of(t)?)))
                .collect();
            (KernelOffsets::resolve(&btf), Some(AttachBtf::Ids(ids)))
        }
        Err(e) => {
            warn!("kernel BTF unreadable ({e:#})");
            let parsed = aya::Btf::parse(&data, aya::Endianness::default())
                .map_err(|e| warn!("the loader cannot use the kernel BTF either: {e}"))
                .ok();
            (KernelOffsets::UNKNOWN, parsed.map(AttachBtf::Parsed))
        }
    }
}

impl KernelOffsets {
    /// No BTF: the programs skip whatever needs an offset.
    pub const UNKNOWN: KernelOffsets = KernelOffsets {
        sk_err: None,
        srtt: None,
        skb_segs: None,
        skb_flags: None,
        sock: None,
        sk_protocol: None,
        inet_sport: None,
        netns: None,
        total_retrans: None,
        bytes: None,
        data_segs_out: None,
        skb: None,
        ack_backlog: None,
        drop_reasons: false,
        rcv_state_process: None,
    };

    pub fn resolve(btf: &Btf) -> KernelOffsets {
        let in_skb_cb = |member: &str| -> Option<u32> {
            Some(
                btf.member_offset("sk_buff", "cb").ok()?
                    + btf.member_offset("tcp_skb_cb", member).ok()?,
            )
        };
        KernelOffsets {
            sk_err: btf.member_offset("sock", "sk_err").ok(),
            srtt: btf.member_offset("tcp_sock", "srtt_us").ok(),
            skb_segs: in_skb_cb("tcp_gso_segs"),
            skb_flags: in_skb_cb("tcp_flags"),
            sock: sock_layout(btf),
            sk_protocol: btf.member_offset("sock", "sk_protocol").ok(),
            inet_sport: btf.member_offset("inet_sock", "inet_sport").ok(),
            netns: netns_offsets(btf),
            total_retrans: btf.member_offset("tcp_sock", "total_retrans").ok(),
            bytes: btf
                .member_offset("tcp_sock", "bytes_acked")
                .ok()
                .zip(btf.member_offset("tcp_sock", "bytes_received").ok()),
            data_segs_out: btf.member_offset("tcp_sock", "data_segs_out").ok(),
            skb: skb_offsets(btf),
            ack_backlog: btf
                .member_offset("sock", "sk_ack_backlog")
                .ok()
                .zip(btf.member_offset("sock", "sk_max_ack_backlog").ok()),
            drop_reasons: false,
            rcv_state_process: None,
        }
    }

    pub fn apply(&self, config: &mut Config) {
        let or_unknown = |o: Option<u32>| o.unwrap_or(OFFSET_UNKNOWN);
        config.sk_err_offset = or_unknown(self.sk_err);
        config.srtt_offset = or_unknown(self.srtt);
        config.skb_segs_offset = or_unknown(self.skb_segs);
        config.skb_flags_offset = or_unknown(self.skb_flags);
        config.sock = self.sock.unwrap_or(TpLayout::ABSENT);
        config.sk_protocol_offset = or_unknown(self.sk_protocol);
        config.inet_sport_offset = or_unknown(self.inet_sport);
        config.skc_net_offset = or_unknown(self.netns.map(|n| n.0));
        config.net_inum_offset = or_unknown(self.netns.map(|n| n.1));
        config.total_retrans_offset = or_unknown(self.total_retrans);
        config.bytes_acked_offset = or_unknown(self.bytes.map(|b| b.0));
        config.bytes_received_offset = or_unknown(self.bytes.map(|b| b.1));
        config.data_segs_out_offset = or_unknown(self.data_segs_out);
        config.skb_head_offset = or_unknown(self.skb.map(|s| s.head));
        config.skb_network_header_offset = or_unknown(self.skb.map(|s| s.network_header));
        config.skb_transport_header_offset = or_unknown(self.skb.map(|s| s.transport_header));
        config.skb_sk_offset = or_unknown(self.skb.map(|s| s.sk));
        config.skb_refdst_offset = or_unknown(self.skb.map(|s| s.refdst));
        config.dst_dev_offset = or_unknown(self.skb.map(|s| s.dst_dev));
        config.dev_nd_net_offset = or_unknown(self.skb.map(|s| s.dev_nd_net));
        config.sk_ack_backlog_offset = or_unknown(self.ack_backlog.map(|b| b.0));
        config.sk_max_ack_backlog_offset = or_unknown(self.ack_backlog.map(|b| b.1));
        let (start, end) = self.rcv_state_process.unwrap_or((0, 0));
        config.rcv_state_process_start = start;
        config.rcv_state_process_end = end;
    }

    /// Can a program read what `reads` names?
    pub fn provide(&self, reads: Reads) -> bool {
        match reads {
            Reads::Nothing => true,
            Reads::SockAndSkbFlags => self.sock.is_some() && self.skb_flags.is_some(),
            Reads::Sock => {
                self.sock.is_some() && self.sk_protocol.is_some() && self.inet_sport.is_some()
            }
            Reads::SockAndError => self.provide(Reads::Sock) && self.sk_err.is_some(),
            Reads::Bytes => self.bytes.is_some(),
            Reads::Drops => self.drop_reasons && self.skb.is_some() && self.provide(Reads::Sock),
            Reads::ListenQueue => {
                self.skb.is_some()
                    && self.sock.is_some()
                    && self.netns.is_some()
                    && self.ack_backlog.is_some()
                    && self.rcv_state_process.is_some()
            }
        }
    }

    pub fn log(&self) {
        match self.sk_err {
            Some(off) => info!("BTF: sock.sk_err at {off}: failed handshakes carry their errno"),
            None => warn!("sock.sk_err unknown: failed handshakes are classified only as refused/reset (RST seen) or other"),
        }
        match self.srtt {
            Some(off) => info!("BTF: tcp_sock.srtt_us at {off}: server handshakes include the SYN-ACK round trip"),
            None => warn!("tcp_sock.srtt_us unknown: server handshake latency covers only the final-ACK processing"),
        }
        match self.netns {
            Some(_) => info!("BTF: sock_common.skc_net and net.ns.inum: sockets carry their network namespace"),
            None => warn!("network namespace offsets unknown: events carry netns 0, --netns cannot filter, and listeners are told apart by address and port only"),
        }
        match self.bytes {
            Some(_) => info!("BTF: tcp_sock.bytes_acked and bytes_received: connections report and count their bytes"),
            None => warn!("tcp_sock.bytes_acked/bytes_received unknown: close events and the connection byte counters carry 0 bytes"),
        }
        match self.data_segs_out {
            Some(off) => info!("BTF: tcp_sock.data_segs_out at {off}: connections count the data segments they send"),
            None => warn!("tcp_sock.data_segs_out unknown: close events and the sent-segment counters carry 0 segments"),
        }
        match self.skb_segs {
            Some(off) => info!("BTF: tcp_gso_segs at sk_buff+{off}: retransmits count segments like TcpRetransSegs"),
            None => warn!("tcp_skb_cb unknown: retransmits count skbs, which under GSO is fewer than TcpRetransSegs"),
        }
    }
}

fn skb_offsets(btf: &Btf) -> Option<SkbOffsets> {
    let skb = |member: &str| btf.member_offset("sk_buff", member).ok();
    Some(SkbOffsets {
        head: skb("head")?,
        network_header: skb("network_header")?,
        transport_header: skb("transport_header")?,
        sk: skb("sk")?,
        refdst: skb("_skb_refdst")?,
        dst_dev: btf.member_offset("dst_entry", "dev").ok()?,
        dev_nd_net: btf.member_offset("net_device", "nd_net").ok()?,
    })
}

/// (`sock_common.skc_net`, `net.ns` + `ns_common.inum`): the first is a `possible_net_t`
/// whose only member is the `struct net *`.
fn netns_offsets(btf: &Btf) -> Option<(u32, u32)> {
    let skc_net = btf.member_offset("sock_common", "skc_net").ok()?;
    let inum =
        btf.member_offset("net", "ns").ok()? + btf.member_offset("ns_common", "inum").ok()?;
    Some((skc_net, inum))
}

/// `struct sock_common` as a record: the same slots the tracepoint layouts use, so the
/// programs read a socket with the code that reads a tracepoint record.
fn sock_layout(btf: &Btf) -> Option<TpLayout> {
    let off = |member: &str| -> Option<u16> {
        u16::try_from(btf.member_offset("sock_common", member).ok()?).ok()
    };
    let mut l = TpLayout::ABSENT;
    l.family = off("skc_family")?;
    l.oldstate = off("skc_state")?;
    l.sport = off("skc_num")?;
    l.dport = off("skc_dport")?;
    l.saddr = off("skc_rcv_saddr")?;
    l.daddr = off("skc_daddr")?;
    l.saddr_v6 = off("skc_v6_rcv_saddr")?;
    l.daddr_v6 = off("skc_v6_daddr")?;
    let end = [
        l.family + 2,
        l.sport + 2,
        l.dport + 2,
        l.saddr + 4,
        l.daddr + 4,
    ]
    .into_iter()
    .chain([l.saddr_v6 + 16, l.daddr_v6 + 16, l.oldstate + 1])
    .max()?;
    if end as usize > tcptrace_common::config::RECORD_MAX {
        return None;
    }
    l.len = end;
    Some(l)
}
