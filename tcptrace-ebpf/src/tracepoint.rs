//! Reading tracepoint records through the layout the agent parsed from tracefs.
//!
//! Each event copies the part of its record tcptrace needs into a per-CPU buffer with a
//! single helper call; fields are then plain loads at the offsets from the layout.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf, maps::PerCpuArray, programs::TracePointContext, EbpfContext,
};
use tcptrace_common::{config::RECORD_MAX, TpLayout, AF_INET, AF_INET6, FIELD_ABSENT};

use crate::maps::RECORD;

/// A copy of the first `layout.len` bytes of this event's record.
pub struct Record {
    buf: &'static [u8; RECORD_MAX],
}

impl Record {
    #[inline(always)]
    pub fn load(ctx: &TracePointContext, layout: &TpLayout) -> Option<Record> {
        Record::copy(&RECORD, ctx.as_ptr() as *const u8, layout)
    }

    /// Copy `layout.len` bytes from `src` (a tracepoint record, or a kernel struct whose
    /// layout came from BTF) into this CPU's slot of `buf`.
    #[inline(always)]
    pub fn copy(
        buf: &PerCpuArray<[u8; RECORD_MAX]>,
        src: *const u8,
        layout: &TpLayout,
    ) -> Option<Record> {
        let buf = unsafe { &mut *buf.get_ptr_mut(0)? };
        let len = layout.len as usize;
        if len == 0 || len > RECORD_MAX {
            return None;
        }
        // SAFETY: the length comes from this kernel's format file or BTF;
        // bpf_probe_read_kernel turns a bad read into an error instead of a fault.
        unsafe { bpf_probe_read_kernel_buf(src, &mut buf[..len]).ok()? };
        Some(Record { buf })
    }

    /// The field at `offset`, or `None` when this kernel's record lacks it.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u16) -> Option<T> {
        let off = offset as usize;
        if offset == FIELD_ABSENT || off + core::mem::size_of::<T>() > RECORD_MAX {
            return None;
        }
        // SAFETY: bounds checked against the buffer just above; T is a plain integer
        // or byte array.
        Some(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().add(off) as *const T) })
    }
}

/// The endpoint fields every TCP tracepoint carries.
#[derive(Clone, Copy)]
pub struct Endpoints {
    pub skaddr: u64,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Read skaddr, family, ports and addresses. `None` for anything but IPv4/IPv6.
#[inline(always)]
pub fn endpoints(rec: &Record, layout: &TpLayout) -> Option<Endpoints> {
    let family: u16 = match rec.get(layout.family) {
        Some(f) => f,
        None => family_from_v6(rec, layout)?,
    };
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = rec.get(layout.saddr)?;
        let d: [u8; 4] = rec.get(layout.daddr)?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = rec.get(layout.saddr_v6)?;
        daddr = rec.get(layout.daddr_v6)?;
    } else {
        return None;
    }
    Some(Endpoints {
        skaddr: rec.get(layout.skaddr).unwrap_or(0),
        family,
        sport: rec.get(layout.sport).unwrap_or(0),
        dport: rec.get(layout.dport).unwrap_or(0),
        saddr,
        daddr,
    })
}

/// Kernels whose event lacks `family` store IPv4 endpoints v4-mapped in `saddr_v6`.
#[inline(always)]
fn family_from_v6(rec: &Record, layout: &TpLayout) -> Option<u16> {
    let v6: [u8; 16] = rec.get(layout.saddr_v6)?;
    Some(if is_v4_mapped(&v6) { AF_INET } else { AF_INET6 })
}

/// `::ffff:a.b.c.d`, an IPv4 address in IPv6 form.
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}
