//! What a churn invocation's runs add up to, as pure functions: each configuration's
//! throughput over the bare runs next to it, per round; quotients of those ratios taken
//! round by round; the median and spread of per-round figures; and whether a target is
//! met, missed, or still inside the spread.
use std::collections::BTreeMap;

use super::{Config, Run};

/// Per configuration, per round: its conn/s over the mean of the bare runs next to it.
pub(crate) type RoundRatios = BTreeMap<Config, BTreeMap<usize, f64>>;

/// Each configuration's run over the bare runs just before and just after it (one of
/// them when the other is missing), by round. Bare runs are the reference and get none.
pub(crate) fn adjacent_ratios(runs: &[Run]) -> RoundRatios {
    let mut ratios = RoundRatios::new();
    for (i, run) in runs.iter().enumerate() {
        if run.config == Config::Bare {
            continue;
        }
        let bare: Vec<f64> = [i.checked_sub(1), Some(i + 1)]
            .into_iter()
            .flatten()
            .filter_map(|j| runs.get(j))
            .filter(|r| r.config == Config::Bare)
            .map(|r| r.sample.conns_per_s)
            .collect();
        match mean(&bare) {
            Some(bare) if bare > 0.0 => {
                let rounds = ratios.entry(run.config).or_default();
                rounds.insert(run.round, run.sample.conns_per_s / bare);
            }
            _ => {}
        }
    }
    ratios
}

/// `num`'s ratio over `den`'s, round by round, for the rounds that measured both: each
/// quotient compares two runs of one round, each against its own bare neighbours.
pub(crate) fn per_round_quotients(ratios: &RoundRatios, num: Config, den: Config) -> Vec<f64> {
    let (Some(num), Some(den)) = (ratios.get(&num), ratios.get(&den)) else {
        return Vec::new();
    };
    num.iter()
        .filter_map(|(round, n)| Some(n / den.get(round)?))
        .collect()
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The median of per-round figures and their range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// None without values. An even count's median is the mean of the middle two.
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let (first, last) = (*v.first()?, *v.last()?);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: first,
            max: last,
        })
    }

    pub(crate) fn width(&self) -> f64 {
        self.max - self.min
    }

    /// Whether `x` lies within the range, ends included.
    pub(crate) fn includes(&self, x: f64) -> bool {
        self.min <= x && x <= self.max
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Met,
    Missed,
    /// Some rounds on each side of the target: more rounds, not this run, decide.
    Undecided,
}

/// A target on per-round figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    pub(crate) fn judge(self, s: &Spread) -> Verdict {
        match self {
            Bound::AtLeast(target) => at_least(s, target),
            Bound::AtMost(target) => at_most(s, target),
        }
    }

    pub(crate) fn target(self) -> f64 {
        match self {
            Bound::AtLeast(target) | Bound::AtMost(target) => target,
        }
    }
}

/// Met when every round reached `target`, missed when none did.
fn at_least(s: &Spread, target: f64) -> Verdict {
    if s.min >= target {
        Verdict::Met
    } else if s.max < target {
        Verdict::Missed
    } else {
        Verdict::Undecided
    }
}

/// Met when every round stayed at or under `target`, missed when none did.
fn at_most(s: &Spread, target: f64) -> Verdict {
    if s.max <= target {
        Verdict::Met
    } else if s.min > target {
        Verdict::Missed
    } else {
        Verdict::Undecided
    }
}

/// For targets with no spread to straddle (a total, a peak over all rounds).
pub(crate) fn holds(ok: bool) -> Verdict {
    if ok {
        Verdict::Met
    } else {
        Verdict::Missed
    }
}

impl Verdict {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Undecided => "UNDECIDED",
        }
    }

    /// The verdict in words; an undecided one says why and what to do.
    pub(crate) fn describe(self, s: &Spread, target: f64) -> String {
        match self {
            Verdict::Met | Verdict::Missed => self.word().into(),
            Verdict::Undecided => format!(
                "UNDECIDED: the spread ({:.3}-{:.3}) straddles the target {target}; run more rounds",
                s.min, s.max
            ),
        }
    }
}

/// The tracer's target: (e) at least this many times (b)...
pub(crate) const PEER_MULTIPLE: f64 = 2.5;
/// ...unless that lies above the attach floor (f); then (e) at least this much of (f).
pub(crate) const FLOOR_FRACTION: f64 = 0.90;
/// (b)/(f) at or below which PEER_MULTIPLE x (b) fits under the floor: 1 / 2.5.
pub(crate) const PEER_RULE_LIMIT: f64 = 0.40;

/// Which target the tracer (e) is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TracerTarget {
    /// (e)/(b) >= PEER_MULTIPLE: the peer sits far enough below the floor.
    PeerMultiple,
    /// (e)/(f) >= FLOOR_FRACTION: a multiple of the peer would be above the floor.
    FloorFraction,
}

/// The rule, from the median of (b)/(f) per round.
pub(crate) fn tracer_target(peer_over_floor: &Spread) -> TracerTarget {
    if peer_over_floor.median <= PEER_RULE_LIMIT {
        TracerTarget::PeerMultiple
    } else {
        TracerTarget::FloorFraction
    }
}

