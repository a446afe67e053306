//! Who is at the other end of a connection: a remote address becomes the name of what
//! holds it in the cluster (`pod:NAMESPACE/NAME`, `service:NAMESPACE/NAME`,
//! `node:NAME`), else a configured range's name (`--peer-cidrs`), else `unresolved`
//! inside the cluster's ranges (`--cluster-cidrs`), else `loopback` or `external`. Values are few by construction: one per pod, service and node of the
//! cluster, the configured names and four words; the series budget folds the rest.
//!
//! The address book is filled by the API server watch (`peer_watch`) and read on every
//! event of `run --labels workload,peer`.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use crate::k8s::retention::{missing, Retiring};

/// Addresses the book holds at most (pods, services and nodes, both families): a
/// cluster of 30,000 dual-stack pods. Beyond it new addresses are refused and counted
/// (`tcptrace_peer_addresses_refused_total`); an address refused reads as
/// `unresolved` or `external`, never as another's name.
pub const MAX_ADDRESSES: usize = 65_536;

/// What holds addresses: `pod`, `service` or `node`, as its label prefix says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    Pod,
    Service,
    Node,
}

impl Holder {
    pub const ALL: [Holder; 3] = [Holder::Pod, Holder::Service, Holder::Node];

    pub fn name(self) -> &'static str {
        match self {
            Holder::Pod => "pod",
            Holder::Service => "service",
            Holder::Node => "node",
        }
    }
}

/// One object holding addresses: a pod or service (by UID) or a node (by name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub holder: Holder,
    pub id: Arc<str>,
}

/// An object's addresses and the label value they read as.
pub struct Held {
    pub object: ObjectId,
    pub addresses: Vec<IpAddr>,
    /// `pod:NAMESPACE/NAME`, `service:NAMESPACE/NAME`, `node:NAME`.
    pub label: Arc<str>,
}

#[derive(Clone)]
struct Address {
    object: ObjectId,
    label: Arc<str>,
}

/// The cluster's addresses and who holds each. When an address passes from one object
/// to another (a new pod on a freed IP), the newest writer holds it; the old object's
/// later removal does not take it away.
#[derive(Default)]
pub struct AddressBook {
    addresses: HashMap<IpAddr, Address>,
    objects: HashMap<ObjectId, Vec<IpAddr>>,
    /// Objects gone from the cluster: a deleted pod's last connections (FIN,
    /// TIME_WAIT, resets) still read as that pod for `retention::RETAIN`.
    retiring: Retiring<ObjectId>,
    /// Addresses not taken because the book was full.
    pub refused: u64,
}

pub type SharedBook = Arc<RwLock<AddressBook>>;

impl AddressBook {
    /// The label of the object holding `ip`, if any.
    pub fn label(&self, ip: IpAddr) -> Option<&Arc<str>> {
        self.addresses.get(&ip).map(|a| &a.label)
    }

    /// Addresses held, by holder kind.
    pub fn count(&self, holder: Holder) -> usize {
        self.addresses
            .values()
            .filter(|a| a.object.holder == holder)
            .count()
    }

    /// An object was added or changed: it now holds exactly `held.addresses`.
    pub fn set(&mut self, held: Held) {
        self.retiring.cancel(&held.object);
        let before = self.objects.remove(&held.object).unwrap_or_default();
        for ip in before.iter().filter(|ip| !held.addresses.contains(ip)) {
            self.release(*ip, &held.object);
        }
        let mut kept = Vec::with_capacity(held.addresses.len());
        for ip in held.addresses {
            let fits = self.addresses.len() < MAX_ADDRESSES || self.addresses.contains_key(&ip);
            if !fits {
                self.refused += 1;
                continue;
            }
            let address = Address {
                object: held.object.clone(),
                label: held.label.clone(),
            };
            self.addresses.insert(ip, address);
            kept.push(ip);
        }
        if !kept.is_empty() {
            self.objects.insert(held.object, kept);
        }
    }

    /// The object is gone: its addresses read as it for `retention::RETAIN`, unless
    /// taken sooner.
    pub fn retire(&mut self, object: &ObjectId, now: Instant) {
        if self.objects.contains_key(object) {
            self.retiring.start(object, now);
        }
    }

