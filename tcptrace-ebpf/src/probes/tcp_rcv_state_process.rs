//! `tcp_rcv_state_process` (fentry, or kprobe): every segment a socket receives outside
//! ESTABLISHED. In the handshake states its TCP flags say what the peer answered: a
//! SYN-ACK, a RST (refused), a bare ACK a listener did not expect. Where neither hook
//! attaches, `tcp_receive_reset` derives the RST part from the tracked state.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use tcptrace_common::{counters, EventKind};

use crate::{
    conf,
    emit::{add_slot, base_event_in, owner_of, submit},
    maps::{FN_SCRATCH, SEGMENTS},
    sock,
};

#[inline(always)]
pub fn handle(sk: u64, skb: u64) -> Option<()> {
    let state = sock::state(sk)?;
    // Cheap exit for the closing states, which also come through here.
    counters::segment_index(state, 0)?;
    let flags = sock::read_at::<u8>(skb, conf!(skb_flags_offset))?;
    add_slot(&SEGMENTS, counters::segment_index(state, flags)?, 1);
    let ep = sock::sock_endpoints(sk)?;
    let (owner, owner_flags) = owner_of(sk);
    let event = base_event_in(
        &FN_SCRATCH,
        &ep,
        &owner,
        unsafe { bpf_ktime_get_ns() },
        owner_flags,
    )?;
    event.kind = EventKind::Segment as u8;
    event.old_state = state;
    event.detail = flags;
    submit(event);
    Some(())
}
