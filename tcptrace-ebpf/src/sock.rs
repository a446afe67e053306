//! Reading kernel structs directly at offsets the agent resolved from BTF: single fields
//! (`read_at`), and a `struct sock`'s endpoints, whose `sock_common` offsets come as a
//! record layout (`Config::sock`) so one helper call copies everything an event needs.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcptrace_common::config::{OFFSET_UNKNOWN, RECORD_MAX};

use crate::{
    conf,
    tracepoint::{endpoints as record_endpoints, Endpoints, Record},
};

/// The `T` at `base + offset`; `None` when the offset is unknown (no BTF), the base is
/// null, or the read faults.
#[inline(always)]
pub fn read_at<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if offset == OFFSET_UNKNOWN || base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The socket's TCP state (`skc_state`), with a single one-byte read.
#[inline(always)]
pub fn state(sk: u64) -> Option<u8> {
    let offset = conf!(sock.oldstate);
    if offset == tcptrace_common::FIELD_ABSENT {
        return None;
    }
    read_at(sk, offset as u32)
}

/// Family, ports and addresses of a socket (or of a request socket, which starts with
/// the same `sock_common`), copied through `buf`. `dport` comes back in host order.
#[inline(always)]
pub fn endpoints(buf: &mut [u8; RECORD_MAX], sk: u64) -> Option<Endpoints> {
    let layout = &conf!(sock);
    let rec = Record::copy(buf, sk as *const u8, layout)?;
    let mut ep = record_endpoints(&rec, layout)?;
    ep.skaddr = sk;
    ep.dport = u16::from_be(ep.dport);
    Some(ep)
}

/// `endpoints` of a full socket, with the local port as the state tracepoint reports it:
/// `inet_sport`, which a closing socket keeps after releasing its port (`skc_num` = 0).
#[inline(always)]
pub fn full_endpoints(buf: &mut [u8; RECORD_MAX], sk: u64) -> Option<Endpoints> {
    let mut ep = endpoints(buf, sk)?;
    if let Some(sport) = read_at::<u16>(sk, conf!(inet_sport_offset)) {
        ep.sport = u16::from_be(sport);
    }
    Some(ep)
}

/// `sk->sk_protocol` (a `u16` since Linux 5.6; a bitfield before, then unknown).
#[inline(always)]
pub fn protocol(sk: u64) -> Option<u16> {
    read_at(sk, conf!(sk_protocol_offset))
}

/// The inode of the socket's network namespace (`sk->__sk_common.skc_net->ns.inum`), as
/// `/proc/PID/ns/net` names it; 0 without BTF.
#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    read_at::<u64>(sk, conf!(skc_net_offset))
        .and_then(|net| read_at::<u32>(net, conf!(net_inum_offset)))
        .unwrap_or(0)
}

/// The socket's pending error (`sk->sk_err`: ECONNREFUSED, ETIMEDOUT, ...).
#[inline(always)]
pub fn error(sk: u64) -> Option<i32> {
    read_at(sk, conf!(sk_err_offset))
}

/// `tcp_sock.total_retrans`: segments the socket retransmitted, which the kernel adds to
/// TcpRetransSegs at the same time.
#[inline(always)]
pub fn total_retrans(sk: u64) -> Option<u32> {
    read_at(sk, conf!(total_retrans_offset))
}

/// `tcp_sock.bytes_acked` and `bytes_received`: what the connection carried so far,
/// each sequence number the peer acknowledged or this socket received (SYN and FIN
/// included, one each).
#[inline(always)]
pub fn bytes(sk: u64) -> Option<(u64, u64)> {
    Some((
        read_at(sk, conf!(bytes_acked_offset))?,
        read_at(sk, conf!(bytes_received_offset))?,
    ))
}

/// `tcp_sock.data_segs_out`: data segments the socket sent. `__tcp_transmit_skb` adds
/// the segments (`tcp_skb_pcount`) of every skb it transmits with a payload, original or
/// retransmitted; a SYN, a pure ACK or a bare FIN adds nothing.
#[inline(always)]
pub fn data_segs_out(sk: u64) -> Option<u32> {
    read_at(sk, conf!(data_segs_out_offset))
}

/// `tcp_sock.srtt_us / 8`: the smoothed round-trip time in microseconds (0: no sample).
#[inline(always)]
pub fn srtt_us(sk: u64) -> Option<u32> {
    read_at::<u32>(sk, conf!(srtt_offset)).map(|x8| x8 >> 3)
}
