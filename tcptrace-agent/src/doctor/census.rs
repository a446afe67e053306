//! One pass over this network namespace's TCP sockets (sock_diag, as `ss -tan` reads
//! them) and what doctor and the exporter derive from it: TIME_WAIT, local ports in use
//! per destination, idle connections and whether keep-alive watches them.
//! Listeners and their accept queues too (`listeners.rs`).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;
use tcptrace_common::TcpState;

use crate::{
    doctor::listeners::{self, Listener},
    doctor::sock_diag::{self, InetDiagMsg, TcpInfo, Timer},
    doctor::sysctl::TcpSysctls,
};

/// At most this many idle connections are listed (all are counted).
pub const IDLE_LISTED: usize = 100;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Census {
    /// Sockets per state name, as `ss -tan` would count them.
    pub by_state: BTreeMap<&'static str, u64>,
    pub time_wait: u64,
    /// TIME_WAIT sockets by remote endpoint.
    pub time_wait_by_remote: BTreeMap<SocketAddr, u64>,
    /// Sockets holding a local port from `ip_local_port_range`, by remote endpoint: each
    /// destination can use at most the size of the range from one local address.
    pub ephemeral_by_remote: BTreeMap<SocketAddr, u64>,
    /// Every LISTEN socket with its accept queue, fullest first. All are kept: a
    /// namespace has few (one per port and address listened on, or per SO_REUSEPORT
    /// socket), unlike connections.
    pub listeners: Vec<Listener>,
    /// ESTABLISHED connections without data either way for at least the threshold.
    pub idle_with_keepalive: u64,
    pub idle_without_keepalive: u64,
    pub idle: Vec<IdleConnection>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleConnection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub idle_s: f64,
    pub keepalive: bool,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(skip)]
    inode: u32,
}

impl Census {
    /// Count everything; connections idle for `idle_after` or longer are listed, without
    /// their owners (`find_owners`).
    pub fn take(sysctls: &TcpSysctls, idle_after: Duration) -> Result<Census> {
        let mut c = Census::default();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            sock_diag::dump_tcp_with_info(family, |msg, info| {
                c.add(msg, info, sysctls, idle_after)
            })?;
        }
        c.idle.sort_by(|a, b| b.idle_s.total_cmp(&a.idle_s));
        c.idle.truncate(IDLE_LISTED);
        c.listeners.sort_by(listeners::fullest_first);
        Ok(c)
    }

    /// Name the process holding each listed idle connection and each listener. This
    /// reads the file descriptors of every process in /proc, so only `doctor`, which
    /// shows the owners, asks for it: the exporter's scrapes neither pay for the walk nor
    /// need to see the node's processes (the DaemonSet runs without hostPID); it names
    /// listeners from the programs' listener table (`exporter/listen_queues.rs`).
    pub fn find_owners(&mut self) {
        let inodes = self.idle.iter().map(|i| i.inode);
        let listeners = self.listeners.iter().map(|l| l.inode);
        let owners = socket_owners(&inodes.chain(listeners).collect());
        listeners::name_owners(&mut self.listeners, &owners);
        for conn in &mut self.idle {
            if let Some((pid, comm)) = owners.get(&conn.inode) {
                conn.pid = Some(*pid);
                conn.comm = Some(comm.clone());
            }
        }
    }

    fn add(
        &mut self,
        msg: &InetDiagMsg,
        info: Option<TcpInfo>,
        sysctls: &TcpSysctls,
        idle_after: Duration,
    ) {
        let state = TcpState::from_u8(msg.state);
        let name = state.map_or("UNKNOWN", |s| s.name());
        *self.by_state.entry(name).or_insert(0) += 1;
        let (local, remote) = endpoints(msg);
        if state == Some(TcpState::Listen) {
            self.listeners.push(Listener::from_diag(msg));
            return;
        }
        if state == Some(TcpState::TimeWait) {
            self.time_wait += 1;
            *self.time_wait_by_remote.entry(remote).or_insert(0) += 1;
        }
        if sysctls.in_ephemeral_range(local.port()) {
            *self.ephemeral_by_remote.entry(remote).or_insert(0) += 1;
        }
        if state != Some(TcpState::Established) {
            return;
        }
        let Some(info) = info else { return };
        let idle_ms = info.last_data_sent_ms.min(info.last_data_recv_ms);
        if u128::from(idle_ms) < idle_after.as_millis() {
            return;
        }
        let keepalive = matches!(msg.timer, Some(Timer::KeepAlive(_)));
        if keepalive {
            self.idle_with_keepalive += 1;
        } else {
            self.idle_without_keepalive += 1;
        }
        self.idle.push(IdleConnection {
            local,
            remote,
            idle_s: f64::from(idle_ms) / 1000.0,
            keepalive,
            pid: None,
            comm: None,
            inode: msg.inode,
        });
    }

    /// The destinations using the largest share of the ephemeral range, highest first.
    pub fn port_use(&self, sysctls: &TcpSysctls, top: usize) -> Vec<(SocketAddr, u64, f64)> {
        let range = sysctls.ephemeral_ports() as f64;
        let mut v: Vec<(SocketAddr, u64, f64)> = self
            .ephemeral_by_remote
            .iter()
            .map(|(r, n)| (*r, *n, *n as f64 / range))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(top);
        v
    }
}

