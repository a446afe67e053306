//! Reading tracepoint records through the layout the agent parsed from tracefs.
//!
//! Each event copies the part of its record tcptrace needs into its frame's buffer with
//! a single helper call; fields are then plain loads at the offsets from the layout.
use aya_ebpf::{helpers::bpf_probe_read_kernel_buf, programs::TracePointContext, EbpfContext};
use tcptrace_common::{config::RECORD_MAX, TpLayout, AF_INET, AF_INET6, FIELD_ABSENT, IPPROTO_TCP};

/// Argument `n` of a raw or BTF-typed tracepoint, read where the code reads it: an
/// argument a kernel may not pass must be read only in the branch that knows it does
/// (the verifier refuses a BTF-typed program that reads past the tracepoint's
/// arguments, even in a branch it would skip), and a plain load may be hoisted out of it.
#[inline(always)]
pub fn arg<C: EbpfContext>(ctx: &C, n: usize) -> u64 {
    // SAFETY: raw and BTF-typed tracepoint contexts are arrays of u64 arguments.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(n)) }
}

/// A copy of the first `layout.len` bytes of this event's record.
pub struct Record<'a> {
    buf: &'a [u8; RECORD_MAX],
}

impl<'a> Record<'a> {
    #[inline(always)]
    pub fn load(
        buf: &'a mut [u8; RECORD_MAX],
        ctx: &TracePointContext,
        layout: &TpLayout,
    ) -> Option<Record<'a>> {
        Record::copy(buf, ctx.as_ptr() as *const u8, layout)
    }

    /// `load` for the socket tracepoints that fire for every protocol (state changes,
    /// error reports): `None` unless the record's socket is TCP.
    #[inline(always)]
    pub fn load_tcp(
        buf: &'a mut [u8; RECORD_MAX],
        ctx: &TracePointContext,
        layout: &TpLayout,
    ) -> Option<Record<'a>> {
        let rec = Record::load(buf, ctx, layout)?;
        let protocol: u16 = rec.get(layout.protocol)?;
        (protocol == IPPROTO_TCP).then_some(rec)
    }

    /// Copy `layout.len` bytes from `src` (a tracepoint record, or a kernel struct whose
    /// layout came from BTF) into `buf`.
    #[inline(always)]
    pub fn copy(
        buf: &'a mut [u8; RECORD_MAX],
        src: *const u8,
        layout: &TpLayout,
    ) -> Option<Record<'a>> {
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
    pub fn get<T: Field>(&self, offset: u16) -> Option<T> {
        let off = offset as usize;
        if offset == FIELD_ABSENT || off + core::mem::size_of::<T>() > RECORD_MAX {
            return None;
        }
        // SAFETY: bounds checked against the buffer just above.
        Some(unsafe { T::load(self.buf.as_ptr(), off) })
    }
}

/// A record field, loaded with the widest access its offset allows. BPF has no
/// unaligned loads, so a read the compiler cannot prove aligned becomes one load per
/// byte plus shifts (the state program had 840 byte loads and stores). Record fields
/// are naturally aligned in every kernel seen; the byte path stays for any that is not.
pub trait Field: Copy {
    /// # Safety
    /// `base` is 8-byte aligned (a map value) and `off + size_of::<Self>()` in bounds.
    unsafe fn load(base: *const u8, off: usize) -> Self;
}

macro_rules! integer_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            #[inline(always)]
            unsafe fn load(base: *const u8, off: usize) -> $t {
                // The offset, not the pointer, is tested: the verifier refuses
                // arithmetic like `%` on pointers, and the base is 8-byte aligned.
                if off % core::mem::size_of::<$t>() == 0 {
                    (base.add(off) as *const $t).read()
                } else {
                    core::ptr::read_unaligned(base.add(off) as *const $t)
                }
            }
        }
    )*};
}
integer_field!(u16, u32, u64, i32, i64);

impl Field for [u8; 16] {
    #[inline(always)]
    unsafe fn load(base: *const u8, off: usize) -> [u8; 16] {
        bytes16(u64::load(base, off), u64::load(base, off + 8))
    }
}

/// Sixteen bytes (an address, a name) from two words in memory order, built without a
/// byte loop (a `[0u8; 16]` becomes a call to a byte-at-a-time memset on this target).
#[inline(always)]
pub fn bytes16(first: u64, second: u64) -> [u8; 16] {
    // SAFETY: two u64 are sixteen bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([first, second]) }
}

/// The endpoint fields every TCP tracepoint carries. The addresses come right after
/// the u64 so that they are 8-byte aligned: copies of them are two loads, not sixteen.
#[derive(Clone, Copy)]
pub struct Endpoints {
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
}

/// Read skaddr, family, ports and addresses. `None` for anything but IPv4/IPv6.
#[inline(always)]
pub fn endpoints(rec: &Record, layout: &TpLayout) -> Option<Endpoints> {
    let family: u16 = match rec.get(layout.family) {
        Some(f) => f,
        None => family_from_v6(rec, layout)?,
    };
    let (saddr, daddr) = if family == AF_INET {
        // IPv4 in the first four bytes (memory order), the rest zero.
        let s: u32 = rec.get(layout.saddr)?;
        let d: u32 = rec.get(layout.daddr)?;
        (bytes16(s as u64, 0), bytes16(d as u64, 0))
    } else if family == AF_INET6 {
        (rec.get(layout.saddr_v6)?, rec.get(layout.daddr_v6)?)
    } else {
        return None;
    };
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
