//! Just enough of a BTF reader to find the offset of a member of a kernel struct
//! (`struct sock` -> `sk_err`), so the eBPF programs can read one field of a socket on
//! any kernel that ships `/sys/kernel/btf/vmlinux`, without CO-RE support in the loader;
//! and the ids of the types programs attach to, for a small stand-in of the kernel's BTF
//! that aya's loader can use (`sparse`).
//!
//! aya 0.14 keeps what an offset needs private: `Btf::type_by_id` and
//! `Btf::string_at` are `pub(crate)`, and so are `Struct::members` and `BtfMember`
//! (aya-obj 0.3, `btf/btf.rs` and `btf/types.rs`); its only public lookup,
//! `id_by_type_name_kind`, returns an id nothing public can open. So this reads the raw
//! bytes in place: one pass records where each type starts (4 bytes a type), and a
//! lookup reads the struct's members from the bytes.
use std::borrow::Cow;

use anyhow::{bail, Context as _, Result};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
/// Kinds whose `size_or_type` names another type and that carry no extra data.
const MODIFIERS: [u32; 5] = [8, 9, 10, 11, 18]; // typedef, volatile, const, restrict, type_tag
/// Bytes of a type's common header, and of one struct/union member after it.
const HEADER: usize = 12;
const MEMBER: usize = 12;

/// A kernel type a program is loaded against, which aya's loader looks up by name:
/// the typedef `btf_trace_<event>` for a BTF-typed tracepoint, the function for
/// fentry/fexit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Typedef(String),
    Func(String),
}

impl Target {
    fn kind(&self) -> u32 {
        match self {
            Target::Typedef(_) => KIND_TYPEDEF,
            Target::Func(_) => KIND_FUNC,
        }
    }

    fn name(&self) -> &str {
        match self {
            Target::Typedef(name) | Target::Func(name) => name,
        }
    }
}

/// One type's header (`struct btf_type`), read from the bytes.
#[derive(Clone, Copy)]
struct Type {
    /// Where its header starts in the blob.
    pos: usize,
    kind: u32,
    vlen: usize,
    /// Members' offsets carry a bitfield size in their top byte.
    kind_flag: bool,
    name_off: u32,
    size_or_type: u32,
}

/// A BTF blob, borrowed, with the position of each type.
pub struct Btf<'a> {
    data: &'a [u8],
    strings: &'a [u8],
    /// Header position of type id `i + 1` (id 0 is `void`).
    types: Vec<u32>,
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Btf<'a>> {
        let u32_at = |o: usize| u32_at(data, o).context("truncated BTF");
        if data.get(..2) != Some(&MAGIC.to_le_bytes()[..]) {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let end = type_off + u32_at(12)? as usize;
        let str_off = hdr_len + u32_at(16)? as usize;
        let strings = data
            .get(str_off..str_off + u32_at(20)? as usize)
            .context("string section out of bounds")?;
        data.get(type_off..end)
            .context("type section out of bounds")?;
        let mut types = Vec::new();
        let mut pos = type_off;
        while pos < end {
            let info = u32_at(pos + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            types.push(u32::try_from(pos).context("BTF larger than 4 GiB")?);
            pos += HEADER + extra_len(kind, vlen)?;
        }
        if pos != end {
            bail!("the last type runs past the type section");
        }
        Ok(Btf {
            data,
            strings,
            types,
        })
    }

    fn ty(&self, pos: usize) -> Option<Type> {
        let info = u32_at(self.data, pos + 4)?;
        Some(Type {
            pos,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            name_off: u32_at(self.data, pos)?,
            size_or_type: u32_at(self.data, pos + 8)?,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    fn by_id(&self, id: u32) -> Option<Type> {
        self.ty(*self.types.get((id as usize).checked_sub(1)?)? as usize)
    }

    /// Follow typedef/const/volatile chains to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.by_id(id)?;
            if !MODIFIERS.contains(&t.kind) {
                return Some(t);
            }
            id = t.size_or_type;
        }
        None
    }

    /// The id of the first type of the target's kind and name: the one aya's
    /// `id_by_type_name_kind` finds in its parse of the same bytes.
    pub fn id_of(&self, target: &Target) -> Option<u32> {
        let index = self.types.iter().position(|pos| {
            self.ty(*pos as usize).is_some_and(|t| {
                t.kind == target.kind() && self.name(t.name_off) == target.name().as_bytes()
            })
        })?;
        u32::try_from(index + 1).ok()
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous members.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let st = self
            .types
            .iter()
            .filter_map(|pos| self.ty(*pos as usize))
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .with_context(|| format!("no struct {name} in BTF"))?;
        let bits = self
            .find_member(st, member.as_bytes(), 0)
            .with_context(|| format!("struct {name} has no member {member}"))?;
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bitfield");
        }
        Ok(bits / 8)
    }

    /// Bit offset of `member` in the struct or union `st`.
    fn find_member(&self, st: Type, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for i in 0..st.vlen {
            let m = st.pos + HEADER + i * MEMBER;
            let (name_off, ty, raw) = (
                u32_at(self.data, m)?,
                u32_at(self.data, m + 4)?,
                u32_at(self.data, m + 8)?,
            );
            let bit_off = if st.kind_flag { raw & 0x00ff_ffff } else { raw };
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                    if let Some(b) = self.find_member(inner, member, depth + 1) {
                        return bit_off.checked_add(b);
                    }
                }
            } else if self.name(name_off) == member {
                return Some(bit_off);
            }
        }
        None
    }
}

