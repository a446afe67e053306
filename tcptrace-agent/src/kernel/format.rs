//! Parsing tracefs `format` files into the field layouts the eBPF programs read.
//!
//! Field offsets move between kernels (the common header grew on some distributions,
//! `tcp_retransmit_skb` gained `err` after 6.12), so nothing is hard-coded: each field is
//! looked up by name, its size checked against what the programs read, and a layout this
//! build does not understand is refused with a message naming the field.
use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};
use tcptrace_common::{config::RECORD_MAX, TpLayout, FIELD_ABSENT};

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub decl: String,
    pub offset: usize,
    pub size: usize,
}

/// All fields of a format file by name (`skaddr`, `saddr_v6`, ...).
pub fn parse_fields(text: &str) -> Result<HashMap<String, Field>> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let field = parse_field_line(rest).with_context(|| format!("bad format line {line:?}"))?;
        let name = field_name(&field.decl)
            .with_context(|| format!("no field name in {:?}", field.decl))?;
        fields.insert(name, field);
    }
    if fields.is_empty() {
        bail!("no `field:` lines: not a tracepoint format file");
    }
    Ok(fields)
}

/// `unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;`
fn parse_field_line(rest: &str) -> Result<Field> {
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next().unwrap_or_default().to_string();
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = Some(v.parse::<usize>()?);
        } else if let Some(v) = part.strip_prefix("size:") {
            size = Some(v.parse::<usize>()?);
        }
    }
    Ok(Field {
        decl,
        offset: offset.context("missing offset")?,
        size: size.context("missing size")?,
    })
}

/// The identifier of a C declaration: `__u8 saddr_v6[16]` -> `saddr_v6`.
fn field_name(decl: &str) -> Option<String> {
    let without_array = decl.split('[').next()?.trim_end();
    let name = without_array
        .rsplit(|c: char| c.is_whitespace() || c == '*')
        .next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Which layout slot a tracepoint field fills, and the size the programs read it as.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// Field name in the format file.
    pub field: &'static str,
    pub slot: Slot,
    pub size: usize,
    /// A missing optional field is left `FIELD_ABSENT`; a missing required one is an error.
    pub required: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Slot {
    Skaddr,
    Skbaddr,
    Sport,
    Dport,
    Family,
    Protocol,
    Saddr,
    Daddr,
    SaddrV6,
    DaddrV6,
    OldState,
    NewState,
    Err,
}

const fn req(field: &'static str, slot: Slot, size: usize) -> Want {
    Want {
        field,
        slot,
        size,
        required: true,
    }
}

const fn opt(field: &'static str, slot: Slot, size: usize) -> Want {
    Want {
        field,
        slot,
        size,
        required: false,
    }
}

/// The endpoint fields every TCP tracepoint tcptrace uses carries.
pub const ADDRESS_FIELDS: [Want; 7] = [
    req("sport", Slot::Sport, 2),
    req("dport", Slot::Dport, 2),
    // Older kernels lack `family` on some events; the programs then derive it from the
    // v4-mapped form of `saddr_v6`.
    opt("family", Slot::Family, 2),
    req("saddr", Slot::Saddr, 4),
    req("daddr", Slot::Daddr, 4),
    req("saddr_v6", Slot::SaddrV6, 16),
    req("daddr_v6", Slot::DaddrV6, 16),
];

/// What a tracepoint's record says about the socket, beyond its own fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    /// `skaddr` and the endpoint fields.
    SocketAndAddresses,
    /// The endpoint fields only (no socket address).
    Addresses,
    /// Only the event's own fields.
    Nothing,
}

/// Every field to look up for a tracepoint carrying `carries` plus `extra`.
pub fn wants(carries: Carries, extra: &[Want]) -> Vec<Want> {
    let socket = [req("skaddr", Slot::Skaddr, 8)];
    let common: &[Want] = match carries {
        Carries::SocketAndAddresses | Carries::Addresses => &ADDRESS_FIELDS,
        Carries::Nothing => &[],
    };
    let skaddr: &[Want] = if carries == Carries::SocketAndAddresses {
        &socket
    } else {
        &[]
    };
    skaddr.iter().chain(common).chain(extra).copied().collect()
}

pub const SET_STATE_EXTRA: [Want; 3] = [
    req("oldstate", Slot::OldState, 4),
    req("newstate", Slot::NewState, 4),
    req("protocol", Slot::Protocol, 2),
];

pub const RETRANSMIT_SKB_EXTRA: [Want; 3] = [
    req("state", Slot::OldState, 4),
    opt("err", Slot::Err, 4),
    opt("skbaddr", Slot::Skbaddr, 8),
];

pub const SKADDR_ONLY: [Want; 1] = [req("skaddr", Slot::Skaddr, 8)];

/// `sock:inet_sk_error_report` (besides its endpoints, without a socket address).
pub const ERROR_REPORT_EXTRA: [Want; 2] = [
    req("error", Slot::Err, 4),
    req("protocol", Slot::Protocol, 2),
];

/// `skb:kfree_skb`: the packet, its drop reason (5.17+) and, since 6.11, the socket
/// that received it.
pub const KFREE_SKB_EXTRA: [Want; 3] = [
    req("skbaddr", Slot::Skbaddr, 8),
    req("reason", Slot::Err, 4),
    opt("rx_sk", Slot::Skaddr, 8),
];

/// `syscalls:sys_exit_*`: the return value, a long.
pub const SYSCALL_RET: [Want; 1] = [req("ret", Slot::Err, 8)];

