//! Rendering events for `tcptrace trace`: aligned text lines or JSON lines, written
//! straight into the output buffer — integers and addresses formatted in place, the
//! date and time of day formatted once per second, strings escaped as they are copied —
//! so that rendering costs less than the kernel takes to produce an event.
use std::{io::Write as _, net::SocketAddr};

use tcptrace_common::state::state_name;

use crate::{
    event::{
        clock::Clock,
        errno_name,
        names::{drop_reason_name, kind_name, tcp_flags},
        Failure, Owner, TcpEvent, What,
    },
    k8s::cgroup::Workload,
};

pub const TEXT_HEADER: &str = "TIME(UTC)       EVENT      PID     COMM             NETNS      LOCAL                                  REMOTE                                 DETAIL";

/// `,"name":`, one constant to copy (every field follows `time`).
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// Writes events; remembers the wall-clock second last written, whose text it reuses.
pub struct Renderer {
    clock: Clock,
    /// Unix second of `date_time`.
    second: i64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    date_time: [u8; 19],
}

impl Renderer {
    pub fn new(clock: Clock) -> Renderer {
        Renderer {
            clock,
            second: i64::MIN,
            date_time: [b'0'; 19],
        }
    }

    /// The date and time of `ts_ns` (monotonic) to the second, and its microseconds.
    fn wall(&mut self, ts_ns: u64) -> (&[u8; 19], u32) {
        let (second, micros) = self.clock.unix_second_and_micros(ts_ns);
        if second != self.second {
            self.second = second;
            self.date_time = self.clock.date_time(second);
        }
        (&self.date_time, micros)
    }

    /// One aligned text line, with its newline.
    pub fn text(&mut self, out: &mut Vec<u8>, e: &TcpEvent) {
        let (date_time, micros) = self.wall(e.ts_ns);
        out.extend_from_slice(&date_time[11..]);
        out.push(b'.');
        zero_padded::<6>(out, micros);
        out.push(b' ');
        padded(out, 10, |o| put(o, kind_name(e.kind()).as_bytes()));
        match &e.owner {
            Some(owner) => {
                padded(out, 7, |o| number(o, owner.pid));
                padded(out, 16, |o| comm(o, owner, false));
            }
            None => out.extend_from_slice(b"-       -                "),
        }
        match e.netns {
            Some(netns) => padded(out, 10, |o| number(o, netns)),
            None => out.extend_from_slice(b"-          "),
        }
        padded(out, 38, |o| endpoint(o, e.local));
        padded(out, 38, |o| endpoint(o, e.remote));
        detail(out, &e.what);
        out.push(b'\n');
    }

