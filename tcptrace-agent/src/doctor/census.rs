//! One pass over this network namespace's TCP sockets (sock_diag, as `ss -tan` reads
//! them) and what doctor and the exporter derive from it: TIME_WAIT, local ports in use
//! per destination, idle connections and whether keep-alive watches them, CLOSE_WAIT
//! sockets and the RTT and RTO of established connections; listeners and their accept
//! queues too (`listeners.rs`).
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

/// At most this many processes holding CLOSE_WAIT sockets are listed (all are counted).
pub const CLOSE_WAIT_LISTED: usize = 10;

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
    /// Sockets whose peer has closed and whose application has not (CLOSE_WAIT).
    pub close_wait: u64,
    /// Of them, without data either way for at least the idle threshold.
    pub close_wait_idle: u64,
    /// CLOSE_WAIT sockets by owning process, most first (`find_owners` fills it).
    pub close_wait_by_process: Vec<CloseWaitOwner>,
    /// How many processes (or "unknown") hold CLOSE_WAIT sockets, listed or not.
    pub close_wait_processes: u64,
    /// RTT and RTO across established connections (`summarize_round_trips` fills it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_trips: Option<RoundTrips>,
    #[serde(skip)]
    close_wait_sockets: Vec<CloseWaitSocket>,
    #[serde(skip)]
    round_trip_samples: Vec<RoundTripSample>,
    #[serde(skip)]
    backing_off: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CloseWaitOwner {
    /// None when no process's file descriptors hold the sockets (or cannot be read).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub sockets: u64,
    /// Of them, without data either way for at least the idle threshold.
    pub idle: u64,
    /// The longest any of them has moved no data, seconds. sock_diag gives no time
    /// since the peer's FIN; it came after the last data received.
    pub longest_idle_s: f64,
}

#[derive(Clone, Copy, Debug)]
struct CloseWaitSocket {
    inode: u32,
    idle_ms: u32,
    idle: bool,
}

/// Percentiles over the established connections' `tcp_info`.
#[derive(Clone, Debug, Serialize)]
pub struct RoundTrips {
    /// Connections measured: ESTABLISHED with tcp_info, not in a retransmission backoff.
    pub connections: u64,
    /// Left out: retransmitting right now, their RTO doubled by the backoff.
    pub backing_off: u64,
    pub rtt_p50_ms: f64,
    pub rtt_p99_ms: f64,
    pub rto_p50_ms: f64,
    pub rto_p99_ms: f64,
}

