//! A packet's own IP and TCP headers, read from its `sk_buff` (offsets from BTF): what a
//! dropped packet or a listener's SYN says when no socket does.
use tcptrace_common::{config::OFFSET_UNKNOWN, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::{
    conf,
    sock::read_at,
    tracepoint::{bytes16, Endpoints},
};

/// `skb->network_header`/`transport_header` when the kernel has not set it.
const HEADER_UNSET: u16 = 0xffff;
const IPV4_HEADER_MIN: u64 = 20;
const IPV6_HEADER: u64 = 40;

/// A TCP packet's endpoints (its source first) and flags.
pub struct Packet {
    pub ep: Endpoints,
    pub flags: u8,
}

/// The TCP packet `skb` carries; `None` for anything else, or when the offsets are
/// unknown. Each header is copied with one read: a read per field made this the most
/// expensive part of the SYN and drop programs.
#[inline(always)]
pub fn tcp(skb: u64) -> Option<Packet> {
    let head: u64 = read_at(skb, conf!(skb_head_offset))?;
    let network: u16 = read_at(skb, conf!(skb_network_header_offset))?;
    if head == 0 || network == HEADER_UNSET {
        return None;
    }
    let ip = head + network as u64;
    // An IPv6 header, or an IPv4 header and what follows it: a TCP packet has at least
    // 40 bytes from its IP header on.
    let h: [u64; 5] = read_at(ip, 0)?;
    let b = |i: usize| (h[i / 8] >> ((i % 8) * 8)) as u8;
    let (family, protocol, header_len, saddr, daddr) = match b(0) >> 4 {
        4 => {
            let ihl = (b(0) & 0x0f) as u64 * 4;
            // saddr at 12..16, daddr at 16..20: the high half of word 1, the low of word 2.
            let saddr = bytes16(h[1] >> 32, 0);
            let daddr = bytes16(h[2] & 0xffff_ffff, 0);
            (AF_INET, b(9), ihl.max(IPV4_HEADER_MIN), saddr, daddr)
        }
        // Only a TCP header right after the fixed header: extension headers are rare
        // on TCP and would take a loop the verifier has to bound.
        6 => (
            AF_INET6,
            b(6),
            IPV6_HEADER,
            bytes16(h[1], h[2]),
            bytes16(h[3], h[4]),
        ),
        _ => return None,
    };
    if protocol as u16 != IPPROTO_TCP {
        return None;
    }
    let tcp = transport_header(skb, head).unwrap_or(ip + header_len);
    // Ports at 0..4, flags at 13.
    let t: [u64; 2] = read_at(tcp, 0)?;
    Some(Packet {
        ep: Endpoints {
            skaddr: 0,
            saddr,
            daddr,
            family,
            sport: u16::from_be(t[0] as u16),
            dport: u16::from_be((t[0] >> 16) as u16),
        },
        flags: (t[1] >> 40) as u8,
    })
}

/// Where the TCP header starts, where the kernel set it.
#[inline(always)]
fn transport_header(skb: u64, head: u64) -> Option<u64> {
    let offset: u16 = read_at(skb, conf!(skb_transport_header_offset))?;
    (offset != HEADER_UNSET).then_some(head + offset as u64)
}

/// The socket the packet belongs to (`skb->sk`): set on packets a socket sends, and on
/// received ones once a socket took them; 0 when none.
#[inline(always)]
pub fn socket(skb: u64) -> u64 {
    read_at(skb, conf!(skb_sk_offset)).unwrap_or(0)
}

/// The network namespace of a packet through its route (`skb_dst(skb)->dev`): TCP
/// clears `skb->dev` before handing a packet to a socket, the route stays. 0 unknown.
#[inline(always)]
pub fn netns(skb: u64) -> u32 {
    if conf!(dst_dev_offset) == OFFSET_UNKNOWN {
        return 0;
    }
    // The low bit of `_skb_refdst` says whether the skb holds a reference.
    let dst = read_at::<u64>(skb, conf!(skb_refdst_offset)).unwrap_or(0) & !1;
    read_at::<u64>(dst, conf!(dst_dev_offset))
        .and_then(|dev| read_at::<u64>(dev, conf!(dev_nd_net_offset)))
        .and_then(|net| read_at::<u32>(net, conf!(net_inum_offset)))
        .unwrap_or(0)
}