    /// One JSON object, with its newline; the owner's workload where it is known.
    /// Field names are part of the interface (README, "JSON lines").
    pub fn json(&mut self, out: &mut Vec<u8>, e: &TcpEvent, workload: Option<&Workload>) {
        let (date_time, micros) = self.wall(e.ts_ns);
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(date_time);
        out.push(b'.');
        zero_padded::<6>(out, micros);
        out.extend_from_slice(b"Z\",\"ts_ns\":");
        number(out, e.ts_ns);
        name_field(out, key!("event"), kind_name(e.kind()));
        match &e.owner {
            Some(owner) => {
                number_field(out, key!("pid"), owner.pid);
                out.extend_from_slice(key!("comm"));
                quoted(out, |o| comm(o, owner, true));
                number_field(out, key!("cgroup_id"), owner.cgroup_id);
            }
            None => out.extend_from_slice(b",\"pid\":null,\"comm\":null,\"cgroup_id\":null"),
        }
        out.extend_from_slice(if e.is_ipv6() {
            b",\"family\":6"
        } else {
            b",\"family\":4"
        });
        out.extend_from_slice(key!("saddr"));
        quoted(out, |o| ip(o, e.local));
        number_field(out, key!("sport"), e.local.port());
        out.extend_from_slice(key!("daddr"));
        quoted(out, |o| ip(o, e.remote));
        number_field(out, key!("dport"), e.remote.port());
        out.extend_from_slice(key!("skaddr"));
        quoted(out, |o| hex(o, e.skaddr));
        match e.netns {
            Some(netns) => number_field(out, key!("netns"), netns),
            None => out.extend_from_slice(b",\"netns\":null"),
        }
        what_fields(out, &e.what);
        if let Some(w) = workload {
            workload_fields(out, w);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The kind-specific fields of a JSON line.
fn what_fields(out: &mut Vec<u8>, what: &What) {
    match *what {
        What::State {
            from,
            to,
            time_in_from_ns,
        } => {
            name_field(out, key!("old_state"), state_name(from));
            name_field(out, key!("new_state"), state_name(to));
            if let Some(ns) = time_in_from_ns {
                number_field(out, key!("duration_ns"), ns);
            }
        }
        What::Handshake {
            side,
            duration_ns,
            failure,
        } => {
            number_field(out, key!("duration_ns"), duration_ns);
            name_field(out, key!("side"), side.name());
            match failure {
                None => name_field(out, key!("outcome"), "established"),
                Some(Failure { reason, errno }) => {
                    name_field(out, key!("outcome"), "failed");
                    name_field(out, key!("reason"), reason.name());
                    if let Some(errno) = errno {
                        string_field(out, key!("error"), &errno_name(errno));
                    }
                }
            }
        }
        What::Retransmit {
            kind,
            state,
            segments,
            error,
        } => {
            name_field(out, key!("retransmit"), kind.name());
            name_field(out, key!("state"), state_name(state));
            if let Some(segments) = segments {
                number_field(out, key!("segments"), segments);
            }
            if let Some(error) = error {
                string_field(out, key!("error"), &errno_name(error));
            }
        }
        What::ConnectError { errno, seen_by } => {
            string_field(out, key!("error"), &errno_name(errno));
            name_field(out, key!("source"), seen_by.name());
        }
        What::Segment { state, flags } => {
            name_field(out, key!("state"), state_name(state));
            string_field(out, key!("flags"), &tcp_flags(flags));
        }
        What::SocketError { errno } => string_field(out, key!("error"), &errno_name(errno)),
        What::Reset { direction, state } => {
            name_field(out, key!("direction"), direction.name());
            name_field(out, key!("state"), state_name(state));
        }
        What::Close(c) => {
            name_field(out, key!("old_state"), state_name(c.from));
            if let Some(ns) = c.lifetime_ns {
                number_field(out, key!("duration_ns"), ns);
            }
            number_field(out, key!("bytes_sent"), c.bytes_sent);
            number_field(out, key!("bytes_received"), c.bytes_received);
            number_field(out, key!("segs_out"), c.segs_out);
            number_field(out, key!("retransmitted"), c.retransmitted);
            if let Some(us) = c.rtt_us {
                number_field(out, key!("rtt_us"), us);
            }
            name_field(out, key!("closed_by"), c.closed_by.name());
        }
        What::Drop { reason, state } => {
            string_field(out, key!("reason"), &drop_reason_name(reason));
            if let Some(state) = state {
                name_field(out, key!("state"), state_name(state));
            }
        }
        What::ListenOverflow { at } => name_field(out, key!("at"), at.name()),
    }
}

/// What the owner's cgroup path says: each field only where the path says it.
fn workload_fields(out: &mut Vec<u8>, w: &Workload) {
    string_field(out, key!("cgroup"), &w.cgroup);
    let optional = [
        (key!("runtime"), w.runtime),
        (key!("container_id"), w.container_id.as_deref()),
        (key!("pod_uid"), w.pod_uid.as_deref()),
        (key!("qos"), w.qos),
        (key!("unit"), w.unit.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            string_field(out, key, value);
        }
    }
}

/// The text line's last column.
fn detail(out: &mut Vec<u8>, what: &What) {
    match *what {
        What::State {
            from,
            to,
            time_in_from_ns,
        } => {
            // The common event: copies, not `write!`, whose formatter took a fifth of
            // the line (170 ns -> 136 ns).
            put(out, state_name(from).as_bytes());
            out.extend_from_slice(b" -> ");
            put(out, state_name(to).as_bytes());
            if let Some(ns) = time_in_from_ns {
                out.extend_from_slice(b" (in ");
                put(out, state_name(from).as_bytes());
                out.push(b' ');
                duration(out, ns);
                out.push(b')');
            }
        }
        What::Handshake {
            side,
            duration_ns,
            failure,
        } => {
            put(out, side.name().as_bytes());
            match failure {
                None => out.extend_from_slice(b" established in "),
                Some(_) => out.extend_from_slice(b" failed after "),
            }
            duration(out, duration_ns);
            if let Some(Failure { reason, errno }) = failure {
                let _ = write!(out, ": {}", reason.name());
                if let Some(errno) = errno {
                    let _ = write!(out, " ({})", errno_name(errno));
                }
            }
        }
        What::Retransmit {
            kind,
            state,
            segments,
            error,
        } => {
            let _ = write!(out, "{} in {}", kind.name(), state_name(state));
            if let Some(n) = segments.filter(|n| *n > 1) {
                let _ = write!(out, ", {n} segments");
            }
            if let Some(error) = error {
                let _ = write!(out, " (not sent: {})", errno_name(error));
            }
        }
        What::ConnectError { errno, seen_by } => {
            let _ = write!(
                out,
                "connect() failed: {} (seen by {})",
                errno_name(errno),
                seen_by.name()
            );
        }
        What::Segment { state, flags } => {
            let _ = write!(
                out,
                "{} received in {}",
                tcp_flags(flags),
                state_name(state)
            );
        }
        What::SocketError { errno } => {
            let _ = write!(out, "socket error {}", errno_name(errno));
        }
        What::Reset { direction, state } => {
            let _ = write!(out, "RST {} in {}", direction.name(), state_name(state));
        }
        What::Close(c) => {
            let _ = write!(out, "closed from {}", state_name(c.from));
            if let Some(ns) = c.lifetime_ns {
                out.extend_from_slice(b" after ");
                duration(out, ns);
            }
            let _ = write!(
                out,
                ": sent {} B in {} segments, received {} B, {} retransmitted",
                c.bytes_sent, c.segs_out, c.bytes_received, c.retransmitted
            );
            if let Some(us) = c.rtt_us {
                out.extend_from_slice(b", rtt ");
                duration(out, us as u64 * 1000);
            }
            let _ = write!(out, ", {} closed first", c.closed_by.name());
        }
        What::Drop { reason, state } => {
            let _ = write!(out, "dropped: {}", drop_reason_name(reason));
            if let Some(state) = state {
                let _ = write!(out, " in {}", state_name(state));
            }
        }
        What::ListenOverflow { at } => {
            let _ = write!(out, "accept queue full: {} dropped", at.segment());
        }
    }
}

/// `1.234s`, `12.346ms`, `45us`: three decimals are plenty for a terminal.
fn duration(out: &mut Vec<u8>, ns: u64) {
    let (value, unit) = if ns >= 1_000_000_000 {
        ((ns + 500_000) / 1_000_000, "s")
    } else if ns >= 1_000_000 {
        ((ns + 500) / 1000, "ms")
    } else {
        number(out, ns / 1000);
        out.extend_from_slice(b"us");
        return;
    };
    number(out, value / 1000);
    out.push(b'.');
    zero_padded::<3>(out, (value % 1000) as u32);
    put(out, unit.as_bytes());
}

/// `duration` as a `String` (doctor's report, tests).
pub fn human_duration(ns: u64) -> String {
    let mut out = Vec::new();
    duration(&mut out, ns);
    String::from_utf8(out).expect("digits and units")
}

/// Write with `write`, then spaces up to `width` and one more.
fn padded(out: &mut Vec<u8>, width: usize, write: impl FnOnce(&mut Vec<u8>)) {
    const SPACES: [u8; 40] = [b' '; 40];
    debug_assert!(width < SPACES.len());
    let start = out.len();
    write(out);
    let end = out.len().max(start + width) + 1;
    // More spaces than needed, then cut: a copy of known size is a few stores, where
    // a fill of the padding's size is a call to memset.
    out.extend_from_slice(&SPACES);
    out.truncate(end);
}

/// Append `bytes`, nearly always a few bytes long (numbers, names): two overlapping
/// word copies inline. `extend_from_slice` of a length unknown at compile time calls
/// `memcpy`, whose call and dispatch cost more than copying so few bytes.
#[inline(always)]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if n > 16 {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(16);
    let len = out.len();
    let (src, dst) = (
        bytes.as_ptr(),
        out.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
    );
    // SAFETY: `n` <= 16 bytes read from `bytes` (each pair of reads covers it, possibly
    // overlapping) and written to the 16 bytes of spare capacity reserved above; the
    // length then covers exactly the `n` bytes written.
    unsafe {
        if n >= 8 {
            let head = src.cast::<u64>().read_unaligned();
            let tail = src.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(head);
            dst.add(n - 8).cast::<u64>().write_unaligned(tail);
        } else if n >= 4 {
            let head = src.cast::<u32>().read_unaligned();
            let tail = src.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(head);
            dst.add(n - 4).cast::<u32>().write_unaligned(tail);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(len + n);
    }
}

/// `n` in decimal, written straight into `out`'s spare room, two digits at a time from
/// a table. Digits are never built in a buffer on the stack and copied (as `itoa`
/// does, and as `hex` and `zero_padded` did): with such buffers a JSON line cost either
/// 130 or 205 ns, one or the other for a whole process, depending on where its stack
/// and heap happened to lie (loads of the event waiting behind the buffers' stores
/// whenever their addresses aliased in the CPU's store buffer).
fn number(out: &mut Vec<u8>, n: impl Into<u64>) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut n: u64 = n.into();
    let digits = decimal_digits(n);
    out.reserve(20);
    let len = out.len();
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let mut end = digits;
    // SAFETY: `digits` <= 20 bytes written into the 20 bytes of spare room reserved
    // above, each exactly once, right to left; the length then covers them.
    unsafe {
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            end -= 2;
            std::ptr::copy_nonoverlapping(PAIRS.as_ptr().add(pair), dst.add(end), 2);
        }
        if n >= 10 {
            std::ptr::copy_nonoverlapping(PAIRS.as_ptr().add(n as usize * 2), dst, 2);
        } else {
            *dst = b'0' + n as u8;
        }
        out.set_len(len + digits);
    }
}

/// How many decimal digits `n` has (1 for 0).
fn decimal_digits(n: u64) -> usize {
    let mut digits = 1;
    let mut bound = 10u64;
    while digits < 20 && n >= bound {
        digits += 1;
        bound = bound.wrapping_mul(10);
    }
    digits
}

/// `n` (< 10^WIDTH: micro- or milliseconds) in `WIDTH` digits, zeros first.
fn zero_padded<const WIDTH: usize>(out: &mut Vec<u8>, mut n: u32) {
    debug_assert!(u64::from(n) < 10u64.pow(WIDTH as u32));
    out.reserve(WIDTH);
    let len = out.len();
    // Straight into `out`, right to left (see `number` for why not through the stack).
    for slot in out.spare_capacity_mut()[..WIDTH].iter_mut().rev() {
        slot.write(b'0' + (n % 10) as u8);
        n /= 10;
    }
    // SAFETY: the `WIDTH` bytes after the length were written just above.
    unsafe { out.set_len(len + WIDTH) };
}

#[inline(always)] // so that `key` is a constant: a few stores, not a call to memcpy
fn number_field(out: &mut Vec<u8>, key: &[u8], n: impl Into<u64>) {
    out.extend_from_slice(key);
    number(out, n);
}

#[inline(always)] // so that `key` is a constant: a few stores, not a call to memcpy
fn string_field(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    quoted(out, |o| escaped(o, value));
}

/// A field whose value is one of tcptrace's own names (kinds, states, sides, ...):
/// nothing in them to escape, so not scanned for it.
#[inline(always)] // so that `key` is a constant: a few stores, not a call to memcpy
fn name_field(out: &mut Vec<u8>, key: &[u8], name: &'static str) {
    debug_assert!(!name.bytes().any(needs_escape), "{name}");
    out.extend_from_slice(key);
    quoted(out, |o| put(o, name.as_bytes()));
}

fn quoted(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'"');
    write(out);
    out.push(b'"');
}

