//! `sock:inet_sk_error_report` (Linux 5.14+): the kernel reports an error on an inet
//! socket, e.g. ETIMEDOUT when keep-alive probes or retransmissions gave up on a peer,
//! ECONNRESET, EHOSTUNREACH from ICMP. Counted by errno for TCP. Raw and BTF-typed
//! tracepoints pass the socket, so their events carry its owner; the classic record
//! carries no socket address, so its events have endpoints but no owner.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{event::FLAG_OWNER_UNKNOWN, stats::Guarded, EventKind, Owner, IPPROTO_TCP};

use crate::{
    btf_programs, conf,
    emit::{add_key, base_event, owner_of, submit},
    frame::{Frame, Scratch},
    maps::SOCKET_ERRORS,
    raw_programs, sock,
    sockets::{self, HashStore, SkStore, Store},
    tracepoint::{endpoints, Endpoints, Record},
};

/// Errnos are below 256; anything else is counted under 0.
const ERRNO_LIMIT: i32 = 256;

btf_programs!(
    Guarded::ErrorReport,
    "inet_sk_error_report",
    inet_sk_error_report_btf,
    inet_sk_error_report_btf_backup,
    1,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        from_socket(&SkStore { sk }, sk);
    }
);

raw_programs!(
    Guarded::ErrorReport,
    "inet_sk_error_report",
    inet_sk_error_report_raw,
    inet_sk_error_report_raw_backup,
    1,
    |ctx| {
        let sk: u64 = ctx.arg(0);
        from_socket(&HashStore { skaddr: sk }, sk);
    }
);

#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    from_record(&ctx);
    0
}

#[inline(always)]
fn from_socket(store: &impl Store, sk: u64) -> Option<()> {
    if sock::protocol(sk)? != IPPROTO_TCP {
        return None;
    }
    let error = sock::error(sk)?;
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let ep = sock::full_endpoints(&mut frame.sock, sk)?;
    let (owner, flags) = owner_of(store);
    reported(frame, &ep, &owner, flags, error);
    Some(())
}

#[inline(always)]
fn from_record(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(error_report);
    let mut scratch = Scratch::enter()?;
    let frame = scratch.frame();
    let rec = Record::load_tcp(&mut frame.record, ctx, layout)?;
    let error: i32 = rec.get(layout.err)?;
    let ep = endpoints(&rec, layout)?;
    reported(
        frame,
        &ep,
        &sockets::unknown_owner(),
        FLAG_OWNER_UNKNOWN,
        error,
    );
    Some(())
}

#[inline(always)]
fn reported(frame: &mut Frame, ep: &Endpoints, owner: &Owner, flags: u8, error: i32) {
    let errno = if (1..ERRNO_LIMIT).contains(&error) {
        error
    } else {
        0
    };
    add_key(&SOCKET_ERRORS, errno as u32, 1);
    let now = unsafe { bpf_ktime_get_ns() };
    let event = base_event(&mut frame.event, ep, owner, now, flags);
    event.kind = EventKind::SocketError as u8;
    event.err = error;
    submit(event);
}
