//! Reading tracepoint records through the layout the agent parsed from tracefs.
use aya_ebpf::programs::TracePointContext;
use tcptrace_common::{TpLayout, AF_INET, AF_INET6, FIELD_ABSENT};

/// Read a field at `offset`, or `None` when this kernel's record lacks it.
#[inline(always)]
pub fn read<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: the offset comes from this kernel's format file for this very tracepoint;
    // bpf_probe_read_kernel turns a bad read into an error instead of a fault.
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

/// The endpoint fields every TCP tracepoint carries.
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
pub fn endpoints(ctx: &TracePointContext, layout: &TpLayout) -> Option<Endpoints> {
    let family: u16 = match read(ctx, layout.family) {
        Some(f) => f,
        None => family_from_v6(ctx, layout)?,
    };
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = read(ctx, layout.saddr)?;
        let d: [u8; 4] = read(ctx, layout.daddr)?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        saddr = read(ctx, layout.saddr_v6)?;
        daddr = read(ctx, layout.daddr_v6)?;
    } else {
        return None;
    }
    Some(Endpoints {
        skaddr: read(ctx, layout.skaddr).unwrap_or(0),
        family,
        sport: read(ctx, layout.sport).unwrap_or(0),
        dport: read(ctx, layout.dport).unwrap_or(0),
        saddr,
        daddr,
    })
}

/// Kernels whose event lacks `family` store IPv4 endpoints v4-mapped in `saddr_v6`.
#[inline(always)]
fn family_from_v6(ctx: &TracePointContext, layout: &TpLayout) -> Option<u16> {
    let v6: [u8; 16] = read(ctx, layout.saddr_v6)?;
    let mapped = v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff;
    Some(if mapped { AF_INET } else { AF_INET6 })
}