/// A JSON string's content: `"`, `\` and control characters escaped.
fn escaped(out: &mut Vec<u8>, s: &str) {
    // Nearly every string (names, comms, paths) has nothing to escape: one copy.
    if !s.bytes().any(needs_escape) {
        put(out, s.as_bytes());
        return;
    }
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
}

/// A command name: its bytes as they are when they are printable ASCII with nothing
/// to escape (nearly always), else through lossy UTF-8 (and JSON escaping). Going
/// through `Owner::comm` every time took 100 ns, half of a JSON line.
fn comm(out: &mut Vec<u8>, owner: &Owner, json: bool) {
    let name = owner.comm_bytes();
    if name
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && !needs_escape(b))
    {
        put(out, name);
    } else if json {
        escaped(out, &owner.comm());
    } else {
        out.extend_from_slice(owner.comm().as_bytes());
    }
}

fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// `0x` and lowercase digits without leading zeros, as `{:#x}` writes them (through
/// the formatter's machinery, at several times the cost).
fn hex(out: &mut Vec<u8>, mut n: u64) {
    out.extend_from_slice(b"0x");
    let digits = (64 - n.max(1).leading_zeros() as usize).div_ceil(4);
    out.reserve(16);
    let len = out.len();
    let dst = out.spare_capacity_mut();
    // Straight into `out`, right to left (see `number` for why not through the stack).
    for slot in dst[..digits].iter_mut().rev() {
        slot.write(b"0123456789abcdef"[(n & 0xf) as usize]);
        n >>= 4;
    }
    // SAFETY: the `digits` bytes after the length were written just above.
    unsafe { out.set_len(len + digits) };
}