    /// A complete list of one kind's objects: they are set, and the objects of that
    /// kind missing from it retire.
    pub fn replace_all(&mut self, holder: Holder, listed: Vec<Held>, now: Instant) {
        let of_kind = self.objects.keys().filter(|o| o.holder == holder);
        for object in missing(of_kind, listed.iter().map(|h| &h.object)) {
            self.retire(&object, now);
        }
        for held in listed {
            self.set(held);
        }
        self.purge(now);
    }

    /// Forget the objects whose retention ended.
    pub fn purge(&mut self, now: Instant) {
        for object in self.retiring.take_ended(now) {
            for ip in self.objects.remove(&object).unwrap_or_default() {
                self.release(ip, &object);
            }
        }
    }

    /// Forget `ip` if `object` still holds it.
    fn release(&mut self, ip: IpAddr, object: &ObjectId) {
        if self.addresses.get(&ip).is_some_and(|a| &a.object == object) {
            self.addresses.remove(&ip);
        }
    }
}

/// An address range: `10.42.0.0/16`, `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("`{s}` is not an address range (e.g. 10.42.0.0/16, fd00::/8)");
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let network: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(bad());
        }
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "`{s}`: host bits are set; the range is {}/{prefix}",
                cidr.masked(network)
            ));
        }
        Ok(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The private ranges a cluster's pods and services live in when `--cluster-cidrs` is
/// not given: RFC 1918, shared address space (RFC 6598) and IPv6 unique local.
pub const DEFAULT_CLUSTER_CIDRS: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7";

/// What an address not held by a cluster object reads as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// `--peer-cidrs`: named ranges, checked most specific first.
    pub named: Vec<(String, Cidr)>,
    /// `--cluster-cidrs`: addresses here held by nothing known are `unresolved`.
    pub cluster: Vec<Cidr>,
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges {
            named: Vec::new(),
            cluster: parse_cidrs(DEFAULT_CLUSTER_CIDRS).expect("valid defaults"),
        }
    }
}

/// `CIDR,CIDR,...`
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(Cidr::parse)
        .collect()
}

/// `NAME=CIDR,...`: a name is a label value of its own, so it cannot be one the agent
/// gives (`external`, `unresolved`, `loopback`, `other`) or look like an object's.
pub fn parse_named_cidrs(s: &str) -> Result<Vec<(String, Cidr)>, String> {
    let mut named: Vec<(String, Cidr)> = s
        .split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|pair| {
            let (name, cidr) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not NAME=CIDR (e.g. office=192.0.2.0/24)"))?;
            let name = name.trim();
            let reserved = ["external", "unresolved", "loopback", "other"].contains(&name);
            if name.is_empty() || reserved || name.contains(':') || name.len() > 63 {
                return Err(format!(
                    "`{name}`: a range's name is 1 to 63 characters, without `:`, and not \
                     external, unresolved, loopback or other"
                ));
            }
            Ok((name.to_string(), Cidr::parse(cidr)?))
        })
        .collect::<Result<_, _>>()?;
    named.sort_by_key(|(_, c)| std::cmp::Reverse(c.prefix()));
    Ok(named)
}

/// The address book and the ranges: everything a remote address's label needs.
#[derive(Clone, Default)]
pub struct PeerNames {
    pub book: SharedBook,
    pub ranges: Ranges,
}

