//! `tcptrace_listen_queue_length` and `tcptrace_listen_queue_limit`: each listener's
//! accept queue in the agent's network namespace, from the census's sock_diag pass,
//! labelled by address and owner.
//!
//! Bounded: at most `LISTENERS_EXPORTED` label sets, the fullest listeners'; the others
//! are summed into `listener="other"`, so sums over the family stay whole.
//!
//! Owners come from the programs' listener table (`kernel/listeners.rs`), and for the
//! agent's own listeners, which it opens before the programs attach, from /proc/self/fd
//! read once at start. No scrape walks /proc: after dropping its capabilities the agent
//! cannot read other processes' descriptors, and in the DaemonSet it cannot see their
//! processes. Listeners opened before the agent started (by another process) have
//! `comm="unknown"`.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
};

use super::exposition::{gauge, Family};
use crate::{
    doctor::{census, listeners::Listener},
    kernel::listeners::ListenerTable,
};

/// Label sets exported per family, `other` aside.
pub const LISTENERS_EXPORTED: usize = 50;

/// `comm` of a listener whose owner is not known.
pub const UNKNOWN: &str = "unknown";
const OTHER: &str = "other";

/// A kernel command name is at most 15 bytes (TASK_COMM_LEN 16, NUL included).
pub const COMM_MAX_BYTES: usize = 15;

/// One exported label set: the listeners on one address with one owner, summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub listener: String,
    pub comm: String,
    pub length: u64,
    pub limit: u64,
}

/// The rows for `listeners` (fullest first, as the census sorts them): the addresses
/// of the first `max` listeners, split by owner (`comm_of`, asked only for those),
/// at most `max` label sets; everything else summed into `other`.
pub fn rows(
    listeners: &[Listener],
    max: usize,
    mut comm_of: impl FnMut(&Listener) -> Option<String>,
) -> Vec<Row> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for l in listeners {
        if addresses.len() == max {
            break;
        }
        if !addresses.contains(&l.local) {
            addresses.push(l.local);
        }
    }
    let chosen: HashSet<SocketAddr> = addresses.into_iter().collect();
    let mut named: BTreeMap<(SocketAddr, String), (u64, u64)> = BTreeMap::new();
    let mut other: Option<(u64, u64)> = None;
    for l in listeners {
        let sums = if chosen.contains(&l.local) {
            let comm = comm_of(l).map_or_else(|| UNKNOWN.to_string(), comm_label);
            let key = (l.local, comm);
            // An address listened on by several owners could go past `max`.
            if named.len() < max || named.contains_key(&key) {
                named.entry(key).or_default()
            } else {
                other.get_or_insert_default()
            }
        } else {
            other.get_or_insert_default()
        };
        sums.0 += u64::from(l.queue_length);
        sums.1 += u64::from(l.queue_limit);
    }
    let mut rows: Vec<Row> = named
        .into_iter()
        .map(|((local, comm), (length, limit))| Row {
            listener: local.to_string(),
            comm,
            length,
            limit,
        })
        .collect();
    if let Some((length, limit)) = other {
        rows.push(Row {
            listener: OTHER.into(),
            comm: OTHER.into(),
            length,
            limit,
        });
    }
    rows
}

/// A command name as a label value: at most `COMM_MAX_BYTES` (cut on a character
/// boundary), `unknown` if empty.
fn comm_label(comm: String) -> String {
    let mut end = comm.len().min(COMM_MAX_BYTES);
    while !comm.is_char_boundary(end) {
        end -= 1;
    }
    match &comm[..end] {
        "" => UNKNOWN.into(),
        cut => cut.into(),
    }
}

/// Who owns each listener, as a scrape can tell without walking /proc, remembered by
/// socket inode: a listener's owner never changes, and one opened before the agent
/// stays unknown, so each listener costs its lookups (at most two map reads) once and
/// steady scrapes none. Only the last scrape's exported listeners are remembered, at
/// most as many as their sockets. Measured on a 2-core VM with 200 listeners opened
/// before the agent (medians of `tcptrace_scrape_duration_seconds`, 300 scrapes): 8.4
/// ms without the listen-queue families, 9.4 ms looking owners up on every scrape, 8.9
/// ms remembering them; `cargo xtask bench render` with the host's 2 listeners: 8.8 ms
/// for `/metrics` before and after.
pub struct Owners {
    table: Option<ListenerTable>,
    /// The agent's sockets as it starts serving: its listeners among them, bound before
    /// the programs attached and so missing from the table.
    own: HashSet<u32>,
    own_comm: String,
    known: HashMap<u32, Option<String>>,
}

impl Owners {
    /// Call once the agent's listeners are bound.
    pub fn new(table: Option<ListenerTable>) -> Owners {
        Owners {
            table,
            own: census::own_sockets(),
            own_comm: std::fs::read_to_string("/proc/self/comm")
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default(),
            known: HashMap::new(),
        }
    }

    /// The exported rows for this scrape's listeners (`rows`, with their owners).
    pub fn rows(&mut self, listeners: &[Listener]) -> Vec<Row> {
        let mut seen = HashMap::new();
        let rows = rows(listeners, LISTENERS_EXPORTED, |l| {
            let comm = match self.known.remove(&l.inode) {
                Some(known) => known,
                None => self.look_up(l),
            };
            seen.insert(l.inode, comm.clone());
            comm
        });
        self.known = seen;
        rows
    }

