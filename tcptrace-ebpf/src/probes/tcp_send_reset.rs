//! `tcp:tcp_send_reset`: this host sent a RST (to a closed port, an aborted connection,
//! a bad segment). Counted always; for a full socket, also reported with its owner.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{counters::RESET_SENT, stats::Guarded, EventKind};

use crate::{
    btf_programs, conf,
    emit::{add_slot, base_event, owner_of, submit, wanted},
    frame::Scratch,
    maps::RESETS,
    raw_programs, sock,
    sockets::{HashStore, SkStore, Store},
    tracepoint::{bytes16, Endpoints, Record},
};

btf_programs!(
    Guarded::SendReset,
    "tcp_send_reset",
    tcp_send_reset_btf,
    tcp_send_reset_btf_backup,
    2,
    |ctx| {
        add_slot(&RESETS, RESET_SENT, 1);
        let sk: u64 = ctx.arg(0);
        // A RST answering a segment for no socket at all has none.
        if sk != 0 {
            sent(&SkStore { sk }, sk);
        }
    }
);

raw_programs!(
    Guarded::SendReset,
    "tcp_send_reset",
    tcp_send_reset_raw,
    tcp_send_reset_raw_backup,
    2,
    |ctx| {
        add_slot(&RESETS, RESET_SENT, 1);
        let sk: u64 = ctx.arg(0);
        if sk != 0 {
            sent(&HashStore { skaddr: sk }, sk);
        }
    }
);

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    add_slot(&RESETS, RESET_SENT, 1);
    from_record(&ctx);
    0
}

#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    if !wanted(EventKind::Reset) {
        return None;
    }
    let layout = &conf!(send_reset);
    let skaddr: u64 = {
        let mut scratch = Scratch::enter()?;
        Record::load(&mut scratch.frame().record, ctx, layout)?.get(layout.skaddr)?
    };
    if skaddr != 0 {
        sent(&HashStore { skaddr }, skaddr);
    }
    Some(())
}

#[inline(always)]
fn sent(store: &impl Store, sk: u64) -> Option<()> {
    if !wanted(EventKind::Reset) {
        return None;
    }
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let (owner, flags) = owner_of(store);
    // The state the socket is in as it sends the RST: the tracked one, else its own.
    let state = match store.entry() {
        Some(info) => info.state,
        None => sock::state(sk)?,
    };
    let ep = sock::full_endpoints(&mut frame.sock, sk).unwrap_or(Endpoints {
        skaddr: sk,
        family: 0,
        sport: 0,
        dport: 0,
        saddr: bytes16(0, 0),
        daddr: bytes16(0, 0),
    });
    let event = base_event(
        &mut frame.event,
        &ep,
        &owner,
        unsafe { bpf_ktime_get_ns() },
        flags,
    );
    event.kind = EventKind::Reset as u8;
    event.detail = RESET_SENT as u8;
    event.old_state = state;
    submit(event);
    Some(())
}