impl PeerNames {
    /// The `peer` label value of `ip`: what holds it, else the most specific named
    /// range, else `unresolved` inside the cluster's ranges, else `loopback` or
    /// `external`. Configuration comes before the built-in words, so that a range given
    /// (tests give loopback ones) reads as given.
    pub fn label(&self, ip: IpAddr) -> String {
        let ip = ip.to_canonical();
        if let Some(label) = self
            .book
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .label(ip)
        {
            return label.to_string();
        }
        if let Some((name, _)) = self.ranges.named.iter().find(|(_, c)| c.contains(ip)) {
            return name.clone();
        }
        if self.ranges.cluster.iter().any(|c| c.contains(ip)) {
            "unresolved".into()
        } else if ip.is_loopback() {
            "loopback".into()
        } else {
            "external".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::retention::RETAIN;

    fn pod(uid: &str, ip: &str, name: &str) -> Held {
        Held {
            object: ObjectId {
                holder: Holder::Pod,
                id: uid.into(),
            },
            addresses: vec![ip.parse().unwrap()],
            label: format!("pod:{name}").into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_passed_to_a_new_pod_is_not_taken_by_the_old_ones_removal() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.set(pod("a", "10.42.0.7", "shop/db-0"));
        book.retire(&pod("a", "10.42.0.7", "").object, now);
        assert_eq!(&**book.label(ip("10.42.0.7")).unwrap(), "pod:shop/db-0");
        book.set(pod("b", "10.42.0.7", "shop/web-1"));
        book.purge(now + RETAIN);
        assert_eq!(&**book.label(ip("10.42.0.7")).unwrap(), "pod:shop/web-1");
        assert_eq!(book.count(Holder::Pod), 1);
    }

    #[test]
    fn a_pod_that_changes_address_releases_the_old_one() {
        let mut book = AddressBook::default();
        book.set(pod("a", "10.42.0.7", "shop/db-0"));
        book.set(pod("a", "10.42.0.8", "shop/db-0"));
        assert!(book.label(ip("10.42.0.7")).is_none());
        assert!(book.label(ip("10.42.0.8")).is_some());
    }

    #[test]
    fn a_list_retires_what_it_no_longer_has_of_its_kind_only() {
        let mut book = AddressBook::default();
        let now = Instant::now();
        book.set(pod("a", "10.42.0.7", "shop/db-0"));
        book.set(Held {
            object: ObjectId {
                holder: Holder::Service,
                id: "s".into(),
            },
            addresses: vec![ip("10.96.0.10")],
            label: "service:kube-system/dns".into(),
        });
        book.replace_all(Holder::Pod, vec![pod("b", "10.42.0.9", "shop/web")], now);
        assert!(book.label(ip("10.42.0.7")).is_some(), "retained");
        book.purge(now + RETAIN);
        assert!(book.label(ip("10.42.0.7")).is_none());
        assert!(book.label(ip("10.96.0.10")).is_some(), "another kind");
    }

    #[test]
    fn a_full_book_refuses_and_counts() {
        let mut book = AddressBook::default();
        for n in 0..MAX_ADDRESSES as u32 + 3 {
            book.set(Held {
                object: ObjectId {
                    holder: Holder::Pod,
                    id: n.to_string().into(),
                },
                addresses: vec![IpAddr::V4(n.into())],
                label: "pod:x/y".into(),
            });
        }
        assert_eq!(book.refused, 3);
        assert_eq!(book.count(Holder::Pod), MAX_ADDRESSES);
    }

    #[test]
    fn labels_of_addresses_not_in_the_book() {
        let peers = PeerNames {
            ranges: Ranges {
                named: parse_named_cidrs("corp=10.8.0.0/16,vpn=10.8.3.0/24").unwrap(),
                ..Ranges::default()
            },
            ..PeerNames::default()
        };
        peers
            .book
            .write()
            .unwrap()
            .set(pod("a", "10.42.0.7", "shop/db-0"));
        assert_eq!(peers.label(ip("10.42.0.7")), "pod:shop/db-0");
        assert_eq!(peers.label(ip("::ffff:10.42.0.7")), "pod:shop/db-0");
        assert_eq!(peers.label(ip("10.8.3.1")), "vpn", "most specific first");
        assert_eq!(peers.label(ip("10.8.4.1")), "corp");
        assert_eq!(peers.label(ip("10.42.0.8")), "unresolved");
        assert_eq!(peers.label(ip("fd00::1")), "unresolved");
        assert_eq!(peers.label(ip("1.1.1.1")), "external");
        assert_eq!(peers.label(ip("127.0.0.1")), "loopback");
        assert_eq!(peers.label(ip("::1")), "loopback");
    }

    #[test]
    fn ranges_are_checked() {
        assert!(Cidr::parse("10.42.0.0/16").is_ok());
        assert!(Cidr::parse("10.42.0.1/16")
            .unwrap_err()
            .contains("10.42.0.0/16"));
        assert!(Cidr::parse("10.42.0.0/33").is_err());
        assert!(Cidr::parse("10.42.0.0").is_err());
        assert!(Cidr::parse("::/0").unwrap().contains(ip("fd00::1")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("fd00::1")));
        assert!(parse_named_cidrs("external=1.0.0.0/8").is_err());
        assert!(parse_named_cidrs("a:b=1.0.0.0/8").is_err());
        assert!(parse_named_cidrs("1.0.0.0/8").is_err());
    }
}
