//! Listeners and their accept queues, from the census's sock_diag pass: for a LISTEN
//! socket the kernel reports the accept queue's length as `idiag_rqueue` (connections
//! whose handshake completed, waiting for accept()) and its limit as `idiag_wqueue`
//! (listen()'s backlog, capped at `net.core.somaxconn` when listen() was called): `ss
//! -lt` shows them as Recv-Q and Send-Q. Also the evidence doctor's `listen_queues`
//! check weighs them with: `somaxconn` and the namespace's overflow counters.
use std::{cmp::Ordering, collections::HashMap, net::SocketAddr};

use serde::Serialize;

use crate::doctor::{netstat, sock_diag::InetDiagMsg, sysctl};

/// A queue this full (share of its limit) or more is near full.
pub const NEAR_FULL: f64 = 0.8;

#[derive(Clone, Debug, Serialize)]
pub struct Listener {
    pub local: SocketAddr,
    /// Connections waiting for accept() (`ss -lt` Recv-Q).
    pub queue_length: u32,
    /// The queue's limit (`ss -lt` Send-Q); see `is_full`.
    pub queue_limit: u32,
    /// The process holding the socket (`Census::find_owners`).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(skip)]
    pub inode: u32,
}

impl Listener {
    pub fn from_diag(msg: &InetDiagMsg) -> Listener {
        let id = &msg.socket_id;
        Listener {
            local: SocketAddr::new(id.source_address, id.source_port),
            queue_length: msg.recv_queue,
            queue_limit: msg.send_queue,
            pid: None,
            comm: None,
            inode: msg.inode,
        }
    }

    /// Whether the next connection is turned away (counted in ListenOverflows): the
    /// kernel's own test, `sk_acceptq_is_full`, is length > limit, so a backlog of N
    /// queues N + 1 connections.
    pub fn is_full(&self) -> bool {
        self.queue_length > self.queue_limit
    }

    /// Share of the limit in use (above 1 when full; a limit of 0 counts as 1).
    pub fn fill(&self) -> f64 {
        f64::from(self.queue_length) / f64::from(self.queue_limit.max(1))
    }

    /// At least `NEAR_FULL` of the limit in use, with a connection waiting.
    pub fn is_near_full(&self) -> bool {
        self.queue_length > 0 && self.fill() >= NEAR_FULL
    }

    /// "127.0.0.1:80 (nginx, pid 12)", or "(owner unknown)".
    pub fn describe(&self) -> String {
        match (&self.comm, self.pid) {
            (Some(comm), Some(pid)) => format!("{} ({comm}, pid {pid})", self.local),
            _ => format!("{} (owner unknown)", self.local),
        }
    }
}

/// Fullest queue first, then the longest, then by address (a stable order for listeners
/// whose queues are empty, as most are).
pub fn fullest_first(a: &Listener, b: &Listener) -> Ordering {
    b.fill()
        .total_cmp(&a.fill())
        .then(b.queue_length.cmp(&a.queue_length))
        .then(a.local.cmp(&b.local))
        .then(a.inode.cmp(&b.inode))
}

/// Fill in each listener's owner from `socket_owners`' answer (inode -> pid, comm).
pub fn name_owners(listeners: &mut [Listener], owners: &HashMap<u32, (u32, String)>) {
    for l in listeners {
        if let Some((pid, comm)) = owners.get(&l.inode) {
            l.pid = Some(*pid);
            l.comm = Some(comm.clone());
        }
    }
}