/// What loading programs needs of the kernel's BTF: the id of each program's target.
pub enum AttachBtf {
    /// The ids our reader found. Each load gets a stand-in of its own holding its
    /// target alone (`sparse`): aya's parse costs 72 bytes an id up to the target's,
    /// 2.8 MB for a tracepoint's typedef near id 38,000 on Linux 6.18 and 8.3 MB for a
    /// function near 115,000, paid one load at a time.
    Ids(Vec<(Target, u32)>),
    /// aya's parse of the kernel's BTF, where our reader failed.
    Parsed(aya::Btf),
}

impl AttachBtf {
    /// The BTF to load a program attaching to `target` against. Where the kernel has
    /// no such type it is empty, and aya says which name it did not find.
    pub fn for_target(&self, target: &Target) -> Cow<'_, aya::Btf> {
        match self {
            AttachBtf::Parsed(btf) => Cow::Borrowed(btf),
            AttachBtf::Ids(ids) => {
                let found = ids.iter().find(|(t, _)| t == target);
                Cow::Owned(stand_in(found.map_or(&[][..], std::slice::from_ref)))
            }
        }
    }

    /// A BTF naming `target` at the id of a typedef, which is not a function: no kernel
    /// loads an fentry/fexit program against it. One that refuses such programs
    /// outright says so all the same (EPERM, before it looks at the target), for the
    /// price of a stand-in up to id 38,000 rather than the function's own.
    pub fn not_a_function(&self, target: &Target) -> Option<aya::Btf> {
        let AttachBtf::Ids(ids) = self else {
            return None;
        };
        let typedef = ids
            .iter()
            .filter(|(t, _)| matches!(t, Target::Typedef(_)))
            .map(|(_, id)| *id)
            .min()?;
        Some(stand_in(&[(target.clone(), typedef)]))
    }
}

/// aya's parse of a sparse blob of these targets (it always parses: the blob is ours).
fn stand_in(targets: &[(Target, u32)]) -> aya::Btf {
    aya::Btf::parse(&sparse(targets), aya::Endianness::default()).unwrap_or_default()
}

