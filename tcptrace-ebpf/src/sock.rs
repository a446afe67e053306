//! Reading kernel structs directly at offsets the agent resolved from BTF: single fields
//! (`read_at`), and a `struct sock`'s endpoints, whose `sock_common` offsets come as a
//! record layout (`Config::sock`) so one helper call copies everything an event needs.
use aya_ebpf::{helpers::bpf_probe_read_kernel, maps::PerCpuArray};
use tcptrace_common::config::{OFFSET_UNKNOWN, RECORD_MAX};

use crate::{
    conf,
    maps::FN_RECORD,
    tracepoint::{endpoints, Endpoints, Record},
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

/// Family, ports and addresses of a socket. `dport` comes back in host order.
#[inline(always)]
pub fn sock_endpoints(sk: u64) -> Option<Endpoints> {
    sock_endpoints_in(&FN_RECORD, sk)
}

/// `sock_endpoints`, copying through the given per-CPU buffer.
#[inline(always)]
pub fn sock_endpoints_in(buf: &PerCpuArray<[u8; RECORD_MAX]>, sk: u64) -> Option<Endpoints> {
    let layout = &conf!(sock);
    let rec = Record::copy(buf, sk as *const u8, layout)?;
    let mut ep = endpoints(&rec, layout)?;
    ep.skaddr = sk;
    ep.dport = u16::from_be(ep.dport);
    // Like the classic tracepoint, report inet_sport: a closing socket has released its
    // port (skc_num = 0) before its state changes, but still has inet_sport.
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
