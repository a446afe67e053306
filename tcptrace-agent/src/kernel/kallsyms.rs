//! Where a kernel function lies in kernel text, from `/proc/kallsyms`: the consume_skb
//! programs recognise the SYNs `tcp_rcv_state_process` consumed by the caller's
//! address. Addresses read as 0 where `kptr_restrict` hides them from this process.
use anyhow::{bail, Context as _, Result};

pub const KALLSYMS: &str = "/proc/kallsyms";

/// `[start, end)` of `function`: its address up to the next symbol's.
pub fn function_range(function: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(KALLSYMS).with_context(|| format!("reading {KALLSYMS}"))?;
    range_in(&text, function)
}

/// The kernel's own symbols come sorted by address, its modules' after them: the
/// function ends where the first symbol at a higher address after it begins. A scan
/// from the function on, not a parse of all 100,000+ lines (seconds in a debug build
/// on an emulated CPU).
fn range_in(text: &str, function: &str) -> Result<(u64, u64)> {
    let mut lines = text.lines();
    let start = lines
        .by_ref()
        .filter_map(parse_line)
        .find(|(_, name)| *name == function)
        .map(|(addr, _)| addr)
        .with_context(|| format!("{function} is not in {KALLSYMS}"))?;
    if start == 0 {
        bail!("{KALLSYMS} hides kernel addresses from this process (kernel.kptr_restrict)");
    }
    let end = lines
        .filter_map(parse_line)
        .map(|(addr, _)| addr)
        .find(|addr| *addr > start)
        .with_context(|| format!("no symbol after {function}"))?;
    Ok((start, end))
}

/// `ffffffff820808c0 T tcp_rcv_state_process` (module symbols have a `[module]` after).
fn parse_line(line: &str) -> Option<(u64, &str)> {
    let mut parts = line.split_whitespace();
    let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
    let _kind = parts.next()?;
    Some((addr, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff820808b0 T __pfx_tcp_rcv_state_process
ffffffff820808c0 T tcp_rcv_state_process
ffffffff820808c0 t tcp_rcv_state_process_alias
ffffffff82081e10 T __pfx_tcp_get_syncookie_mss
ffffffffc0a01000 t nft_do_chain\t[nf_tables]
";

    #[test]
    fn a_function_ends_where_the_next_symbol_starts() {
        assert_eq!(
            range_in(SAMPLE, "tcp_rcv_state_process").unwrap(),
            (0xffffffff820808c0, 0xffffffff82081e10)
        );
    }

    #[test]
    fn hidden_addresses_and_missing_functions_are_errors() {
        let hidden = "0000000000000000 T tcp_rcv_state_process\n0000000000000000 T x\n";
        let msg = format!(
            "{:#}",
            range_in(hidden, "tcp_rcv_state_process").unwrap_err()
        );
        assert!(msg.contains("kptr_restrict"), "{msg}");
        assert!(range_in(SAMPLE, "tcp_v4_rcv").is_err());
    }

    #[test]
    fn this_kernel_has_the_function() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: kallsyms addresses need root");
            return;
        }
        let (start, end) = function_range("tcp_rcv_state_process").unwrap();
        assert!(start < end && end - start < 64 * 1024, "{start:x}..{end:x}");
    }
}
