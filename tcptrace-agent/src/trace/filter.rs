//! Turning `tcptrace trace` filter flags into the kernel-side `Filter`.
use std::net::IpAddr;

use anyhow::{bail, Context as _, Result};
use tcptrace_common::{Filter, AF_INET, AF_INET6};

use crate::event::names;

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().with_context(|| {
        format!("`{s}` is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1/128)")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .with_context(|| format!("prefix length in `{s}` must be 0..={max}"))?,
    };
    Ok((addr, prefix))
}

/// `states,handshakes,retransmits,...` (any subset of the words in `names::KINDS`,
/// singular or plural) into the kind bit set.
pub fn parse_kinds(s: &str) -> Result<u32> {
    let mut bits = 0;
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match names::kind_by_word(word) {
            Some(kind) => bits |= kind.bit(),
            None => bail!("unknown event kind `{word}`: use {}", kind_words()),
        }
    }
    if bits == 0 {
        bail!("--events needs at least one of {}", kind_words());
    }
    Ok(bits)
}

fn kind_words() -> String {
    let words: Vec<&str> = names::KINDS.iter().map(|k| k.word).collect();
    words.join(", ")
}

/// The kernel truncates command names to 15 bytes; a longer filter could never match.
pub fn parse_comm(s: &str) -> Result<([u8; 16], u8)> {
    if s.is_empty() || s.len() > 15 {
        bail!("--comm `{s}` must be 1 to 15 bytes long (the kernel truncates process names to 15)");
    }
    let mut comm = [0u8; 16];
    comm[..s.len()].copy_from_slice(s.as_bytes());
    Ok((comm, s.len() as u8))
}

/// `--netns`: a namespace inode (as `ls -iL /proc/PID/ns/net` prints it), or a file
/// that is a network namespace (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn parse_netns(s: &str) -> Result<u32> {
    if let Ok(inode) = s.parse::<u32>() {
        if inode == 0 {
            bail!(
                "--netns 0 matches nothing: pass an inode, /var/run/netns/NAME or /proc/PID/ns/net"
            );
        }
        return Ok(inode);
    }
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
    let file = std::fs::File::open(s).with_context(|| {
        format!("--netns {s}: not a namespace inode, and the file cannot be opened")
    })?;
    // NS_GET_NSTYPE (Linux 4.11+): what kind of namespace a nsfs file is.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without arguments on a file we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        bail!(
            "--netns {s} is not a network namespace (try /var/run/netns/NAME or /proc/PID/ns/net)"
        );
    }
    let inode = file.metadata()?.ino();
    u32::try_from(inode).with_context(|| format!("--netns {s}: inode {inode} out of range"))
}

#[derive(Clone, Debug, Default)]
pub struct FilterArgs {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub port: Option<u16>,
    pub addr: Option<String>,
    pub ipv4_only: bool,
    pub ipv6_only: bool,
    pub netns: Option<String>,
    pub events: Option<String>,
}

pub fn build(args: &FilterArgs) -> Result<Filter> {
    let mut f = Filter::ANY;
    if let Some(pid) = args.pid {
        if pid == 0 {
            bail!("--pid 0 matches nothing: pass the pid of a running process");
        }
        f.pid = pid;
    }
    if let Some(port) = args.port {
        if port == 0 {
            bail!("--port 0 matches nothing: pass a port between 1 and 65535");
        }
        f.port = port;
    }
    if let Some(comm) = &args.comm {
        (f.comm, f.comm_len) = parse_comm(comm)?;
    }
    f.family = match (args.ipv4_only, args.ipv6_only) {
        (true, true) => bail!("-4 and -6 exclude each other"),
        (true, false) => AF_INET,
        (false, true) => AF_INET6,
        _ => 0,
    };
    if let Some(cidr) = &args.addr {
        let (addr, prefix) = parse_cidr(cidr)?;
        f.cidr_prefix = prefix;
        match addr {
            IpAddr::V4(a) => {
                f.cidr_family = AF_INET;
                f.cidr_addr[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                f.cidr_family = AF_INET6;
                f.cidr_addr = a.octets();
            }
        }
        if f.family != 0 && f.family != f.cidr_family {
            bail!("--addr {cidr} is of the other address family than -4/-6 selects");
        }
    }
    if let Some(netns) = &args.netns {
        f.netns = parse_netns(netns)?;
    }
    if let Some(events) = &args.events {
        f.kinds = parse_kinds(events)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("127.0.0.1").unwrap().1, 32);
        assert_eq!(parse_cidr("::1").unwrap().1, 128);
        assert_eq!(parse_cidr("fd00::/8").unwrap().1, 8);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense").is_err());
        assert!(parse_cidr("10.0.0.0/x").is_err());
    }

    #[test]
    fn netns_by_inode_or_file() {
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(parse_netns("4026531840").unwrap(), 4026531840);
        assert!(parse_netns("0").is_err());
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(parse_netns("/proc/self/ns/net").unwrap(), own);
        let msg = format!("{:#}", parse_netns("/proc/self/ns/uts").unwrap_err());
        assert!(msg.contains("is not a network namespace"), "{msg}");
        let msg = format!(
            "{:#}",
            parse_netns("/var/run/netns/no-such-ns").unwrap_err()
        );
        assert!(msg.contains("cannot be opened"), "{msg}");
    }

    #[test]
    fn kinds() {
        use tcptrace_common::EventKind;
        assert_eq!(
            parse_kinds("states,retransmits").unwrap(),
            EventKind::StateChange.bit() | EventKind::Retransmit.bit()
        );
        assert!(parse_kinds("bogus").is_err());
        assert!(parse_kinds(",").is_err());
        // Every kind has a word, and the words together select every kind.
        let all = kind_words().replace(' ', "");
        assert_eq!(
            parse_kinds(&all).unwrap().count_ones(),
            names::KINDS.len() as u32
        );
    }

    #[test]
    fn whole_filter() {
        let f = build(&FilterArgs {
            pid: Some(5),
            comm: Some("nginx".into()),
            port: Some(443),
            addr: Some("192.168.0.0/16".into()),
            ipv4_only: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (f.pid, f.port, f.family, f.cidr_family, f.cidr_prefix),
            (5, 443, AF_INET, AF_INET, 16)
        );
        assert_eq!(&f.cidr_addr[..2], &[192, 168]);
        assert_eq!(f.comm_len, 5);
        assert!(build(&FilterArgs {
            ipv4_only: true,
            ipv6_only: true,
            ..Default::default()
        })
        .is_err());
        assert!(build(&FilterArgs {
            addr: Some("::1".into()),
            ipv4_only: true,
            ..Default::default()
        })
        .is_err());
        assert!(build(&FilterArgs {
            comm: Some("a-very-long-process-name".into()),
            ..Default::default()
        })
        .is_err());
        assert!(build(&FilterArgs {
            port: Some(0),
            ..Default::default()
        })
        .is_err());
    }
}
