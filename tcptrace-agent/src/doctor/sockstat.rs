//! TCP's orphans and memory: the `TCP:` line of /proc/net/sockstat against
//! `net.ipv4.tcp_max_orphans` and `net.ipv4.tcp_mem`.
//!
//! Whose figures these are (net/ipv4/proc.c, `sockstat_seq_show`): `inuse` and `tw` are
//! counted per network namespace; `orphan`, `alloc` and `mem` are node-wide counters,
//! the same in every namespace. The two limits are node-wide too, and only the host's
//! namespace has them under /proc/sys (a container's namespace has no tcp_mem and no
//! tcp_max_orphans): there, the kernel's own memory-pressure flag (the `press` column of
//! /proc/net/protocols, node-wide and visible everywhere) says whether `mem` passed the
//! pressure threshold.
use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::doctor::sysctl;

#[derive(Clone, Debug, Serialize)]
pub struct TcpMemory {
    /// TCP sockets in use (hashed: listening, connected, orphaned) in this namespace.
    pub inuse: u64,
    /// TIME_WAIT (and FIN_WAIT2 after close()) mini-sockets of this namespace.
    pub tw: u64,
    /// Sockets closed by their application but not done with the peer, node-wide.
    pub orphan: u64,
    /// TCP sockets allocated, node-wide.
    pub alloc: u64,
    /// Pages TCP buffers hold, node-wide.
    pub mem_pages: u64,
    /// Bytes per page (sysconf(_SC_PAGESIZE)): `mem` and `tcp_mem` count pages.
    pub page_size: u64,
    /// `net.ipv4.tcp_max_orphans`; None where this namespace cannot see it.
    pub max_orphans: Option<u64>,
    /// `net.ipv4.tcp_mem` in pages: low, pressure, high; None where not visible.
    pub tcp_mem: Option<[u64; 3]>,
    /// The kernel's TCP memory-pressure flag (entered above tcp_mem's pressure value,
    /// left below its low value); None if /proc/net/protocols does not say.
    pub under_pressure: Option<bool>,
}

impl TcpMemory {
    pub fn read() -> Result<TcpMemory> {
        let sockstat = read_net_file("sockstat")?;
        let tcp = parse_sockstat_tcp(&sockstat)?;
        Ok(TcpMemory {
            inuse: tcp.inuse,
            tw: tcp.tw,
            orphan: tcp.orphan,
            alloc: tcp.alloc,
            mem_pages: tcp.mem,
            page_size: page_size(),
            max_orphans: sysctl::read_u64("net.ipv4.tcp_max_orphans").ok(),
            tcp_mem: read_tcp_mem().ok(),
            under_pressure: read_net_file("protocols")
                .ok()
                .and_then(|t| parse_tcp_pressure(&t)),
        })
    }

    /// Bytes for a number of pages.
    pub fn bytes(&self, pages: u64) -> u64 {
        pages.saturating_mul(self.page_size)
    }
}

/// A file of /proc/net as the calling thread's network namespace has it (what sock_diag
/// and /proc/sys answer for); /proc/net itself follows the process's main thread.
fn read_net_file(name: &str) -> Result<String> {
    let own = format!("/proc/thread-self/net/{name}");
    std::fs::read_to_string(&own)
        .or_else(|_| std::fs::read_to_string(format!("/proc/net/{name}")))
        .with_context(|| format!("reading {own}"))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 only for unknown names.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn read_tcp_mem() -> Result<[u64; 3]> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")?;
    parse_three(&text).with_context(|| format!("tcp_mem {text:?} is not three numbers"))
}

fn parse_three(text: &str) -> Option<[u64; 3]> {
    let v: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

#[derive(Debug, PartialEq, Eq)]
struct SockstatTcp {
    inuse: u64,
    orphan: u64,
    tw: u64,
    alloc: u64,
    mem: u64,
}

/// `TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1` (names and values alternate).
fn parse_sockstat_tcp(text: &str) -> Result<SockstatTcp> {
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("TCP:")) else {
        bail!("no TCP: line in /proc/net/sockstat");
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Result<u64> {
        let at = words
            .iter()
            .position(|w| *w == name)
            .with_context(|| format!("no `{name}` in sockstat's TCP line {line:?}"))?;
        words
            .get(at + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("`{name}` in sockstat's TCP line {line:?}"))
    };
    Ok(SockstatTcp {
        inuse: field("inuse")?,
        orphan: field("orphan")?,
        tw: field("tw")?,
        alloc: field("alloc")?,
        mem: field("mem")?,
    })
}

/// The `press` column of TCP's row in /proc/net/protocols: `yes`, `no` (or `NI`, not
/// implemented, for protocols without memory accounting).
fn parse_tcp_pressure(text: &str) -> Option<bool> {
    let mut lines = text.lines();
    let column = lines
        .next()?
        .split_whitespace()
        .position(|c| c == "press")?;
    let row = lines.find(|l| l.split_whitespace().next() == Some("TCP"))?;
    match row.split_whitespace().nth(column)? {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tcp_line_of_sockstat() {
        let text = "sockets: used 170\nTCP: inuse 9 orphan 1 tw 23 alloc 12 mem 127\n\
                    UDP: inuse 2 mem 4\n";
        let tcp = parse_sockstat_tcp(text).unwrap();
        assert_eq!(
            tcp,
            SockstatTcp {
                inuse: 9,
                orphan: 1,
                tw: 23,
                alloc: 12,
                mem: 127
            }
        );
        assert!(parse_sockstat_tcp("UDP: inuse 2 mem 4\n").is_err());
        assert!(parse_sockstat_tcp("TCP: inuse 9 orphan x tw 1 alloc 1 mem 1\n").is_err());
    }

    #[test]
    fn parses_tcp_mem_and_the_pressure_flag() {
        assert_eq!(
            parse_three("287898\t383866\t575796\n"),
            Some([287898, 383866, 575796])
        );
        assert_eq!(parse_three("1 2"), None);
        let protocols = "protocol  size sockets  memory press maxhdr  slab module\n\
                         UDP       1344      0       4   NI       0   yes  kernel\n\
                         TCP       2304      1       0   no     192   yes  kernel\n";
        assert_eq!(parse_tcp_pressure(protocols), Some(false));
        let pressed = protocols.replace("0   no", "0   yes");
        assert_eq!(parse_tcp_pressure(&pressed), Some(true));
    }

    #[test]
    fn reads_this_machine() {
        let m = TcpMemory::read().unwrap();
        assert!(m.page_size >= 4096, "{m:?}");
    }
}