/// The address alone: IPv4 digit by digit, IPv6 through its `Display`.
fn ip(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => ipv4(out, a.ip().octets()),
        SocketAddr::V6(a) => {
            let _ = write!(out, "{}", a.ip());
        }
    }
}

/// Dotted decimal, from a table of each octet's text: a copy of 4 bytes per octet
/// into room made once, the length in a local. (Octet by octet onto the Vec, each
/// step stores the Vec's length and the next waits to load it.)
fn ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(&[0; 16]);
    let room = &mut out[start..];
    let mut len = 0;
    for octet in octets {
        let (text, text_len) = OCTETS[octet as usize];
        room[len..len + 4].copy_from_slice(&text);
        len += text_len as usize;
    }
    out.truncate(start + len - 1); // without the last octet's dot
}

/// Each octet's digits and a dot (`7.`, `42.`, `255.`), and their length.
static OCTETS: [([u8; 4], u8); 256] = octet_texts();

const fn octet_texts() -> [([u8; 4], u8); 256] {
    let mut table = [([0; 4], 0); 256];
    let mut octet = 0;
    while octet < 256 {
        let digits = [
            (octet / 100) as u8,
            (octet / 10 % 10) as u8,
            (octet % 10) as u8,
        ];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        let (text, len) = &mut table[octet];
        let mut i = skip;
        while i < 3 {
            text[i - skip] = b'0' + digits[i];
            i += 1;
        }
        text[3 - skip] = b'.';
        *len = (4 - skip) as u8;
        octet += 1;
    }
    table
}

