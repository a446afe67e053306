//! `tcp:tcp_retransmit_skb`: a data segment, or the client's SYN, was retransmitted.
//! One event per retransmitted skb; under GSO one skb carries several segments, so the
//! event also carries the skb's segment count (the unit of the kernel's TcpRetransSegs).
//!
//! Entry points as for the state tracepoint: BTF-typed (socket storage), raw, classic.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};
use tcptrace_common::{
    counters, event::RETRANS_SEEN_UNKNOWN, stats::Guarded, EventKind, RetransmitKind, TcpState,
    AF_INET6,
};

use crate::{
    btf_programs, conf,
    emit::{add_key, submit, tracked_event, wanted},
    frame::{Frame, Scratch},
    maps::RETRANSMITS,
    raw_programs, sock,
    sockets::{HashStore, SkStore, Store},
    tracepoint::{arg, endpoints, Endpoints, Record},
};

btf_programs!(
    Guarded::RetransmitSkb,
    "tcp_retransmit_skb",
    tcp_retransmit_skb_btf,
    tcp_retransmit_skb_btf_backup,
    2,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        from_socket(&ctx, &SkStore { sk }, sk);
    }
);

raw_programs!(
    Guarded::RetransmitSkb,
    "tcp_retransmit_skb",
    tcp_retransmit_skb_raw,
    tcp_retransmit_skb_raw_backup,
    2,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        from_socket(&ctx, &HashStore { skaddr: sk }, sk);
    }
);

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    from_record(&ctx);
    0
}

/// (sk, skb) and, since Linux 6.17, `err`: the arguments of raw and BTF-typed
/// tracepoints alike.
#[inline(always)]
fn from_socket<C: EbpfContext>(ctx: &C, store: &impl Store, sk: u64) -> Option<()> {
    let skb = arg(ctx, 1);
    // Read only where the kernel passes it: a BTF-typed program may not even name an
    // argument the tracepoint lacks (`retransmit_err_arg` is a load-time constant, so
    // the verifier drops the branch).
    let err = if conf!(retransmit_err_arg) != 0 {
        arg(ctx, 2) as i32
    } else {
        0
    };
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = sock::full_endpoints(&mut frame.sock, sk)?;
    let state = sock::state(sk)?;
    retransmitted(store, frame, &ep, state, skb, err);
    Some(())
}

#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(retransmit_skb);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let rec = Record::load(&mut frame.record, ctx, layout)?;
    let ep = endpoints(&rec, layout)?;
    let state: i32 = rec.get(layout.oldstate)?;
    // Kernels up to 6.16 have no `err`: there the tracepoint fires only for retransmits
    // that were sent.
    let err: i32 = rec.get(layout.err).unwrap_or(0);
    let skb = rec.get(layout.skbaddr).unwrap_or(0);
    retransmitted(
        &HashStore { skaddr: ep.skaddr },
        frame,
        &ep,
        state as u8,
        skb,
        err,
    );
    Some(())
}

#[inline(always)]
fn retransmitted(
    store: &impl Store,
    frame: &mut Frame,
    ep: &Endpoints,
    state: u8,
    skb: u64,
    err: i32,
) {
    let kind = if state == TcpState::SynSent as u8 {
        RetransmitKind::Syn
    } else {
        RetransmitKind::Data
    };
    let segs = segments(skb);
    let counted = counted_segments(store, ep.skaddr, err, segs);
    if counted > 0 {
        let key = counters::retransmit_key(kind as u8, state, ep.family == AF_INET6);
        add_key(&RETRANSMITS, key, counted);
    }
    if !wanted(EventKind::Retransmit) {
        return;
    }
    let event = tracked_event(&mut frame.event, ep, store);
    event.kind = EventKind::Retransmit as u8;
    event.detail = kind as u8;
    event.old_state = state;
    event.err = err;
    event.segs = segs as u32;
    submit(event);
}

/// What the kernel just added to TcpRetransSegs for this socket. It adds the skb's
/// segments to it and to the socket's own `total_retrans` at the same moment, after the
/// early exits of __tcp_retransmit_skb and before handing the skb to the IP layer; since
/// Linux 6.17 the tracepoint also fires for those early exits, with their error. So the
/// socket's own counter is the exact answer: what it grew by since the last retransmit
/// of this socket tcptrace counted (which also makes up for a run the kernel skipped).
/// The first retransmit of a socket whose count was never read falls back to the error:
/// an early exit (-EBUSY, -EAGAIN, -ENOMEM, -EHOSTUNREACH, -EINVAL) was not counted.
#[inline(always)]
fn counted_segments(store: &impl Store, sk: u64, err: i32, segs: u16) -> u64 {
    let by_error = if sent_or_counted(err) {
        segs.max(1) as u64
    } else {
        0
    };
    let (Some(total), Some(info)) = (sock::total_retrans(sk), store.entry()) else {
        return by_error;
    };
    let seen = info.retrans_seen;
    info.retrans_seen = total;
    if seen == RETRANS_SEEN_UNKNOWN {
        by_error
    } else {
        total.wrapping_sub(seen) as u64
    }
}

/// Did the kernel count this retransmit, judging by its error alone? Failures after
/// the count (-ENOBUFS, -EPERM from a netfilter drop) were counted; the early exits
/// were not. Ambiguous for -EHOSTUNREACH and -ENOMEM, which the IP layer can also
/// return after the count: `counted_segments` prefers the socket's own counter.
#[inline(always)]
fn sent_or_counted(err: i32) -> bool {
    const EAGAIN: i32 = 11;
    const ENOMEM: i32 = 12;
    const EBUSY: i32 = 16;
    const EINVAL: i32 = 22;
    const EHOSTUNREACH: i32 = 113;
    !matches!(-err, EAGAIN | ENOMEM | EBUSY | EINVAL | EHOSTUNREACH)
}

/// `tcp_skb_pcount(skb)`: the segments the skb carries.
#[inline(always)]
fn segments(skbaddr: u64) -> u16 {
    sock::read_at::<u16>(skbaddr, conf!(skb_segs_offset)).unwrap_or(0)
}