/// A BTF blob that holds each target at its id and an empty entry (kind 0, which aya
/// reads as a placeholder) at every other id. aya finds a program's target by name and
/// hands the kernel the index it found it at, so this serves the loader as well as the
/// kernel's BTF, in 12 bytes an id (mostly zero pages, never touched) where the
/// kernel's is 5.5 MB on Linux 6.18 and aya's full parse of it a 19 MB peak.
pub fn sparse(targets: &[(Target, u32)]) -> Vec<u8> {
    let last = targets.iter().map(|(_, id)| *id).max().unwrap_or(0) as usize;
    let types_len = last * HEADER;
    let mut strings = vec![0u8];
    let mut entries = Vec::new();
    for (target, id) in targets.iter().filter(|(_, id)| *id > 0) {
        entries.push((*id as usize, strings.len() as u32, target.kind() << 24));
        strings.extend_from_slice(target.name().as_bytes());
        strings.push(0);
    }
    let mut blob = vec![0u8; 24 + types_len + strings.len()];
    let header = [24, 0, types_len, types_len, strings.len()];
    blob[..2].copy_from_slice(&MAGIC.to_le_bytes());
    blob[2] = 1; // version
    for (i, v) in header.into_iter().enumerate() {
        blob[4 + 4 * i..8 + 4 * i].copy_from_slice(&(v as u32).to_le_bytes());
    }
    // A function's linkage is 0 (static) and no entry's referred type is ever read.
    for (id, name_off, info) in entries {
        let at = 24 + (id - 1) * HEADER;
        blob[at..at + 4].copy_from_slice(&name_off.to_le_bytes());
        blob[at + 4..at + 8].copy_from_slice(&info.to_le_bytes());
    }
    blob[24 + types_len..].copy_from_slice(&strings);
    blob
}

