//! A bounded set of labelled series: at most `max` label sets live at once, the folded
//! `other` series included (one per family is reserved); an update for a new label set
//! beyond that goes to its family's `other` series and is counted as folded. Series not
//! updated for `ttl` are dropped, which frees their place.
use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

pub struct Budget<K, V> {
    /// Places for label sets other than the `other` ones.
    room: usize,
    ttl: Duration,
    series: HashMap<K, (V, Instant)>,
    /// How many of `series` are `other` series.
    others: usize,
    /// Updates that found no room and went to `other`, since start.
    pub folded: u64,
}

impl<K: Hash + Eq + Clone, V: Default> Budget<K, V> {
    /// `families`: how many `other` series to keep places for.
    pub fn new(max: usize, families: usize, ttl: Duration) -> Budget<K, V> {
        Budget {
            room: max.saturating_sub(families),
            ttl,
            series: HashMap::new(),
            others: 0,
            folded: 0,
        }
    }

    /// The value to update for `key`; `other` (the folded label set of the same family)
    /// when the budget is full. `other` itself always has room.
    pub fn entry(&mut self, key: K, other: K, now: Instant) -> &mut V {
        let real = self.series.len() - self.others;
        let is_other = key == other;
        let (key, is_other) = if is_other || self.series.contains_key(&key) || real < self.room {
            (key, is_other)
        } else {
            self.folded += 1;
            (other, true)
        };
        let others = &mut self.others;
        let slot = self.series.entry(key).or_insert_with(|| {
            *others += usize::from(is_other);
            (V::default(), now)
        });
        slot.1 = now;
        &mut slot.0
    }

    /// Forget series idle for longer than the TTL (`other` series stay: they only grow).
    pub fn expire(&mut self, now: Instant, is_other: impl Fn(&K) -> bool) {
        let ttl = self.ttl;
        self.series
            .retain(|k, (_, at)| is_other(k) || now.duration_since(*at) <= ttl);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.series.iter().map(|(k, (v, _))| (k, v))
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_beyond_the_budget_and_counts_it() {
        let now = Instant::now();
        let mut b: Budget<String, u64> = Budget::new(3, 1, Duration::from_secs(60));
        for i in 0..10 {
            *b.entry(format!("k{i}"), "other".into(), now) += 1;
        }
        let total: u64 = b.iter().map(|(_, v)| *v).sum();
        assert_eq!(total, 10, "no update lost");
        assert_eq!(b.len(), 3, "two label sets and other");
        assert_eq!(b.folded, 8);
        assert_eq!(
            b.iter().find(|(k, _)| *k == "other").map(|(_, v)| *v),
            Some(8)
        );
    }

    #[test]
    fn stale_series_are_dropped_and_free_their_place() {
        let t0 = Instant::now();
        let mut b: Budget<u32, u64> = Budget::new(2, 1, Duration::from_secs(10));
        *b.entry(1, 0, t0) += 1;
        b.expire(t0 + Duration::from_secs(11), |k| *k == 0);
        assert!(b.is_empty());
        *b.entry(2, 0, t0 + Duration::from_secs(12)) += 1;
        assert_eq!(b.folded, 0);
    }
}
