//! Decoding ring-buffer records and naming what they contain.
pub mod clock;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcptrace_common::{
    event::{FLAG_OWNER_UNKNOWN, FLAG_RST_RECEIVED, FLAG_SK_ERR_READ},
    Event, HandshakeSide, AF_INET,
};

/// Copy a record out of the ring buffer. `None` for a record of the wrong size, which
/// means the agent and the eBPF object disagree on the layout.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain old data and the slice holds at least size_of::<Event>()
    // bytes; read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

pub fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

pub fn comm(raw: &[u8; 16]) -> String {
    comm_str(raw).into_owned()
}

/// `comm`, borrowed from the event when it is valid UTF-8 (it nearly always is).
pub fn comm_str(raw: &[u8; 16]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
}

/// The owning process, or `None` when tcptrace never saw it act on the socket.
pub fn owner_pid(e: &Event) -> Option<u32> {
    (e.flags & FLAG_OWNER_UNKNOWN == 0 && e.pid != 0).then_some(e.pid)
}

/// Why a handshake failed, as the `reason` of `tcptrace_connect_failures_total`:
/// refused | timeout | reset | unreachable | other.
pub fn failure_reason(e: &Event) -> &'static str {
    reason_for(e.detail, e.flags, e.err)
}

/// The same classification from what the kernel's failure counter keeps per key.
pub fn reason_for(side: u8, flags: u8, err: i32) -> &'static str {
    if flags & FLAG_SK_ERR_READ != 0 && err != 0 {
        return match err {
            libc::ECONNREFUSED => "refused",
            libc::ETIMEDOUT => "timeout",
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => "reset",
            libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => {
                "unreachable"
            }
            _ => "other",
        };
    }
    if flags & FLAG_RST_RECEIVED != 0 {
        // A RST answering a SYN is a refusal; one arriving later resets the handshake.
        return match HandshakeSide::from_u8(side) {
            Some(HandshakeSide::Client) => "refused",
            _ => "reset",
        };
    }
    "other"
}

/// The symbolic name of an errno value tcptrace reports.
pub fn errno_name(err: i32) -> String {
    let name = match err {
        0 => "none",
        libc::EPIPE => "EPIPE",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENOMEM => "ENOMEM",
        libc::EAGAIN => "EAGAIN",
        libc::EPERM => "EPERM",
        _ => return format!("errno {err}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::{Event, AF_INET6};

    fn handshake(side: HandshakeSide, err: i32, flags: u8) -> Event {
        let mut e = Event::zeroed();
        e.detail = side as u8;
        e.err = err;
        e.flags = flags;
        e
    }

    #[test]
    fn decode_round_trips_and_rejects_short_records() {
        let mut e = Event::zeroed();
        e.sport = 443;
        e.comm[..4].copy_from_slice(b"curl");
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        };
        let back = decode(bytes).unwrap();
        assert_eq!(back.sport, 443);
        assert_eq!(comm(&back.comm), "curl");
        assert!(decode(&bytes[..50]).is_none());
    }

    #[test]
    fn addresses() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(ip(AF_INET, &raw).to_string(), "127.0.0.1");
        let v6 = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(ip(AF_INET6, &v6).to_string(), "::1");
    }

    #[test]
    fn failure_reasons() {
        let read = FLAG_SK_ERR_READ;
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Client, libc::ECONNREFUSED, read)),
            "refused"
        );
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Client, libc::ETIMEDOUT, read)),
            "timeout"
        );
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Client, libc::EHOSTUNREACH, read)),
            "unreachable"
        );
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Server, libc::ECONNRESET, read)),
            "reset"
        );
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Client, 0, read)),
            "other"
        );
        // Without BTF: the RST flag still tells refusal from reset.
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Client, 0, FLAG_RST_RECEIVED)),
            "refused"
        );
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Server, 0, FLAG_RST_RECEIVED)),
            "reset"
        );
        assert_eq!(
            failure_reason(&handshake(HandshakeSide::Client, 0, 0)),
            "other"
        );
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(4242), "errno 4242");
    }

    #[test]
    fn unknown_owner_has_no_pid() {
        let mut e = Event::zeroed();
        e.pid = 7;
        assert_eq!(owner_pid(&e), Some(7));
        e.flags = FLAG_OWNER_UNKNOWN;
        assert_eq!(owner_pid(&e), None);
    }
}
