//! `sock:inet_sk_error_report` (Linux 5.14+): the kernel reports an error on an inet
//! socket, e.g. ETIMEDOUT when keep-alive probes or retransmissions gave up on a peer,
//! ECONNRESET, EHOSTUNREACH from ICMP. Counted by errno for TCP; the record carries no
//! socket address, so the event has endpoints but no owner.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tcptrace_common::{event::FLAG_OWNER_UNKNOWN, EventKind, Owner, IPPROTO_TCP};

use crate::{
    conf,
    emit::{add_key, base_event, submit},
    maps::SOCKET_ERRORS,
    tracepoint::{endpoints, Record},
};

/// Errnos are below 256; anything else is counted under 0.
const ERRNO_LIMIT: i32 = 256;

pub fn handle(ctx: &TracePointContext) -> Option<()> {
    let layout = &conf!(error_report);
    let rec = Record::load(ctx, layout)?;
    let protocol: u16 = rec.get(layout.protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let error: i32 = rec.get(layout.err)?;
    let errno = if (1..ERRNO_LIMIT).contains(&error) {
        error
    } else {
        0
    };
    add_key(&SOCKET_ERRORS, errno as u32, 1);
    let ep = endpoints(&rec, layout)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let event = base_event(&ep, &Owner::default(), now, FLAG_OWNER_UNKNOWN)?;
    event.kind = EventKind::SocketError as u8;
    event.err = error;
    submit(event);
    Some(())
}