/// What an A/B comparison's (d')/(d) per round says.
pub(crate) fn comparison(s: &Spread) -> &'static str {
    if s.includes(1.0) {
        "no difference beyond the noise"
    } else if s.min > 1.0 {
        "(d') faster than (d) in every round"
    } else {
        "(d') slower than (d) in every round"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::churn::Sample;

    fn run(round: usize, config: Config, conns_per_s: f64) -> Run {
        Run {
            round,
            config,
            sample: Sample {
                conns_per_s,
                ..Default::default()
            },
        }
    }

    fn spread(min: f64, median: f64, max: f64) -> Spread {
        Spread { median, min, max }
    }

    #[test]
    fn a_run_is_compared_with_the_bare_runs_on_both_sides() {
        // The machine slows down from 100 to 60 over the run: each configuration is
        // judged against the bare speed of its own moment.
        let runs = [
            run(0, Config::Bare, 100.0),
            run(0, Config::Tcpstates, 45.0),
            run(0, Config::Bare, 80.0),
            run(0, Config::TcptraceRun, 63.0),
            run(0, Config::Bare, 60.0),
        ];
        let ratios = adjacent_ratios(&runs);
        assert_eq!(ratios[&Config::Tcpstates][&0], 0.5);
        assert_eq!(ratios[&Config::TcptraceRun][&0], 0.9);
        assert!(!ratios.contains_key(&Config::Bare));
    }

    #[test]
    fn a_run_missing_a_bare_neighbour_uses_the_other() {
        let runs = [
            run(0, Config::Tcpstates, 30.0),
            run(0, Config::Bare, 60.0),
            run(1, Config::BpftraceEmpty, 54.0),
        ];
        let ratios = adjacent_ratios(&runs);
        assert_eq!(ratios[&Config::Tcpstates][&0], 0.5);
        assert_eq!(ratios[&Config::BpftraceEmpty][&1], 0.9);
    }

    #[test]
    fn a_run_between_two_configurations_gets_no_ratio() {
        let runs = [
            run(0, Config::Tcpstates, 30.0),
            run(0, Config::TcptraceRun, 40.0),
            run(0, Config::BpftraceEmpty, 50.0),
        ];
        assert!(adjacent_ratios(&runs).is_empty());
    }

    #[test]
    fn quotients_pair_the_same_round() {
        let ratios = RoundRatios::from([
            (
                Config::TcptraceRun,
                BTreeMap::from([(0, 0.9), (1, 0.8), (2, 0.6)]),
            ),
            (Config::BpftraceEmpty, BTreeMap::from([(0, 0.9), (1, 1.0)])),
        ]);
        let q = per_round_quotients(&ratios, Config::TcptraceRun, Config::BpftraceEmpty);
        assert_eq!(q, [1.0, 0.8]);
        assert!(per_round_quotients(&ratios, Config::Tcpstates, Config::BpftraceEmpty).is_empty());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(spread(1.0, 2.0, 3.0)));
        assert_eq!(
            Spread::of(&[4.0, 1.0, 2.0, 3.0]),
            Some(spread(1.0, 2.5, 4.0))
        );
        assert_eq!(Spread::of(&[7.0]), Some(spread(7.0, 7.0, 7.0)));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(spread(0.9, 0.95, 1.02).width(), 1.02 - 0.9);
    }

    #[test]
    fn a_spread_straddling_the_target_is_undecided() {
        assert_eq!(at_least(&spread(0.97, 0.98, 0.99), 0.97), Verdict::Met);
        assert_eq!(at_least(&spread(0.90, 0.93, 0.96), 0.97), Verdict::Missed);
        assert_eq!(
            at_least(&spread(0.95, 0.98, 0.99), 0.97),
            Verdict::Undecided
        );
        assert_eq!(
            at_least(&spread(0.95, 0.96, 0.97), 0.97),
            Verdict::Undecided
        );
        assert_eq!(at_most(&spread(0.01, 0.02, 0.1), 0.1), Verdict::Met);
        assert_eq!(at_most(&spread(0.11, 0.2, 0.3), 0.1), Verdict::Missed);
        assert_eq!(at_most(&spread(0.05, 0.2, 0.3), 0.1), Verdict::Undecided);
        let s = spread(0.95, 0.98, 0.99);
        assert_eq!(Bound::AtLeast(0.9).judge(&s), Verdict::Met);
        assert_eq!(Bound::AtMost(0.9).judge(&s), Verdict::Missed);
        assert_eq!(holds(true), Verdict::Met);
        assert_eq!(holds(false), Verdict::Missed);
    }

    #[test]
    fn an_undecided_verdict_says_why_in_words() {
        let s = spread(0.951, 0.98, 0.99);
        assert_eq!(
            Verdict::Undecided.describe(&s, 0.97),
            "UNDECIDED: the spread (0.951-0.990) straddles the target 0.97; run more rounds"
        );
        assert_eq!(Verdict::Met.describe(&s, 0.97), "met");
        assert_eq!(Verdict::Missed.describe(&s, 0.97), "MISSED");
    }

    #[test]
    fn the_tracer_rule_follows_the_peer_against_the_floor() {
        let peer_far_below = spread(0.30, 0.36, 0.45);
        assert_eq!(tracer_target(&peer_far_below), TracerTarget::PeerMultiple);
        let at_the_limit = spread(0.40, 0.40, 0.40);
        assert_eq!(tracer_target(&at_the_limit), TracerTarget::PeerMultiple);
        let peer_near = spread(0.35, 0.52, 0.60);
        assert_eq!(tracer_target(&peer_near), TracerTarget::FloorFraction);
        assert_eq!(PEER_RULE_LIMIT * PEER_MULTIPLE, 1.0);
    }

    #[test]
    fn a_comparison_including_one_is_noise() {
        assert_eq!(
            comparison(&spread(0.98, 1.01, 1.03)),
            "no difference beyond the noise"
        );
        assert_eq!(
            comparison(&spread(1.0, 1.02, 1.03)),
            "no difference beyond the noise"
        );
        assert_eq!(
            comparison(&spread(1.01, 1.02, 1.03)),
            "(d') faster than (d) in every round"
        );
        assert_eq!(
            comparison(&spread(0.9, 0.95, 0.99)),
            "(d') slower than (d) in every round"
        );
    }
}
