//! A packet's own IP and TCP headers, read from its `sk_buff` (offsets from BTF): what a
//! dropped packet or a listener's SYN says when no socket does.
use tcptrace_common::{config::OFFSET_UNKNOWN, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::{conf, sock::read_at, tracepoint::Endpoints};

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
/// unknown.
#[inline(always)]
pub fn tcp(skb: u64) -> Option<Packet> {
    let head: u64 = read_at(skb, conf!(skb_head_offset))?;
    let network: u16 = read_at(skb, conf!(skb_network_header_offset))?;
    if head == 0 || network == HEADER_UNSET {
        return None;
    }
    let ip = head + network as u64;
    let version = read_at::<u8>(ip, 0)? >> 4;
    let (family, protocol, header_len, saddr, daddr) = if version == 4 {
        let ihl = (read_at::<u8>(ip, 0)? & 0x0f) as u64 * 4;
        let s: u32 = read_at(ip, 12)?;
        let d: u32 = read_at(ip, 16)?;
        let (s, d) = (
            crate::tracepoint::bytes16(s as u64, 0),
            crate::tracepoint::bytes16(d as u64, 0),
        );
        (
            AF_INET,
            read_at::<u8>(ip, 9)?,
            ihl.max(IPV4_HEADER_MIN),
            s,
            d,
        )
    } else if version == 6 {
        // Only a TCP header right after the fixed header: extension headers are rare
        // on TCP and would take a loop the verifier has to bound.
        let s: [u8; 16] = read_at(ip, 8)?;
        let d: [u8; 16] = read_at(ip, 24)?;
        (AF_INET6, read_at::<u8>(ip, 6)?, IPV6_HEADER, s, d)
    } else {
        return None;
    };
    if protocol as u16 != IPPROTO_TCP {
        return None;
    }
    let tcp = transport_header(skb, head).unwrap_or(ip + header_len);
    let sport: u16 = read_at(tcp, 0)?;
    let dport: u16 = read_at(tcp, 2)?;
    Some(Packet {
        ep: Endpoints {
            skaddr: 0,
            saddr,
            daddr,
            family,
            sport: u16::from_be(sport),
            dport: u16::from_be(dport),
        },
        flags: read_at(tcp, 13)?,
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