/// Build a layout from a format file's fields, checking every wanted field's size and,
/// for a record the program copies (`copied`), that it fits the copy.
pub fn layout(fields: &HashMap<String, Field>, wants: &[Want], copied: bool) -> Result<TpLayout> {
    let mut layout = TpLayout::ABSENT;
    let mut end = 0usize;
    for want in wants {
        let Some(field) = fields.get(want.field) else {
            if want.required {
                bail!("field `{}` is missing", want.field);
            }
            continue;
        };
        if field.size != want.size {
            bail!(
                "field `{}` is {} bytes, tcptrace reads {} (declared `{}`)",
                want.field,
                field.size,
                want.size,
                field.decl
            );
        }
        let offset = u16::try_from(field.offset)
            .ok()
            .filter(|o| *o != FIELD_ABSENT)
            .with_context(|| format!("field `{}` offset {} too large", want.field, field.offset))?;
        *slot_mut(&mut layout, want.slot) = offset;
        end = end.max(field.offset + field.size);
    }
    if copied && end > RECORD_MAX {
        bail!("the fields tcptrace reads end at byte {end}, beyond the {RECORD_MAX} it copies");
    }
    layout.len = end as u16;
    Ok(layout)
}

fn slot_mut(layout: &mut TpLayout, slot: Slot) -> &mut u16 {
    match slot {
        Slot::Skaddr => &mut layout.skaddr,
        Slot::Skbaddr => &mut layout.skbaddr,
        Slot::Sport => &mut layout.sport,
        Slot::Dport => &mut layout.dport,
        Slot::Family => &mut layout.family,
        Slot::Protocol => &mut layout.protocol,
        Slot::Saddr => &mut layout.saddr,
        Slot::Daddr => &mut layout.daddr,
        Slot::SaddrV6 => &mut layout.saddr_v6,
        Slot::DaddrV6 => &mut layout.daddr_v6,
        Slot::OldState => &mut layout.oldstate,
        Slot::NewState => &mut layout.newstate,
        Slot::Err => &mut layout.err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/formats/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn all(extra: &[Want]) -> Vec<Want> {
        wants(Carries::SocketAndAddresses, extra)
    }

    #[test]
    fn field_names_from_declarations() {
        assert_eq!(field_name("const void * skaddr").as_deref(), Some("skaddr"));
        assert_eq!(field_name("__u8 saddr_v6[16]").as_deref(), Some("saddr_v6"));
        assert_eq!(field_name("int oldstate").as_deref(), Some("oldstate"));
        assert_eq!(
            field_name("const void *skbaddr").as_deref(),
            Some("skbaddr")
        );
    }

    #[test]
    fn set_state_on_6_18() {
        let f = parse_fields(&fixture("6.18-inet_sock_set_state")).unwrap();
        let l = layout(&f, &all(&SET_STATE_EXTRA), true).unwrap();
        assert_eq!((l.skaddr, l.oldstate, l.newstate), (8, 16, 20));
        assert_eq!((l.sport, l.dport, l.family, l.protocol), (24, 26, 28, 30));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (32, 36, 40, 56));
        assert_eq!(l.err, FIELD_ABSENT);
    }

    #[test]
    fn retransmit_skb_with_and_without_err() {
        let f = parse_fields(&fixture("6.18-tcp_retransmit_skb")).unwrap();
        let l = layout(&f, &all(&RETRANSMIT_SKB_EXTRA), true).unwrap();
        assert_eq!((l.skaddr, l.oldstate, l.err, l.skbaddr), (16, 24, 76, 8));
        assert_eq!(l.len, 80, "copies up to the end of err");

        let f = parse_fields(&fixture("5.10-tcp_retransmit_skb")).unwrap();
        let l = layout(&f, &all(&RETRANSMIT_SKB_EXTRA), true).unwrap();
        assert_eq!((l.skaddr, l.oldstate, l.saddr_v6), (16, 24, 40));
        assert_eq!(l.err, FIELD_ABSENT, "5.10 has no err field");
        assert_eq!(l.family, FIELD_ABSENT, "5.10 has no family field here");
    }

    #[test]
    fn larger_common_header_shifts_every_offset() {
        // RHEL-style kernels carry 4 more bytes of common fields.
        let f = parse_fields(&fixture("rhel-inet_sock_set_state")).unwrap();
        let l = layout(&f, &all(&SET_STATE_EXTRA), true).unwrap();
        assert_eq!((l.skaddr, l.oldstate, l.newstate), (16, 24, 28));
        assert_eq!(l.family, 36);
        assert_eq!(l.daddr_v6, 64);
    }

    #[test]
    fn refuses_layouts_it_does_not_understand() {
        let text = fixture("6.18-inet_sock_set_state").replace(
            "size:4;\tsigned:1;\n\tfield:int newstate",
            "size:2;\tsigned:1;\n\tfield:int newstate",
        );
        let f = parse_fields(&text).unwrap();
        let err = layout(&f, &all(&SET_STATE_EXTRA), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`oldstate` is 2 bytes"), "{err}");

        let text = fixture("6.18-inet_sock_set_state").replace("saddr_v6", "src_v6");
        let f = parse_fields(&text).unwrap();
        let err = layout(&f, &all(&SET_STATE_EXTRA), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`saddr_v6` is missing"), "{err}");

        assert!(parse_fields("name: foo\nID: 1\n").is_err());
        assert!(parse_fields("\tfield:int x;\toffset:abc;\tsize:4;").is_err());
    }
}
