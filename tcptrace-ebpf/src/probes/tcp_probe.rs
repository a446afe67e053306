//! `tcp:tcp_probe`: a segment arrived on an established socket (the fast path,
//! `tcp_rcv_established`, before it processes the segment). Adds what the socket's
//! byte and sent-segment counts grew by since the last segment, so what open
//! connections carry reaches the counters without waiting for their close. Counts by delta: a run the kernel
//! skips only delays bytes to the next segment or the close, so no backup is needed.
//!
//! BTF-typed (socket storage; a socket seen first here is tracked from now on), raw and
//! classic (the fallback socket map; only sockets it already tracks).
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tcptrace_common::{event::FLAG_OWNER_UNKNOWN, TcpState, FIELD_ABSENT};

use crate::{
    conf, lifetime,
    sockets::{self, HashStore, SkStore, Store},
};

#[btf_tracepoint(function = "tcp_probe")]
pub fn tcp_probe_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    segment_arrived(&ctx, &SkStore { sk }, sk, true);
    0
}

#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    segment_arrived(&ctx, &HashStore { skaddr: sk }, sk, false);
    0
}

#[tracepoint]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let offset = conf!(tcp_probe.skaddr);
    if offset == FIELD_ABSENT {
        return 0;
    }
    // One field, read in place: the whole record is not worth copying on every segment.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(offset as usize) } {
        segment_arrived(&ctx, &HashStore { skaddr: sk }, sk, false);
    }
    0
}

#[inline(always)]
fn segment_arrived<C: EbpfContext>(ctx: &C, store: &impl Store, sk: u64, may_track: bool) {
    match store.entry() {
        Some(info) => {
            lifetime::add_bytes(info, sk);
            lifetime::add_segs_out(info, sk);
        }
        // Socket storage has no capacity: a socket that predates tcptrace is tracked
        // from here on, its earlier bytes and segments not counted. The fallback map is
        // left to the state program, which counts what it cannot hold once per socket.
        None if may_track => {
            store.start(ctx, |info| {
                let established = TcpState::Established as u8;
                sockets::set_new(info, &sockets::unknown_owner(), established, 0, 0);
                info.flags = FLAG_OWNER_UNKNOWN as u32;
                lifetime::counted_from_here(info, sk);
            });
        }
        None => {}
    }
}
