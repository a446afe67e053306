//! Reading a `struct sock` directly, for the function hooks: the agent resolves the
//! `sock_common` field offsets from BTF and hands them over as a record layout
//! (`Config::sock`), so one helper call copies everything an event needs.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcptrace_common::config::OFFSET_UNKNOWN;

use crate::{
    conf,
    maps::FN_RECORD,
    tracepoint::{endpoints, Endpoints, Record},
};

/// The socket's TCP state (`skc_state`), with a single one-byte read.
#[inline(always)]
pub fn state(sk: u64) -> Option<u8> {
    let offset = conf!(sock.oldstate);
    if offset == tcptrace_common::FIELD_ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((sk + offset as u64) as *const u8) }.ok()
}

/// Family, ports and addresses of a socket. `dport` comes back in host order.
#[inline(always)]
pub fn sock_endpoints(sk: u64) -> Option<Endpoints> {
    let layout = conf!(sock);
    let rec = Record::copy(&FN_RECORD, sk as *const u8, &layout)?;
    let mut ep = endpoints(&rec, &layout)?;
    ep.skaddr = sk;
    ep.dport = u16::from_be(ep.dport);
    Some(ep)
}

/// One byte at `base + offset`, where the offset came from BTF.
#[inline(always)]
pub fn read_u8_at(base: u64, offset: u32) -> Option<u8> {
    if offset == OFFSET_UNKNOWN || base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u8) }.ok()
}
