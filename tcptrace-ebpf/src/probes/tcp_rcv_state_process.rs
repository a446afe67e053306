//! `tcp_rcv_state_process` (fentry, or kprobe): every segment a socket receives outside
//! ESTABLISHED. In the handshake states its TCP flags say what the peer answered: a
//! SYN-ACK, a RST (refused), a bare ACK a listener did not expect. Where neither hook
//! attaches, `tcp_receive_reset` derives the RST part from the tracked state.
use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use tcptrace_common::{
    config::{SOURCE_TRACKING, TRACKING_SOCKET_STORAGE},
    counters, EventKind,
};

use crate::{
    conf,
    emit::{add_slot, submit, tracked_event},
    frame::Scratch,
    maps::{source, SEGMENTS},
    sock,
    sockets::{HashStore, SkStore, Store},
};

#[fentry(function = "tcp_rcv_state_process")]
pub fn tcp_rcv_state_process_fentry(ctx: FEntryContext) -> i32 {
    let (sk, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    // Owners are where the state program keeps them.
    if source(SOURCE_TRACKING) == TRACKING_SOCKET_STORAGE {
        received(&SkStore { sk }, sk, skb);
    } else {
        received(&HashStore { skaddr: sk }, sk, skb);
    }
    0
}

/// kprobes cannot reach socket storage: owners only where the fallback map has them.
#[kprobe]
pub fn tcp_rcv_state_process_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        received(&HashStore { skaddr: sk }, sk, skb);
    }
    0
}

#[inline(always)]
fn received(store: &impl Store, sk: u64, skb: u64) -> Option<()> {
    let state = sock::state(sk)?;
    // Cheap exit for the closing states, which also come through here.
    counters::segment_index(state, 0)?;
    let flags = sock::read_at::<u8>(skb, conf!(skb_flags_offset))?;
    add_slot(&SEGMENTS, counters::segment_index(state, flags)?, 1);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = sock::endpoints(&mut frame.sock, sk)?;
    let event = tracked_event(&mut frame.event, &ep, store);
    event.kind = EventKind::Segment as u8;
    event.old_state = state;
    event.detail = flags;
    submit(event);
    Some(())
}