#[cfg(test)]
impl Census {
    /// A census of these listeners alone, for the checks' tests.
    pub fn of_listeners(listeners: Vec<Listener>) -> Census {
        Census {
            listeners,
            ..Default::default()
        }
    }
}

fn endpoints(msg: &InetDiagMsg) -> (SocketAddr, SocketAddr) {
    let id = &msg.socket_id;
    (
        SocketAddr::new(id.source_address, id.source_port),
        SocketAddr::new(id.destination_address, id.destination_port),
    )
}

/// pid and command of the processes holding these socket inodes (/proc/*/fd).
fn socket_owners(inodes: &HashSet<u32>) -> HashMap<u32, (u32, String)> {
    let mut owners = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Some(inode) = socket_inode(&fd.path()).filter(|i| inodes.contains(i)) {
                let comm = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                owners.insert(inode, (pid, comm));
            }
        }
    }
    owners
}

/// The inode of the socket a file descriptor link (`/proc/PID/fd/N`) points to.
fn socket_inode(fd: &std::path::Path) -> Option<u32> {
    let target = std::fs::read_link(fd).ok()?;
    let inode = target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?;
    inode.parse().ok()
}

/// The inodes of this process's own sockets (/proc/self/fd: no privilege needed).
pub fn own_sockets() -> HashSet<u32> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| socket_inode(&fd.path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_idle_connection_of_ours_with_its_owner() {
        let sysctls = TcpSysctls::read().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut c = Census::take(&sysctls, Duration::from_millis(200)).unwrap();
        let mine = |c: &Census| {
            c.idle
                .iter()
                .find(|i| i.local == client.local_addr().unwrap())
                .cloned()
                .expect("our idle client socket")
        };
        assert!(!mine(&c).keepalive);
        // Counting alone does not walk /proc (the exporter's path); find_owners does.
        assert_eq!(mine(&c).pid, None);
        c.find_owners();
        assert_eq!(mine(&c).pid, Some(std::process::id()));
        assert!(c.by_state["ESTABLISHED"] >= 2);
        assert!(c.by_state["LISTEN"] >= 1, "our listener");
    }

    #[test]
    fn lists_our_listener_with_its_queue_and_owner() {
        let sysctls = TcpSysctls::read().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = std::net::TcpStream::connect(addr).unwrap();
        let mut c = Census::take(&sysctls, Duration::from_secs(300)).unwrap();
        let mine = |c: &Census| c.listeners.iter().find(|l| l.local == addr).cloned();
        let l = mine(&c).expect("our listener");
        assert_eq!((l.queue_length, l.pid), (1, None), "{l:?}");
        c.find_owners();
        assert_eq!(mine(&c).unwrap().pid, Some(std::process::id()));
        assert!(own_sockets().contains(&l.inode));
    }
}
