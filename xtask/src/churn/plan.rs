//! The order of an invocation's runs. A bare run sits between every two configurations
//! (A B A C A D ...), so each configuration is measured against the bare runs just before
//! and just after it, not against a bare run minutes away; and the configurations' order
//! changes from round to round, so none of them always runs after the same one.
use super::Config;

/// One run of the schedule: which configuration, in which round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) round: usize,
    pub(crate) config: Config,
}

/// Every run of the invocation, in order: a bare run, then per round each configuration
/// followed by a bare run. The bare run at the end of a round opens the next one: it is
/// the "after" of one round's last configuration and the "before" of the next round's
/// first.
pub(crate) fn schedule(configs: &[Config], rounds: usize) -> Vec<Slot> {
    let bare = |round| Slot {
        round,
        config: Config::Bare,
    };
    let mut slots = vec![bare(0)];
    for round in 0..rounds {
        for i in round_order(configs.len(), round) {
            slots.push(Slot {
                round,
                config: configs[i],
            });
            slots.push(bare(round));
        }
    }
    slots
}

/// The indices 0..n in the order round `round` runs them: rows of a Williams design.
/// Round 0 is 0, 1, n-1, 2, n-2, ...; each later round adds 1 to every index (mod n),
/// which rotates every configuration to a new predecessor. For odd n that alone repeats
/// pairs (n = 3: 0 1 2, then 1 2 0), so every other round runs backwards. Over n rounds
/// (2n for odd n) every configuration follows every other equally often.
pub(crate) fn round_order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = williams_row(n).iter().map(|i| (i + round) % n).collect();
    if n % 2 == 1 && round % 2 == 1 {
        order.reverse();
    }
    order
}

/// 0, 1, n-1, 2, n-2, 3, ...: consecutive differences 1, -2, 3, -4, ..., all distinct
/// for even n.
fn williams_row(n: usize) -> Vec<usize> {
    let (mut low, mut high) = (1, n.saturating_sub(1));
    (0..n)
        .map(|j| match j {
            0 => 0,
            _ if j % 2 == 1 => {
                low += 1;
                low - 1
            }
            _ => {
                high -= 1;
                high + 1
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const FIVE: [Config; 5] = [
        Config::Tcpstates,
        Config::BpftraceCount,
        Config::TcptraceRun,
        Config::TcptraceTraceJson,
        Config::BpftraceEmpty,
    ];

    #[test]
    fn bare_runs_sit_between_every_two_configurations() {
        let slots = schedule(&FIVE, 2);
        assert_eq!(slots.len(), 1 + 2 * 2 * FIVE.len());
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(
                slot.config == Config::Bare,
                i % 2 == 0,
                "slot {i}: {slot:?}"
            );
        }
        assert_eq!(slots.last().unwrap().config, Config::Bare);
    }

    #[test]
    fn each_round_runs_each_configuration_once() {
        let slots = schedule(&FIVE, 3);
        for round in 0..3 {
            let ran: Vec<Config> = slots
                .iter()
                .filter(|s| s.round == round && s.config != Config::Bare)
                .map(|s| s.config)
                .collect();
            assert_eq!(ran.len(), FIVE.len());
            assert!(
                FIVE.iter().all(|c| ran.contains(c)),
                "round {round}: {ran:?}"
            );
        }
    }

    #[test]
    fn williams_rows_alternate_from_both_ends() {
        assert_eq!(williams_row(5), [0, 1, 4, 2, 3]);
        assert_eq!(williams_row(6), [0, 1, 5, 2, 4, 3]);
        assert_eq!(williams_row(1), [0]);
        assert!(williams_row(0).is_empty());
    }

    #[test]
    fn later_rounds_rotate_and_odd_sizes_reverse() {
        assert_eq!(round_order(5, 0), [0, 1, 4, 2, 3]);
        assert_eq!(round_order(5, 1), [4, 3, 0, 2, 1]);
        assert_eq!(round_order(5, 2), [2, 3, 1, 4, 0]);
        assert_eq!(round_order(5, 5), [3, 2, 4, 1, 0]);
        assert_eq!(round_order(6, 1), [1, 2, 0, 3, 5, 4]);
    }

    /// For each configuration, the configurations that ran last before it (through the
    /// bare run between them), over the whole schedule; None for the very first.
    fn predecessors(n: usize, rounds: usize) -> BTreeMap<usize, BTreeSet<Option<usize>>> {
        let sequence: Vec<usize> = (0..rounds).flat_map(|r| round_order(n, r)).collect();
        let mut seen: BTreeMap<usize, BTreeSet<Option<usize>>> = BTreeMap::new();
        for (i, c) in sequence.iter().enumerate() {
            let before = i.checked_sub(1).map(|j| sequence[j]);
            seen.entry(*c).or_default().insert(before);
        }
        seen
    }

    #[test]
    fn no_configuration_always_follows_the_same_one() {
        for n in 2..=7 {
            for rounds in 2..=2 * n {
                for (c, before) in predecessors(n, rounds) {
                    assert!(
                        before.len() > 1,
                        "n={n} rounds={rounds}: {c} always after {before:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_full_cycle_balances_who_follows_whom_within_rounds() {
        for n in 2..=7 {
            let cycle = if n % 2 == 0 { n } else { 2 * n };
            let mut pairs: BTreeMap<(usize, usize), usize> = BTreeMap::new();
            for round in 0..cycle {
                let order = round_order(n, round);
                for w in order.windows(2) {
                    *pairs.entry((w[0], w[1])).or_default() += 1;
                }
            }
            assert_eq!(pairs.len(), n * (n - 1), "n={n}: {pairs:?}");
            let counts: BTreeSet<usize> = pairs.values().copied().collect();
            assert_eq!(counts.len(), 1, "n={n}: uneven {pairs:?}");
        }
    }
}