fn u32_at(data: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Bytes that follow the common 12-byte header of each BTF kind.
fn extra_len(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        1 => 4,                                      // int
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // ptr, fwd, modifiers, func, float, type_tag
        3 => 12,                                     // array
        4 | 5 => vlen * MEMBER,                      // struct, union
        6 => vlen * 8,                               // enum
        13 => vlen * 8,                              // func_proto
        14 => 4,                                     // var
        15 => vlen * 12,                             // datasec
        17 => 4,                                     // decl_tag
        19 => vlen * 12,                             // enum64
        other => bail!("unknown BTF kind {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `int`, `struct inner { int a; int b; }` and
    /// `struct outer { int x; struct inner; /* anonymous */ int y; }`.
    fn synthetic() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0y\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(s("int"));
        push(1 << 24);
        push(4);
        push(32);
        // 2: struct inner, 2 members
        push(s("inner"));
        push((4 << 24) | 2);
        push(8);
        push(s("a"));
        push(1);
        push(0);
        push(s("b"));
        push(1);
        push(32);
        // 3: struct outer, 3 members, one anonymous
        push(s("outer"));
        push((4 << 24) | 3);
        push(16);
        push(s("x"));
        push(1);
        push(0);
        push(0);
        push(2);
        push(32);
        push(s("y"));
        push(1);
        push(96);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let blob = synthetic();
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 12);
        assert!(btf.member_offset("outer", "zz").is_err());
        assert!(btf.member_offset("nope", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[0u8; 4]).is_err());
        let mut blob = synthetic();
        blob.truncate(40);
        assert!(Btf::parse(&blob).is_err());
        // A member list that runs past the type section.
        let mut blob = synthetic();
        blob[24 + 16 + 4] += 1; // struct inner: 3 members instead of 2
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn host_kernel_sock_sk_err_when_btf_is_present() {
        let path = "/sys/kernel/btf/vmlinux";
        if !std::path::Path::new(path).exists() {
            eprintln!("skipped: {path} not present on this kernel");
            return;
        }
        let data = std::fs::read(path).unwrap();
        let btf = Btf::parse(&data).unwrap();
        let off = btf.member_offset("sock", "sk_err").unwrap();
        // sk_err sits after struct sock_common (> 100 bytes) and well inside struct sock.
        assert!((100..2048).contains(&off), "sk_err at {off}");
        // skc_state is in the anonymous-free sock_common at the start of struct sock.
        assert!(btf.member_offset("sock", "__sk_common").unwrap() == 0);
    }

    #[test]
    fn finds_the_ids_of_typedefs_and_functions_by_name() {
        let blob = synthetic();
        let btf = Btf::parse(&blob).unwrap();
        // `synthetic` has no typedef or function; struct names are not targets.
        assert_eq!(btf.id_of(&Target::Typedef("inner".into())), None);
        assert_eq!(btf.id_of(&Target::Func("outer".into())), None);
    }

    /// aya finds each target in the sparse blob at the id given, and nothing else.
    #[test]
    fn aya_finds_the_targets_of_a_sparse_blob_at_their_ids() {
        use aya_obj::btf::BtfKind;
        let targets = [
            (Target::Typedef("btf_trace_tcp_probe".into()), 7),
            (Target::Func("tcp_v4_connect".into()), 3),
            (Target::Func("tcp_v6_connect".into()), 90_000),
        ];
        let blob = sparse(&targets);
        let aya = aya::Btf::parse(&blob, aya::Endianness::default()).unwrap();
        let id = |name: &str, kind| aya.id_by_type_name_kind(name, kind).ok();
        assert_eq!(id("btf_trace_tcp_probe", BtfKind::Typedef), Some(7));
        assert_eq!(id("tcp_v4_connect", BtfKind::Func), Some(3));
        assert_eq!(id("tcp_v6_connect", BtfKind::Func), Some(90_000));
        assert_eq!(id("tcp_v4_connect", BtfKind::Typedef), None);
        assert_eq!(id("tcp_sendmsg", BtfKind::Func), None);
    }

    /// On this kernel, aya finds every target of the probe table at the same id in the
    /// sparse blob as in its full parse of the kernel's BTF.
    #[test]
    fn host_kernel_sparse_ids_match_a_full_parse() {
        use aya_obj::btf::BtfKind;
        let path = "/sys/kernel/btf/vmlinux";
        if !std::path::Path::new(path).exists() {
            eprintln!("skipped: {path} not present on this kernel");
            return;
        }
        let data = std::fs::read(path).unwrap();
        let ours = Btf::parse(&data).unwrap();
        let targets = crate::kernel::probes::btf_targets();
        let ids: Vec<(Target, u32)> = targets
            .iter()
            .filter_map(|t| Some((t.clone(), ours.id_of(t)?)))
            .collect();
        assert!(
            !ids.is_empty(),
            "no target of the probe table in the kernel's BTF"
        );
        let full = aya::Btf::parse(&data, aya::Endianness::default()).unwrap();
        let slim = aya::Btf::parse(&sparse(&ids), aya::Endianness::default()).unwrap();
        for target in &targets {
            let (name, kind) = match target {
                Target::Typedef(n) => (n, BtfKind::Typedef),
                Target::Func(n) => (n, BtfKind::Func),
            };
            assert_eq!(
                slim.id_by_type_name_kind(name, kind).ok(),
                full.id_by_type_name_kind(name, kind).ok(),
                "{target:?}"
            );
        }
    }

    #[test]
    fn each_load_gets_its_own_target_and_a_function_a_stand_in_typedef_id() {
        use aya_obj::btf::BtfKind;
        let typedef = Target::Typedef("btf_trace_tcp_probe".into());
        let func = Target::Func("tcp_v4_connect".into());
        let btf = AttachBtf::Ids(vec![(typedef.clone(), 40), (func.clone(), 900)]);
        let id = |b: &aya::Btf, name: &str, kind| b.id_by_type_name_kind(name, kind).ok();
        let own = btf.for_target(&func);
        assert_eq!(id(&own, "tcp_v4_connect", BtfKind::Func), Some(900));
        assert_eq!(id(&own, "btf_trace_tcp_probe", BtfKind::Typedef), None);
        let missing = btf.for_target(&Target::Func("tcp_v6_connect".into()));
        assert_eq!(id(&missing, "tcp_v6_connect", BtfKind::Func), None);
        let probe = btf.not_a_function(&func).unwrap();
        assert_eq!(id(&probe, "tcp_v4_connect", BtfKind::Func), Some(40));
        // Without a typedef id to stand in, no probe.
        assert!(AttachBtf::Ids(vec![(func.clone(), 900)])
            .not_a_function(&func)
            .is_none());
    }
}