/// What the `listen_queues` check weighs the queues against, each with why it is
/// missing where it could not be read.
#[derive(Clone, Debug)]
pub struct ListenEvidence {
    /// `net.core.somaxconn`: the cap listen() applies to its backlog.
    pub somaxconn: Result<u64, String>,
    /// The namespace's `TcpExtListenOverflows` and `TcpExtListenDrops` (/proc/net/netstat),
    /// since it was created.
    pub overflows: Result<Overflows, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overflows {
    /// Connections a full accept queue turned away (at the SYN or the final ACK).
    pub listen_overflows: u64,
    /// Everything a listener dropped, overflows included.
    pub listen_drops: u64,
}

impl ListenEvidence {
    /// Read both for the calling thread's network namespace.
    pub fn read() -> ListenEvidence {
        ListenEvidence {
            somaxconn: sysctl::read_u64("net.core.somaxconn").map_err(|e| format!("{e:#}")),
            overflows: read_overflows().map_err(|e| format!("{e:#}")),
        }
    }
}

fn read_overflows() -> anyhow::Result<Overflows> {
    let tcp_ext = netstat::read_tcp_ext()?;
    let get = |name: &str| {
        tcp_ext
            .get(name)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("/proc/net/netstat has no TcpExt {name}"))
    };
    Ok(Overflows {
        listen_overflows: get("ListenOverflows")?,
        listen_drops: get("ListenDrops")?,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn listener(addr: &str, length: u32, limit: u32) -> Listener {
        Listener {
            local: addr.parse().unwrap(),
            queue_length: length,
            queue_limit: limit,
            pid: None,
            comm: None,
            inode: 0,
        }
    }

    #[test]
    fn full_is_the_kernels_test_and_near_full_needs_a_waiting_connection() {
        // A backlog of 2 queues 3 before turning connections away.
        assert!(!listener("127.0.0.1:1", 2, 2).is_full());
        assert!(listener("127.0.0.1:1", 3, 2).is_full());
        assert!(listener("127.0.0.1:1", 2, 2).is_near_full());
        assert!(listener("127.0.0.1:1", 8, 10).is_near_full());
        assert!(!listener("127.0.0.1:1", 7, 10).is_near_full());
        // listen(fd, 0): one connection fills it; an empty one is not near full.
        assert!(!listener("127.0.0.1:1", 0, 0).is_near_full());
        assert!(listener("127.0.0.1:1", 1, 0).is_full());
    }

    fn census(listeners: Vec<Listener>) -> crate::doctor::census::Census {
        crate::doctor::census::Census::of_listeners(listeners)
    }

    fn evidence(somaxconn: u64, overflows: u64) -> ListenEvidence {
        ListenEvidence {
            somaxconn: Ok(somaxconn),
            overflows: Ok(Overflows {
                listen_overflows: overflows,
                listen_drops: overflows,
            }),
        }
    }

    #[test]
    fn the_check_warns_of_full_queues_and_overflows_and_tells_of_capped_backlogs() {
        use crate::doctor::checks::{listen_queues, Severity};
        let mut full = listener("127.0.0.1:8080", 3, 2);
        (full.pid, full.comm) = (Some(42), Some("server".into()));
        let f = listen_queues(
            &census(vec![full, listener("0.0.0.0:22", 0, 128)]),
            &evidence(4096, 0),
        );
        assert_eq!(f.severity, Severity::Warning);
        assert!(
            f.summary
                .starts_with("1 accept queues full, 0 near full; 0 connections"),
            "{}",
            f.summary
        );
        assert!(f.evidence.contains(&"127.0.0.1:8080 (server, pid 42): accept queue 3 of 2, full: new connections are turned away".to_string()), "{:?}", f.evidence);

        // Nothing waiting, a backlog capped at somaxconn: worth knowing, no more.
        let capped = census(vec![listener("0.0.0.0:80", 0, 128)]);
        let f = listen_queues(&capped, &evidence(128, 0));
        assert_eq!(f.severity, Severity::Info);
        assert!(
            f.evidence
                .iter()
                .any(|e| e.starts_with("capped at somaxconn: 0.0.0.0:80 (owner unknown)")),
            "{:?}",
            f.evidence
        );
        assert_eq!(
            listen_queues(&capped, &evidence(4096, 0)).severity,
            Severity::Ok
        );

        // Overflows counted in the namespace: a warning even with empty queues now.
        let f = listen_queues(&capped, &evidence(4096, 7));
        assert_eq!(f.severity, Severity::Warning);
        assert!(
            f.evidence
                .iter()
                .any(|e| e.starts_with("ListenOverflows 7, ListenDrops 7 ")),
            "{:?}",
            f.evidence
        );

        // What could not be read is said, and does not warn.
        let unknown = ListenEvidence {
            somaxconn: Err("no such file".into()),
            overflows: Err("no such file".into()),
        };
        let f = listen_queues(&capped, &unknown);
        assert_eq!(f.severity, Severity::Ok);
        assert!(
            f.evidence
                .iter()
                .any(|e| e == "net.core.somaxconn unknown: no such file"),
            "{:?}",
            f.evidence
        );
    }

    #[test]
    fn fullest_first_then_longest_then_by_address() {
        let mut v = [
            listener("127.0.0.1:3", 0, 128),
            listener("127.0.0.1:2", 0, 128),
            listener("127.0.0.1:9", 10, 4096),
            listener("127.0.0.1:8", 3, 2),
            listener("127.0.0.1:7", 2, 2),
        ];
        v.sort_by(fullest_first);
        let ports: Vec<u16> = v.iter().map(|l| l.local.port()).collect();
        assert_eq!(ports, [8, 7, 9, 2, 3]);
    }
}