    fn look_up(&self, l: &Listener) -> Option<String> {
        if let Some(owner) = self.table.as_ref().and_then(|t| t.owner(l.local)) {
            let end = owner.comm.iter().position(|b| *b == 0).unwrap_or(16);
            return Some(String::from_utf8_lossy(&owner.comm[..end]).into_owned());
        }
        self.own.contains(&l.inode).then(|| self.own_comm.clone())
    }
}

pub fn families(rows: &[Row]) -> Vec<Family> {
    let series = |value: fn(&Row) -> u64| {
        rows.iter()
            .map(|r| (vec![r.listener.as_str(), r.comm.as_str()], value(r) as f64))
            .collect()
    };
    vec![
        gauge(
            "tcptrace_listen_queue_length",
            &format!("Connections waiting in each listener's accept queue (sock_diag, ss -lt Recv-Q), in the agent's network namespace, by listener (address:port) and the command that opened it; beyond the {LISTENERS_EXPORTED} fullest, summed in listener=\"other\"."),
            &["listener", "comm"],
            series(|r| r.length),
        ),
        gauge(
            "tcptrace_listen_queue_limit",
            "Each listener's accept-queue limit (ss -lt Send-Q): listen()'s backlog, capped at net.core.somaxconn. Above it connections are turned away.",
            &["listener", "comm"],
            series(|r| r.limit),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::listeners::tests::listener;

    fn with_inode(mut l: Listener, inode: u32) -> Listener {
        l.inode = inode;
        l
    }

    #[test]
    fn reuseport_sockets_of_one_owner_are_one_series() {
        let ls = [
            with_inode(listener("0.0.0.0:80", 3, 128), 1),
            with_inode(listener("0.0.0.0:80", 1, 128), 2),
            with_inode(listener("127.0.0.1:53", 0, 4096), 3),
        ];
        let rows = rows(&ls, 10, |l| {
            Some(if l.inode == 3 { "dns" } else { "nginx" }.into())
        });
        assert_eq!(
            rows,
            [
                Row {
                    listener: "0.0.0.0:80".into(),
                    comm: "nginx".into(),
                    length: 4,
                    limit: 256
                },
                Row {
                    listener: "127.0.0.1:53".into(),
                    comm: "dns".into(),
                    length: 0,
                    limit: 4096
                },
            ]
        );
    }

    #[test]
    fn beyond_the_bound_the_rest_is_summed_into_other_and_never_asked_for() {
        let ls: Vec<Listener> = (0..8)
            .map(|i| with_inode(listener(&format!("127.0.0.1:{}", 100 + i), 1, 10), i))
            .collect();
        let mut asked = Vec::new();
        let rows = rows(&ls, 3, |l| {
            asked.push(l.inode);
            None
        });
        assert_eq!(
            asked,
            [0, 1, 2],
            "owners looked up for the exported ones only"
        );
        assert_eq!(rows.len(), 4);
        assert!(rows[..3].iter().all(|r| r.comm == UNKNOWN));
        let other = rows.last().unwrap();
        assert_eq!(
            (other.listener.as_str(), other.comm.as_str()),
            ("other", "other")
        );
        assert_eq!((other.length, other.limit), (5, 50));
        let total: u64 = rows.iter().map(|r| r.length).sum();
        assert_eq!(
            total, 8,
            "the sum over the family is every queued connection"
        );
    }

    #[test]
    fn several_owners_on_one_address_stay_within_the_bound() {
        let ls: Vec<Listener> = (0..5)
            .map(|i| with_inode(listener("0.0.0.0:80", 0, 1), i))
            .collect();
        let rows = rows(&ls, 2, |l| Some(format!("worker{}", l.inode)));
        assert_eq!(rows.len(), 3, "two named, then other: {rows:?}");
        assert_eq!(rows[2].limit, 3);
    }

    #[test]
    fn owners_are_looked_up_once_per_listener_and_only_the_last_scrapes_kept() {
        let mut owners = Owners {
            table: None,
            own: HashSet::from([5]),
            own_comm: "tcptrace".into(),
            known: HashMap::new(),
        };
        let ours = with_inode(listener("127.0.0.1:9479", 0, 4096), 5);
        let older = with_inode(listener("127.0.0.1:22", 0, 128), 6);
        let comms = |rows: Vec<Row>| rows.into_iter().map(|r| r.comm).collect::<Vec<_>>();
        let first = comms(owners.rows(&[ours.clone(), older.clone()]));
        assert_eq!(first, [UNKNOWN, "tcptrace"], "port 22, then 9479");
        // Remembered: not looked up again.
        owners.own.clear();
        assert_eq!(comms(owners.rows(&[ours.clone(), older])), first);
        // A listener gone is forgotten.
        owners.rows(&[ours]);
        assert_eq!(owners.known.keys().collect::<Vec<_>>(), [&5]);
    }

    #[test]
    fn comm_labels_are_cut_to_the_kernels_length_and_never_empty() {
        assert_eq!(comm_label(String::new()), UNKNOWN);
        assert_eq!(comm_label("x".repeat(20)), "x".repeat(15));
        // A replacement character (3 bytes) is not split.
        assert_eq!(comm_label("\u{FFFD}".repeat(6)), "\u{FFFD}".repeat(5));
    }
}
