//! The programs' listener table (`LISTENERS`), read from userspace: who called listen()
//! on each listener opened since the programs attached, keyed by address, port and
//! network namespace. The exporter names listeners from it without looking at other
//! processes' file descriptors, which it could not read anyway: it runs without hostPID
//! and drops every capability after attaching (reading another process's
//! /proc/PID/fd then needs CAP_SYS_PTRACE, or a target with no capabilities).
use std::{net::SocketAddr, os::unix::fs::MetadataExt as _};

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use tcptrace_common::{
    event::{ListenKey, Listener},
    Owner, AF_INET, AF_INET6,
};

pub struct ListenerTable {
    map: HashMap<MapData, ListenKey, Listener>,
    /// The agent's network namespace, as the programs key it (`net.ns.inum`).
    netns: u32,
}

impl ListenerTable {
    pub fn take(ebpf: &mut Ebpf) -> Result<ListenerTable> {
        let map = ebpf
            .take_map("LISTENERS")
            .context("LISTENERS map missing from the eBPF object")?;
        let netns = std::fs::metadata("/proc/thread-self/ns/net")
            .context("reading this thread's network namespace")?
            .ino() as u32;
        Ok(ListenerTable {
            map: HashMap::try_from(map).context("LISTENERS map has an unexpected type")?,
            netns,
        })
    }

    /// Who opened the listener on `local` in the agent's namespace, if the programs saw it.
    pub fn owner(&self, local: SocketAddr) -> Option<Owner> {
        // Without the kernel's namespace offsets the programs key every listener with
        // namespace 0; with them no key has 0, so trying it second never misleads.
        [self.netns, 0]
            .into_iter()
            .find_map(|netns| self.map.get(&key(local, netns), 0).ok())
            .map(|l| l.owner)
    }
}

/// The table's key for a listener bound to `local`: the address as the programs store
/// it (an IPv4 address in the first four bytes; zeros for a wildcard bind).
fn key(local: SocketAddr, netns: u32) -> ListenKey {
    let mut addr = [0u8; 16];
    let family = match local {
        SocketAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.ip().octets());
            AF_INET
        }
        SocketAddr::V6(a) => {
            addr = a.ip().octets();
            AF_INET6
        }
    };
    ListenKey {
        addr,
        family,
        port: local.port(),
        netns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_as_the_programs_build_them() {
        let k = key("10.1.2.3:8080".parse().unwrap(), 7);
        assert_eq!(&k.addr[..4], &[10, 1, 2, 3]);
        assert_eq!(&k.addr[4..], &[0; 12]);
        assert_eq!((k.family, k.port, k.netns), (AF_INET, 8080, 7));
        let k = key("[::]:80".parse().unwrap(), 7);
        assert_eq!((k.addr, k.family), ([0; 16], AF_INET6));
    }
}
