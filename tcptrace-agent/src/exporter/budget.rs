//! A bounded set of labelled series, counted in what Prometheus stores: exposed time
//! series. A label set costs what it exposes (1 for a counter; buckets, +Inf, _sum and
//! _count for a histogram), and at most `max` exposed series live at once, the `other`
//! series included: their cost is reserved up front, so folding never needs room.
//!
//! An update names its label set and, in order, coarser ones it may fall back to (for
//! `remote`: the address alone, then `other`). The first that is alive or fits takes it;
//! when none does, it goes to its family's `other` series. Series not updated for `ttl`
//! are dropped, which frees their place.
use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

pub struct Budget<K, V> {
    /// Exposed series for label sets other than the `other` ones.
    room: usize,
    /// Exposed series of the label sets alive, `other` ones excluded.
    used: usize,
    /// Exposed series of the `other` label sets alive (within the reserve).
    others: usize,
    ttl: Duration,
    series: HashMap<K, Slot<V>>,
}

struct Slot<V> {
    value: V,
    updated: Instant,
    cost: usize,
    is_other: bool,
}

/// Where an update went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// The label set it named (0) or the n-th coarser one.
    Choice(usize),
    /// Its family's `other` series.
    Other,
}

impl<K: Hash + Eq, V: Default> Budget<K, V> {
    /// `reserved`: the exposed series of every family's `other` label set together.
    pub fn new(max: usize, reserved: usize, ttl: Duration) -> Budget<K, V> {
        Budget {
            room: max.saturating_sub(reserved),
            used: 0,
            others: 0,
            ttl,
            series: HashMap::new(),
        }
    }

    /// The value to update for the first of `choices` (finest first, each exposing
    /// `cost` series) that is alive or may be created, else for `other()`. Choices are
    /// built only as far as they are looked at: most events find their own label set.
    ///
    /// Choice `i` of `n` may be created while the budget stays within `(i + 1) / n` of
    /// its room: each coarser level keeps an equal share for itself. Were all levels to
    /// share one limit, a coarser label set (same cost) would fit exactly when the finer
    /// one does, and could never be created once the finer ones filled the budget.
    pub fn entry(
        &mut self,
        choices: impl ExactSizeIterator<Item = K>,
        other: impl FnOnce() -> K,
        cost: usize,
        now: Instant,
    ) -> (Landing, &mut V) {
        let n = choices.len();
        let taken = choices.enumerate().find(|(i, key)| {
            self.series.contains_key(key) || self.used + cost <= self.room * (i + 1) / n
        });
        let (landing, key) = match taken {
            Some((i, key)) => (Landing::Choice(i), key),
            None => (Landing::Other, other()),
        };
        let (used, others) = (&mut self.used, &mut self.others);
        let slot = self.series.entry(key).or_insert_with(|| {
            let is_other = landing == Landing::Other;
            *(if is_other { others } else { used }) += cost;
            Slot {
                value: V::default(),
                updated: now,
                cost,
                is_other,
            }
        });
        slot.updated = now;
        (landing, &mut slot.value)
    }

    /// Forget series idle for longer than the TTL (`other` series stay: they only grow).
    pub fn expire(&mut self, now: Instant) {
        let (ttl, used) = (self.ttl, &mut self.used);
        self.series.retain(|_, s| {
            let keep = s.is_other || now.duration_since(s.updated) <= ttl;
            if !keep {
                *used -= s.cost;
            }
            keep
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.series.iter().map(|(k, s)| (k, &s.value))
    }

    /// Exposed series of every label set alive, `other` ones included: at most `max`.
    pub fn exposed(&self) -> usize {
        self.used + self.others
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn counts_exposed_series_and_folds_beyond_them() {
        let now = Instant::now();
        // A histogram-like family: every label set exposes 9 series. 40 series, 9 for
        // `other`: three label sets of 9 fit (27 <= 31), a fourth does not.
        let mut b: Budget<String, u64> = Budget::new(40, 9, TTL);
        let mut folded = 0;
        for i in 0..10 {
            let (landing, v) = b.entry([format!("k{i}")].into_iter(), || "other".into(), 9, now);
            *v += 1;
            folded += u64::from(landing == Landing::Other);
        }
        assert_eq!(
            b.exposed(),
            4 * 9,
            "three label sets and other, 9 series each"
        );
        assert!(b.exposed() <= 40);
        assert_eq!(folded, 7);
        let total: u64 = b.iter().map(|(_, v)| *v).sum();
        assert_eq!(total, 10, "no update lost");
        assert_eq!(
            b.iter().find(|(k, _)| *k == "other").map(|(_, v)| *v),
            Some(7)
        );
    }

    #[test]
    fn coarser_choices_get_their_share_and_are_reused() {
        let now = Instant::now();
        // 30 series of room (none reserved), label sets of 1: the finest of three levels
        // may fill 10, the second 20, the third 30.
        let mut b: Budget<String, u64> = Budget::new(30, 0, TTL);
        let levels = |peer: usize, port: usize| {
            [
                format!("w/10.0.0.{peer}:{port}"),
                format!("w/10.0.0.{peer}"),
                "w/other".to_string(),
            ]
            .into_iter()
        };
        let mut landings = Vec::new();
        for peer in 0..15 {
            for port in [80, 443] {
                let (landing, v) = b.entry(levels(peer, port), || "other".into(), 1, now);
                *v += 1;
                landings.push(landing);
            }
        }
        let count = |l: Landing| landings.iter().filter(|x| **x == l).count();
        // Peers 0-4 fill the first share with both ports; peers 5-14 get an address
        // each (the second share), and their second port joins it.
        assert_eq!(count(Landing::Choice(0)), 10);
        assert_eq!(count(Landing::Choice(1)), 20);
        assert_eq!(b.exposed(), 20);
        // With the second share full, a new address goes to `w/other`, then stays there.
        for peer in 15..20 {
            let (landing, _) = b.entry(levels(peer, 80), || "other".into(), 1, now);
            assert_eq!(landing, Landing::Choice(2));
        }
        assert_eq!(b.exposed(), 21);
    }

    #[test]
    fn the_other_series_always_fit_within_the_reserve() {
        let now = Instant::now();
        let mut b: Budget<&str, u64> = Budget::new(12, 12, TTL);
        let (landing, _) = b.entry(["a"].into_iter(), || "other-counter", 1, now);
        assert_eq!(landing, Landing::Other);
        let (landing, _) = b.entry(["h"].into_iter(), || "other-histogram", 9, now);
        assert_eq!(landing, Landing::Other);
        assert_eq!(b.exposed(), 10);
    }

    #[test]
    fn stale_series_are_dropped_and_free_their_place() {
        let t0 = Instant::now();
        let mut b: Budget<u32, u64> = Budget::new(18, 9, Duration::from_secs(10));
        *b.entry([1].into_iter(), || 0, 9, t0).1 += 1;
        let (landing, _) = b.entry([2].into_iter(), || 0, 9, t0);
        assert_eq!(landing, Landing::Other);
        b.expire(t0 + Duration::from_secs(11));
        assert_eq!(b.exposed(), 9, "only `other` stays");
        let (landing, _) = b.entry([2].into_iter(), || 0, 9, t0 + Duration::from_secs(12));
        assert_eq!(landing, Landing::Choice(0));
    }
}