#[derive(Clone, Copy, Debug)]
struct RoundTripSample {
    rtt_us: u32,
    rto_us: u32,
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
        let inodes = self
            .idle
            .iter()
            .map(|i| i.inode)
            .chain(self.close_wait_sockets.iter().map(|s| s.inode))
            .chain(self.listeners.iter().map(|l| l.inode))
            .collect();
        let owners = socket_owners(&inodes);
        listeners::name_owners(&mut self.listeners, &owners);
        for conn in &mut self.idle {
            if let Some((pid, comm)) = owners.get(&conn.inode) {
                conn.pid = Some(*pid);
                conn.comm = Some(comm.clone());
            }
        }
        self.group_close_wait(&owners);
    }

    /// `close_wait_by_process` from the CLOSE_WAIT sockets and their owners.
    fn group_close_wait(&mut self, owners: &HashMap<u32, (u32, String)>) {
        let mut by_owner: HashMap<Option<&(u32, String)>, CloseWaitOwner> = HashMap::new();
        for s in &self.close_wait_sockets {
            let owner = owners.get(&s.inode);
            let entry = by_owner.entry(owner).or_insert_with(|| CloseWaitOwner {
                pid: owner.map(|o| o.0),
                comm: owner.map(|o| o.1.clone()),
                sockets: 0,
                idle: 0,
                longest_idle_s: 0.0,
            });
            entry.sockets += 1;
            entry.idle += u64::from(s.idle);
            entry.longest_idle_s = entry.longest_idle_s.max(f64::from(s.idle_ms) / 1000.0);
        }
        let mut groups: Vec<CloseWaitOwner> = by_owner.into_values().collect();
        groups.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
        self.close_wait_processes = groups.len() as u64;
        groups.truncate(CLOSE_WAIT_LISTED);
        self.close_wait_by_process = groups;
    }

    /// Fill `round_trips`: percentiles of RTT and RTO over the established connections.
    /// Only doctor asks: the exporter's scrapes collect the samples, and sort nothing.
    pub fn summarize_round_trips(&mut self) {
        if self.round_trip_samples.is_empty() {
            return;
        }
        let sorted = |field: fn(&RoundTripSample) -> u32| {
            let mut v: Vec<u32> = self.round_trip_samples.iter().map(field).collect();
            v.sort_unstable();
            v
        };
        let (rtts, rtos) = (sorted(|s| s.rtt_us), sorted(|s| s.rto_us));
        self.round_trips = Some(RoundTrips {
            connections: rtts.len() as u64,
            backing_off: self.backing_off,
            rtt_p50_ms: percentile_ms(&rtts, 0.5),
            rtt_p99_ms: percentile_ms(&rtts, 0.99),
            rto_p50_ms: percentile_ms(&rtos, 0.5),
            rto_p99_ms: percentile_ms(&rtos, 0.99),
        });
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
        if state == Some(TcpState::CloseWait) {
            self.add_close_wait(msg, info, idle_after);
        }
        if state != Some(TcpState::Established) {
            return;
        }
        let Some(info) = info else { return };
        self.add_round_trip(&info);
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

    fn add_close_wait(&mut self, msg: &InetDiagMsg, info: Option<TcpInfo>, idle_after: Duration) {
        let idle_ms = info.map_or(0, |i| i.last_data_sent_ms.min(i.last_data_recv_ms));
        let idle = u128::from(idle_ms) >= idle_after.as_millis();
        self.close_wait += 1;
        self.close_wait_idle += u64::from(idle);
        self.close_wait_sockets.push(CloseWaitSocket {
            inode: msg.inode,
            idle_ms,
            idle,
        });
    }

    /// A connection in a retransmission backoff has its RTO doubled: it says how bad
    /// the path is now, not what the RTO normally is, and is only counted.
    fn add_round_trip(&mut self, info: &TcpInfo) {
        if info.retransmits > 0 {
            self.backing_off += 1;
            return;
        }
        self.round_trip_samples.push(RoundTripSample {
            rtt_us: info.rtt_us,
            rto_us: info.rto_us,
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

/// The value at or below which a share `p` of the sorted microseconds falls, in ms.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted_us.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
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
    fn groups_our_close_wait_sockets_under_our_pid() {
        let sysctls = TcpSysctls::read().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _open = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_first, _) = listener.accept().unwrap();
        let (_server, _) = listener.accept().unwrap();
        drop(client);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            let c = Census::take(&sysctls, Duration::from_secs(300)).unwrap();
            if c.close_wait > 0 {
                break c;
            }
            assert!(std::time::Instant::now() < deadline, "no CLOSE_WAIT socket");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            c.close_wait_by_process.is_empty(),
            "grouped only with owners"
        );
        c.find_owners();
        let mine = c
            .close_wait_by_process
            .iter()
            .find(|o| o.pid == Some(std::process::id()))
            .expect("our CLOSE_WAIT socket under our pid");
        assert!(mine.sockets >= 1);
        c.summarize_round_trips();
        let r = c.round_trips.expect("our open connection's RTT and RTO");
        assert!(r.connections >= 2, "{r:?}");
        let floor_ms = sysctls.rto_min().as_secs_f64() * 1000.0;
        assert!(r.rto_p50_ms >= floor_ms, "{r:?}");
    }

    #[test]
    fn lists_our_listener_with_its_queue_and_owner() {
        let sysctls = TcpSysctls::read().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = std::net::TcpStream::connect(addr).unwrap();
        let mine = |c: &Census| c.listeners.iter().find(|l| l.local == addr).cloned();
        // The connection is queued once the server has the handshake's last ACK.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut c, l) = loop {
            let c = Census::take(&sysctls, Duration::from_secs(300)).unwrap();
            let l = mine(&c).expect("our listener");
            if l.queue_length == 1 || std::time::Instant::now() > deadline {
                break (c, l);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            (l.queue_length, l.queue_limit > 0, l.pid),
            (1, true, None),
            "{l:?}"
        );
        c.find_owners();
        assert_eq!(mine(&c).unwrap().pid, Some(std::process::id()));
        assert!(own_sockets().contains(&l.inode));
    }
}
