//! Objects gone from the cluster keep their names for a while: a deleted pod's last
//! connections (closing, TIME_WAIT, resets) are still reported, and under the same
//! names. One clock for both uses: this node's pod names and the peer address book.
use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    time::{Duration, Instant},
};

/// How long the names of an object gone from the source stay.
pub const RETAIN: Duration = Duration::from_secs(120);

/// Objects gone, each forgotten at the instant kept.
pub struct Retiring<K> {
    until: HashMap<K, Instant>,
}

impl<K> Default for Retiring<K> {
    fn default() -> Self {
        Retiring {
            until: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Retiring<K> {
    /// `key` is gone as of `now` (a second notice does not extend its time).
    pub fn start(&mut self, key: &K, now: Instant) {
        self.until.entry(key.clone()).or_insert(now + RETAIN);
    }

    /// `key` is back (listed or written again).
    pub fn cancel(&mut self, key: &K) {
        self.until.remove(key);
    }

    /// The keys whose retention ended by `now`, no longer retiring.
    pub fn take_ended(&mut self, now: Instant) -> Vec<K> {
        let ended: Vec<K> = self
            .until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &ended {
            self.until.remove(key);
        }
        ended
    }
}

/// The keys of `known` that a complete list (`listed`) no longer has.
pub fn missing<'a, K: Hash + Eq + Clone + 'a>(
    known: impl Iterator<Item = &'a K>,
    listed: impl Iterator<Item = &'a K>,
) -> Vec<K> {
    let listed: HashSet<&K> = listed.collect();
    known.filter(|k| !listed.contains(k)).cloned().collect()
}
