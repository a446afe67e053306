//! The churn invocation's markdown tables and its targets, from the runs in the order
//! they ran (stats.rs does the arithmetic).
use std::time::Duration;

use super::{
    stats::{
        self, adjacent_ratios, holds, per_round_quotients, Bound, RoundRatios, Spread, TracerTarget,
    },
    Config, Options, Run, Sample,
};

/// (d)/(f) at least this: the exporter costs no more than 3% beyond attaching anything.
const EXPORTER_OF_FLOOR: f64 = 0.97;
const PEAK_RSS_MIB: f64 = 16.0;
const RUN_CPU_PER_1000: f64 = 0.1;

struct Report<'a> {
    runs: &'a [Run],
    ratios: RoundRatios,
    opts: &'a Options,
}

pub(crate) fn print(runs: &[Run], opts: &Options, took: Duration) {
    let report = Report {
        runs,
        ratios: adjacent_ratios(runs),
        opts,
    };
    report.print_header();
    report.print_configurations();
    report.print_derived();
    report.print_targets();
    println!(
        "\ntotal time: {} min {} s for {} runs (the build before them not counted)",
        took.as_secs() / 60,
        took.as_secs() % 60,
        runs.len()
    );
}

impl Report<'_> {
    fn samples(&self, c: Config) -> impl Iterator<Item = &Sample> {
        self.runs
            .iter()
            .filter(move |r| r.config == c)
            .map(|r| &r.sample)
    }

    fn ratio(&self, c: Config) -> Option<Spread> {
        let per_round: Vec<f64> = self.ratios.get(&c)?.values().copied().collect();
        Spread::of(&per_round)
    }

    fn quotient(&self, num: Config, den: Config) -> Option<Spread> {
        Spread::of(&per_round_quotients(&self.ratios, num, den))
    }

    fn conns_per_s(&self, c: Config) -> Option<Spread> {
        Spread::of(&self.samples(c).map(|s| s.conns_per_s).collect::<Vec<_>>())
    }

    fn cpu_per_1000(&self, c: Config) -> Option<Spread> {
        let per_run: Vec<f64> = self
            .samples(c)
            .map(|s| s.tool_cpu_s * 1000.0 / s.conns.max(1) as f64)
            .collect();
        Spread::of(&per_run)
    }

    fn peak_rss_mib(&self, c: Config) -> f64 {
        self.samples(c).map(|s| s.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0
    }

    fn print_header(&self) {
        let o = self.opts;
        println!(
            "\nloopback churn, IPv{}, {} threads x {} s, {} rounds, a bare run (a) between every \
             two configurations, their order rotated each round; release build",
            if o.ipv6 { 6 } else { 4 },
            o.threads,
            o.seconds,
            o.rounds
        );
        if let Some(bare) = self.conns_per_s(Config::Bare) {
            println!(
                "bare (a): {:.0} conn/s median ({:.0}-{:.0}) over {} runs; each ratio below \
                 is a run's conn/s over the mean of the bare runs just before and after it",
                bare.median,
                bare.min,
                bare.max,
                self.samples(Config::Bare).count()
            );
        }
        if !o.agent_args.is_empty() {
            println!("(d) and (e) ran with: {}", o.agent_args.join(" "));
        }
        if !o.compare_args.is_empty() {
            println!("(d') ran with: {}", o.compare_args.join(" "));
        }
    }

    fn print_configurations(&self) {
        println!(
            "\n| configuration | ratio to adjacent (a), median | per-round min-max | spread width \
             | conn/s median | tool CPU s / 1000 conn | peak RSS MiB (max) | events delivered / lost |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        let bare = self.conns_per_s(Config::Bare).map_or(0.0, |s| s.median);
        println!(
            "| {} | 1 (reference) | - | - | {bare:.0} | - | - | - |",
            Config::Bare.label()
        );
        for c in Config::chosen(self.opts) {
            println!("{}", self.configuration_row(c));
        }
    }

    fn configuration_row(&self, c: Config) -> String {
        let ratio = self.ratio(c).map_or_else(
            || "- | - | -".to_string(),
            |r| {
                format!(
                    "{:.3} | {:.3}-{:.3} | {:.3}",
                    r.median,
                    r.min,
                    r.max,
                    r.width()
                )
            },
        );
        let rate = self.conns_per_s(c).map_or(0.0, |s| s.median);
        let cpu = self.cpu_per_1000(c).map_or(0.0, |s| s.median);
        format!(
            "| {} | {ratio} | {rate:.0} | {cpu:.3} | {:.1} | {} |",
            c.label(),
            self.peak_rss_mib(c),
            self.events(c)
        )
    }

    /// Delivered / lost summed over the rounds, for the tcptrace configurations.
    fn events(&self, c: Config) -> String {
        if !c.is_tcptrace() {
            return "-".into();
        }
        let delivered: u64 = self.samples(c).filter_map(|s| s.delivered).sum();
        let lost: u64 = self.samples(c).filter_map(|s| s.lost).sum();
        format!("{delivered} / {lost}")
    }

    /// The quotients the targets are about, each taken round by round.
    fn derived(&self) -> Vec<(&'static str, Option<Spread>)> {
        use Config::*;
        let mut rows = vec![
            (
                "(b)/(f): tcpstates over the attach floor",
                self.quotient(Tcpstates, BpftraceEmpty),
            ),
            (
                "(d)/(f): tcptrace run over the attach floor",
                self.quotient(TcptraceRun, BpftraceEmpty),
            ),
            (
                "(e)/(f): tcptrace trace over the attach floor",
                self.quotient(TcptraceTraceJson, BpftraceEmpty),
            ),
            (
                "(e)/(b): tcptrace trace over tcpstates",
                self.quotient(TcptraceTraceJson, Tcpstates),
            ),
        ];
        if !self.opts.compare_args.is_empty() {
            rows.push((
                "(d')/(d): the compared flags over plain run",
                self.quotient(TcptraceRunCompare, TcptraceRun),
            ));
        }
        rows
    }

    fn print_derived(&self) {
        println!("\n| per-round ratio | median | min-max | spread width |");
        println!("| --- | --- | --- | --- |");
        for (name, s) in self.derived() {
            match s {
                Some(s) => println!(
                    "| {name} | {:.3} | {:.3}-{:.3} | {:.3} |",
                    s.median,
                    s.min,
                    s.max,
                    s.width()
                ),
                None => println!("| {name} | - | - | - |"),
            }
        }
    }

    fn print_targets(&self) {
        println!("\ntargets (met: every round meets it; MISSED: no round does; UNDECIDED: rounds on both sides):");
        self.print_exporter_target();
        self.print_tracer_target();
        self.print_lost_target();
        for c in [Config::TcptraceRun, Config::TcptraceTraceJson] {
            let rss = self.peak_rss_mib(c);
            println!(
                "- {} peak RSS <= {PEAK_RSS_MIB} MiB: {rss:.1} MiB, the largest of any round: {}",
                short(c),
                holds(rss <= PEAK_RSS_MIB).word()
            );
        }
        self.print_cpu_target();
        self.print_comparison();
    }

    fn print_exporter_target(&self) {
        let name = format!("exporter: (d)/(f) >= {EXPORTER_OF_FLOOR}");
        let spread = self.quotient(Config::TcptraceRun, Config::BpftraceEmpty);
        println!(
            "- {}",
            judged(&name, spread, Bound::AtLeast(EXPORTER_OF_FLOOR))
        );
    }

    fn print_tracer_target(&self) {
        let Some(peer) = self.quotient(Config::Tcpstates, Config::BpftraceEmpty) else {
            println!("- tracer: no (b)/(f) to choose the rule by");
            return;
        };
        println!("- tracer rule: {}", tracer_rule_reason(&peer));
        let (name, den, target) = match stats::tracer_target(&peer) {
            TracerTarget::PeerMultiple => ("(e)/(b)", Config::Tcpstates, stats::PEER_MULTIPLE),
            TracerTarget::FloorFraction => {
                ("(e)/(f)", Config::BpftraceEmpty, stats::FLOOR_FRACTION)
            }
        };
        let name = format!("tracer: {name} >= {target}");
        let spread = self.quotient(Config::TcptraceTraceJson, den);
        println!("- {}", judged(&name, spread, Bound::AtLeast(target)));
    }

    fn print_lost_target(&self) {
        let lost: u64 = self
            .samples(Config::TcptraceTraceJson)
            .filter_map(|s| s.lost)
            .sum();
        let rounds = self.samples(Config::TcptraceTraceJson).count();
        println!(
            "- zero events lost in (e), default ring: {lost} lost over {rounds} rounds: {}",
            holds(lost == 0).word()
        );
    }

    fn print_cpu_target(&self) {
        let name = format!("(d) CPU <= {RUN_CPU_PER_1000} s per 1000 conn");
        let spread = self.cpu_per_1000(Config::TcptraceRun);
        println!(
            "- {}",
            judged(&name, spread, Bound::AtMost(RUN_CPU_PER_1000))
        );
    }

    fn print_comparison(&self) {
        if self.opts.compare_args.is_empty() {
            return;
        }
        match self.quotient(Config::TcptraceRunCompare, Config::TcptraceRun) {
            Some(s) => println!(
                "- (d')/(d): {}: {}",
                median_and_range(&s),
                stats::comparison(&s)
            ),
            None => println!("- (d')/(d): no data"),
        }
    }
}

/// "name: median (min-max) verdict", or that there was nothing to judge.
fn judged(name: &str, s: Option<Spread>, bound: Bound) -> String {
    match s {
        Some(s) => format!(
            "{name}: {} {}",
            median_and_range(&s),
            bound.judge(&s).describe(&s, bound.target())
        ),
        None => format!("{name}: no data"),
    }
}

fn median_and_range(s: &Spread) -> String {
    format!("{:.3} ({:.3}-{:.3})", s.median, s.min, s.max)
}

/// Which tracer target applies, and the (b)/(f) figure that chose it.
fn tracer_rule_reason(peer: &Spread) -> String {
    let limit = stats::PEER_RULE_LIMIT;
    let multiple = stats::PEER_MULTIPLE;
    let mut reason = match stats::tracer_target(peer) {
        TracerTarget::PeerMultiple => format!(
            "(b)/(f) median {:.3} <= {limit:.2}: {multiple}x (b) fits under the attach floor, \
             so (e) must reach {multiple}x (b)",
            peer.median
        ),
        TracerTarget::FloorFraction => format!(
            "(b)/(f) median {:.3} > {limit:.2}: {multiple}x (b) would be {:.2}x the attach \
             floor, which nothing attached there can reach, so (e) must reach {} of (f)",
            peer.median,
            multiple * peer.median,
            stats::FLOOR_FRACTION
        ),
    };
    if peer.min <= limit && limit < peer.max {
        reason += &format!(
            " (the (b)/(f) spread {:.3}-{:.3} straddles {limit:.2}: more rounds may choose the other rule)",
            peer.min, peer.max
        );
    }
    reason
}

/// "(d)" of "(d) tcptrace run".
fn short(c: Config) -> &'static str {
    c.label().split_whitespace().next().unwrap_or("")
}
