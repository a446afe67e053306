//! The kernel's extended TCP counters (`TcpExt:` lines of /proc/net/netstat, what
//! `nstat` shows as `TcpExt<Name>`), for the calling thread's network namespace. They
//! count from the namespace's creation (the host's: from boot).
use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};

/// Every `TcpExt` counter by name (`ListenOverflows`, ...).
pub fn read_tcp_ext() -> Result<BTreeMap<String, u64>> {
    // thread-self: /proc/net is the namespace of the process's first thread.
    let path = "/proc/thread-self/net/netstat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse(&text, "TcpExt:").with_context(|| format!("parsing {path}"))
}

/// The counters of one group: a line of names, then a line of values, each starting
/// with `prefix`.
fn parse(text: &str, prefix: &str) -> Result<BTreeMap<String, u64>> {
    let mut lines = text.lines().filter_map(|l| l.strip_prefix(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {prefix} names and values");
    };
    let (names, values): (Vec<&str>, Vec<&str>) = (
        names.split_whitespace().collect(),
        values.split_whitespace().collect(),
    );
    if names.len() != values.len() {
        bail!("{} {prefix} names but {} values", names.len(), values.len());
    }
    names
        .into_iter()
        .zip(values)
        .map(|(name, value)| {
            let n = value
                .parse()
                .with_context(|| format!("{prefix} {name} = {value:?}"))?;
            Ok((name.to_string(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pair_with_values_of_their_group_only() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 7 9\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 3\n";
        let c = parse(text, "TcpExt:").unwrap();
        assert_eq!(c["ListenOverflows"], 7);
        assert_eq!(c["ListenDrops"], 9);
        assert!(!c.contains_key("InNoRoutes"));
        assert!(parse("TcpExt: A B\nTcpExt: 1\n", "TcpExt:").is_err());
        assert!(parse("IpExt: A\nIpExt: 1\n", "TcpExt:").is_err());
    }

    #[test]
    fn this_namespace_has_the_listen_counters() {
        let c = read_tcp_ext().unwrap();
        assert!(c.contains_key("ListenOverflows") && c.contains_key("ListenDrops"));
    }
}