/// `ip:port`, `[ipv6]:port`.
fn endpoint(out: &mut Vec<u8>, addr: SocketAddr) {
    if addr.is_ipv6() {
        out.push(b'[');
        ip(out, addr);
        out.push(b']');
    } else {
        ip(out, addr);
    }
    out.push(b':');
    number(out, addr.port());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{names::ResetDirection, Close, FailureReason, Owner};
    use tcptrace_common::{
        config::Source, event::ClosedBy, HandshakeSide, RetransmitKind, TcpState,
    };

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        let mut values = vec![0, u64::MAX, u64::MAX - 1, 4_294_967_295, 65_535];
        for k in 0..20 {
            let power = 10u64.pow(k);
            values.extend([power - 1, power, power + 1, power.wrapping_mul(7) / 3]);
        }
        for n in values {
            let mut out = b"x".to_vec();
            number(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{n}"));
        }
    }

    #[test]
    fn put_appends_exactly_the_bytes_of_every_length() {
        let source: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
        for start in 0..3 {
            for n in 0..=(source.len() - start) {
                let bytes = &source[start..start + n];
                let mut out = b"prefix".to_vec();
                put(&mut out, bytes);
                assert_eq!(out, [b"prefix".as_slice(), bytes].concat(), "{n} bytes");
            }
        }
    }

    fn state_event() -> TcpEvent {
        TcpEvent {
            ts_ns: 0,
            skaddr: 0xffff888100000000,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            netns: Some(4026531840),
            owner: Some(Owner::new(42, 7, "curl")),
            what: What::State {
                from: TcpState::SynSent as u8,
                to: TcpState::Established as u8,
                time_in_from_ns: Some(1_500_000),
            },
        }
    }

    fn text(e: &TcpEvent) -> String {
        let mut out = Vec::new();
        Renderer::new(Clock::fixed(0)).text(&mut out, e);
        String::from_utf8(out).unwrap()
    }

    fn json(e: &TcpEvent, workload: Option<&Workload>) -> serde_json::Value {
        let mut out = Vec::new();
        Renderer::new(Clock::fixed(1_795_696_252 * 1_000_000_000)).json(&mut out, e, workload);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn text_has_every_column_where_the_header_says() {
        let line = text(&state_event());
        assert_eq!(
            line,
            "00:00:00.000000 state      42      curl             4026531840 127.0.0.1:40000                        127.0.0.1:80                           SYN_SENT -> ESTABLISHED (in SYN_SENT 1.500ms)\n"
        );
        for column in ["EVENT", "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "DETAIL"] {
            let at = TEXT_HEADER.find(column).unwrap();
            assert_ne!(line.as_bytes()[at], b' ', "{column} starts at {at}: {line}");
            assert_eq!(line.as_bytes()[at - 1], b' ', "{column}: {line}");
        }
        let mut unknown = state_event();
        unknown.owner = None;
        unknown.netns = None;
        let line = text(&unknown);
        let at = TEXT_HEADER.find("LOCAL").unwrap();
        assert_eq!(&line[at..at + 9], "127.0.0.1", "{line}");
        assert!(
            line.contains(" -       -                -          127"),
            "{line}"
        );
    }

    #[test]
    fn json_fields() {
        let v = json(&state_event(), None);
        assert_eq!(v["time"], "2026-11-26T12:30:52.000000Z");
        assert_eq!(v["event"], "state");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["cgroup_id"], 7);
        assert_eq!(v["old_state"], "SYN_SENT");
        assert_eq!(v["new_state"], "ESTABLISHED");
        assert_eq!(v["duration_ns"], 1_500_000);
        assert_eq!(v["family"], 4);
        assert_eq!(v["saddr"], "127.0.0.1");
        assert_eq!(v["sport"], 40000);
        assert_eq!(v["netns"], 4026531840u32);
        assert_eq!(v["skaddr"], "0xffff888100000000");
        assert!(v.get("retransmit").is_none());
        let mut e = state_event();
        e.owner = None;
        e.netns = None;
        e.local = "[::1]:40000".parse().unwrap();
        let v = json(&e, None);
        assert!(v["pid"].is_null() && v["comm"].is_null() && v["netns"].is_null());
        assert_eq!(
            (v["family"].as_u64(), v["saddr"].as_str()),
            (Some(6), Some("::1"))
        );
    }

    #[test]
    fn strings_are_escaped_and_workloads_inline() {
        let mut e = state_event();
        e.owner = Some(Owner::new(1, 2, "a\"b\\c\u{1}"));
        let w = Workload {
            cgroup: "/kubepods/pod1".into(),
            runtime: Some("cri"),
            ..Workload::default()
        };
        let v = json(&e, Some(&w));
        assert_eq!(v["comm"], "a\"b\\c\u{1}");
        assert_eq!(v["cgroup"], "/kubepods/pod1");
        assert_eq!(v["runtime"], "cri");
        assert!(v.get("pod_uid").is_none());
    }

    #[test]
    fn every_kind_in_text_and_json() {
        let cases = [
            (
                What::Handshake {
                    side: HandshakeSide::Client,
                    duration_ns: 771_000,
                    failure: Some(Failure {
                        reason: FailureReason::Refused,
                        errno: Some(libc::ECONNREFUSED),
                    }),
                },
                "client failed after 771us: refused (ECONNREFUSED)",
                serde_json::json!({"outcome": "failed", "reason": "refused", "error": "ECONNREFUSED", "side": "client"}),
            ),
            (
                What::Retransmit {
                    kind: RetransmitKind::Data,
                    state: TcpState::Established as u8,
                    segments: Some(3),
                    error: Some(libc::ENOBUFS),
                },
                "data in ESTABLISHED, 3 segments (not sent: ENOBUFS)",
                serde_json::json!({"retransmit": "data", "state": "ESTABLISHED", "segments": 3, "error": "ENOBUFS"}),
            ),
            (
                What::ConnectError {
                    errno: libc::EADDRNOTAVAIL,
                    seen_by: Source::Tracepoint,
                },
                "connect() failed: EADDRNOTAVAIL (seen by tracepoint)",
                serde_json::json!({"error": "EADDRNOTAVAIL", "source": "tracepoint"}),
            ),
            (
                What::Segment {
                    state: TcpState::SynSent as u8,
                    flags: 0x14,
                },
                "RST,ACK received in SYN_SENT",
                serde_json::json!({"state": "SYN_SENT", "flags": "RST,ACK"}),
            ),
            (
                What::SocketError {
                    errno: libc::ETIMEDOUT,
                },
                "socket error ETIMEDOUT",
                serde_json::json!({"error": "ETIMEDOUT"}),
            ),
            (
                What::Reset {
                    direction: ResetDirection::Received,
                    state: TcpState::SynSent as u8,
                },
                "RST received in SYN_SENT",
                serde_json::json!({"direction": "received", "state": "SYN_SENT"}),
            ),
            (
                What::Close(Close {
                    from: TcpState::LastAck as u8,
                    lifetime_ns: Some(1_234_567_890),
                    bytes_sent: 1001,
                    bytes_received: 65_537,
                    segs_out: 4,
                    retransmitted: 2,
                    rtt_us: Some(45),
                    closed_by: ClosedBy::Remote,
                }),
                "closed from LAST_ACK after 1.235s: sent 1001 B in 4 segments, received 65537 B, 2 retransmitted, rtt 45us, remote closed first",
                serde_json::json!({"old_state": "LAST_ACK", "duration_ns": 1_234_567_890u64, "bytes_sent": 1001, "bytes_received": 65_537, "segs_out": 4, "retransmitted": 2, "rtt_us": 45, "closed_by": "remote"}),
            ),
            (
                // No kernel table loaded in a unit test: the number stands for the name.
                What::Drop {
                    reason: 12,
                    state: Some(TcpState::Established as u8),
                },
                "dropped: reason_12 in ESTABLISHED",
                serde_json::json!({"reason": "reason_12", "state": "ESTABLISHED"}),
            ),
            (
                What::ListenOverflow {
                    at: tcptrace_common::event::OverflowAt::Syn,
                },
                "accept queue full: SYN dropped",
                serde_json::json!({"at": "syn"}),
            ),
        ];
        // Every kind of the vocabulary has a case here (state: `state_event` itself).
        let mut covered: Vec<_> = cases.iter().map(|c| kind_of(&c.0)).collect();
        covered.push(state_event().kind());
        for k in crate::event::names::KINDS {
            assert!(
                covered.contains(&k.kind),
                "no rendering case for {}",
                k.name
            );
        }
        for (what, detail, fields) in cases {
            let mut e = state_event();
            e.what = what;
            assert!(text(&e).ends_with(&format!("{detail}\n")), "{}", text(&e));
            let v = json(&e, None);
            for (k, want) in fields.as_object().unwrap() {
                assert_eq!(&v[k], want, "{k} in {v}");
            }
        }
    }

    fn kind_of(what: &What) -> tcptrace_common::EventKind {
        let mut e = state_event();
        e.what = what.clone();
        e.kind()
    }

    #[test]
    fn the_time_of_day_follows_the_second() {
        let mut renderer = Renderer::new(Clock::fixed(1_795_696_252 * 1_000_000_000));
        let mut e = state_event();
        let mut time = |ts_ns| {
            e.ts_ns = ts_ns;
            let mut out = Vec::new();
            renderer.json(&mut out, &e, None);
            renderer.text(&mut out, &e);
            String::from_utf8(out).unwrap()
        };
        let last = time(999_999_999);
        assert!(last.contains("\"2026-11-26T12:30:52.999999Z\""), "{last}");
        assert!(last.contains("\n12:30:52.999999 state"), "{last}");
        let next = time(1_000_000_000);
        assert!(next.contains("\"2026-11-26T12:30:53.000000Z\""), "{next}");
        assert!(next.contains("\n12:30:53.000000 state"), "{next}");
    }

    #[test]
    fn a_column_wider_than_its_width_is_followed_by_one_space() {
        let mut e = state_event();
        e.local = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        assert!(
            text(&e).contains(" [ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535 127.0.0.1:80 "),
            "{}",
            text(&e)
        );
    }

    #[test]
    fn hex_and_ipv4_as_std_formats_them() {
        for n in [0, 1, 0xf, 0x10, 0xffff888100000000, u64::MAX] {
            let mut out = Vec::new();
            hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:#x}"));
        }
        for octet in 0..=255u8 {
            let addr = std::net::Ipv4Addr::new(octet, 0, 99, octet);
            let mut out = Vec::new();
            ipv4(&mut out, addr.octets());
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(45_000), "45us");
        assert_eq!(human_duration(12_345_678), "12.346ms");
        assert_eq!(human_duration(3_000_000_000), "3.000s");
        assert_eq!(human_duration(1_999_600_000), "2.000s");
    }
}
