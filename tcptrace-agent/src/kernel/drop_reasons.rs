//! The kernel's drop reasons by number (`enum skb_drop_reason`), read from the
//! `skb:kfree_skb` format's `__print_symbolic` table: the numbers move between kernels
//! as reasons are added, the names stay. What `tcptrace_drops_total{reason}` and the
//! `drop` events say.
use std::{collections::BTreeMap, path::Path, sync::OnceLock};

use tcptrace_common::{Config, FIELD_ABSENT};

use super::tracefs;

static NAMES: OnceLock<BTreeMap<u32, String>> = OnceLock::new();

/// The reason this kernel numbers `TCP_LISTEN_OVERFLOW`, a final ACK a full accept
/// queue turned away.
const LISTEN_OVERFLOW: &str = "TCP_LISTEN_OVERFLOW";

/// Read this kernel's reasons; tell the programs how many arguments the tracepoint
/// passes (from its layout, resolved with the others) and which reason is a listen
/// overflow. `false` where it has no reasons (before Linux 5.17) or no such tracepoint.
pub fn resolve(tracefs_root: &Path, config: &mut Config) -> bool {
    let layout = &config.kfree_skb;
    if layout.err == FIELD_ABSENT {
        return false;
    }
    config.kfree_skb_args = if layout.skaddr == FIELD_ABSENT { 3 } else { 4 };
    let path = tracefs::format_path(tracefs_root, "skb", "kfree_skb");
    let names = std::fs::read_to_string(path)
        .map(|text| parse_names(&text))
        .unwrap_or_default();
    config.listen_overflow_reason = names
        .iter()
        .find(|(_, name)| name.as_str() == LISTEN_OVERFLOW)
        .map_or(0, |(n, _)| *n);
    let _ = NAMES.set(names);
    true
}

/// The name of reason `n` on this kernel (`SKB_DROP_REASON_` left off), or
/// `reason_<n>` where the table does not name it (a subsystem's reasons).
pub fn name(n: u32) -> String {
    NAMES
        .get()
        .and_then(|names| names.get(&n).cloned())
        .unwrap_or_else(|| format!("reason_{n}"))
}

/// `{ 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, ...` after `__print_symbolic(REC->reason`.
fn parse_names(text: &str) -> BTreeMap<u32, String> {
    let Some(start) = text.find("__print_symbolic(REC->reason") else {
        return BTreeMap::new();
    };
    text[start..]
        .split('{')
        .skip(1)
        .filter_map(|entry| {
            let entry = entry.split('}').next()?;
            let (number, name) = entry.split_once(',')?;
            let number = number.trim().parse().ok()?;
            let name = name.trim().strip_prefix('"')?.strip_suffix('"')?;
            Some((number, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/formats/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn names_come_from_the_format_of_6_18() {
        let names = parse_names(&fixture("6.18-kfree_skb"));
        assert_eq!(names[&2], "NOT_SPECIFIED");
        assert_eq!(names[&12], "NETFILTER_DROP");
        assert_eq!(names[&40], LISTEN_OVERFLOW);
        assert_eq!(names.get(&1), None, "SKB_CONSUMED is not a drop");
        assert_eq!(names.len(), 127);
    }

    #[test]
    fn the_numbers_move_between_kernels_and_the_names_stay() {
        let names_6_1 = parse_names(&fixture("6.1-kfree_skb"));
        assert_eq!(names_6_1[&1], "NOT_SPECIFIED", "6.1 has no SKB_CONSUMED");
        assert_eq!(names_6_1[&7], "NETFILTER_DROP");
        assert_eq!(
            parse_names(&fixture("6.12-kfree_skb"))[&11],
            "NETFILTER_DROP"
        );
        let has_overflow = |series: &str| {
            parse_names(&fixture(&format!("{series}-kfree_skb")))
                .values()
                .any(|n| n == LISTEN_OVERFLOW)
        };
        assert!(!has_overflow("6.12") && has_overflow("6.18"));
    }

    #[test]
    fn a_kernel_without_the_table_has_no_names() {
        assert!(parse_names(&fixture("6.18-consume_skb")).is_empty());
        assert_eq!(name(100_000), "reason_100000");
    }
}
